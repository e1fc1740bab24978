//! One client connection, from its first byte to its close, and what it costs while idle.
//!
//! hyper reserves an 8 KiB read buffer and an 8 KiB write buffer for every HTTP/1 connection and
//! keeps them for as long as the connection lives, idle or not. So a connection gets hyper only
//! once its first bytes arrive, and an HTTP/1 keep-alive connection that has been idle for a
//! second or two is *parked*: hyper is told the client closed (it has nothing buffered then, so
//! it ends cleanly, without shutting the socket down), it hands the socket back, and everything
//! it held is freed. The socket then waits for readability in a small task, and its next request
//! gets a fresh hyper connection. Nothing is read that hyper does not get, and a connection with
//! a request in flight (until its response body has ended), or that was upgraded, is never
//! parked.
//!
//! A connection is served over any [`Transport`] (TCP today; TLS next), which also says the
//! scheme its requests were made with.
//!
//! Each worker sweeps its connections once a second ([`Sweeper`]): one that was waiting for a
//! request at two sweeps in a row is asked to park. HTTP/2 connections (told apart by the
//! preface) are served by hyper-util's auto builder and not parked.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::peer::ClientAddr;

/// What the request path answers with: a boxed future (each layer that must await boxes its
/// own once; [`Stack`] does not box it again).
pub type ResponseFuture =
    futures_util::future::BoxFuture<'static, Result<Response<Body>, std::convert::Infallible>>;

/// The whole request path as one cloneable service, its type erased. Unlike tower's
/// `BoxCloneSyncService`, it takes a service whose future is a [`ResponseFuture`] already and
/// calls it through, without boxing that future a second time.
pub struct Stack(Box<dyn Respond>);

/// A service a [`Stack`] holds as it is: a cloneable, shareable request path whose futures are
/// boxed already (every such service is one).
pub trait Respond: Send + Sync + 'static {
    #[doc(hidden)]
    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::convert::Infallible>>;
    #[doc(hidden)]
    fn respond(&mut self, req: Request<Body>) -> ResponseFuture;
    #[doc(hidden)]
    fn clone_box(&self) -> Box<dyn Respond>;
}

impl<S> Respond for S
where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
            Future = ResponseFuture,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::convert::Infallible>> {
        tower::Service::poll_ready(self, cx)
    }
    fn respond(&mut self, req: Request<Body>) -> ResponseFuture {
        tower::Service::call(self, req)
    }
    fn clone_box(&self) -> Box<dyn Respond> {
        Box::new(self.clone())
    }
}

impl Stack {
    /// A service whose futures are boxed already: called through as it is.
    pub fn new(service: impl Respond) -> Self {
        Self(Box::new(service))
    }

    /// Any service: its futures are boxed here.
    pub fn boxing<S>(service: S) -> Self
    where
        S: tower::Service<
                Request<Body>,
                Response = Response<Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        fn boxed<F>(f: F) -> ResponseFuture
        where
            F: std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>>
                + Send
                + 'static,
        {
            Box::pin(f)
        }
        Self::new(tower::ServiceExt::map_future(service, boxed::<S::Future>))
    }
}

impl Clone for Stack {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl tower::Service<Request<Body>> for Stack {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        self.0.respond(req)
    }
}

/// A client connection's byte stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits for the first bytes and copies them into `buf` without consuming them (how a
    /// connection is told HTTP/2 and how one waits, parked, for its next request).
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a;

    /// The scheme of the requests it carries: `http`, or `https` over TLS.
    fn scheme(&self) -> &'static str;
}

impl Transport for TcpStream {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        TcpStream::peek(self, buf)
    }

    fn scheme(&self) -> &'static str {
        "http"
    }
}

/// A transport over a byte stream that cannot peek (TLS, an in-memory pipe): what [`peek`]
/// saw is kept and read first.
///
/// [`peek`]: Transport::peek
pub struct Rewind<S> {
    inner: S,
    seen: Vec<u8>,
    scheme: &'static str,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, scheme: &'static str) -> Self {
        Self { inner, seen: Vec::new(), scheme }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Rewind<S> {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.seen.is_empty() {
            let mut more = vec![0u8; buf.len()];
            let n = tokio::io::AsyncReadExt::read(&mut self.inner, &mut more).await?;
            self.seen.extend_from_slice(&more[..n]);
        }
        let n = self.seen.len().min(buf.len());
        buf[..n].copy_from_slice(&self.seen[..n]);
        Ok(n)
    }

    fn scheme(&self) -> &'static str {
        self.scheme
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.seen.is_empty() {
            let n = self.seen.len().min(buf.remaining());
            buf.put_slice(&self.seen[..n]);
            self.seen.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How often a worker looks for idle connections to park.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a connection's socket, its service and the worker's sweep share.
#[derive(Default)]
struct Activity {
    /// Requests whose response (body included) has not ended.
    in_flight: AtomicUsize,
    /// hyper's last read found nothing: with no request in flight, it is waiting for the next
    /// one. Cleared by the next byte read (writes cannot start a request: a response only
    /// follows one, and counts in flight until its body ends).
    waiting: AtomicBool,
    /// Seen waiting by the last sweep.
    seen_waiting: AtomicBool,
    /// The sweep asks the connection to park.
    park: AtomicBool,
    /// The connection was upgraded (a WebSocket): its socket is the upgrade's now.
    pinned: AtomicBool,
    /// Bytes of a request head arrived (read while no request was in flight); cleared when the
    /// request starts.
    head_open: AtomicBool,
    /// Sweeps that found the head still open.
    head_sweeps: AtomicU32,
    /// The head took longer than the header read timeout: the next read fails.
    expired: AtomicBool,
    /// hyper's pending read, woken to park (or to end an expired connection).
    reader: AtomicWaker,
}

/// Client connections across the workers: open, and parked among them.
#[derive(Debug, Default)]
pub struct Counts {
    pub open: AtomicUsize,
    pub parked: AtomicUsize,
}

/// A worker's live connections, swept once a second: an idle one is parked, and one whose
/// request head has been arriving for longer than the header read timeout is closed. (A
/// per-connection deadline read by the sweep that runs anyway, instead of a timer armed and
/// cancelled by hyper for every request.)
#[derive(Clone)]
pub struct Sweeper {
    live: Arc<Mutex<Vec<Weak<Activity>>>>,
    /// Sweeps a request head may stay open: the header read timeout in whole seconds.
    head_sweeps: u32,
}

impl Sweeper {
    /// Closes connections whose request head takes longer than `header_read_timeout` (counted in
    /// whole sweeps, so between that and a second more).
    pub fn new(header_read_timeout: Duration) -> Self {
        let secs = header_read_timeout.as_secs_f64() / SWEEP_EVERY.as_secs_f64();
        Self { live: Arc::default(), head_sweeps: secs.ceil().max(1.0) as u32 }
    }

    fn register(&self, a: &Arc<Activity>) {
        if let Ok(mut live) = self.live.lock() {
            live.push(Arc::downgrade(a));
        }
    }

    /// Runs on the worker until it stops.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(mut live) = self.live.lock() else { return };
            live.retain(|w| {
                let Some(a) = w.upgrade() else { return false };
                let idle =
                    a.in_flight.load(Ordering::Acquire) == 0 && !a.pinned.load(Ordering::Acquire);
                if idle && a.head_open.load(Ordering::Acquire) {
                    if a.head_sweeps.fetch_add(1, Ordering::AcqRel) + 1 > self.head_sweeps {
                        a.expired.store(true, Ordering::Release);
                        a.reader.wake();
                    }
                } else if a.head_sweeps.load(Ordering::Acquire) != 0 {
                    a.head_sweeps.store(0, Ordering::Release);
                }
                let waiting = a.waiting.load(Ordering::Acquire) && idle;
                if waiting && a.seen_waiting.swap(true, Ordering::AcqRel) {
                    a.park.store(true, Ordering::Release);
                    a.reader.wake();
                } else if !waiting {
                    a.seen_waiting.store(false, Ordering::Release);
                }
                true
            });
        }
    }
}

/// The client's socket as hyper sees it: every byte passes through; while parking, a read that
/// finds nothing is reported as the client's close, and the shutdown that follows is not done.
struct Parkable<T> {
    stream: T,
    activity: Arc<Activity>,
    parked: bool,
}

impl<T> Parkable<T> {
    /// Bytes arrived: hyper is no longer waiting; with no request in flight, they begin a head.
    fn moved(&self) {
        let a = &self.activity;
        if a.waiting.load(Ordering::Relaxed) {
            a.waiting.store(false, Ordering::Relaxed);
            a.seen_waiting.store(false, Ordering::Relaxed);
        }
        if a.in_flight.load(Ordering::Relaxed) == 0 && !a.head_open.load(Ordering::Relaxed) {
            a.head_open.store(true, Ordering::Release);
        }
    }
}

impl<T: Transport> AsyncRead for Parkable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let a = &self.activity;
                if a.expired.load(Ordering::Acquire) {
                    // hyper ends the connection without an answer, as its own timer did
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within the header read timeout",
                    )));
                }
                let idle =
                    a.in_flight.load(Ordering::Acquire) == 0 && !a.pinned.load(Ordering::Acquire);
                if idle && a.park.load(Ordering::Acquire) {
                    // Nothing to read and nothing in flight: hyper ends the connection as if
                    // the client had closed it, and gives the socket back.
                    self.parked = true;
                    return Poll::Ready(Ok(()));
                }
                // Registered whether or not a request is in flight: hyper does not read again
                // after a response while this read is still pending, so this may be the last
                // read before the connection goes idle.
                if !a.waiting.load(Ordering::Relaxed) {
                    a.waiting.store(true, Ordering::Release);
                }
                a.reader.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl<T: Transport> AsyncWrite for Parkable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One request in flight on a connection, from its head until its response body ends (or is
/// dropped, or the request's future is).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.head_open.store(false, Ordering::Release);
        a.head_sweeps.store(0, Ordering::Release);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it ends.
struct Tracked {
    inner: Body,
    in_flight: Option<InFlight>,
}

impl Tracked {
    fn done(&mut self) {
        self.in_flight = None;
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || (polled.is_ready() && self.inner.is_end_stream())
        {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a worker serves its connections.
pub struct Serving {
    /// The worker's current stack (a new one after each pipeline swap).
    pub stacks: watch::Receiver<Stack>,
    pub http1: hyper::server::conn::http1::Builder,
    pub auto: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    pub header_read_timeout: Duration,
    pub sweeper: Sweeper,
    pub counts: Arc<Counts>,
}

/// Counts a connection open (and parked while it is) for as long as it lives.
struct Counted<'a> {
    counts: &'a Counts,
    parked: bool,
}

impl<'a> Counted<'a> {
    fn new(counts: &'a Counts) -> Self {
        counts.open.fetch_add(1, Ordering::Relaxed);
        Self { counts, parked: false }
    }

    fn set_parked(&mut self, parked: bool) {
        if parked != self.parked {
            self.parked = parked;
            if parked {
                self.counts.parked.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counts.parked.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.set_parked(false);
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client connection until it closes, the drain ends it, or it stays silent for
/// the header timeout.
pub async fn serve<T: Transport>(
    serving: Arc<Serving>,
    stream: T,
    mut client: ClientAddr,
    mut stop: watch::Receiver<bool>,
) {
    client.scheme = stream.scheme();
    let mut counted = Counted::new(&serving.counts);
    let activity = Arc::new(Activity::default());
    serving.sweeper.register(&activity);
    let mut stream = stream;
    loop {
        // Nothing is set up until the first bytes arrive: an open connection that has sent
        // nothing (or a parked one) costs this small task. Silent past the header timeout, or
        // still silent when the drain starts: closed.
        let mut first = [0u8; H2_PREFACE.len()];
        let seen = tokio::select! {
            r = tokio::time::timeout(serving.header_read_timeout, stream.peek(&mut first)) => {
                match r {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => return,
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        counted.set_parked(false);
        let svc = service(&serving.stacks, &client, &activity);
        // HTTP/2 with prior knowledge (or too few bytes to tell): hyper-util's auto builder
        // tells them apart and serves either, with upgrades; not parked.
        if first[..seen] == H2_PREFACE[..seen] {
            let conn = serving.auto.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            let mut conn = Box::pin(conn.into_owned());
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                connection_error(&client, e.downcast_ref::<hyper::Error>(), &*e);
            }
            return;
        }
        activity.park.store(false, Ordering::Release);
        activity.waiting.store(false, Ordering::Release);
        activity.seen_waiting.store(false, Ordering::Release);
        let io = Parkable { stream, activity: activity.clone(), parked: false };
        // Boxed, so the task itself stays small while it waits above.
        let mut conn =
            Box::pin(serving.http1.serve_connection(TokioIo::new(io), svc).with_upgrades());
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                // finish the request in flight, then close
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        if let Err(e) = result {
            connection_error(&client, Some(&e), &e);
            return;
        }
        // Ended as parked: take the socket back and wait for its next request.
        let Some(parts) = Pin::into_inner(conn).into_parts() else { return };
        let parkable = parts.io.into_inner();
        if !parkable.parked || !parts.read_buf.is_empty() {
            return;
        }
        stream = parkable.stream;
        counted.set_parked(true);
        tracing::trace!(client = %client.addr, "idle connection parked");
    }
}

fn connection_error(
    client: &ClientAddr,
    hyper: Option<&hyper::Error>,
    e: &(dyn std::error::Error + 'static),
) {
    if let Some(h) = hyper {
        crate::telemetry::log_unparsed(client.addr, h);
    }
    tracing::debug!(client = %client.addr, error = %e, "connection ended with an error");
}

/// The connection's service: the worker's stack, with the client's address on each request and
/// each response counted in flight until its body ends.
///
/// The connection keeps its own copy of the stack and calls it in place (hyper hands each request
/// over by `&self`, and calls never overlap: `call` only builds the future), instead of cloning
/// the whole stack for every request; before each request it takes the worker's new stack if the
/// pipeline was swapped (one atomic load when it was not). No layer of the stack applies
/// backpressure (limits answer 503 instead), so it is always ready.
fn service(
    stacks: &watch::Receiver<Stack>,
    client: &ClientAddr,
    activity: &Arc<Activity>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Send
       + 'static {
    use tower::Service as _;
    let mut stacks = stacks.clone();
    let stack = stacks.borrow_and_update().clone();
    let current = std::cell::RefCell::new((stacks, stack));
    let (client, activity) = (client.clone(), activity.clone());
    hyper::service::service_fn(move |req: Request<Incoming>| {
        // A request without a body (most) gets an empty one, which costs no allocation.
        let mut req =
            req.map(
                |b| {
                    if http_body::Body::is_end_stream(&b) {
                        Body::empty()
                    } else {
                        Body::new(b)
                    }
                },
            );
        req.extensions_mut().insert(client.clone());
        let in_flight = InFlight::new(&activity);
        // never re-entered: `call` returns before hyper can hand over another request
        let mut current = current.borrow_mut();
        let (stacks, stack) = &mut *current;
        if stacks.has_changed().unwrap_or(false) {
            *stack = stacks.borrow_and_update().clone();
        }
        let call = stack.call(req);
        async move {
            let resp = call.await?;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.0.pinned.store(true, Ordering::Release);
            }
            Ok(resp.map(|b| Body::new(Tracked { inner: b, in_flight: Some(in_flight) })))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A worker's serving setup whose stack answers with the scheme and peer it was given.
    fn serving() -> Arc<Serving> {
        let stack = Stack::boxing(tower::service_fn(|req: Request<Body>| async move {
            let c = req.extensions().get::<ClientAddr>().cloned();
            let text = c.map(|c| format!("{} {}", c.scheme, c.addr)).unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Response::new(Body::from(text)))
        }));
        Arc::new(Serving {
            stacks: watch::channel(stack).1,
            http1: hyper::server::conn::http1::Builder::new(),
            auto: hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()),
            header_read_timeout: Duration::from_secs(5),
            sweeper: Sweeper::new(Duration::from_secs(30)),
            counts: Arc::default(),
        })
    }

    #[tokio::test]
    async fn a_connection_is_served_over_any_transport_with_its_scheme() {
        for (scheme, split) in [("https", 0), ("http", 5), ("https", 200)] {
            let (mut client, server) = tokio::io::duplex(4096);
            let (_stop_tx, stop) = watch::channel(false);
            let peer = ClientAddr::new("192.0.2.7:4000".parse().unwrap());
            let task = tokio::spawn(serve(serving(), Rewind::new(server, scheme), peer, stop));
            // the request in two writes (the first shorter than the HTTP/2 preface, or all)
            let req = b"GET / HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n";
            let split = split.min(req.len());
            client.write_all(&req[..split.max(1)]).await.unwrap();
            client.write_all(&req[split.max(1)..]).await.unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert!(out.ends_with(&format!("{scheme} 192.0.2.7:4000")), "{out}");
            task.await.unwrap();
        }
    }

    /// Reads from `client` until what arrived ends with `end`.
    async fn read_until(client: &mut tokio::io::DuplexStream, end: &str) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while !out.ends_with(end.as_bytes()) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    /// A worker whose stack answers `ok <path>`, or for `/stream` a body that never ends.
    fn parking_serving() -> Arc<Serving> {
        let stack = Stack::boxing(tower::service_fn(|req: Request<Body>| async move {
            let body = if req.uri().path() == "/stream" {
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                // the sender lives on, so the body never ends
                std::mem::forget(tx);
                Body::new(http_body_util::StreamBody::new(tokio_stream_like(rx)))
            } else {
                Body::from(format!("ok {}", req.uri().path()))
            };
            Ok::<_, std::convert::Infallible>(Response::new(body))
        }));
        Arc::new(Serving {
            stacks: watch::channel(stack).1,
            // the server's own settings: no timer of hyper's ends a slow head
            http1: crate::server::http1_builder(),
            auto: hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()),
            header_read_timeout: Duration::from_secs(30),
            sweeper: Sweeper::new(Duration::from_secs(30)),
            counts: Arc::default(),
        })
    }

    /// One connection to `serving` over an in-memory pipe: the client's end, the task serving
    /// it, and the sender whose drop would start the drain.
    fn connect(
        serving: &Arc<Serving>,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>, watch::Sender<bool>) {
        let (client, server) = tokio::io::duplex(4096);
        let (stop_tx, stop) = watch::channel(false);
        let peer = ClientAddr::new("192.0.2.7:4000".parse().unwrap());
        let task = tokio::spawn(serve(serving.clone(), Rewind::new(server, "http"), peer, stop));
        (client, task, stop_tx)
    }

    /// An mpsc receiver as a stream of frames.
    fn tokio_stream_like<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_that_takes_longer_than_the_header_read_timeout_is_closed() {
        let serving = parking_serving();
        let sweep = tokio::spawn(serving.sweeper.clone().run());
        let (mut client, task, _stop) = connect(&serving);
        // a head served first, then the next one a byte every 400 ms (never parked: never
        // silent through a sweep), and never finished
        client.write_all(b"GET /a HTTP/1.1\r\nhost: app.example\r\n\r\n").await.unwrap();
        read_until(&mut client, "ok /a").await;
        let start = tokio::time::Instant::now();
        let head =
            b"GET /b HTTP/1.1\r\nhost: app.example\r\nx-slow: ".iter().chain([b'a'; 200].iter());
        let mut closed_after = None;
        for b in head {
            if client.write_all(&[*b]).await.is_err() {
                closed_after = Some(start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
            if task.is_finished() {
                closed_after = Some(start.elapsed());
                break;
            }
        }
        let after = closed_after.expect("the slow head was never cut off");
        assert!(after >= Duration::from_secs(30) && after <= Duration::from_secs(32), "{after:?}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert_eq!(serving.counts.open.load(Ordering::Relaxed), 0);
        sweep.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_finished_in_time_and_a_long_response_are_not_cut_off() {
        let serving = parking_serving();
        let sweep = tokio::spawn(serving.sweeper.clone().run());
        let (mut client, _task, _stop) = connect(&serving);
        // 25 s for a head, twice on one connection (the count starts again with each head)
        for path in ["/a", "/b"] {
            let head = format!("GET {path} HTTP/1.1\r\nhost: app.example\r\n\r\n");
            let pieces = head.as_bytes().chunks(head.len().div_ceil(50));
            for piece in pieces {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            read_until(&mut client, &format!("ok {path}")).await;
        }
        // a response streaming for longer than the timeout, to a silent client: kept
        client.write_all(b"GET /stream HTTP/1.1\r\nhost: app.example\r\n\r\n").await.unwrap();
        read_until(&mut client, "first\r\n").await;
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(serving.counts.open.load(Ordering::Relaxed), 1);
        sweep.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_parked_after_two_sweeps_and_serves_its_next_request() {
        let serving = parking_serving();
        let sweep = tokio::spawn(serving.sweeper.clone().run());
        let (mut client, task, _stop) = connect(&serving);
        let counts = || {
            (
                serving.counts.open.load(Ordering::Relaxed),
                serving.counts.parked.load(Ordering::Relaxed),
            )
        };
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: app.example\r\n\r\n");
        client.write_all(get("/a").as_bytes()).await.unwrap();
        read_until(&mut client, "ok /a").await;
        assert_eq!(counts(), (1, 0));
        // idle through one sweep: not yet; through the second: parked, still open
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(counts(), (1, 0));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(counts(), (1, 1), "the idle connection was not parked");
        // the next request on the same connection is served as usual
        client.write_all(get("/b").as_bytes()).await.unwrap();
        read_until(&mut client, "ok /b").await;
        assert_eq!(counts(), (1, 0));
        // two requests in one write, after parking: both answered, in order
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(counts(), (1, 1));
        client.write_all(format!("{}{}", get("/c"), get("/d")).as_bytes()).await.unwrap();
        let both = read_until(&mut client, "ok /d").await;
        assert!(both.contains("ok /c"), "{both}");
        // a response still streaming to a silent client is never parked
        client.write_all(get("/stream").as_bytes()).await.unwrap();
        read_until(&mut client, "first\r\n").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(counts(), (1, 0));
        drop(client);
        task.await.unwrap();
        assert_eq!(counts(), (0, 0));
        sweep.abort();
    }
}
