//! The bodies portcullis wraps on their way through: the client's request body, which must
//! keep arriving (`server.request_body_idle_timeout`) and whose failures are the client's, and
//! the app's response body, which holds its slot of `upstream.max_concurrent_requests` until it
//! ends (its connection goes back for the next request from [`crate::upstream`] itself).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

use crate::headers::{clean_trailers, malformed_h2_field, UntrustedHeaders};
use tokio::time::{Instant, Sleep};

/// Why the client's request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// No bytes for the idle timeout.
    #[error("the client sent no request body bytes for {0:?}")]
    Idle(Duration),
    /// Malformed chunked encoding, a connection that broke off, ...
    #[error("the client's request body broke off: {0}")]
    Broken(axum::Error),
    /// An HTTP/2 trailer field that is malformed (RFC 9113 §8.2.1): the request is not
    /// completed at the app.
    #[error("malformed HTTP/2 trailer field {0}: its value starts or ends with whitespace")]
    MalformedTrailer(String),
}

impl ClientBodyError {
    /// The `ClientBodyError` somewhere in `e`'s source chain, if any.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        crate::error::find_in_chain(e)
    }
}

/// The client's request body with an idle timeout: each frame must arrive within `idle` of the
/// previous one (or of the start). Errors are [`ClientBodyError`]s, so the proxy can tell the
/// client's fault (`400`, `408`) from the app's (`502`, `504`). (One wrapper for the timeout,
/// the trailers and the error's class: tower-http's `TimeoutLayer` bounds a whole request, which
/// would cut streams and WebSockets, and its `RequestBodyTimeout` would be a second wrapper
/// around every body for the timeout alone. Bodies are streamed to the app, never collected, so
/// there is no request-body limit to give to tower-http's `RequestBodyLimit`.)
pub struct ClientBody {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Trailer fields a client may not send (identity, forwarding, ...).
    untrusted: Option<Arc<UntrustedHeaders>>,
    /// The client speaks HTTP/2: a trailer value with edge whitespace is malformed.
    h2: bool,
}

impl ClientBody {
    pub fn new(inner: Body, idle: Duration) -> Self {
        Self { inner, idle, timer: Box::pin(tokio::time::sleep(idle)), untrusted: None, h2: false }
    }

    /// The same body, from an HTTP/2 client: malformed trailers fail it.
    pub fn from_h2(mut self, h2: bool) -> Self {
        self.h2 = h2;
        self
    }

    /// The same body, its trailers cleaned of what only portcullis may set.
    pub fn cleaning_trailers(mut self, untrusted: Arc<UntrustedHeaders>) -> Self {
        self.untrusted = Some(untrusted);
        self
    }
}

/// Cleans a trailers frame (see [`clean_trailers`]); data frames pass.
fn clean_frame<D>(frame: Frame<D>, untrusted: Option<&UntrustedHeaders>) -> Frame<D> {
    match frame.into_trailers() {
        Ok(mut t) => {
            clean_trailers(&mut t, untrusted);
            Frame::trailers(t)
        }
        Err(frame) => frame,
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                if self.h2 {
                    if let Some(name) = frame.trailers_ref().and_then(malformed_h2_field) {
                        let name = name.to_string();
                        return Poll::Ready(Some(Err(ClientBodyError::MalformedTrailer(name))));
                    }
                }
                Poll::Ready(Some(Ok(clean_frame(frame, self.untrusted.as_deref()))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Broken(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Idle(self.idle)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The app's response body: holds its concurrency slot (if any) until it ends or is dropped,
/// and cleans its trailers of hop-by-hop, framing and credential fields.
pub struct AppBody<B> {
    inner: B,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B: http_body::Body> AppBody<B> {
    pub fn new(inner: B, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { inner, _permit: permit }
    }
}

impl<B> http_body::Body for AppBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(clean_frame(frame, None)))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        let (mut tx, rx) = chunks::channel();
        let body = ClientBody::new(Body::from_stream(rx), Duration::from_secs(10));
        let collect = tokio::spawn(async move { body.collect().await });
        tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        tx.send(Ok(Bytes::from_static(b"b"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!collect.is_finished(), "timed out although bytes kept arriving");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let err = collect.await.unwrap().expect_err("an idle body must fail");
        assert!(matches!(err, ClientBodyError::Idle(_)), "{err}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_body_is_the_clients_fault() {
        let (mut tx, rx) = chunks::channel();
        let body = ClientBody::new(Body::from_stream(rx), Duration::from_secs(10));
        tx.send(Err(std::io::Error::other("bad chunk"))).await.unwrap();
        let err = body.collect().await.expect_err("must fail");
        assert!(matches!(err, ClientBodyError::Broken(_)), "{err}");
        let wrapped: Box<dyn std::error::Error + 'static> = Box::new(err);
        assert!(ClientBodyError::find(wrapped.as_ref()).is_some());
    }

    type Chunk = Result<Bytes, std::io::Error>;

    /// A bounded channel as a `Stream` of body chunks.
    mod chunks {
        use super::Chunk;
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Sender(tokio::sync::mpsc::Sender<Chunk>);
        pub struct Receiver(tokio::sync::mpsc::Receiver<Chunk>);

        pub fn channel() -> (Sender, Receiver) {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            (Sender(tx), Receiver(rx))
        }

        impl Sender {
            pub async fn send(&mut self, c: Chunk) -> Result<(), ()> {
                self.0.send(c).await.map_err(|_| ())
            }
        }

        impl futures_util::Stream for Receiver {
            type Item = Chunk;
            fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
                self.0.poll_recv(cx)
            }
        }
    }
}
