//! Listeners, the middleware stack, the admin endpoints and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::idp::jwks::KeyStore;
use crate::peer::ClientAddr;
use crate::pipeline::{Pipeline, Shared, Stack, Workers};

/// Slow clients get this long to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The app's address and `upstream.connect_timeout`, as the current pipeline has them
    /// (`None`: no app, forward-auth only).
    upstream: std::sync::Mutex<Option<(String, Duration)>>,
    draining: AtomicBool,
}

impl Readiness {
    fn set_upstream(&self, config: &Config) {
        if let Ok(mut u) = self.upstream.lock() {
            *u = config.upstream.as_ref().map(|c| (c.connect_target(), c.connect_timeout));
        }
    }
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
    let upstream = r.upstream.lock().ok().and_then(|u| u.clone());
    if let Some((upstream, connect_timeout)) = upstream {
        if let Err(problem) = crate::proxy::upstream_reachable(&upstream, connect_timeout).await {
            problems.push(problem);
        }
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
    /// What outlives a pipeline swap.
    shared: Shared,
    /// The workers' side of a swap.
    workers: Workers,
    readiness: Arc<Readiness>,
    /// What a swap cannot change: `server.listen`, `server.admin_listen`, `server.workers`.
    fixed: (SocketAddr, SocketAddr, usize),
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
        Self::start_with(config, Shared::new).await
    }

    /// The same, with the shared state made by `shared` (tests inject a clock).
    pub async fn start_with(
        config: Config,
        shared: impl FnOnce(&Config) -> Shared,
    ) -> anyhow::Result<Server> {
        let shared = shared(&config);
        let keys = shared.keys.clone();
        let pipeline = Pipeline::new(&config, &shared)?;
        // Seed the random generator now, not on the first request.
        crate::telemetry::request_id_prefix();
        // Any error building a stack shows here, before a port is bound, not in a worker.
        pipeline.stack()?;
        let (workers, ends) = Workers::new(Arc::new(pipeline), config.server.workers);
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
            upstream: std::sync::Mutex::new(None),
            draining: AtomicBool::new(false),
        });
        readiness.set_upstream(&config);

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
        for (i, (listener, worker)) in listeners.into_iter().zip(ends).enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (rx, readiness) = (rx.clone(), readiness.clone());
            let counts = connections.clone();
            let (done, done_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new().name(format!("portcullis-worker-{i}")).spawn(
                move || {
                    runtime.block_on(async move {
                        let served = async {
                            let listener = TcpListener::from_std(listener)?;
                            let stacks = worker.start()?;
                            crate::telemetry::spawn_access_flusher();
                            serve(listener, stacks, rx, timeout, readiness, counts).await;
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
        let upstream = config
            .upstream
            .as_ref()
            .map_or("none (forward-auth only)".into(), |u| u.url.to_string());
        tracing::info!(listen = %addr, admin = %admin_addr, upstream = %upstream, workers = config.server.workers, "portcullis started");
        Ok(Server {
            addr,
            admin_addr,
            keys,
            shared,
            workers,
            readiness,
            fixed: (config.server.listen, config.server.admin_listen, config.server.workers),
            shutdown,
            admin_shutdown,
            workers_done,
            admin_task,
            maintenance,
            connections,
        })
    }

    /// Serves new requests with the pipeline of `config`, on every worker, while connections
    /// stay open: requests in flight finish as they started, the next request on any connection
    /// follows `config`. Keys, verified tokens (under the generation that verified them), used
    /// login attempts and refreshes in flight carry over. Listeners, workers and the set of
    /// issuers cannot change this way (they need a restart); an error leaves the running
    /// pipeline as it was. Returns the new pipeline's generation.
    pub async fn swap(&self, config: &Config) -> anyhow::Result<u64> {
        let asked = (config.server.listen, config.server.admin_listen, config.server.workers);
        if asked != self.fixed {
            anyhow::bail!(
                "server.listen, server.admin_listen and server.workers change only with a restart"
            );
        }
        let pipeline = Pipeline::new(config, &self.shared)?;
        pipeline.stack()?;
        let generation = pipeline.generation();
        self.workers.swap(Arc::new(pipeline), Duration::from_secs(10)).await?;
        self.readiness.set_upstream(config);
        Ok(generation)
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
    stacks: watch::Receiver<Stack>,
    mut shutdown: watch::Receiver<bool>,
    timeout: Duration,
    readiness: Arc<Readiness>,
    counts: Arc<crate::conn::Counts>,
) {
    // Each connection task holds a sender; when all are gone, the drain is over.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let sweeper = crate::conn::Sweeper::new(HEADER_READ_TIMEOUT);
    let sweep = tokio::spawn(sweeper.clone().run());
    let serving = Arc::new(crate::conn::Serving {
        stacks,
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
        $b.keep_alive(true)
            // Above our own limit, so that most oversized heads get our 431 (with a request id).
            .max_headers(2 * crate::headers::MAX_REQUEST_HEADERS)
    };
}

/// HTTP/1.1 connections (most of them): hyper's builder, so an idle one can be parked. The
/// header read timeout is the worker's sweep's ([`crate::conn::Sweeper`]), a deadline per
/// connection, not hyper's timer armed and cancelled for every request (a boxed sleep, a timer
/// wheel entry and an extra read per request).
pub(crate) fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    http1_settings!(b).header_read_timeout(None);
    b
}

/// Connections that start like HTTP/2's preface: HTTP/1.1 and h2c (prior knowledge), told apart
/// by hyper-util, with limits set on purpose.
fn connection_builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // Rare (a head shorter than the HTTP/2 preface, in its first read): hyper's own timer.
    http1_settings!(b.http1()).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
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
    let delay = config.server.shutdown_delay;
    let server = Server::start(config).await?;
    shutdown_signal().await;
    if !delay.is_zero() {
        // Still serving, but no longer ready: load balancers stop sending meanwhile.
        server.readiness.draining.store(true, Ordering::Relaxed);
        tracing::info!(delay = ?delay, "serving for server.shutdown_delay before draining");
        tokio::time::sleep(delay).await;
    }
    let deadline = std::time::Instant::now() + timeout;
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(deadline)
}
