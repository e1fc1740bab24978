//! Interop with a real OpenID Provider: the npm package `oidc-provider` (8.x), started on
//! loopback by this test (`npm ci --prefix tests/interop` installs it).

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Op {
    child: Child,
    pub issuer: String,
    kid: String,
}

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The provider's port was taken between choosing it and listening on it.
#[derive(Debug)]
pub struct PortTaken;

impl Op {
    /// Starts the provider on a free port, another one if that was taken meanwhile.
    async fn start(keys_file: &Path) -> Op {
        for _ in 0..5 {
            if let Ok(op) = Self::try_start(closed_port(), keys_file, false, &[]).await {
                return op;
            }
        }
        panic!("no free port for oidc-provider after 5 tries");
    }

    /// Starts the provider on `port` with extra environment (the browser-login client's
    /// settings), or says the port is taken.
    pub async fn try_start(
        port: u16,
        keys_file: &Path,
        rotate: bool,
        env: &[(&str, String)],
    ) -> Result<Op, PortTaken> {
        let dir = interop_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/interop` (the README's test command does)"
        );
        let mut child = Command::new("node")
            .arg("op.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("KEYS_FILE", keys_file)
            .env("AUDIENCE", AUD)
            .env("ROTATE", if rotate { "1" } else { "0" })
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run node ({e}): `apt-get install nodejs npm` and `npm ci --prefix \
                     tests/interop` (the README's test command, bash .ci/run, does both)"
                )
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("READY ") {
                    return Ok(rest.to_string());
                }
                if line == "EADDRINUSE" {
                    return Err(PortTaken);
                }
            }
            panic!("oidc-provider exited before it was ready");
        })
        .await
        .expect("oidc-provider did not start within 30s")?;
        let (issuer, kid) = ready.split_once(' ').unwrap();
        Ok(Op { child, issuer: issuer.to_string(), kid: kid.to_string() })
    }

    /// A JWT access token from the client credentials grant for `resource`.
    async fn token(&self, resource: &str) -> String {
        let body = format!(
            "grant_type=client_credentials&client_id=interop-service&client_secret=interop-secret-not-for-production&scope=api&resource={}",
            resource.replace(':', "%3A").replace('/', "%2F")
        );
        let r = client()
            .post(format!("{}/token", self.issuer))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        let token = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(token.split('.').count(), 3, "expected a JWT access token, got an opaque one");
        token
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

async fn status(proxy: &Proxy, token: &str) -> u16 {
    status_of(&format!("{}/api/whoami", proxy.url), Some(token)).await
}

#[tokio::test]
async fn oidc_provider_tokens_rotation_and_outage() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let op = Op::start(&keys).await;
    let port: u16 = op.issuer.rsplit(':').next().unwrap().parse().unwrap();
    let first_kid = op.kid.clone();
    let upstream = Upstream::start().await;
    let proxy = start_proxy(&op.issuer, &upstream.url(), Opts::default(), true).await;

    // discovery + JWKS from the real provider; its JWT access token is accepted
    let t1 = op.token(AUD).await;
    assert_eq!(status(&proxy, &t1).await, 200);
    let seen = upstream.last();
    assert_eq!(seen.one("x-forwarded-user").as_deref(), Some("interop-service"));
    assert_eq!(seen.one("x-forwarded-email").as_deref(), Some("robot@example.com"));
    assert_eq!(seen.one("x-forwarded-groups").as_deref(), Some("robots,readers"));
    assert_eq!(seen.one("authorization"), None);

    // a token for another resource server carries another audience
    let other = op.token("api://another-service").await;
    let hits = upstream.hits();
    assert_eq!(status(&proxy, &other).await, 401);
    assert_eq!(upstream.hits(), hits);

    // restart on the same port with a new key first in the JWKS: the proxy follows
    op.stop().await;
    // (its port was just ours: taken meanwhile, the test says so instead of hanging)
    let op = Op::try_start(port, &keys, true, &[]).await.expect("the provider's port was taken");
    assert_ne!(op.kid, first_kid);
    let t2 = op.token(AUD).await;
    let s = eventually_status(&format!("{}/api/whoami", proxy.url), Some(&t2), 200).await;
    assert_eq!(s, 200, "token signed by the rotated key was not accepted");
    // the old key is still published, so old tokens still work
    assert_eq!(status(&proxy, &t1).await, 200);

    // the provider stops: known keys keep working, even for a token not seen before
    let unseen = op.token(AUD).await;
    op.stop().await;
    assert_eq!(status(&proxy, &unseen).await, 200);
    assert_eq!(status(&proxy, &t2).await, 200);
    proxy.shutdown().await;
}
