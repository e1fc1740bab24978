//! The deployment files agree with the binary: probes point at endpoints that exist, the native
//! sidecar's startup probe is /healthz (a /readyz that waits for the app would deadlock the pod),
//! and the app is only reachable through portcullis.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The `path:` of the probe named `probe` in a manifest.
fn probe_path(manifest: &str, probe: &str) -> String {
    let start = manifest.find(&format!("{probe}:")).unwrap_or_else(|| panic!("no {probe}"));
    let rest = &manifest[start..];
    let at = rest.find("path:").unwrap_or_else(|| panic!("{probe} has no path"));
    rest[at + 5..].split([',', '}', '\n']).next().unwrap().trim().to_string()
}

#[test]
fn kubernetes_probes_point_at_the_admin_endpoints() {
    let m = read("deploy/kubernetes/deployment.yaml");
    assert_eq!(probe_path(&m, "startupProbe"), "/healthz");
    assert_eq!(probe_path(&m, "livenessProbe"), "/healthz");
    assert_eq!(probe_path(&m, "readinessProbe"), "/readyz");
    assert!(m.contains("restartPolicy: Always"), "portcullis should be a native sidecar");
    // the ports the manifest names are the ones the mounted config listens on
    let cfg = portcullis::config::load_str(
        &read("deploy/kubernetes/portcullis.toml"),
        std::iter::empty(),
    )
    .unwrap()
    .config;
    assert!(m.contains(&format!("containerPort: {}", cfg.server.listen.port())));
    assert!(m.contains(&format!("containerPort: {}", cfg.server.admin_listen.port())));
    assert!(
        cfg.upstream.as_ref().unwrap().url.host_str() == Some("127.0.0.1"),
        "the app must bind loopback"
    );
}

#[test]
fn compose_app_shares_the_proxy_network_namespace() {
    let c = read("deploy/compose/compose.yaml");
    assert!(c.contains("network_mode: \"service:portcullis\""));
    // only portcullis publishes a port
    assert_eq!(c.matches("ports:").count(), 1);
    let cfg =
        portcullis::config::load_str(&read("deploy/compose/portcullis.toml"), std::iter::empty())
            .unwrap()
            .config;
    assert!(c.contains(&format!("\"{0}:{0}\"", cfg.server.listen.port())));
    assert!(cfg.upstream.as_ref().unwrap().url.host_str() == Some("127.0.0.1"));
}
