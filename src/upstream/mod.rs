//! Connections to the app. Each worker keeps its own: idle HTTP/1.1 connections on a stack
//! (the most recently used first, so a burst's connections stay warm and the rest time out), or
//! one multiplexed h2c connection. A request goes straight to its connection's task; there is no
//! shared pool task, no background task per request, and no lock another core contends for.
//!
//! An HTTP/1.1 connection goes back on the stack when its response body has ended (see
//! [`Lease`]); one whose body was dropped half-read, or that the app closed, is not reused. A
//! request the app never saw (a kept-alive connection it had just closed) is sent again, once,
//! on a new connection.
//!
//! New connections are paced: at most `connecting` per worker may be waiting for their first
//! response (until then the connection may still sit in the app's accept queue, and a full
//! queue makes the kernel drop connection attempts, each then retried only after a second).
//! A request beyond that waits for a released connection or a free slot, within
//! `upstream.connect_timeout`, so a burst of new clients passes without errors or stalls.

pub mod framing;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

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
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

impl UpstreamError {
    /// A timeout (504) rather than a refusal or a broken connection (502).
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout { .. } | UpstreamError::NoConnectSlot { .. } => true,
            UpstreamError::Connect { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        }
    }
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
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// An HTTP/1.1 connection lent to one exchange. [`Lease::release`] it when the response body
/// has ended, and it serves the next request; dropped without that, the connection closes.
pub struct Lease {
    sender: http1::SendRequest<Body>,
    pool: Arc<Inner>,
}

impl Lease {
    pub fn release(self) {
        let mut idle = lock(&self.pool.idle);
        if idle.len() >= MAX_IDLE {
            idle.pop_front();
        }
        idle.push_back(Idle { sender: self.sender, since: Instant::now() });
        drop(idle);
        self.pool.released.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Upstream {
    /// `connecting`: this worker's share of `upstream.max_connecting` (at least 1).
    pub fn new(target: String, connect_timeout: Duration, h2c: bool, connecting: usize) -> Self {
        let connecting = connecting.max(1);
        Self {
            inner: Arc::new(Inner {
                target,
                connect_timeout,
                h2c,
                idle: Mutex::new(VecDeque::new()),
                released: tokio::sync::Notify::new(),
                connecting: Arc::new(tokio::sync::Semaphore::new(connecting)),
                connecting_max: connecting,
                h2: Mutex::new(None),
            }),
        }
    }

    /// Sends `req` (origin-form URI and `Host` for HTTP/1.1, absolute URI for h2c) and returns
    /// the response head, with the HTTP/1.1 connection to release when its body ends.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        if self.inner.h2c {
            return self.send_h2(req).await.map(|r| (r, None));
        }
        // Set when the first wait begins: a request served by an idle connection never reads
        // the clock here.
        let mut deadline = None;
        let mut req = req;
        // Kept-alive connections may be used until one turns out closed before our request
        // went out; that request goes once more, on a new connection only.
        let mut reuse = true;
        loop {
            if reuse {
                if let Some(mut sender) = self.checkout().await {
                    match sender.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, Some(self.lease(sender)))),
                        Err(mut e) => match e.take_message() {
                            Some(unsent) => {
                                tracing::debug!(error = %e.error(), "kept-alive upstream connection was closed; sending again on a new one");
                                req = unsent;
                                reuse = false;
                            }
                            None => return Err(UpstreamError::Request(e.into_error())),
                        },
                    }
                }
            }
            // No idle connection: a slot for a new one, or (while waiting) a released one.
            let deadline = *deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + self.inner.connect_timeout);
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
            let mut sender = self.connect_h1(deadline).await?;
            let resp = sender.send_request(req).await?;
            // The app has answered on it: it is out of the accept queue.
            drop(permit);
            return Ok((resp, Some(self.lease(sender))));
        }
    }

    fn no_slot(&self) -> UpstreamError {
        UpstreamError::NoConnectSlot {
            target: self.inner.target.clone(),
            timeout: self.inner.connect_timeout,
            connecting: self.inner.connecting_max,
        }
    }

    fn lease(&self, sender: http1::SendRequest<Body>) -> Lease {
        Lease { sender, pool: self.inner.clone() }
    }

    /// The most recently released connection that is still open and ready.
    async fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        loop {
            let mut idle = {
                let mut stack = lock(&self.inner.idle);
                // the oldest have been idle longest: close those past the timeout
                while stack.front().is_some_and(|i| i.since.elapsed() > IDLE_TIMEOUT) {
                    stack.pop_front();
                }
                stack.pop_back()?
            };
            if idle.sender.is_closed() {
                continue;
            }
            // Released when its body ended; the connection task may not have seen that yet.
            if idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
    }

    async fn tcp(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<TokioIo<TcpStream>, UpstreamError> {
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
        Ok(TokioIo::new(stream))
    }

    async fn connect_h1(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self.tcp(deadline).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(|source| {
            UpstreamError::Handshake { target: self.inner.target.clone(), source }
        })?;
        tokio::spawn(async move {
            // with upgrades: a WebSocket the app accepts takes the connection over
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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
        let io = self.tcp(tokio::time::Instant::now() + self.inner.connect_timeout).await?;
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
