//! Connections to the app. Each worker keeps its own: idle HTTP/1.1 connections on a stack
//! (the most recently used first, so a burst's connections stay warm and the rest time out), or
//! one multiplexed h2c connection. A request goes straight to its connection's task; there is no
//! shared pool task, no background task per request, and no lock another core contends for.
//!
//! HTTP/1.1 is spoken by the lean client in [`h1`] (its framing in [`framing`]); h2c by
//! hyper's client. An HTTP/1.1 connection goes back on the stack when its response body has
//! ended exactly where its framing said (see [`h1`]); one whose body was dropped half-read,
//! that the app framed wrongly or that the app closed is not reused. A request the app never
//! saw (a kept-alive connection it had just closed) is sent again, once, on a new connection.
//!
//! New connections are paced: at most `connecting` per worker may be waiting for their first
//! response (until then the connection may still sit in the app's accept queue, and a full
//! queue makes the kernel drop connection attempts, each then retried only after a second).
//! A request beyond that waits for a released connection or a free slot, within
//! `upstream.connect_timeout`, so a burst of new clients passes without errors or stalls.

pub mod framing;
pub mod h1;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

use axum::body::Body;
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use h1::{Conn, Exchange, ExchangeError, RequestFraming};

/// Idle connections kept per worker.
const MAX_IDLE: usize = 256;
/// An idle connection unused this long is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on connections to the app.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why the app could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("connect to {target}: no connection within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("connect to {target}: {connecting} new connections still unanswered by the app after {timeout:?} (upstream.max_connecting)")]
    NoConnectSlot { target: String, timeout: Duration, connecting: usize },
    #[error("handshake with {target}: {source}")]
    Handshake { target: String, source: hyper::Error },
    /// h2c.
    #[error(transparent)]
    Request(#[from] hyper::Error),
    /// HTTP/1.1.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("no response head within {timeout:?}")]
    ResponseTimeout { timeout: Duration },
}

impl UpstreamError {
    /// A timeout (504) rather than a refusal or a broken connection (502).
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::NoConnectSlot { .. }
            | UpstreamError::ResponseTimeout { .. } => true,
            UpstreamError::Connect { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// The app framed its response so that it could be read two ways (a 502; the connection
    /// was closed).
    pub fn framing(&self) -> Option<&framing::FramingError> {
        match self {
            UpstreamError::Exchange(ExchangeError::Framing(e)) => Some(e),
            _ => None,
        }
    }
}

/// The app's response body: from the lean HTTP/1.1 client, or from hyper's h2c client. (Not
/// boxed: HTTP/1.1 is the common case, and the body is boxed once, into `axum::body::Body`.)
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    H1(h1::ResponseBody),
    H2(Incoming),
}

/// One worker's connections to the app. Cheap to clone (shared).
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port` to connect to.
    target: String,
    connect_timeout: Duration,
    h2c: bool,
    idle: Mutex<VecDeque<Idle>>,
    /// Woken when a connection goes back on `idle`.
    released: tokio::sync::Notify,
    /// Slots for new connections that have not brought back a response yet.
    connecting: Arc<tokio::sync::Semaphore>,
    connecting_max: usize,
    /// The upstream URL's path without a trailing `/`, written before each request's path.
    base_path: String,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// `upstream.response_timeout`, and how it is kept: every `tick`, the sweep counts the
    /// requests still waiting for their response head; past `ticks`, one is answered 504.
    response_timeout: Duration,
    tick: Duration,
    ticks: u32,
    /// The watches of this worker's HTTP/1.1 connections, and whether the sweep runs.
    watches: Mutex<Vec<Weak<Watch>>>,
    sweeping: AtomicBool,
}

/// A request's wait for its response head, watched per connection by the pool's sweep (a
/// deadline kept without a timer armed and cancelled for every request).
#[derive(Default)]
pub struct Watch {
    /// The request is out and its response head has not come.
    waiting: AtomicBool,
    /// Sweeps that found it waiting.
    ticks: AtomicU32,
    /// Waited past the response timeout.
    expired: AtomicBool,
    /// The request's task, woken when it expires.
    waker: AtomicWaker,
}

impl Watch {
    /// A request starts waiting (`ticks`: already waited, on a connection it was sent on
    /// before a retry).
    fn begin(&self, ticks: u32) {
        self.expired.store(false, Ordering::Relaxed);
        self.ticks.store(ticks, Ordering::Relaxed);
        self.waiting.store(true, Ordering::Release);
    }

    fn end(&self) {
        self.waiting.store(false, Ordering::Release);
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection whose exchange ended cleanly serves the next request.
impl h1::Release for Inner {
    fn release(&self, conn: Conn) {
        let mut idle = lock(&self.idle);
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: Instant::now() });
        drop(idle);
        self.released.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Methods a client may repeat on its own (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Upstream {
    /// `connecting`: this worker's share of `upstream.max_connecting` (at least 1);
    /// `base_path`: the upstream URL's path without a trailing `/`, written before each
    /// HTTP/1.1 request's path.
    /// `response_timeout`: how long a request may wait for the app's response head.
    pub fn new(
        target: String,
        connect_timeout: Duration,
        response_timeout: Duration,
        h2c: bool,
        connecting: usize,
        base_path: String,
    ) -> Self {
        let connecting = connecting.max(1);
        // A tenth of the timeout, at most a second: a 504 comes at most that much late.
        let tick = (response_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let ticks = response_timeout.as_secs_f64() / tick.as_secs_f64();
        Self {
            inner: Arc::new(Inner {
                target,
                connect_timeout,
                h2c,
                idle: Mutex::new(VecDeque::new()),
                released: tokio::sync::Notify::new(),
                connecting: Arc::new(tokio::sync::Semaphore::new(connecting)),
                connecting_max: connecting,
                base_path,
                h2: Mutex::new(None),
                response_timeout,
                tick,
                ticks: (ticks.ceil() as u32).max(1),
                watches: Mutex::new(Vec::new()),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the sweep that keeps the response timeout, on the worker's runtime (once; it ends
    /// when the pool is dropped).
    fn sweep(&self) {
        let inner = &self.inner;
        if inner.sweeping.load(Ordering::Relaxed) || inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(inner);
        let mut every = tokio::time::interval(inner.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                every.tick().await;
                let Some(inner) = pool.upgrade() else { return };
                lock(&inner.watches).retain(|w| {
                    let Some(w) = w.upgrade() else { return false };
                    if w.waiting.load(Ordering::Acquire)
                        && w.ticks.fetch_add(1, Ordering::AcqRel) + 1 > inner.ticks
                    {
                        w.expired.store(true, Ordering::Release);
                        w.waker.wake();
                    }
                    true
                });
            }
        });
    }

    /// Sends `req` (for HTTP/1.1 its path and query after the base path, with `Host`; for h2c
    /// an absolute URI) and returns
    /// the response head; an HTTP/1.1 connection goes back to the pool when its body has ended
    /// cleanly. `upgrade`: the request asks the app to switch protocols (a `101` is refused
    /// otherwise).
    pub async fn send(
        &self,
        req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Answer>, UpstreamError> {
        let timeout = self.inner.response_timeout;
        if self.inner.h2c {
            return match tokio::time::timeout(timeout, self.send_h2(req)).await {
                Ok(sent) => sent.map(|r| r.map(Answer::H2)),
                Err(_) => Err(UpstreamError::ResponseTimeout { timeout }),
            };
        }
        self.sweep();
        let (parts, body) = req.into_parts();
        let framing = RequestFraming::of(&parts.method, &parts.headers, &body);
        let mut body = (!body.is_end_stream()).then_some(body);
        let head_request = parts.method == Method::HEAD;
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // the head, once written, carried to a new connection for a retry
        let mut written: Option<Vec<u8>> = None;
        // Set when the first wait begins: a request served by an idle connection never reads
        // the clock here.
        let mut deadline = None;
        // Kept-alive connections may be used until one turns out closed before the app saw
        // the request; that request goes once more, on a new connection only (having waited
        // `waited` sweeps already).
        let mut reuse = true;
        let mut waited = 0;
        loop {
            let (mut conn, permit) = match self.checkout(reuse) {
                Some(conn) => (conn, None),
                None => {
                    // No idle connection: a slot for a new one, or (while waiting) a released one.
                    let deadline = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.inner.connect_timeout
                    });
                    let released = self.inner.released.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    if reuse && !lock(&self.inner.idle).is_empty() {
                        continue;
                    }
                    let permit = tokio::select! {
                        biased;
                        _ = &mut released, if reuse => continue,
                        p = self.inner.connecting.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            // never closed
                            Err(_) => return Err(self.no_slot()),
                        },
                        _ = tokio::time::sleep_until(deadline) => return Err(self.no_slot()),
                    };
                    let conn = Conn::new(self.tcp(deadline).await?);
                    lock(&self.inner.watches).push(Arc::downgrade(&conn.watch));
                    (conn, Some(permit))
                }
            };
            match written.take() {
                Some(head) => conn.set_head(head),
                None => {
                    let base = self.inner.base_path.as_str();
                    conn.write_head(&parts.method, &[base, pq], &parts.headers, framing)
                }
            }
            conn.watch.begin(waited);
            let mut ex = Exchange::new(conn, body.take(), framing);
            let answered = std::future::poll_fn(|cx| {
                let watch = ex.watch();
                if watch.expired.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                let polled = ex.poll_head(cx, head_request, upgrade);
                if polled.is_pending() {
                    ex.watch().waker.register(cx.waker());
                }
                polled.map(Some)
            })
            .await;
            ex.watch().end();
            // past the timeout: the exchange (and its connection) is dropped
            let Some(answered) = answered else {
                return Err(UpstreamError::ResponseTimeout { timeout });
            };
            match answered {
                Ok(head) => {
                    // The app has answered on it: it is out of the accept queue.
                    drop(permit);
                    let pool: Arc<dyn h1::Release> = self.inner.clone();
                    let body = ex.into_body(&head, Some(pool))?;
                    let mut resp = Response::new(Answer::H1(body));
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    *resp.version_mut() = Version::HTTP_11;
                    return Ok(resp);
                }
                Err(e) if permit.is_none() && ex.may_retry(&e, idempotent(&parts.method)) => {
                    tracing::debug!(error = %e, "kept-alive upstream connection was closed; sending again on a new one");
                    written = Some(ex.take_head());
                    body = ex.take_body();
                    reuse = false;
                    waited = ex.watch().ticks.load(Ordering::Acquire);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn no_slot(&self) -> UpstreamError {
        UpstreamError::NoConnectSlot {
            target: self.inner.target.clone(),
            timeout: self.inner.connect_timeout,
            connecting: self.inner.connecting_max,
        }
    }

    /// The most recently released connection that is still open and silent (`reuse`: any may
    /// be taken at all).
    fn checkout(&self, reuse: bool) -> Option<Conn> {
        if !reuse {
            return None;
        }
        let mut stack = lock(&self.inner.idle);
        // the oldest have been idle longest: close those past the timeout
        while stack.front().is_some_and(|i| i.since.elapsed() > IDLE_TIMEOUT) {
            stack.pop_front();
        }
        while let Some(idle) = stack.pop_back() {
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    async fn tcp(&self, deadline: tokio::time::Instant) -> Result<TcpStream, UpstreamError> {
        let target = &self.inner.target;
        let timeout = self.inner.connect_timeout;
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect { target: target.clone(), source })
            }
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout { target: target.clone(), timeout })
            }
        };
        // Without it, a request written in two parts waits ~40 ms for a delayed ACK.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(stream)
    }

    async fn send_h2(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let cached = lock(&self.inner.h2).clone().filter(|s| !s.is_closed());
        let mut req = req;
        if let Some(mut sender) = cached {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(UpstreamError::Request(e.into_error())),
                    },
                }
            }
        }
        let io =
            TokioIo::new(self.tcp(tokio::time::Instant::now() + self.inner.connect_timeout).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake {
                target: self.inner.target.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2c connection ended with an error");
            }
        });
        *lock(&self.inner.h2) = Some(sender.clone());
        let mut sender = sender;
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeouts_are_told_apart_from_refusals() {
        let target = "127.0.0.1:9".to_string();
        let timeout = Duration::from_secs(2);
        assert!(UpstreamError::ConnectTimeout { target: target.clone(), timeout }.is_timeout());
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
        assert!(UpstreamError::Connect { target: target.clone(), source: timed_out }.is_timeout());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!UpstreamError::Connect { target, source: refused }.is_timeout());
    }
}
