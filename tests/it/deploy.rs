//! The deployment files, checked by real validators and against the binary: the kustomizations
//! render (`kubectl kustomize`) and validate against the Kubernetes schemas of the oldest and
//! newest versions they support (`kubernetes-validate`), their pods set every field Pod Security
//! "restricted" requires (checked field by field: the admission controller cannot run offline),
//! Compose validates against the compose-spec schema (`check-jsonschema`), the Dockerfile is
//! hadolint-clean, and probes, ports, secrets and shutdown budgets agree with the configs.
//!
//! The validators come from PyPI into `target/deploy-venv`, which `bash .ci/run` makes.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// A tool of the validators' virtual environment.
fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("PORTCULLIS_DEPLOY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/deploy-venv"));
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: the validators come from PyPI into {} (bash .ci/run makes it: python3 -m venv \
         target/deploy-venv && target/deploy-venv/bin/pip install -r deploy/validators.txt)",
        path.display(),
        venv.display()
    );
    path
}

/// Runs `cmd`: (success, stdout + stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `kubectl kustomize dir`: the rendered manifests as YAML.
fn kustomize(dir: &str) -> String {
    let (ok, out) = run(Command::new(tool("kubectl")).args(["kustomize"]).arg(root().join(dir)));
    assert!(ok, "kubectl kustomize {dir}: {out}");
    out
}

/// YAML documents as JSON values (PyYAML, from the same environment).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(tool("python"))
        .args(["-c", "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kubernetes-validate --strict` against `version`.
fn validates(yaml: &str, version: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, yaml).unwrap();
    run(Command::new(tool("kubernetes-validate")).args(["--strict", "-k", version]).arg(&file))
}

/// Each kustomization, with the oldest and newest Kubernetes version it supports.
const KUSTOMIZATIONS: [(&str, &str, &str); 3] = [
    ("deploy/kubernetes", "1.29.0", "1.37.0"),
    ("deploy/kubernetes/classic", "1.25.0", "1.37.0"),
    ("deploy/overlays/example", "1.29.0", "1.37.0"),
];

#[test]
fn kustomizations_render_and_validate_against_their_oldest_and_newest_kubernetes() {
    for (dir, oldest, newest) in KUSTOMIZATIONS {
        let yaml = kustomize(dir);
        for v in [oldest, newest] {
            let (ok, out) = validates(&yaml, v);
            assert!(ok, "{dir} against {v}: {out}");
        }
    }
    // the validator's verdict counts: an unknown field fails it
    let broken =
        kustomize("deploy/kubernetes").replace("automountServiceAccountToken", "automountToken");
    assert!(!validates(&broken, "1.37.0").0, "a misspelt field passed validation");
    // native sidecars (restartPolicy on an init container) are not in 1.27's schema
    assert!(!validates(&kustomize("deploy/kubernetes"), "1.27.0").0);
}

/// The pod templates of the rendered workloads.
fn pods(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            (d["metadata"]["name"].as_str().unwrap().to_string(), &d["spec"]["template"]["spec"])
        })
        .collect()
}

#[test]
fn every_pod_sets_the_fields_pod_security_restricted_requires() {
    for (dir, _, _) in KUSTOMIZATIONS {
        let docs = yaml_docs(&kustomize(dir));
        let pods = pods(&docs);
        assert!(!pods.is_empty(), "{dir}: no Deployment");
        for (name, pod) in pods {
            let at = format!("{dir}: {name}");
            let psc = &pod["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{at}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{at}");
            assert_eq!(pod["automountServiceAccountToken"], false, "{at}");
            for host in ["hostNetwork", "hostPID", "hostIPC"] {
                assert_ne!(pod[host], true, "{at}: {host}");
            }
            for v in pod["volumes"].as_array().into_iter().flatten() {
                assert!(v.get("hostPath").is_none(), "{at}: a hostPath volume");
            }
            let containers: Vec<&Value> = ["initContainers", "containers"]
                .iter()
                .flat_map(|k| pod[*k].as_array().into_iter().flatten())
                .collect();
            assert!(containers.len() >= 2, "{at}: portcullis and the app");
            for c in containers {
                let cat = format!("{at}/{}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{cat}");
                assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{cat}");
                assert!(sc["capabilities"].get("add").is_none(), "{cat}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{cat}");
                assert_ne!(sc["privileged"], true, "{cat}");
                for id in ["runAsUser", "runAsGroup"] {
                    let n = sc[id].as_u64().or(psc[id].as_u64());
                    assert!(n.is_some_and(|n| n > 0), "{cat}: a numeric, non-root {id}");
                }
                for p in c["ports"].as_array().into_iter().flatten() {
                    assert!(p.get("hostPort").is_none(), "{cat}: a host port");
                }
            }
        }
    }
}

/// The portcullis container of a pod (an init container when native).
fn portcullis(pod: &Value) -> &Value {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == "portcullis")
        .unwrap()
}

fn app(pod: &Value) -> &Value {
    pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "app").unwrap()
}

fn config_of(rel: &str) -> portcullis::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, "ZGVtby1zZXNzaW9uLXNlY3JldC0zMi1ieXRlcy0hISE=").unwrap();
    let env = [
        ("PORTCULLIS_SESSION_SECRET_FILE".to_string(), secret.display().to_string()),
        ("PORTCULLIS_OIDC_CLIENT_SECRET_FILE".to_string(), secret.display().to_string()),
    ];
    portcullis::config::load_str(&read(rel), env).unwrap().config
}

#[test]
fn the_native_sidecar_probes_ports_config_and_shutdown_budget_agree() {
    let docs = yaml_docs(&kustomize("deploy/kubernetes"));
    let pods = pods(&docs);
    let (_, pod) = &pods[0];
    let p = portcullis(pod);
    assert_eq!(p["restartPolicy"], "Always", "portcullis should be a native sidecar");
    // held back until portcullis is up: /healthz, never /readyz (which waits for the app)
    assert_eq!(p["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(p["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(p["readinessProbe"]["httpGet"]["path"], "/readyz");
    let cfg = config_of("deploy/kubernetes/common/portcullis.toml");
    let ports: Vec<u64> = p["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ports,
        [u64::from(cfg.server.listen.port()), u64::from(cfg.server.admin_listen.port())]
    );
    assert_eq!(
        cfg.upstream.as_ref().unwrap().url.host_str(),
        Some("127.0.0.1"),
        "the app binds loopback"
    );
    // the ConfigMap is generated with a content hash, and the pod mounts that very one
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let cm_name = cm["metadata"]["name"].as_str().unwrap();
    assert!(
        cm_name.starts_with("my-app-portcullis-") && cm_name.len() > "my-app-portcullis-".len()
    );
    let mounted: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["configMap"]["name"].as_str())
        .collect();
    assert_eq!(mounted, [cm_name]);
    assert_eq!(
        cm["data"]["portcullis.toml"].as_str().unwrap(),
        read("deploy/kubernetes/common/portcullis.toml")
    );
    // the shared stopping budget: the app's preStop sleep, its drain (10 s), portcullis' drain
    let sleep = app(pod)["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(sleep >= 5);
    assert!(grace >= sleep + 10 + cfg.server.shutdown_timeout.as_secs(), "{grace} s is too short");
    // CPU limit and requests are set (the workers follow the limit)
    assert!(
        p["resources"]["limits"]["cpu"].is_string()
            && p["resources"]["requests"]["memory"].is_string()
    );
}

#[test]
fn the_classic_variant_keeps_serving_while_endpoints_update() {
    let docs = yaml_docs(&kustomize("deploy/kubernetes/classic"));
    let pods = pods(&docs);
    let (_, pod) = &pods[0];
    assert!(pod.get("initContainers").is_none());
    let p = portcullis(pod);
    let env = p["env"].as_array().unwrap();
    let delay = env.iter().find(|e| e["name"] == "PORTCULLIS_SERVER_SHUTDOWN_DELAY").unwrap();
    let delay = humantime::parse_duration(delay["value"].as_str().unwrap()).unwrap().as_secs();
    let sleep = &app(pod)["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(sleep[0], "sleep");
    let cfg = config_of("deploy/kubernetes/common/portcullis.toml");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(delay >= 5 && grace >= delay + cfg.server.shutdown_timeout.as_secs());
}

#[test]
fn the_shipped_secret_is_a_placeholder_portcullis_refuses() {
    let docs = yaml_docs(&kustomize("deploy/kubernetes"));
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session-secret");
    std::fs::write(&file, secret["stringData"]["session-secret"].as_str().unwrap()).unwrap();
    let client = dir.path().join("client-secret");
    std::fs::write(&client, secret["stringData"]["client-secret"].as_str().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--offline", "--config"])
        .arg(root().join("deploy/kubernetes/common/portcullis.toml"))
        .env("PORTCULLIS_SESSION_SECRET_FILE", &file)
        .env("PORTCULLIS_OIDC_CLIENT_SECRET_FILE", &client)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("session.secret_file"), "{err}");
}

#[test]
fn the_network_policy_admits_the_proxy_port_and_the_admin_port_from_monitoring_only() {
    let docs = yaml_docs(&kustomize("deploy/kubernetes"));
    let np = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    let rules = np["spec"]["ingress"].as_array().unwrap();
    let cfg = config_of("deploy/kubernetes/common/portcullis.toml");
    let proxy = u64::from(cfg.server.listen.port());
    let admin = u64::from(cfg.server.admin_listen.port());
    let port_of = |r: &Value| r["ports"][0]["port"].as_u64().unwrap();
    let open = rules.iter().find(|r| port_of(r) == proxy).unwrap();
    assert!(open.get("from").is_none(), "the proxy port from anywhere");
    let admin_rule = rules.iter().find(|r| port_of(r) == admin).unwrap();
    assert_eq!(
        admin_rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(rules.len(), 2, "nothing else is admitted");
    let pdb = docs.iter().find(|d| d["kind"] == "PodDisruptionBudget").unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn compose_validates_and_a_restart_of_portcullis_cannot_cut_the_app_off() {
    let file = root().join("deploy/compose/compose.yaml");
    let (ok, out) = run(Command::new(tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(&file));
    assert!(ok, "{out}");
    let c = &yaml_docs(&read("deploy/compose/compose.yaml"))[0]["services"];
    // the namespace holder publishes the port and never restarts; both others join it
    assert_eq!(c["edge"]["restart"], "always");
    assert!(c["edge"]["ports"].is_array());
    for s in ["portcullis", "app"] {
        assert_eq!(c[s]["network_mode"], "service:edge", "{s}");
        assert!(c[s].get("ports").is_none(), "{s} publishes nothing itself");
    }
    for s in ["edge", "portcullis", "app"] {
        assert_eq!(c[s]["read_only"], true, "{s}");
        assert_eq!(c[s]["cap_drop"], serde_json::json!(["ALL"]), "{s}");
        assert_eq!(c[s]["security_opt"], serde_json::json!(["no-new-privileges:true"]), "{s}");
    }
    // the healthcheck needs no curl: portcullis probe, against /healthz
    let test: Vec<&str> = c["portcullis"]["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&test[..3], ["CMD", "/usr/local/bin/portcullis", "probe"]);
    assert!(test.last().unwrap().ends_with("/healthz"));
    let cfg = config_of("deploy/compose/portcullis.toml");
    assert!(test.last().unwrap().contains(&cfg.server.admin_listen.port().to_string()));
    let grace =
        humantime::parse_duration(c["portcullis"]["stop_grace_period"].as_str().unwrap()).unwrap();
    assert!(grace > cfg.server.shutdown_timeout);
    assert_eq!(cfg.upstream.as_ref().unwrap().url.host_str(), Some("127.0.0.1"));
    let published = c["edge"]["ports"][0].as_str().unwrap();
    assert!(published.ends_with(&format!(":{}", cfg.server.listen.port())), "{published}");
}

#[test]
fn compose_with_redis_validates_keeps_redis_private_and_switches_portcullis_by_environment() {
    let (ok, out) = run(Command::new(tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(root().join("deploy/compose/compose.redis.yaml")));
    assert!(ok, "{out}");
    let c = &yaml_docs(&read("deploy/compose/compose.redis.yaml"))[0]["services"];
    let r = &c["redis"];
    // in edge's namespace, on loopback, nothing published, hardened, an ACL file, no disk
    assert_eq!(r["network_mode"], "service:edge");
    assert!(r.get("ports").is_none());
    assert_eq!(r["read_only"], true);
    assert_eq!(r["cap_drop"], serde_json::json!(["ALL"]));
    let cmd: Vec<&str> =
        r["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let arg = |name: &str| cmd.iter().position(|a| *a == name).map(|i| cmd[i + 1]);
    assert_eq!(arg("--bind"), Some("127.0.0.1"));
    assert_eq!(arg("--aclfile"), Some("/run/secrets/redis-users.acl"));
    assert_eq!(arg("--maxmemory-policy"), Some("volatile-ttl"));
    assert_eq!(arg("--save"), Some(""));
    // portcullis's variables are real keys, and give the Redis store as the user of the ACL
    let env = c["portcullis"]["environment"].as_object().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (secret, password) = (dir.path().join("s"), dir.path().join("p"));
    std::fs::write(&secret, "ZGVtby1zZXNzaW9uLXNlY3JldC0zMi1ieXRlcy0hISE=").unwrap();
    std::fs::write(&password, "pw").unwrap();
    let mut vars = vec![
        ("PORTCULLIS_SESSION_SECRET_FILE".to_string(), secret.display().to_string()),
        ("PORTCULLIS_OIDC_CLIENT_SECRET_FILE".to_string(), secret.display().to_string()),
    ];
    for (k, v) in env {
        let v = v.as_str().unwrap();
        let v = if k.ends_with("_PASSWORD_FILE") {
            assert_eq!(v, "/run/secrets/redis-password");
            password.display().to_string()
        } else {
            v.to_string()
        };
        vars.push((k.clone(), v));
    }
    let loaded =
        portcullis::config::load_str(&read("deploy/compose/portcullis.toml"), vars).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    match &loaded.config.login.unwrap().session.store {
        portcullis::config::StoreConfig::Redis(r) => {
            assert_eq!(r.url.expose().host_str(), Some("127.0.0.1"));
            assert_eq!(r.url.expose().username(), "portcullis");
            assert_eq!(r.password.as_ref().map(|p| p.expose()), Some("pw"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_dockerfile_is_hadolint_clean_and_checks_itself_with_portcullis_probe() {
    let file = root().join("deploy/Dockerfile");
    let (ok, out) = run(Command::new(tool("hadolint")).arg(&file));
    assert!(ok, "{out}");
    // the linter's verdict counts: an unpinned base image fails it
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(
        &bad,
        read("deploy/Dockerfile").replace("rust:1.95.0-slim-bookworm", "rust:latest"),
    )
    .unwrap();
    assert!(!run(Command::new(tool("hadolint")).arg(&bad)).0, "hadolint passed :latest");
    let d = read("deploy/Dockerfile");
    let healthcheck =
        d.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect::<String>();
    assert!(healthcheck.contains("\"probe\"") && healthcheck.contains("/healthz"), "{healthcheck}");
    assert!(d.contains("USER 65532:65532"));
    // what the build needs is in the build context: the pages are compiled in
    assert!(d.contains("COPY templates ./templates"));
}
