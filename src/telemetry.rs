//! Logs: the subscriber (non-blocking writer), the request id, and one access line per request.
//! Headers, tokens, cookies and query strings are never logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::proxy::ClientAddr;
use crate::response::{Decision, RequestId};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber. Keep the guard alive: dropping it flushes the log.
pub fn init(cfg: &LogConfig) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    // Buffered: the writer thread flushes once per batch of lines, not once per line.
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stdout(),
    ));
    let filter = EnvFilter::builder().parse_lossy(&cfg.level);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let ok = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    };
    ok.then_some(guard)
}

/// This process's request-id prefix (random). The first call seeds aws-lc's random generator,
/// which takes a while: [`crate::server::Server::start`] makes it before serving, so no request
/// pays for it.
pub fn request_id_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

fn new_request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{}-{n:x}", request_id_prefix()))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// The longest client-sent `X-Request-Id` kept.
pub const MAX_CLIENT_REQUEST_ID: usize = 64;

/// Whether a client-sent request id is kept: short, and only characters that need no quoting
/// in any log format (letters, digits, `-`, `_`, `.`, `:`, `/`, `+`, `=`, `@`).
fn is_safe_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_CLIENT_REQUEST_ID
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

/// A client-sent `X-Request-Id` is kept when safe (so traces join up across hops); otherwise a
/// new one is made.
fn request_id<B>(req: &Request<B>) -> HeaderValue {
    let mut values = req.headers().get_all(&X_REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (Some(v), None) if is_safe_request_id(v.as_bytes()) => Some(v),
        _ => None,
    };
    match keep {
        Some(v) => v.clone(),
        None => new_request_id(),
    }
}

/// An access line for a request hyper answered on its own, before any layer saw it: a head it
/// could not parse (`400`), one over its limits (`431`, `414`). Such answers carry no
/// `X-Request-Id` (hyper writes them), but the line has one, so that it can be found.
pub fn log_unparsed(client: std::net::SocketAddr, error: &hyper::Error) {
    if !error.is_parse() || error.is_parse_version_h2() {
        return;
    }
    let status: u16 = if error.is_parse_too_large() {
        if error.to_string().contains("URI") {
            414
        } else {
            431
        }
    } else {
        400
    };
    let id = new_request_id();
    tracing::info!(
        target: "portcullis::access",
        method = "-",
        path = "-",
        status,
        latency_ms = 0.0,
        subject = "-",
        reason = "bad_request_head",
        detail = %error,
        request_id = %id.to_str().unwrap_or(""),
        client = %client.ip(),
        "request"
    );
}

/// The outermost layer: gives every request an id (sent to the app, echoed to the client, shown
/// in error bodies) and writes one `info` line per request on target `portcullis::access`.
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        // Credentials never show in a `Debug` of the request, whatever logs it.
        for name in [header::AUTHORIZATION, header::COOKIE] {
            if let header::Entry::Occupied(mut e) = req.headers_mut().entry(name) {
                for v in e.iter_mut() {
                    v.set_sensitive(true);
                }
            }
        }
        let id = request_id(&req);
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        req.extensions_mut().insert(RequestId(id.clone()));
        let method = req.method().clone();
        // A clone of the URI shares its bytes: no copy of the path.
        let uri = req.uri().clone();
        let client = req.extensions().get::<ClientAddr>().map(|c| c.addr.ip());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            resp.headers_mut().insert(X_REQUEST_ID, id.clone());
            // milliseconds, to the microsecond
            let latency_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            let decision = resp.extensions().get::<Decision>();
            // The path portcullis decided on; the client's beside it when they differ.
            let normalized = resp.extensions().get::<crate::path::NormalizedPath>();
            let (path, raw_path) = match normalized {
                Some(n) => (n.0.as_str(), Some(uri.path())),
                None => (uri.path(), None),
            };
            let issuer = decision.and_then(|d| d.identity.as_ref()).map(|i| i.issuer.as_str());
            let request_id = id.to_str().unwrap_or("");
            let subject = decision
                .and_then(|d| d.identity.as_ref())
                .map(|i| i.subject.as_str())
                .unwrap_or("-");
            let reason = decision.map(|d| d.reason.as_ref()).unwrap_or("-");
            let detail = decision.and_then(|d| d.detail.as_deref()).unwrap_or("");
            tracing::info!(
                target: "portcullis::access",
                method = %method,
                path,
                raw_path,
                status = resp.status().as_u16(),
                latency_ms,
                subject,
                issuer,
                reason,
                detail,
                request_id = %request_id,
                client = client.map(tracing::field::display),
                "request"
            );
            Ok(resp)
        })
    }
}
