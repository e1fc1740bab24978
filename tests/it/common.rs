//! Shared fixtures: a recording upstream, the proxy in-process, raw HTTP, a token issuer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use portcullis::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

pub const AUD: &str = "api://portcullis-test";

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    /// The headers as bytes, exactly as they arrived.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    pub peer: SocketAddr,
    pub body_len: usize,
    /// Whether the request body arrived whole (a body cut off midway did not).
    pub body_complete: bool,
}

impl Seen {
    /// Every value of `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// Every value of `name` as bytes.
    pub fn all_raw(&self, name: &str) -> Vec<Vec<u8>> {
        self.raw_headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} arrived {} times: {all:?}", all.len());
        all.into_iter().next()
    }
}

#[derive(Clone, Default)]
struct UpstreamState {
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
}

/// A real HTTP app on loopback that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    state: UpstreamState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn record(
    State(s): State<UpstreamState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let read = axum::body::to_bytes(body, 64 * 1024 * 1024).await;
    let body_complete = read.is_ok();
    let bytes = read.unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        raw_headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        peer,
        body_len: bytes.len(),
        body_complete,
    };
    s.seen.lock().unwrap().push(seen);
    match path.as_str() {
        "/slow-head" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late".into_response()
        }
        "/stream" => {
            let release = s.release.clone();
            let stream = async_stream(release);
            Response::new(Body::from_stream(stream))
        }
        // the app's own cookies, on a response a shared cache may keep
        "/app-cookies" => Response::builder()
            .header("set-cookie", "app_session=rotated; Path=/; HttpOnly")
            .header("set-cookie", "csrf=t0k3n; Path=/")
            .header("cache-control", "public, max-age=600")
            .body(Body::from("cookies"))
            .unwrap(),
        "/hop" => Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-upstream-public", "yes")
            .body(Body::from("hop"))
            .unwrap(),
        _ => format!("upstream ok {}", bytes.len()).into_response(),
    }
}

/// Sends "first\n", waits until the test releases it, then "second\n".
fn async_stream(
    release: Arc<Notify>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(0u8, move |state| {
        let release = release.clone();
        async move {
            match state {
                0 => Some((Ok(Bytes::from_static(b"first\n")), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(Bytes::from_static(b"second\n")), 2))
                }
                _ => None,
            }
        }
    })
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = UpstreamState::default();
        let app = Router::new().fallback(any(record)).with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self { addr, state, _stop: tx }
    }

    /// `http://127.0.0.1:PORT`, for `upstream.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("the upstream received nothing")
    }

    /// Lets a `/stream` response send its second chunk.
    pub fn release_stream(&self) {
        self.state.release.notify_one();
    }
}

/// Extra TOML lines per section.
#[derive(Default, Clone)]
pub struct Opts {
    pub server: &'static str,
    pub upstream: String,
    pub bearer: String,
    pub identity: &'static str,
    /// `bearer.jwks_min_refetch_interval`; 100ms when empty.
    pub min_refetch: &'static str,
    /// Wait only for the first issuer's keys (the others are meant not to load).
    pub first_issuer_only: bool,
    /// Whole sections appended at the end (e.g. `[authorization]`).
    pub extra: String,
    /// Extra `[oidc]` lines (browser login).
    pub oidc: String,
}

pub struct Proxy {
    pub server: Option<Server>,
    pub url: String,
    pub admin: String,
    pub addr: SocketAddr,
}

impl Proxy {
    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

pub fn config_text(issuer: &str, upstream: &str, o: &Opts) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_timeout = "5s"
{workers}
{server}

[upstream]
url = "{upstream}"
connect_timeout = "1s"
response_timeout = "2s"
{up}

[oidc]
issuer = "{issuer}"
{oidc}

[bearer]
audiences = ["{AUD}"]
jwks_min_refetch_interval = "{min_refetch}"
{public_routes}
{bearer}

[identity]
{identity}

{extra}
"#,
        server = o.server,
        // the same on every machine, unless the test sets its own
        workers = if o.server.contains("workers") { "" } else { "workers = 2" },
        up = o.upstream,
        bearer = o.bearer,
        // the default public routes, unless the test sets its own
        public_routes = if o.bearer.contains("public_routes") {
            ""
        } else {
            r#"public_routes = ["GET=^/healthz$", "^/public/"]"#
        },
        identity = o.identity,
        extra = o.extra,
        oidc = o.oidc,
        min_refetch = if o.min_refetch.is_empty() { "100ms" } else { o.min_refetch },
    )
}

/// Starts the proxy in-process and waits until its keys are loaded (if `wait_keys`).
pub async fn start_proxy(issuer: &str, upstream: &str, o: Opts, wait_keys: bool) -> Proxy {
    let text = config_text(issuer, upstream, &o);
    let first_only = o.first_issuer_only;
    let cfg = portcullis::config::load_str(&text, std::iter::empty()).unwrap().config;
    let server = Server::start(cfg).await.unwrap();
    if wait_keys {
        let loaded = || {
            if first_only {
                server.keys.issuers[0].is_loaded()
            } else {
                server.keys.all_loaded()
            }
        };
        for _ in 0..200 {
            if loaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(loaded(), "keys did not load");
    }
    Proxy {
        url: format!("http://{}", server.addr),
        admin: format!("http://{}", server.admin_addr),
        addr: server.addr,
        server: Some(server),
    }
}

/// The usual setup: a dev issuer with an RSA key, a recording upstream, the proxy.
pub struct World {
    pub issuer: DevIssuer,
    pub upstream: Upstream,
    pub proxy: Proxy,
}

impl World {
    pub async fn new() -> Self {
        Self::with(Opts::default()).await
    }

    pub async fn with(o: Opts) -> Self {
        let issuer = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
        let upstream = Upstream::start().await;
        let proxy = start_proxy(&issuer.issuer(), &upstream.url(), o, true).await;
        Self { issuer, upstream, proxy }
    }

    pub fn token(&self, user: &str) -> String {
        self.issuer.token_for(user, AUD)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.proxy.url, path)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` as bytes (no client-side normalisation of paths or headers) and reads the
/// whole response; the request should say `Connection: close`.
pub async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let (response, closed) = raw_exchange(addr, request, b"").await;
    assert!(closed, "the connection stayed open: {response:?}");
    response
}

/// A raw request head and body on its own connection; returns the response and whether the
/// proxy closed the connection after it (or left it open, silent, for 5 s).
pub async fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (RawResponse, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (RawResponse { status, head: head.to_string(), body: body.to_string() }, closed)
}

/// A GET with extra header lines, sent raw.
pub async fn raw_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, &req).await
}

/// A sender on a fresh h2c (prior knowledge) connection to `addr`.
pub async fn h2c_sender<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// A sender on one fresh HTTP/1.1 keep-alive connection to `addr`: every request it sends
/// goes over that same connection.
pub async fn http1_sender(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// A loopback port nothing listens on (bound, then released): for an app or issuer that is
/// down. Servers the tests start listen on port 0 instead, or retry when their port is taken.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `url` (at most 200 times, 25 ms apart) until it answers 200; panics with `what`
/// otherwise.
pub async fn wait_ready(url: &str, what: &str) {
    for _ in 0..200 {
        if let Ok(r) = client().get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not become ready ({url})");
}

/// What a `portcullis run` writes before it serves (JSON logs): the addresses of its start-up
/// line (it was told to listen on port 0), and every line up to that one.
pub struct Started {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub lines: Vec<String>,
}

/// Reads `out` up to the start-up line (within 30 s).
pub async fn read_started<R>(out: &mut R) -> Started
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    try_read_started(out)
        .await
        .unwrap_or_else(|lines| panic!("portcullis exited before its start-up line: {lines:?}"))
}

/// Reads `out` up to the start-up line (within 30 s), or returns the lines it wrote before it
/// exited.
pub async fn try_read_started<R>(out: &mut R) -> Result<Started, Vec<String>>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let mut lines = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).await.unwrap() == 0 {
                return None;
            }
            let v: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            lines.push(line.trim_end().to_string());
            if let Some(v) = v.filter(|v| v["message"] == "portcullis started") {
                let addr = |k: &str| v[k].as_str().unwrap().parse::<SocketAddr>().unwrap();
                return Some((addr("listen"), addr("admin")));
            }
        }
    })
    .await
    .expect("no start-up line within 30 s");
    match found {
        Some((addr, admin)) => Ok(Started { addr, admin, lines }),
        None => Err(lines),
    }
}

pub async fn status_of(url: &str, token: Option<&str>) -> u16 {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Polls (at most 40 times, 50 ms apart) until a GET answers `want`; returns the last status.
pub async fn eventually_status(url: &str, token: Option<&str>, want: u16) -> u16 {
    let mut status = 0;
    for _ in 0..40 {
        status = status_of(url, token).await;
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

/// The release-shaped binary (`target/.../portcullis`) running a config, with its stdout kept.
pub struct Binary {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: tokio::process::Child,
    out: tokio::io::BufReader<tokio::process::ChildStdout>,
    /// The lines up to and including the start-up line.
    early: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Binary {
    /// Starts `portcullis run` with `config` and JSON logs, listening on port 0 (environment
    /// overrides replace the file's listeners); waits until `/readyz` is 200.
    pub async fn start(config: &str) -> Binary {
        let bin = Self::spawn(config).await;
        bin.ready().await;
        bin
    }

    /// Starts it without waiting for readiness: returns once it listens (its start-up line).
    pub async fn spawn(config: &str) -> Binary {
        Self::try_spawn_on(config, 0).await.unwrap_or_else(|e| panic!("portcullis failed: {e}"))
    }

    /// Starts it listening on `port` (for a config that names its own address): returns once it
    /// listens, or what it said on stderr when it could not start (a port taken meanwhile).
    pub async fn try_spawn_on(config: &str, port: u16) -> Result<Binary, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("--config")
            .arg(&path)
            .env_remove("PORTCULLIS_CONFIG")
            .env("PORTCULLIS_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("PORTCULLIS_SERVER_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_LOG_FORMAT", "json")
            // the same on every machine, unless the config sets its own
            .envs((!config.contains("workers")).then_some(("PORTCULLIS_SERVER_WORKERS", "2")))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let started = match try_read_started(&mut out).await {
            Ok(s) => s,
            Err(_) => {
                let mut err = String::new();
                let mut stderr = child.stderr.take().expect("stderr");
                let _ = stderr.read_to_string(&mut err).await;
                let _ = child.wait().await;
                return Err(err);
            }
        };
        // stderr is not read further: it must not fill up and stall the process
        drop(child.stderr.take());
        Ok(Binary {
            addr: started.addr,
            admin: started.admin,
            child,
            out,
            early: started.lines,
            _dir: dir,
        })
    }

    /// Sends SIGTERM (the process is killed when dropped, if still running).
    pub fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }

    /// Waits until `/readyz` is 200.
    pub async fn ready(&self) {
        wait_ready(&format!("http://{}/readyz", self.admin), "the binary").await;
    }

    /// The process's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The next JSON log line the running binary writes after its start-up line, within
    /// `within`.
    pub async fn next_log_line(&mut self, within: Duration) -> Option<serde_json::Value> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            match tokio::time::timeout(within, self.out.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => {
                    if let Ok(v) = serde_json::from_str(&line) {
                        return Some(v);
                    }
                }
                _ => return None,
            }
        }
    }

    /// SIGTERM while nothing reads stdout, read it only `stall` later, and return every line
    /// written since the start (all of them must arrive: the process waits for its reader).
    pub async fn stop_with_stalled_reader(mut self, stall: Duration) -> Vec<String> {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        tokio::time::sleep(stall).await;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(60), self.out.read_to_string(&mut out))
            .await
            .expect("stdout closed within 60 s")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await.unwrap().unwrap();
        self.early.into_iter().chain(out.lines().map(str::to_string)).collect()
    }

    /// SIGTERM, wait (at most 10 s), and return the JSON log lines not read yet (the start-up
    /// lines included).
    pub async fn stop(mut self) -> Vec<serde_json::Value> {
        let pid = self.child.id().unwrap().to_string();
        // Read while it shuts down: a log larger than the pipe holds would otherwise stall its
        // writer until the shutdown deadline, and lines would be lost.
        let mut reader = self.out;
        let read = tokio::spawn(async move {
            let mut out = String::new();
            reader.read_to_string(&mut out).await.map(|_| out)
        });
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.unwrap().unwrap();
        let out = read.await.unwrap().unwrap();
        let early = self.early.iter().map(String::as_str);
        early.chain(out.lines()).filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

pub fn access_lines(logs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    logs.iter().filter(|v| v["target"] == "portcullis::access").collect()
}

/// GET `path` with `token` (if any); the status and whether the app was reached.
pub async fn get_with(w: &World, path: &str, token: Option<&str>) -> (u16, bool) {
    let before = w.upstream.hits();
    let status = status_of(&w.url(path), token).await;
    (status, w.upstream.hits() > before)
}

pub fn minted(w: &World, patch: serde_json::Value) -> String {
    let mut c = w.issuer.claims_for("alice", AUD);
    for (k, v) in patch.as_object().unwrap() {
        c[k] = v.clone();
    }
    w.issuer.mint(&c)
}

/// A token with this world's issuer and audience, signed by an attacker's own key.
pub async fn forged(w: &World, user: &str) -> String {
    let attacker = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
    attacker.mint(&w.issuer.claims_for(user, AUD))
}

/// One request over a fresh h2c (prior knowledge) connection; `trailers`, if given, follow a
/// small body. Returns the status (0 when the stream was reset) and the body.
pub async fn h2c_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    trailers: Option<&[(&str, &str)]>,
) -> (u16, String) {
    let mut send = h2c_sender(addr).await;
    let mut req = http::Request::builder().method(method).uri(format!("http://app.example{path}"));
    for (k, v) in headers {
        req = req.header(*k, http::HeaderValue::from_str(v).unwrap());
    }
    let mut frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = Vec::new();
    if let Some(t) = trailers {
        frames.push(Ok(http_body::Frame::data(Bytes::from_static(b"payload"))));
        let mut map = http::HeaderMap::new();
        for (k, v) in t {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        frames.push(Ok(http_body::Frame::trailers(map)));
    }
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let resp = match send.send_request(req.body(body).unwrap()).await {
        Ok(r) => r,
        Err(_) => return (0, String::new()),
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}
