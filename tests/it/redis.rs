//! Sessions in Redis: Debian's `redis-server`, started by these tests on loopback (plain and
//! TLS with a CA the test makes), two replicas sharing it, Redis stopped and started again.

use crate::common::*;
use crate::login::{location, Browser, LoginWorld};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
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
        Self::start_full(tls, &[]).await
    }

    /// Starts on a free port with more `redis-server` arguments.
    pub async fn start_with(args: &[&str]) -> RedisServer {
        Self::start_full(None, args).await
    }

    async fn start_full(tls: Option<&Tls>, args: &[&str]) -> RedisServer {
        for _ in 0..5 {
            if let Some(r) = Self::try_start_full(closed_port(), tls, args).await {
                return r;
            }
        }
        panic!("no free port for redis-server after 5 tries");
    }

    /// Starts on `port`; `None` when the port is taken.
    pub async fn try_start_on(port: u16, tls: Option<&Tls>) -> Option<RedisServer> {
        Self::try_start_full(port, tls, &[]).await
    }

    async fn try_start_full(port: u16, tls: Option<&Tls>, args: &[&str]) -> Option<RedisServer> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--logfile", "", "--loglevel", "notice"])
            .args(args);
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

/// The Redis configuration `[session]` lines give.
fn redis_config(
    url: &str,
    extra: &str,
) -> (portcullis::config::LoginConfig, Box<portcullis::config::RedisConfig>) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
         [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"web\"\n\
         [bearer]\naudiences = [\"api\"]\n\
         [session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n{}",
        redis_session(url, extra)
    );
    let login =
        portcullis::config::load_str(&text, std::iter::empty()).unwrap().config.login.unwrap();
    match login.session.store.clone() {
        portcullis::config::StoreConfig::Redis(r) => (login, r),
        portcullis::config::StoreConfig::Cookie => unreachable!(),
    }
}

#[tokio::test]
async fn the_refresh_lock_belongs_to_its_owner_is_renewed_expires_and_guards_the_write() {
    use portcullis::auth::session::redis::{Cas, Redis};
    let redis = RedisServer::start(None).await;
    let (_, cfg) = redis_config(&redis.url(), "");
    let r = Redis::new(&cfg).unwrap();
    let (lock, long) = ("portcullis:session:{t}:lock", Duration::from_secs(60));

    // one owner at a time; another can neither renew nor release it
    assert!(r.lock(lock, "a", Duration::from_secs(2)).await.unwrap());
    assert!(!r.lock(lock, "b", long).await.unwrap());
    assert!(!r.renew(lock, "b", long).await.unwrap());
    assert!(!r.unlock(lock, "b").await.unwrap());
    // its owner renews it: the lease starts again, longer than the first
    assert!(r.renew(lock, "a", long).await.unwrap());
    let mut c = redis.client().await;
    let left: i64 = redis::cmd("PTTL").arg(lock).query_async(&mut c).await.unwrap();
    assert!(left > 10_000, "lease after renewal: {left} ms");
    assert!(r.unlock(lock, "a").await.unwrap());
    // a lease that is not renewed lapses, and the next one may take the lock
    assert!(r.lock(lock, "a", Duration::from_millis(100)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!r.renew(lock, "a", long).await.unwrap(), "a lapsed lock was renewed");
    assert!(r.lock(lock, "b", long).await.unwrap());

    // compare-and-set: written only over the refresh token that was used; the lock released
    // only for its owner
    let key = "portcullis:session:{t}";
    let old = [1u8; 16];
    let mut value = old.to_vec();
    value.extend_from_slice(b"first");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(&value)
        .arg("EX")
        .arg(600)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut newer = [2u8; 16].to_vec();
    newer.extend_from_slice(b"second");
    assert_eq!(r.compare_and_set(key, lock, &old, &newer, "a").await.unwrap(), Cas::Written);
    let held: Option<String> = redis::cmd("GET").arg(lock).query_async(&mut c).await.unwrap();
    assert_eq!(held.as_deref(), Some("b"), "another owner's lock was released");
    let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut c).await.unwrap();
    assert!(ttl > 500, "the write dropped the session's expiry ({ttl})");
    // a replica holding the old refresh token cannot overwrite the newer session
    let mut stale = old.to_vec();
    stale.extend_from_slice(b"stale");
    assert_eq!(r.compare_and_set(key, lock, &old, &stale, "b").await.unwrap(), Cas::Changed);
    let stored: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap();
    assert_eq!(stored, newer);
    assert!(r.lock(lock, "c", long).await.unwrap(), "the owner's compare-and-set kept its lock");
    // a session ended meanwhile is not written back
    let _: () = redis::cmd("DEL").arg(key).query_async(&mut c).await.unwrap();
    assert_eq!(r.compare_and_set(key, lock, &[2u8; 16], &stale, "c").await.unwrap(), Cas::Gone);
    let gone: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap();
    assert_eq!(gone, None);
    redis.stop().await;
}

/// A provider's refresh grant: slow, counted, rotating the refresh token; refusing a refresh
/// token it already rotated (`invalid_grant`), as a provider with rotation does.
#[derive(Debug, Default)]
struct SlowProvider {
    /// Names the refresh tokens it gives (`<name>-<n>`).
    name: &'static str,
    calls: std::sync::atomic::AtomicUsize,
    delay: Duration,
    /// When set, it answers only once the test adds a permit.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    fail: bool,
}

impl portcullis::auth::session::Refresher for SlowProvider {
    fn refresh(
        &self,
        mut s: portcullis::auth::session::Session,
    ) -> futures_util::future::BoxFuture<'_, Result<portcullis::auth::session::Session, String>>
    {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if let Some(gate) = &self.gate {
                let _ = gate.acquire().await.map(|p| p.forget());
            }
            if self.fail {
                return Err("refresh failed: invalid_grant".into());
            }
            s.refresh_token = Some(format!("{}-{n}", self.name));
            s.at_exp = Some(portcullis::clock::system_now() + 3600);
            Ok(s)
        })
    }
}

/// One replica's sessions over the Redis at `url` (its own connections and refresh slots).
fn replica(url: &str, provider: Arc<SlowProvider>) -> portcullis::auth::session::Sessions {
    use portcullis::auth::session::{redis::*, Jar, Lifetimes, Sessions};
    // renewed every third of a second: a worker stalled for 600 ms still keeps it
    let (login, cfg) = redis_config(url, "refresh_lock_lease = \"1s\"\n");
    let lifetimes = Lifetimes {
        max_lifetime: login.session.max_lifetime,
        idle_timeout: login.session.idle_timeout,
    };
    let clock = portcullis::clock::Clock::default();
    let store = RedisStore::new(
        Arc::new(Jar::new(&login).unwrap()),
        Arc::new(Redis::new(&cfg).unwrap()),
        &cfg,
        lifetimes,
        clock,
        Arc::default(),
    );
    let identity = portcullis::config::load_str(
        "[server]\nlisten = \"127.0.0.1:1\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[oidc]\nissuer = \"https://idp.example.com\"\n[bearer]\naudiences = [\"api\"]\n",
        std::iter::empty(),
    )
    .unwrap()
    .config
    .identity;
    Sessions::new(
        Arc::new(store),
        provider,
        portcullis::identity::IdentityMapper::for_sessions(identity),
        lifetimes,
        clock,
    )
}

/// A session whose access token has expired, stored through `sessions`: the request headers
/// carrying its ticket.
async fn expired_session(sessions: &portcullis::auth::session::Sessions) -> http::HeaderMap {
    let now = portcullis::clock::system_now();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), serde_json::json!("alice"));
    let s = portcullis::auth::session::Session {
        id: portcullis::auth::session::random_token(),
        iss: "https://idp.example.com".into(),
        claims,
        created: now,
        seen: now,
        at_exp: Some(now - 1),
        refresh_token: Some("first".into()),
        id_token: None,
        sid: None,
        access_token: None,
    };
    let set = sessions.open(&s, &http::HeaderMap::new()).await.unwrap();
    let cookie = set[0].to_str().unwrap().split(';').next().unwrap().to_string();
    let mut h = http::HeaderMap::new();
    h.insert(http::header::COOKIE, cookie.parse().unwrap());
    h
}

#[tokio::test]
async fn one_refresh_across_replicas_even_past_the_first_lease_and_a_loser_never_ends_it() {
    use portcullis::auth::session::Refreshed;
    let redis = RedisServer::start(None).await;
    // the provider takes three leases of the lock: it must be renewed, or a second refresh starts
    let provider = Arc::new(SlowProvider {
        name: "rotated",
        delay: Duration::from_millis(3_000),
        ..Default::default()
    });
    let (a, b) = (replica(&redis.url(), provider.clone()), replica(&redis.url(), provider.clone()));
    let headers = expired_session(&a).await;

    // ten requests on each replica at once
    let mut all = Vec::new();
    for i in 0..20 {
        let (s, h) = (if i % 2 == 0 { &a } else { &b }, headers.clone());
        all.push(async move { s.check(&h).await.unwrap() });
    }
    let outcomes = futures_util::future::join_all(all).await;
    let mut here = 0;
    for o in outcomes {
        let c = o.unwrap_or_else(|e| panic!("a request lost its session: {e}"));
        assert_eq!(c.session.refresh_token.as_deref(), Some("rotated-1"));
        assert!(c.set_cookie.is_empty(), "a refresh set a cookie: the ticket stays");
        here += usize::from(c.refreshed == Refreshed::Here);
    }
    assert_eq!(
        provider.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "refreshes at the provider"
    );
    assert_eq!(here, 1);
    // and the next request, on either replica, needs none
    let c = b.check(&headers).await.unwrap().unwrap();
    assert_eq!(c.refreshed, Refreshed::No);
    assert_eq!(c.session.refresh_token.as_deref(), Some("rotated-1"));

    redis.stop().await;
}

#[tokio::test]
async fn a_replica_that_lost_its_lock_neither_overwrites_the_winner_nor_ends_the_session() {
    use portcullis::auth::session::Refreshed;
    let redis = RedisServer::start(None).await;
    let mut c = redis.client().await;
    // the loser's provider either refuses the rotated-out token (invalid_grant) or, without
    // reuse detection, answers it: either way the winner's session stands
    for fail in [true, false] {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let slow = Arc::new(SlowProvider {
            name: "loser",
            gate: Some(gate.clone()),
            fail,
            ..Default::default()
        });
        let fast = Arc::new(SlowProvider { name: "winner", ..Default::default() });
        let loser = Arc::new(replica(&redis.url(), slow.clone()));
        let winner = replica(&redis.url(), fast.clone());
        let headers = expired_session(&winner).await;
        let task = {
            let (loser, h) = (loser.clone(), headers.clone());
            tokio::spawn(async move { loser.check(&h).await.unwrap() })
        };
        // the loser's refresh is at the provider; then its lock is lost (a failover)
        while slow.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let locks: Vec<String> =
            redis::cmd("KEYS").arg("portcullis:session:*:lock").query_async(&mut c).await.unwrap();
        assert_eq!(locks.len(), 1, "{locks:?}");
        let _: () = redis::cmd("DEL").arg(&locks[0]).query_async(&mut c).await.unwrap();
        // another replica refreshes meanwhile and wins
        let won = winner.check(&headers).await.unwrap().unwrap();
        assert_eq!(won.refreshed, Refreshed::Here);
        assert_eq!(won.session.refresh_token.as_deref(), Some("winner-1"));
        // then the loser's provider answers; it re-reads instead of ending the session or
        // writing over the winner's
        gate.add_permits(1);
        let lost = task.await.unwrap().unwrap_or_else(|e| panic!("fail={fail}: {e}"));
        assert_eq!(lost.refreshed, Refreshed::Shared, "fail={fail}");
        assert_eq!(lost.session.refresh_token.as_deref(), Some("winner-1"), "fail={fail}");
        let now = winner.check(&headers).await.unwrap().unwrap();
        assert_eq!(now.session.refresh_token.as_deref(), Some("winner-1"), "fail={fail}");
        assert_eq!(now.refreshed, Refreshed::No);
    }
    // and a refresh that fails with nobody else winning ends the session
    let refusing = Arc::new(SlowProvider { fail: true, ..Default::default() });
    let alone = replica(&redis.url(), refusing.clone());
    let headers = expired_session(&alone).await;
    let e = alone.check(&headers).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    assert_eq!(refusing.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    redis.stop().await;
}

#[tokio::test]
async fn a_real_browser_signs_in_on_one_replica_refreshes_across_both_and_signs_out_on_the_other() {
    const ACCESS_TTL: u64 = 3;
    let chromium = crate::login::chromium();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(None).await;
    let upstream = Upstream::start().await;
    let mut tries = 0;
    let (op, a, b, app_a, app_b) = loop {
        tries += 1;
        assert!(tries <= 5, "no free ports after 5 tries");
        let (op_port, port_a, port_b) = (closed_port(), closed_port(), closed_port());
        let app_a = format!("http://127.0.0.1:{port_a}");
        let op = crate::interop::Op::try_start(
            op_port,
            &dir.path().join("keys.json"),
            false,
            &[
                ("REDIRECT_URI", format!("{app_a}/oauth2/callback")),
                ("POST_LOGOUT_URI", format!("{app_a}/")),
                ("ACCESS_TTL", ACCESS_TTL.to_string()),
            ],
        )
        .await;
        let Ok(op) = op else { continue };
        let config = format!(
            r#"
[upstream]
url = "{upstream}"
[oidc]
issuer = "{issuer}"
client_id = "portcullis-web"
client_secret = "web-secret-not-for-production"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
post_logout_redirect_url = "{app_a}/"
[bearer]
audiences = ["{AUD}"]
[session]
secret = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ3r4="
{session}
"#,
            upstream = upstream.url(),
            issuer = op.issuer,
            session = redis_session(&redis.url(), "refresh_lock_lease = \"1s\"\n"),
        );
        let a = match Binary::try_spawn_on(&config, port_a).await {
            Ok(bin) => bin,
            Err(e) if e.contains("in use") => {
                op.stop().await;
                continue;
            }
            Err(e) => panic!("portcullis A did not start: {e}"),
        };
        match Binary::try_spawn_on(&config, port_b).await {
            Ok(b) => break (op, a, b, app_a, format!("http://127.0.0.1:{port_b}")),
            Err(e) if e.contains("in use") => {
                a.stop().await;
                op.stop().await;
            }
            Err(e) => panic!("portcullis B did not start: {e}"),
        }
    };
    a.ready().await;
    b.ready().await;

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg("replicas.mjs")
            .current_dir(crate::interop::interop_dir())
            .env("A", &app_a)
            .env("B", &app_b)
            .env("OP", &op.issuer)
            .env("ACCESS_TTL", ACCESS_TTL.to_string())
            // three of the lock's leases: without renewal a second refresh would start
            .env("SLOW_MS", "3000")
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run finished within 2 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no result from the browser:\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && seen.get("error").is_none(),
        "browser run failed: {seen:#}\n{stderr}"
    );

    // the cookie is a small ticket, HttpOnly
    let cookies = seen["cookies"].as_array().unwrap();
    let ticket = cookies.iter().find(|c| c["name"] == "_portcullis").expect("a session cookie");
    assert!(ticket["size"].as_u64().unwrap() < 200, "{ticket}");
    assert_eq!(ticket["httpOnly"], true);
    // B knew the session A opened
    assert_eq!(seen["through_b"], 200, "{seen:#}");
    assert_eq!(seen["through_b_url"], format!("{app_b}/through/b"));
    let on_b = upstream.seen().into_iter().find(|s| s.path_and_query == "/through/b").unwrap();
    assert_eq!(on_b.one("x-forwarded-user").as_deref(), Some("alice"));
    // the burst over both replicas: all pass, one refresh reached the provider
    let burst = seen["burst"].as_array().unwrap();
    assert_eq!(burst.len(), 30);
    assert!(burst.iter().all(|s| s == 200), "{burst:?}");
    assert_eq!(seen["refreshes"], 1, "refreshes that reached the provider");
    let dash =
        upstream.seen().into_iter().filter(|s| s.path_and_query.starts_with("/api/dash/")).count();
    assert_eq!(dash, 30);
    // signed out through B: no cookie of ours left, A asks for a sign-in again
    assert!(
        seen["cookies_after"].as_array().unwrap().iter().all(|c| c != "_portcullis"),
        "{seen:#}"
    );
    assert_eq!(seen["a_after_sign_out"], "/oauth2/sign_in", "{seen:#}");
    // a copy of the cookie taken before the sign-out opens nothing on A
    let copied = seen["cookie"].as_str().expect("the cookie before sign-out");
    let hits = upstream.hits();
    let mut copy = Browser::new();
    copy.jar.insert("_portcullis".into(), copied.into());
    let p = visit(&mut copy, &format!("{app_a}/copied"), true).await;
    assert_eq!(p.status, 302, "{}", p.body);
    assert!(location(&p).starts_with("/oauth2/sign_in"));
    assert_eq!(visit(&mut copy, &format!("{app_a}/api/copied"), false).await.status, 401);
    assert_eq!(upstream.hits(), hits, "the copied cookie reached the app");
    let mut c = redis.client().await;
    assert!(session_keys(&mut c).await.is_empty(), "a session is left in Redis");

    a.stop().await;
    b.stop().await;
    op.stop().await;
    redis.stop().await;
}

/// The ACL line of the Compose example (its `printf` format, with the password's SHA-256).
fn acl_from_the_compose_example(password: &str) -> String {
    let compose = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose/compose.redis.yaml"),
    )
    .unwrap();
    let line = compose.lines().find(|l| l.contains("printf 'user default off")).unwrap();
    let format = line.split('\'').nth(1).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, password.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format.replace("\\n", "\n").replace("%s", &hex)
}

#[tokio::test]
async fn as_the_acl_user_of_the_docs_with_a_password_file_and_a_wrong_password_is_a_503() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("users.acl");
    std::fs::write(&acl, acl_from_the_compose_example("s3cret-pw")).unwrap();
    let redis = RedisServer::start_with(&["--aclfile", acl.to_str().unwrap()]).await;
    let url = format!("redis://portcullis@127.0.0.1:{}/0", redis.port);
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let extra = format!("redis_password_file = {:?}\n", pw.display().to_string());
    let w = LoginWorld::with_session(&redis_session(&url, &extra)).await;
    let mut browser = Browser::new();
    assert_eq!(w.login(&mut browser, "/", "alice").await.status, 302);
    assert_eq!(visit(&mut browser, &w.url("/x"), false).await.status, 200);
    // refresh scripts run as this user too
    let (_, cfg) = redis_config(&url, &extra);
    let r = portcullis::auth::session::redis::Redis::new(&cfg).unwrap();
    assert!(r.lock("portcullis:session:{acl}:lock", "me", Duration::from_secs(5)).await.unwrap());
    assert!(r.renew("portcullis:session:{acl}:lock", "me", Duration::from_secs(5)).await.unwrap());
    assert!(r.unlock("portcullis:session:{acl}:lock", "me").await.unwrap());
    // keys outside the prefix are refused to it
    assert!(r.get("other:key").await.is_err());

    // the wrong password: sign-in is a 503, and the log never holds the password
    std::fs::write(&pw, "wrong-pw-123").unwrap();
    // (the password file is read at start-up: a replica started now reads the wrong one)
    let cfg = portcullis::config::load_str(&w.config, std::iter::empty()).unwrap().config;
    let wrong = portcullis::server::Server::start(cfg).await.unwrap();
    let mut copy = Browser::new();
    copy.jar = browser.jar.clone();
    let p = visit(&mut copy, &format!("http://{}/x", wrong.addr), false).await;
    assert_eq!(p.status, 503, "{}", p.body);
    assert!(p.body.contains("Sessions are unavailable"), "{}", p.body);
    assert!(!p.body.contains("wrong-pw") && !p.body.contains("s3cret"), "{}", p.body);
    wrong.shutdown().await;
    redis.stop().await;
}
