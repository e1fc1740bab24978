//! The `portcullis` binary: check's exit codes, run with SIGTERM, env overrides, demo.

use crate::common::*;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

async fn output(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("PORTCULLIS_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), c.output()).await.unwrap().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn version_and_help() {
    let (code, out, _) = output(&["--version"], &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
    let (code, out, _) = output(&["--help"], &[]).await;
    assert_eq!(code, 0);
    for word in ["run", "check", "demo", "--config"] {
        assert!(out.contains(word), "{word} missing from --help");
    }
}

#[tokio::test]
async fn every_example_and_deploy_config_passes_offline_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // the mounted secrets the examples name, as a deployment would have them
    let secrets = tempfile::tempdir().unwrap();
    let session =
        write(secrets.path(), "session", "ZGVtby1zZXNzaW9uLXNlY3JldC0zMi1ieXRlcy0hISE=\n");
    let client = write(secrets.path(), "client", "client-secret\n");
    let mut n = 0;
    let dirs = ["config", "deploy/kubernetes/common", "deploy/overlays/example", "deploy/compose"];
    for entry in dirs.iter().flat_map(|d| std::fs::read_dir(root.join(d)).unwrap()) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut env = Vec::new();
            if text.contains("session-secret") {
                env.push(("PORTCULLIS_SESSION_SECRET_FILE", session.as_str()));
            }
            if text.contains("client_secret_file =") {
                env.push(("PORTCULLIS_OIDC_CLIENT_SECRET_FILE", client.as_str()));
            }
            let (code, out, err) =
                output(&["check", "--offline", "--config", path.to_str().unwrap()], &env).await;
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            if text.contains("[session]") {
                assert!(out.contains("browser login client"), "{}: {out}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 10, "expected the example and deploy configs, found {n}");
}

#[tokio::test]
async fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // invalid: 2, naming the key
    let bad = write(dir.path(), "bad.toml", "[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"https://idp.example\"\n[bearer]\naudiences = [\"a\"]\nleewy = \"5s\"\n");
    let (code, _, err) = output(&["check", "--offline", "--config", &bad], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("leewy"), "{err}");
    let (code, _, err) = output(&["check", "--config", &bad], &[]).await;
    assert_eq!(code, 2, "{err}");
    // run refuses it too, before serving anything
    let (code, _, err) = output(&["--config", &bad], &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("leewy"), "{err}");
    // a bad value from the environment names the variable
    let good_offline = write(dir.path(), "ok.toml", "[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"https://idp.example\"\n[bearer]\naudiences = [\"a\"]\n");
    let (code, _, err) = output(
        &["check", "--offline", "--config", &good_offline],
        &[("PORTCULLIS_BEARER_LEEWAY", "later")],
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("bearer.leeway"), "{err}");
    // the config file itself missing
    let (code, _, err) = output(&["check", "--config", "/nonexistent/p.toml"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/p.toml"), "{err}");

    // valid, issuer unreachable: 1 with words a user can act on
    let port = closed_port();
    let unreachable = write(dir.path(), "down.toml", &format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"http://127.0.0.1:{port}\"\n[bearer]\naudiences = [\"a\"]\n"));
    let (code, out, _) = output(&["check", "--config", &unreachable], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("could not reach") && out.contains("hint"), "{out}");
    // offline skips the probe
    let (code, _, _) = output(&["check", "--offline", "--config", &unreachable], &[]).await;
    assert_eq!(code, 0);

    // valid and reachable: 0
    let issuer = DevIssuer::start(&[KeyAlg::Rs256, KeyAlg::EdDsa]).await.unwrap();
    let up = write(dir.path(), "up.toml", &format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"{}\"\n[bearer]\naudiences = [\"a\"]\n", issuer.issuer()));
    let (code, out, _) = output(&["check", "--config", &up], &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 signing key(s)"), "{out}");

    // Redis sessions: the store and its URL (password hidden), and whether Redis answers
    let redis = crate::redis::RedisServer::start_with(&["--requirepass", "hunter2"]).await;
    let login = |port: u16| {
        format!(
            "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"{}\"\nclient_id = \"web\"\n[bearer]\naudiences = [\"a\"]\n\
             [session]\nsecret = \"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ3r4=\"\nstore = \"redis\"\n\
             redis_url = \"redis://:hunter2@127.0.0.1:{port}/0\"\n",
            issuer.issuer()
        )
    };
    let with_redis = write(dir.path(), "redis.toml", &login(redis.port));
    let (code, out, err) = output(&["check", "--config", &with_redis], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let shown = format!("redis://:***@127.0.0.1:{}/0", redis.port);
    assert!(out.contains(&format!("sessions      in Redis at {shown}")), "{out}");
    assert!(out.contains(&format!("ok    sessions: Redis at {shown} answers")), "{out}");
    assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{out}{err}");
    let port = redis.stop().await;
    let (code, out, err) = output(&["check", "--config", &with_redis], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  sessions: Redis at") && out.contains("cannot reach Redis"),
        "{out}"
    );
    assert!(!out.contains("hunter2") && !err.contains("hunter2"), "{out}{err}");
    let _ = port;

    // issuer mismatch in discovery: 1, telling the exact value to use
    let slash = write(dir.path(), "slash.toml", &format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"{}/\"\n[bearer]\naudiences = [\"a\"]\n", issuer.issuer()));
    let (code, out, _) = output(&["check", "--config", &slash], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("set the issuer to exactly \"{}\"", issuer.issuer())), "{out}");
}

#[tokio::test]
async fn run_serves_until_sigterm_then_drains_and_exits_zero() {
    let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\n[upstream]\nurl = \"http://{}\"\n[oidc]\nissuer = \"{}\"\n[bearer]\naudiences = [\"{AUD}\"]\n",
            upstream.addr,
            issuer.issuer()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--config", &cfg])
        // the listen address comes from the environment, overriding the file
        .env("PORTCULLIS_SERVER_LISTEN", "127.0.0.1:0")
        // Kubernetes-style service variables only warn
        .env("PORTCULLIS_SERVICE_HOST", "10.0.0.7")
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let started = read_started(&mut stdout).await;
    let port = started.addr.port();
    wait_ready(&format!("http://{}/readyz", started.admin), "the binary").await;
    let c = client();
    let token = issuer.token_for("alice", AUD);
    let r = c.get(format!("http://127.0.0.1:{port}/api")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last().one("x-forwarded-user").as_deref(), Some("alice"));

    // a request in flight when SIGTERM arrives still completes
    let mut resp =
        c.get(format!("http://127.0.0.1:{port}/stream")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"first\n");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting after SIGTERM");
    upstream.release_stream();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"second\n");
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));

    let mut out = started.lines.join("\n");
    stdout.read_to_string(&mut out).await.unwrap();
    assert!(
        out.contains("PORTCULLIS_SERVICE_HOST"),
        "no warning about the unknown variable: {out}"
    );
    // one JSON access line per request, with the decision, and never the token
    let access: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "portcullis::access")
        .collect();
    assert!(
        access.iter().any(|v| v["status"] == 200
            && v["subject"] == "alice"
            && v["reason"] == "token_verified"),
        "{out}"
    );
    assert!(!out.contains(&token), "the token was logged");
    let sig = token.rsplit('.').next().unwrap();
    assert!(!out.contains(sig), "part of the token was logged");
}

/// Starts `portcullis demo` on free ports with `extra` arguments: the process, the banner it
/// printed, its token and where its proxy listens.
async fn spawn_demo(extra: &[&str]) -> (tokio::process::Child, String, String, String) {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let token = tokio::time::timeout(Duration::from_secs(30), async {
        let mut token = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            if let Some(t) = line.trim().strip_prefix("TOKEN=ey") {
                token = Some(format!("ey{t}"));
            }
            if line.contains("Ctrl-C stops everything") {
                break;
            }
        }
        token.expect("the demo printed no token")
    })
    .await
    .unwrap();
    let proxy = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the banner names the proxy")
        .to_string();
    // keep reading, so the demo never blocks on a full pipe
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, banner, token, proxy)
}

#[tokio::test]
async fn demo_works_without_any_outside_service() {
    let (mut child, banner, token, proxy) = spawn_demo(&[]).await;
    assert!(banner.contains("DEVELOPMENT ONLY"), "{banner}");
    assert!(banner.contains("curl"), "{banner}");
    let port = proxy.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    // the README's transcript shows what the demo prints (at its default address)
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = squeeze(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap(),
    );
    let shown: Vec<String> = banner
        .lines()
        .filter(|l| l.trim_start().starts_with("curl") || l.trim_start().starts_with("proxy "))
        .map(|l| squeeze(&l.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:4180")))
        .collect();
    assert!(shown.len() >= 4, "{banner}");
    for line in shown {
        assert!(readme.contains(&line), "README's demo transcript lacks {line:?}");
    }
    assert_eq!(client().get(format!("{proxy}/hello")).send().await.unwrap().status(), 401);
    // a browser is sent into login; the development issuer's page lists the demo users
    let nav =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = nav.get(format!("{proxy}/admin")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/oauth2/sign_in?rd=%2Fadmin");
    let r = nav.get(format!("{proxy}/oauth2/start?rd=%2Fadmin")).send().await.unwrap();
    let to_issuer = r.headers()["location"].to_str().unwrap().to_string();
    let page = nav.get(&to_issuer).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Sign in as alice") && page.contains("Sign in as bob"), "{page}");
    let body = client()
        .get(format!("{proxy}/hello"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let headers = v["headers"].as_array().unwrap();
    assert!(headers.iter().any(|h| h[0] == "x-forwarded-user" && h[1] == "alice"), "{body}");
    assert!(
        headers.iter().any(|h| h[0] == "x-forwarded-groups" && h[1] == "admins,developers"),
        "{body}"
    );
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_busy_port_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"https://idp.example\"\n[bearer]\naudiences = [\"a\"]\n"
        ),
    );
    let (code, _, err) = output(&["run", "--config", &cfg], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("server.listen") && err.contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn probe_exits_zero_on_a_2xx_in_time_and_one_with_the_reason_otherwise() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no\n") }))
        .route("/moved", get(|| async { axum::response::Redirect::temporary("/healthz") }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late\n"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let probe = |path: String, extra: &'static [&'static str]| async move {
        let mut args = vec!["probe".to_string(), path];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        output(&args, &[("HTTP_PROXY", "http://127.0.0.1:1"), ("http_proxy", "http://127.0.0.1:1")])
            .await
    };
    let (code, _, err) = probe(format!("http://{addr}/healthz"), &[]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = probe(format!("http://{addr}/readyz"), &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("503"), "{err}");
    let (code, _, err) = probe(format!("http://{addr}/moved"), &[]).await;
    assert_eq!(code, 1, "a redirect is no 2xx");
    assert!(err.contains("307"), "{err}");
    let (code, _, err) = probe(format!("http://{addr}/slow"), &["--timeout", "300ms"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("within"), "{err}");
    let (code, _, err) = probe(format!("http://127.0.0.1:{}/healthz", closed_port()), &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("portcullis probe:"), "{err}");
    let (code, _, err) = probe("not a url".into(), &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not a URL"), "{err}");
}

#[tokio::test]
async fn demo_with_redis_keeps_its_sessions_there() {
    let redis = crate::redis::RedisServer::start(None).await;
    let (mut child, _, _, proxy) = spawn_demo(&["--redis", &redis.url()]).await;
    let nav =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // sign in as alice: start, the development issuer's form, the callback
    let r = nav.get(format!("{proxy}/oauth2/start?rd=%2F")).send().await.unwrap();
    let attempt =
        r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let authorize = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push(("user".into(), "alice".into()));
    let issuer = format!("{}://{}", authorize.scheme(), authorize.authority());
    let body: String =
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let r = nav
        .post(format!("{issuer}/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    let r = nav.get(&callback).header("cookie", &attempt).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("_portcullis="))
        .expect("a session cookie");
    let r = nav.get(format!("{proxy}/hello")).header("cookie", &session).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut c = redis.client().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("portcullis:session:*").query_async(&mut c).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _ = child.kill().await;
    redis.stop().await;
}
