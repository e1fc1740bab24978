//! Sessions in Redis: Debian's `redis-server`, started by these tests on loopback (plain and
//! TLS with a CA the test makes), two replicas sharing it, Redis stopped and started again.

use crate::common::*;
use crate::login::{location, Browser, LoginWorld};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// TLS files for `redis-server --tls-port`: a CA and a server certificate for 127.0.0.1.
pub struct Tls {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    /// A new CA (EC P-256, a day long) and a server certificate it signed, made with openssl.
    pub fn make(dir: &Path) -> Tls {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (Debian's openssl package)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=portcullis test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ]);
        Tls { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") }
    }
}

/// A `redis-server` on loopback, without persistence: stopping it loses every session.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    tls: bool,
}

impl RedisServer {
    /// Starts on a free port (another one if it was taken meanwhile).
    pub async fn start(tls: Option<&Tls>) -> RedisServer {
        for _ in 0..5 {
            if let Some(r) = Self::try_start_on(closed_port(), tls).await {
                return r;
            }
        }
        panic!("no free port for redis-server after 5 tries");
    }

    /// Starts on `port`; `None` when the port is taken.
    pub async fn try_start_on(port: u16, tls: Option<&Tls>) -> Option<RedisServer> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--logfile", "", "--loglevel", "notice"]);
        match tls {
            None => cmd.args(["--port", &port.to_string()]),
            Some(t) => cmd.args(["--port", "0", "--tls-port", &port.to_string()]).args([
                "--tls-cert-file",
                t.cert.to_str().unwrap(),
                "--tls-key-file",
                t.key.to_str().unwrap(),
                "--tls-ca-cert-file",
                t.ca.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
            ]),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (`apt-get install redis-server`; the README's test command does)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
                if line.contains("Address already in use") {
                    return false;
                }
            }
            false
        })
        .await
        .expect("redis-server started within 20 s");
        if !ready {
            let _ = child.kill().await;
            return None;
        }
        // keep reading its output, so it never blocks on a full pipe
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(RedisServer { child, port, tls: tls.is_some() })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// A client of our own, to look at what is stored.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Stops it (by its process id) and waits until it is gone.
    pub async fn stop(mut self) -> u16 {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        self.port
    }
}

/// `[session]` lines for the Redis store at `url`.
fn redis_session(url: &str, extra: &str) -> String {
    format!("store = \"redis\"\nredis_url = \"{url}\"\n{extra}")
}

/// A request with the browser's cookies, as the app's own page (fetch) or a navigation.
async fn visit(b: &mut Browser, url: &str, navigate: bool) -> crate::login::Page {
    b.fetch_site = Some("same-origin");
    b.request("GET", url, navigate, None).await
}

/// The session keys Redis holds.
async fn session_keys(r: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg("portcullis:session:*").query_async(r).await.unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_session_in_redis_is_used_on_every_replica_and_ended_on_all_by_one_sign_out() {
    let redis = RedisServer::start(None).await;
    let w = LoginWorld::with_session(&redis_session(&redis.url(), "idle_timeout = \"10m\"")).await;
    let b_replica = w.replica().await;
    let mut browser = Browser::new();

    // sign in through A: the cookie holds a ticket only, the session is in Redis
    assert_eq!(w.login(&mut browser, "/", "alice").await.status, 302);
    let ticket = browser.jar["_portcullis"].clone();
    assert!(ticket.len() < 200, "the cookie holds more than a ticket: {} bytes", ticket.len());
    let mut r = redis.client().await;
    let keys = session_keys(&mut r).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let stored: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query_async(&mut r).await.unwrap();
    let text = String::from_utf8_lossy(&stored);
    for clear in ["alice", "refresh", "sub", "example"] {
        assert!(!text.contains(clear), "{clear:?} is readable in Redis");
    }
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query_async(&mut r).await.unwrap();
    assert!((500..=600).contains(&ttl), "expiry {ttl}s, not the idle timeout");

    // used through B: the app sees alice, without a cookie being set
    let p = visit(&mut browser, &format!("{}/x", b_replica.url), false).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("alice"));
    assert!(p.headers.get("set-cookie").is_none());
    let copied = browser.cookie_header();

    // signed out through B: gone from Redis, and a copy of the cookie is dead on A and B
    let p =
        browser.request("POST", &format!("{}/oauth2/sign_out", b_replica.url), false, None).await;
    assert!((200..400).contains(&p.status), "sign-out: {} {}", p.status, p.body);
    assert!(session_keys(&mut r).await.is_empty());
    let hits = w.upstream.hits();
    for base in [&w.proxy.url, &b_replica.url] {
        let mut copy = Browser::new();
        copy.jar.insert("_portcullis".into(), copied.trim_start_matches("_portcullis=").into());
        let p = visit(&mut copy, &format!("{base}/x"), true).await;
        assert_eq!(p.status, 302, "{base}: {}", p.body);
        assert!(location(&p).starts_with("/oauth2/sign_in"), "{}", location(&p));
        let p = visit(&mut copy, &format!("{base}/api/x"), false).await;
        assert_eq!(p.status, 401, "{base}: {}", p.body);
    }
    assert_eq!(w.upstream.hits(), hits, "a copied cookie reached the app after sign-out");
    b_replica.shutdown().await;
    redis.stop().await;
}

#[tokio::test]
async fn redis_down_is_a_503_for_sessions_only_and_sessions_come_back_with_it() {
    let redis = RedisServer::start(None).await;
    let w =
        LoginWorld::with_session(&redis_session(&redis.url(), "redis_timeout = \"300ms\"")).await;
    let mut browser = Browser::new();
    assert_eq!(w.login(&mut browser, "/", "alice").await.status, 302);
    assert_eq!(visit(&mut browser, &w.url("/x"), false).await.status, 200);
    let token = w.issuer.token_for("bob", AUD);

    let port = redis.stop().await;
    let hits = w.upstream.hits();
    // an API client of the session: JSON, Retry-After; a browser: a page; nothing reaches the app
    let p = visit(&mut browser, &w.url("/api/x"), false).await;
    assert_eq!(p.status, 503, "{}", p.body);
    assert!(p.headers.get("retry-after").is_some());
    let v: serde_json::Value = serde_json::from_str(&p.body).expect("a JSON answer");
    assert_eq!(v["error"], "unavailable", "{v}");
    let p = visit(&mut browser, &w.url("/x"), true).await;
    assert_eq!(p.status, 503);
    assert!(p.body.contains("<html") || p.body.contains("<!doctype"), "{}", p.body);
    assert!(p.headers.get("retry-after").is_some());
    // the cookie was not cleared: the session may still be there when Redis is back
    assert!(p.headers.get("set-cookie").is_none());
    assert_eq!(w.upstream.hits(), hits, "a session request passed without Redis");
    // bearer tokens are not affected, and the replica stays ready
    assert_eq!(status_of(&w.url("/x"), Some(&token)).await, 200);
    assert_eq!(status_of(&format!("{}/readyz", w.proxy.admin), None).await, 200);
    // a sign-in cannot store its session: a clear error, not a broken cookie
    let mut other = Browser::new();
    let p = w.login(&mut other, "/", "bob").await;
    assert!(p.status >= 500, "{} {}", p.status, p.body);
    assert!(!other.jar.contains_key("_portcullis"));

    // Redis is back, empty, on the same port: the lost session signs in again, new ones work
    let redis = RedisServer::try_start_on(port, None).await.expect("the port was taken meanwhile");
    let mut again = 0;
    let p = loop {
        let p = visit(&mut browser, &w.url("/x"), true).await;
        if p.status != 503 || again == 50 {
            break p;
        }
        again += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(p.status, 302, "{}", p.body);
    assert!(location(&p).starts_with("/oauth2/sign_in"), "{}", location(&p));
    let mut fresh = Browser::new();
    assert_eq!(w.login(&mut fresh, "/", "bob").await.status, 302);
    assert_eq!(visit(&mut fresh, &w.url("/x"), false).await.status, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("bob"));
    redis.stop().await;
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_nothing_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::make(dir.path());
    let redis = RedisServer::start(Some(&tls)).await;
    let ca = tls.ca.display().to_string();
    let w = LoginWorld::with_session(&redis_session(
        &redis.url(),
        &format!("redis_ca_file = {ca:?}\n"),
    ))
    .await;
    let mut browser = Browser::new();
    assert_eq!(w.login(&mut browser, "/", "alice").await.status, 302);
    assert_eq!(visit(&mut browser, &w.url("/x"), false).await.status, 200);
    assert_eq!(w.upstream.last().one("x-forwarded-user").as_deref(), Some("alice"));

    // the same server without its CA: the certificate is not trusted, so no session is stored
    let untrusting = LoginWorld::with_session(&redis_session(&redis.url(), "")).await;
    let mut b = Browser::new();
    let p = untrusting.login(&mut b, "/", "alice").await;
    assert!(p.status >= 500, "{} {}", p.status, p.body);
    assert!(!b.jar.contains_key("_portcullis"));
    redis.stop().await;
}
