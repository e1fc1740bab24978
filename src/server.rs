//! Listeners, the middleware stack, the admin endpoints and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use http::{Request, Response};
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

use crate::auth::inject::InjectIdentityLayer;
use crate::auth::token::Verifier;
use crate::auth::{AuthSettings, AuthenticateLayer};
use crate::config::Config;
use crate::headers::{
    NormalizePathLayer, StripHopByHopLayer, StripUntrustedLayer, UntrustedHeaders,
};
use crate::identity::IdentityMapper;
use crate::idp::jwks::{KeyCacheSettings, KeyStore};
use crate::login::Login;
use crate::pages::Pages;

use crate::peer::ClientAddr;
use crate::proxy::ProxyService;
use crate::response::{AnswersLayer, BrowserAnswers};
use crate::telemetry::AccessLogLayer;

pub use crate::conn::Stack;

/// Slow clients get this long to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What every worker's stack shares: the authentication state (keys, verified-token cache) and
/// the settings of the layers. Each worker builds its own stack from it, with its own upstream
/// connection pool.
pub struct Pipeline {
    auth: Arc<AuthSettings>,
    login: Option<Arc<Login>>,
    untrusted: Arc<UntrustedHeaders>,
    trusted_proxies: Arc<[ipnet::IpNet]>,
    pass_token: crate::config::PassToken,
    upstream: crate::config::UpstreamConfig,
    body_idle_timeout: Duration,
    /// `upstream.max_concurrent_requests`, shared by every worker.
    upstream_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// `server.workers`, which share `upstream.max_connecting`.
    workers: usize,
}

impl Pipeline {
    /// The shared parts and the key store behind them (keys not fetched yet).
    pub fn new(config: &Config) -> anyhow::Result<(Self, Arc<KeyStore>)> {
        let key_issuers = config.key_issuers();
        let keys = Arc::new(KeyStore::new(
            &key_issuers,
            KeyCacheSettings::new(&config.bearer, config.oidc.insecure_allow_http),
        ));
        let mapper = IdentityMapper::new(config.identity.clone());
        let untrusted = Arc::new(UntrustedHeaders::new(&mapper.identity_header_names()));
        let verifier = Arc::new(Verifier::new(&config.bearer, keys.clone(), mapper));
        let login = match &config.login {
            Some(l) => {
                let pages = Arc::new(Pages::load(l.templates_dir.as_deref())?);
                Some(Arc::new(Login::new(
                    l.clone(),
                    &keys,
                    &config.bearer,
                    &config.identity,
                    pages,
                    crate::clock::Clock::System,
                )?))
            }
            None => None,
        };
        let auth = Arc::new(AuthSettings {
            verifier,
            public_routes: config.bearer.public_routes.clone(),
            realm: config.bearer.realm.as_str().into(),
            sessions: login.as_ref().map(|l| l.sessions().clone()),
            policy: Arc::new(config.authorization.clone()),
        });
        let pipeline = Self {
            auth,
            login,
            untrusted,
            trusted_proxies: config.server.trusted_proxies.clone().into(),
            pass_token: config.identity.pass_token,
            upstream: config.upstream.clone(),
            body_idle_timeout: config.server.request_body_idle_timeout,
            upstream_slots: match config.upstream.max_concurrent_requests {
                0 => None,
                n => Some(Arc::new(tokio::sync::Semaphore::new(n))),
            },
            workers: config.server.workers,
        };
        Ok((pipeline, keys))
    }

    /// One middleware stack. Call it on the runtime that will serve it: the upstream pool spawns
    /// its connections there.
    pub fn stack(&self) -> anyhow::Result<Stack> {
        // portcullis's own endpoints (under `/oauth2`; they never reach the app), or the app's,
        // behind the protected chain.
        let router = OwnOrApp {
            own: self.login.as_ref().map(|l| (format!("{}/", l.prefix()).into(), l.routes())),
            app: self.protected()?,
        };
        let stack = ServiceBuilder::new()
            // Outermost, so every answer (even a 400 for a bad path) gets an id and a log line.
            .layer(AccessLogLayer)
            // Every refusal from the layers below becomes an answer here, in one place, in the
            // form that suits who asked; the access log then sees the final decision.
            .layer(AnswersLayer::new(self.login.as_ref().map(|login| BrowserAnswers {
                pages: login.pages().clone(),
                sign_in: login.sign_in(),
            })))
            // Before anything reads headers: framing we will not pass on is refused, then
            // hop-by-hop headers and what `Connection` names go (never `Host`, the request id
            // or `X-Forwarded-*`).
            .layer(StripHopByHopLayer)
            // Client-sent identity headers, path/method overrides and (unless the peer is a
            // trusted proxy) forwarding headers go before any layer could trust them.
            .layer(StripUntrustedLayer::new(self.untrusted.clone(), self.trusted_proxies.clone()))
            // One canonical path for routing, matching, logging and forwarding; ambiguous ones
            // are 400.
            .layer(NormalizePathLayer)
            .service(router);
        Ok(BoxCloneSyncService::new(stack))
    }

    /// The chain every request for the app goes through.
    fn protected(&self) -> anyhow::Result<Protected> {
        let chain = ServiceBuilder::new()
            // The decision: public route? Valid bearer token or session? The [authorization]
            // requirements and this route's rule (read from the verified identity only, so
            // they hold on verified-token cache hits too)? Otherwise a refusal (401, 400, 403,
            // 503).
            .layer(AuthenticateLayer::new(self.auth.clone()))
            // Verified identity → X-Forwarded-* (after hop-by-hop removal), pass_token.
            .layer(InjectIdentityLayer::new(self.pass_token))
            .service(ProxyService::new(
                &self.upstream,
                self.body_idle_timeout,
                self.upstream_slots.clone(),
                self.untrusted.clone(),
                self.workers,
            )?);
        Ok(BoxCloneSyncService::new(chain))
    }
}

type Protected = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Sends a request to portcullis's own endpoints (a router, for the paths under their prefix)
/// or to the protected chain: one prefix comparison, not a router lookup, for each request to
/// the app.
#[derive(Clone)]
struct OwnOrApp {
    /// The prefix with its trailing `/`, and the router of what is under it.
    own: Option<(Arc<str>, Router)>,
    app: Protected,
}

impl tower::Service<Request<Body>> for OwnOrApp {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        <Router as tower::Service<Request<Body>>>::Future,
        <Protected as tower::Service<Request<Body>>>::Future,
    >;

    /// Both are always ready (axum's router; the protected chain ends in the proxy, whose
    /// limits answer 503 instead of waiting).
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures_util::future::Either;
        if let Some((prefix, router)) = &mut self.own {
            if req.uri().path().starts_with(&**prefix) {
                return Either::Left(router.call(req));
            }
        }
        Either::Right(self.app.call(req))
    }
}

/// Binds `n` listeners on one address with `SO_REUSEPORT`, so the kernel spreads connections
/// over the workers. With port 0 the first socket picks the port and the others join it.
fn bind_workers(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        at = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// What `/readyz` checks.
struct Readiness {
    keys: Arc<KeyStore>,
    upstream: String,
    connect_timeout: Duration,
    draining: AtomicBool,
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when some issuer's keys are loaded and the upstream accepts a TCP connection. An issuer
/// still without keys is named in the body but does not hold the pod back: its tokens get 503
/// while the others' work.
async fn readyz(State(r): State<Arc<Readiness>>) -> (StatusCode, String) {
    let mut problems = Vec::new();
    if r.draining.load(Ordering::Relaxed) {
        problems.push("shutting down".to_string());
    }
    let missing: Vec<&str> =
        r.keys.issuers.iter().filter(|i| !i.is_loaded()).map(|i| i.issuer.as_str()).collect();
    if !r.keys.any_loaded() {
        problems.push(format!("keys of {} not loaded", missing.join(", ")));
    }
    if let Err(problem) = crate::proxy::upstream_reachable(&r.upstream, r.connect_timeout).await {
        problems.push(problem);
    }
    if !problems.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; ")))
    } else if !missing.is_empty() {
        (StatusCode::OK, format!("ok; keys of {} not loaded yet\n", missing.join(", ")))
    } else {
        (StatusCode::OK, "ok\n".into())
    }
}

/// A running proxy: both listeners bound, keys being fetched.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub keys: Arc<KeyStore>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    /// One per worker thread, fired when its drain is over.
    workers_done: Vec<tokio::sync::oneshot::Receiver<()>>,
    admin_task: tokio::task::JoinHandle<()>,
    maintenance: Vec<tokio::task::JoinHandle<()>>,
    connections: Arc<crate::conn::Counts>,
}

impl Server {
    /// Binds both listeners, starts fetching keys, and serves: proxied traffic on
    /// `server.workers` threads, each with its own single-threaded runtime, listener and
    /// upstream pool (no work-stealing between cores); the admin endpoints and the key refresh
    /// on the caller's runtime.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let (pipeline, keys) = Pipeline::new(&config)?;
        // Seed the random generator now, not on the first request.
        crate::telemetry::request_id_prefix();
        // Any error building a stack shows here, before a port is bound, not in a worker.
        pipeline.stack()?;
        let pipeline = Arc::new(pipeline);
        let listeners = bind_workers(config.server.listen, config.server.workers).map_err(|e| {
            anyhow::anyhow!("cannot listen on {} (server.listen): {e}", config.server.listen)
        })?;
        let admin_listener = TcpListener::bind(config.server.admin_listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} (server.admin_listen): {e}",
                config.server.admin_listen
            )
        })?;
        let addr = listeners[0].local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let maintenance = keys.spawn_maintenance();

        let readiness = Arc::new(Readiness {
            keys: keys.clone(),
            upstream: config.upstream.connect_target(),
            connect_timeout: config.upstream.connect_timeout,
            draining: AtomicBool::new(false),
        });

        let (shutdown, rx) = watch::channel(false);
        let admin = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(readiness.clone());
        // The admin listener outlives the drain, so probes see /readyz turn 503 meanwhile.
        let (admin_shutdown, mut admin_rx) = watch::channel(false);
        let admin_task = tokio::spawn(async move {
            let r = axum::serve(admin_listener, admin)
                .with_graceful_shutdown(async move {
                    let _ = admin_rx.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "admin listener failed");
            }
        });

        let timeout = config.server.shutdown_timeout;
        let connections = Arc::new(crate::conn::Counts::default());
        let mut workers_done = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (pipeline, rx, readiness) = (pipeline.clone(), rx.clone(), readiness.clone());
            let counts = connections.clone();
            let (done, done_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new().name(format!("portcullis-worker-{i}")).spawn(
                move || {
                    runtime.block_on(async move {
                        let served = async {
                            let listener = TcpListener::from_std(listener)?;
                            let stack = pipeline.stack()?;
                            crate::telemetry::spawn_access_flusher();
                            serve(listener, stack, rx, timeout, readiness, counts).await;
                            anyhow::Ok(())
                        };
                        if let Err(e) = served.await {
                            tracing::error!(worker = i, error = %e, "worker failed to start");
                        }
                    });
                    crate::telemetry::flush_access_lines();
                    let _ = done.send(());
                },
            )?;
            workers_done.push(done_rx);
        }
        tracing::info!(listen = %addr, admin = %admin_addr, upstream = %config.upstream.url, workers = config.server.workers, "portcullis started");
        Ok(Server {
            addr,
            admin_addr,
            keys,
            shutdown,
            admin_shutdown,
            workers_done,
            admin_task,
            maintenance,
            connections,
        })
    }

    /// Client connections open now, and how many of them are parked (idle HTTP/1.1 keep-alive
    /// connections holding no buffers, see [`crate::conn`]).
    pub fn connections(&self) -> (usize, usize) {
        (
            self.connections.open.load(Ordering::Relaxed),
            self.connections.parked.load(Ordering::Relaxed),
        )
    }

    /// Stops accepting, drains in-flight requests (up to `server.shutdown_timeout`) while
    /// `/readyz` answers 503, then stops the admin listener too.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for done in self.workers_done {
            let _ = done.await;
        }
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin_task.await;
        for m in self.maintenance {
            m.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    stack: Stack,
    mut shutdown: watch::Receiver<bool>,
    timeout: Duration,
    readiness: Arc<Readiness>,
    counts: Arc<crate::conn::Counts>,
) {
    // Each connection task holds a sender; when all are gone, the drain is over.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let sweeper = crate::conn::Sweeper::default();
    let sweep = tokio::spawn(sweeper.clone().run());
    let serving = Arc::new(crate::conn::Serving {
        stack,
        http1: http1_builder(),
        auto: connection_builder(),
        header_read_timeout: HEADER_READ_TIMEOUT,
        sweeper,
        counts,
    });
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without it, a response written in two parts waits ~40 ms for a delayed ACK.
                let _ = stream.set_nodelay(true);
                let client = ClientAddr::new(peer);
                let (serving, stop, alive) = (serving.clone(), shutdown.clone(), alive.clone());
                tokio::spawn(async move {
                    let _alive = alive;
                    crate::conn::serve(serving, stream, client, stop).await;
                });
            }
        }
    }
    sweep.abort();
    drop(listener);
    drop(alive);
    readiness.draining.store(true, Ordering::Relaxed);
    tracing::info!(timeout = ?timeout, "shutting down: no new connections; draining in-flight requests");
    tokio::select! {
        _ = drained.recv() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(timeout) => tracing::warn!("shutdown timeout reached; closing the remaining connections"),
    }
}

/// Most concurrent HTTP/2 streams a client connection may open.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Largest HTTP/2 header list accepted (as our HTTP/1.1 head limit).
pub const H2_MAX_HEADER_LIST_SIZE: u32 = crate::headers::MAX_REQUEST_HEAD_BYTES as u32;
/// Streams a client may reset before they are accepted, before the connection is closed
/// (the "rapid reset" defence, CVE-2023-44487).
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams portcullis may reset for protocol errors before it closes the connection
/// (CVE-2024-27316-style floods).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// The HTTP/1.1 settings, for hyper's own builder and hyper-util's auto builder alike.
macro_rules! http1_settings {
    ($b:expr) => {
        $b.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            // Above our own limit, so that most oversized heads get our 431 (with a request id).
            .max_headers(2 * crate::headers::MAX_REQUEST_HEADERS)
    };
}

/// HTTP/1.1 connections (most of them): hyper's builder, so an idle one can be parked.
fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    http1_settings!(b);
    b
}

/// Connections that start like HTTP/2's preface: HTTP/1.1 and h2c (prior knowledge), told apart
/// by hyper-util, with limits set on purpose.
fn connection_builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    http1_settings!(b.http1());
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// `portcullis run`: serve until SIGTERM/SIGINT, then drain and return.
///
/// Returns when the shutdown is due to be over (`server.shutdown_timeout` after the signal):
/// the log writer may use what is left of it.
pub async fn run(config: Config) -> anyhow::Result<std::time::Instant> {
    let timeout = config.server.shutdown_timeout;
    let server = Server::start(config).await?;
    shutdown_signal().await;
    let deadline = std::time::Instant::now() + timeout;
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(deadline)
}
