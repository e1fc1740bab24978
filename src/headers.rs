//! Request headers portcullis removes before anything reads them, and why, in one place:
//! hop-by-hop headers (and whatever `Connection` names, except what portcullis guarantees),
//! every identity header portcullis can set, the headers frameworks read as the request's real
//! path or method, and the forwarding headers only a trusted proxy may send.
//!
//! Names are compared case-insensitively with `_` taken as `-` (`X_Forwarded_For` is
//! `X-Forwarded-For` to a CGI, WSGI or Rack app).

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::{ready, Either, Ready};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::peer::ClientAddr;
use crate::response::{Refusal, Rejection};

/// Hop-by-hop headers (RFC 9110 §7.6.1), removed in both directions. (`Trailer` is not one: it
/// declares the trailer fields to come, and is cleaned like them, see [`clean_trailers`].)
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Fields that never travel in trailers through portcullis (RFC 9110 §6.5.1 forbids framing,
/// routing, authentication and control fields there; portcullis adds its own).
fn forbidden_in_trailers(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "content-encoding"
            | "content-range"
            | "trailer"
            | "authorization"
            | "cookie"
            | "set-cookie"
            | "x-request-id"
            | "www-authenticate"
            | "expect"
            | "cache-control"
            | "location"
    ) || HOP_BY_HOP.iter().any(|h| h.as_str() == name)
        || has_prefix(name, "x-forwarded-")
}

/// Removes from trailer fields everything that must not travel there: hop-by-hop, framing and
/// credential fields, and (with `untrusted`, for requests) every header only portcullis or a
/// trusted proxy may set.
pub fn clean_trailers(trailers: &mut HeaderMap, untrusted: Option<&UntrustedHeaders>) {
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| {
            forbidden_in_trailers(n.as_str())
                || untrusted.is_some_and(|u| u.removes(n.as_str(), false))
        })
        .cloned()
        .collect();
    for n in doomed {
        tracing::debug!(trailer = %n, "removed trailer field");
        trailers.remove(&n);
    }
}

/// Rewrites a `Trailer` header to declare only the fields [`clean_trailers`] lets through.
pub fn clean_trailer_declaration(headers: &mut HeaderMap, untrusted: Option<&UntrustedHeaders>) {
    if !headers.contains_key(header::TRAILER) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::TRAILER)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        // only names a field can have (lower case, as HeaderName keeps them)
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .map(|n| n.as_str().to_string())
        .filter(|n| {
            !n.is_empty()
                && !forbidden_in_trailers(n)
                && !untrusted.is_some_and(|u| u.removes(n, false))
        })
        .collect();
    headers.remove(header::TRAILER);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::TRAILER, v);
        }
    }
}

/// Headers that Symfony, IIS, Spring filters and others take as the request's real path or
/// method. Removed from every peer, trusted or not: ingresses pass a client's copy through.
pub const PATH_OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-method",
];

/// Headers that say where a request came from or how it arrived. Only a peer in
/// `server.trusted_proxies` may send them; from anyone else they are removed, and
/// `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` are set by portcullis.
pub const TRUSTED_PROXY_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-proxyuser-ip",
    "x-host",
    "x-forwarded-scheme",
    "front-end-https",
    "x-url-scheme",
    "x-forwarded-ssl",
];

/// Every header with this prefix is an identity header (oauth2-proxy's `auth_request` response
/// headers): an app behind portcullis must never see a client-made one.
pub const IDENTITY_PREFIX: &str = "x-auth-request-";

/// `a == b` with ASCII case ignored and `_` taken as `-` (`b` must be lower-case with `-`).
pub fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let x = x.to_ascii_lowercase();
            x == y || (x == b'_' && y == b'-')
        })
}

fn has_prefix(a: &str, prefix: &str) -> bool {
    a.len() >= prefix.len() && same_header(&a[..prefix.len()], prefix)
}

/// Headers that naming them in `Connection` cannot remove: the request's `Host`, the request
/// id and the forwarding headers portcullis sets or vouches for.
fn is_guaranteed(name: &str) -> bool {
    name == "host"
        || name == "x-request-id"
        || name == "x-real-ip"
        || has_prefix(name, "x-forwarded-")
}

/// Removes hop-by-hop headers, and every header named in `Connection` except the guaranteed
/// ones: `Host`, `X-Request-Id`, `X-Real-IP` and `X-Forwarded-*`. One pass over the names
/// finds which are there (usually none in a request, `Connection` in a response).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present == [false; HOP_BY_HOP.len()] {
        return;
    }
    // HOP_BY_HOP[0] is `Connection`
    if present[0] {
        // On bytes: one option that is not ASCII must not hide the others.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            // connection options that name no header, or one removed below anyway
            .filter(|n| {
                !n.eq_ignore_ascii_case(b"close")
                    && !HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h.as_str().as_bytes()))
            })
            .filter_map(|n| HeaderName::from_bytes(n).ok())
            .filter(|n| !is_guaranteed(n.as_str()))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// The most request headers accepted; more is `431`.
pub const MAX_REQUEST_HEADERS: usize = 100;
/// The largest request head (header names and values) accepted; larger is `431`.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// What is wrong with a request's framing, if anything: a head over our limits, or a transfer
/// coding other than a single `chunked` (hyper has decoded `chunked`; another coding before it,
/// `gzip, chunked`, would reach the app as a body it cannot tell is compressed).
pub fn framing_problem(headers: &HeaderMap) -> Option<Rejection> {
    if headers.len() > MAX_REQUEST_HEADERS
        || headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>()
            > MAX_REQUEST_HEAD_BYTES
    {
        return Some(Rejection::HeadTooLarge);
    }
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some(Rejection::UnsupportedTransferCoding),
    }
}

/// Whether a field value starts or ends with whitespace: malformed in HTTP/2 (RFC 9113
/// §8.2.1), where nothing strips it as an HTTP/1.1 parser does. The h2 crate checks names (lower
/// case) and forbidden bytes, not this; forwarded, `" Bearer x"` would reach an HTTP/1.1 app as
/// a clean `Bearer x` that portcullis never took for a credential.
pub fn has_edge_whitespace(value: &http::HeaderValue) -> bool {
    let b = value.as_bytes();
    matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
}

/// The first HTTP/2 field whose value is malformed ([`has_edge_whitespace`]), if any.
pub fn malformed_h2_field(fields: &HeaderMap) -> Option<&HeaderName> {
    fields.iter().find(|(_, v)| has_edge_whitespace(v)).map(|(n, _)| n)
}

/// Whether a method is one portcullis passes on: its rules and public routes name methods in
/// upper case, and an app that upper-cases what it receives (Werkzeug, Django) would run its
/// `DELETE` handler for a `delete` no rule matched. Upper-case extension methods (WebDAV's
/// `PROPFIND`) pass.
pub fn is_canonical_method(method: &http::Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

/// The request's one `Host` (RFC 9112 §3.2): an HTTP/1.1 request needs exactly one, a valid
/// `host[:port]` without userinfo; an absolute-form target's authority replaces it, so the app
/// and `X-Forwarded-Host` see the same host the request was routed by.
pub fn settle_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err("userinfo in the request target");
        }
        // HTTP/2: a `host` beside `:authority` must name the same (RFC 9113 §8.3.1).
        if req.version() == http::Version::HTTP_2 {
            let default_port =
                if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
            // Case-insensitive host, the scheme's default port made explicit.
            let canonical = |a: &http::uri::Authority| {
                (a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(default_port))
            };
            let want = canonical(authority);
            for h in req.headers().get_all(header::HOST) {
                let named = h.to_str().ok().and_then(|h| h.parse::<http::uri::Authority>().ok());
                if named.as_ref().map(canonical).as_ref() != Some(&want) {
                    return Err("the host header differs from :authority");
                }
            }
        }
        let v = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| "invalid authority in the request target")?;
        req.headers_mut().insert(header::HOST, v);
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host header"),
        (None, _) if req.version() == http::Version::HTTP_11 => Err("no Host header"),
        (None, _) => Ok(()),
        (Some(h), None) => {
            let valid = !h.is_empty()
                && !h.as_bytes().contains(&b'@')
                && port_is_digits(h.as_bytes())
                && h.to_str().ok().and_then(|s| s.parse::<http::uri::Authority>().ok()).is_some();
            if valid {
                Ok(())
            } else {
                Err("invalid Host header")
            }
        }
    }
}

/// Whether the port of a `host[:port]`, if it has one, is digits (the `http` crate reads
/// `app.example:x` as a host without a port).
fn port_is_digits(h: &[u8]) -> bool {
    let after_host = match h.iter().rposition(|b| *b == b']') {
        Some(i) => &h[i + 1..],
        None => h,
    };
    match after_host.iter().rposition(|b| *b == b':') {
        Some(i) => i + 1 < after_host.len() && after_host[i + 1..].iter().all(u8::is_ascii_digit),
        None => true,
    }
}

/// The client sent `TE: trailers` (gRPC does): passed on to an HTTP/2 app, the one TE value
/// HTTP/2 allows.
#[derive(Debug, Clone, Copy)]
pub struct TeTrailers;

/// An HTTP/1.1 `Upgrade: websocket` the client asked for (with `Connection: upgrade`). The
/// hop-by-hop headers are removed like any others; the proxy puts these back when it forwards
/// the (authenticated) request. Other upgrades are not passed on.
#[derive(Debug, Clone)]
pub struct WebSocketUpgrade(pub http::HeaderValue);

fn websocket_upgrade(headers: &HeaderMap, version: http::Version) -> Option<WebSocketUpgrade> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let upgrade = headers.get(header::UPGRADE)?;
    let websocket =
        upgrade.to_str().ok()?.split(',').any(|p| {
            p.trim().split('/').next().is_some_and(|n| n.eq_ignore_ascii_case("websocket"))
        });
    (connection_says_upgrade && websocket).then(|| WebSocketUpgrade(upgrade.clone()))
}

/// Refuses requests whose framing portcullis will not pass on ([`framing_problem`],
/// [`settle_host`]), then strips hop-by-hop headers from the client's request before anything
/// else reads it.
#[derive(Debug, Clone, Default)]
pub struct StripHopByHopLayer;

impl<S> Layer<S> for StripHopByHopLayer {
    type Service = StripHopByHop<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StripHopByHop { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StripHopByHop<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for StripHopByHop<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if !is_canonical_method(req.method()) {
            tracing::debug!(method = %req.method(), "refused a method with lower-case letters");
            let why = "the method has lower-case letters (methods are case-sensitive)";
            let r = Rejection::BadRequest(why);
            return Either::Right(ready(Ok(Refusal::new(r, "bad_method").detail(why).response())));
        }
        if req.version() == http::Version::HTTP_2 {
            if let Some(name) = malformed_h2_field(req.headers()) {
                tracing::debug!(field = %name, "refused an HTTP/2 field with edge whitespace");
                let why = "an HTTP/2 field value starts or ends with whitespace";
                let r = Rejection::BadRequest(why);
                let refusal =
                    Refusal::new(r, "malformed_h2_field").detail(format!("{why}: {name}"));
                return Either::Right(ready(Ok(refusal.response())));
            }
        }
        if let Some(r) = framing_problem(req.headers()) {
            tracing::debug!(reason = ?r, "refused request framing");
            let detail = format!("{r:?}");
            return Either::Right(ready(Ok(Refusal::new(r, "bad_framing")
                .detail(detail)
                .response())));
        }
        if let Err(why) = settle_host(&mut req) {
            tracing::debug!(reason = why, "refused request host");
            let r = Rejection::BadRequest(why);
            return Either::Right(ready(Ok(Refusal::new(r, "bad_host").detail(why).response())));
        }
        if let Some(upgrade) = websocket_upgrade(req.headers(), req.version()) {
            req.extensions_mut().insert(upgrade);
        }
        let te_trailers = req
            .headers()
            .get_all(header::TE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        if te_trailers {
            req.extensions_mut().insert(TeTrailers);
        }
        remove_hop_by_hop(req.headers_mut());
        Either::Left(self.inner.call(req))
    }
}

/// Why a client-sent header is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Set by portcullis from a verified identity: never from a client.
    Identity,
    /// A path or method override: never forwarded.
    PathOverride,
    /// Forwarding information: kept only from trusted proxies.
    TrustedProxyOnly,
}

/// The names [`StripUntrusted`] removes, by canonical spelling (lower case, `-`).
#[derive(Debug)]
pub struct UntrustedHeaders {
    names: HashMap<String, Class>,
    /// First bytes (lower case) of every name and prefix: most request headers are ruled out
    /// by one lookup, without hashing.
    first: [bool; 256],
}

impl UntrustedHeaders {
    /// `identity` are the identity headers portcullis can set (defaults and configured ones).
    pub fn new(identity: &[HeaderName]) -> Self {
        let mut names = HashMap::new();
        for n in TRUSTED_PROXY_HEADERS {
            names.insert(n.to_string(), Class::TrustedProxyOnly);
        }
        for n in PATH_OVERRIDE_HEADERS {
            names.insert(n.to_string(), Class::PathOverride);
        }
        for n in identity {
            names.insert(n.as_str().replace('_', "-"), Class::Identity);
        }
        let mut first = [false; 256];
        for n in names.keys().map(String::as_str).chain([IDENTITY_PREFIX]) {
            if let Some(b) = n.bytes().next() {
                first[usize::from(b.to_ascii_lowercase())] = true;
                first[usize::from(b.to_ascii_uppercase())] = true;
            }
        }
        Self { names, first }
    }

    /// Whether a client-sent header named `name` goes, given whether the peer is trusted.
    fn removes(&self, name: &str, trusted_peer: bool) -> bool {
        if !name.bytes().next().is_some_and(|b| self.first[usize::from(b)]) {
            return false;
        }
        let folded;
        let canonical = if name.contains('_') {
            folded = name.to_ascii_lowercase().replace('_', "-");
            folded.as_str()
        } else {
            name
        };
        if has_prefix(canonical, IDENTITY_PREFIX) {
            return true;
        }
        match self.names.get(canonical) {
            None => false,
            Some(Class::Identity | Class::PathOverride) => true,
            // A trusted proxy sends the canonical spelling; an `_` spelling is a client's
            // copy it passed through.
            Some(Class::TrustedProxyOnly) => !trusted_peer || name.contains('_'),
        }
    }
}

/// Removes every client-sent header that only portcullis or a trusted proxy may set, before any
/// layer reads the request.
/// Whether the peer is a trusted proxy is judged here, per request, against this layer's
/// `server.trusted_proxies`, and recorded on the request's [`ClientAddr`] for the layers after.
#[derive(Debug, Clone)]
pub struct StripUntrustedLayer {
    names: Arc<UntrustedHeaders>,
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl StripUntrustedLayer {
    pub fn new(names: Arc<UntrustedHeaders>, trusted_proxies: Arc<[ipnet::IpNet]>) -> Self {
        Self { names, trusted_proxies }
    }
}

impl<S> Layer<S> for StripUntrustedLayer {
    type Service = StripUntrusted<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StripUntrusted {
            inner,
            names: self.names.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StripUntrusted<S> {
    inner: S,
    names: Arc<UntrustedHeaders>,
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl<S, B> Service<Request<B>> for StripUntrusted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let trusted = match req.extensions_mut().get_mut::<ClientAddr>() {
            Some(c) => {
                c.trusted = c.is_in(&self.trusted_proxies);
                c.trusted
            }
            None => false,
        };
        let doomed: Vec<HeaderName> = req
            .headers()
            .keys()
            .filter(|n| self.names.removes(n.as_str(), trusted))
            .cloned()
            .collect();
        for name in doomed {
            tracing::debug!(header = %name, "stripped client-sent header");
            req.headers_mut().remove(&name);
        }
        self.inner.call(req)
    }
}

/// Path normalisation ([`crate::path`]) applied to every request, before routing.
/// Rewrites the request URI to the normalised path (query kept) or answers `400`.
#[derive(Debug, Clone, Default)]
pub struct NormalizePathLayer;

impl<S> Layer<S> for NormalizePathLayer {
    type Service = NormalizePath<S>;
    fn layer(&self, inner: S) -> Self::Service {
        NormalizePath { inner }
    }
}

#[derive(Debug, Clone)]
pub struct NormalizePath<S> {
    inner: S,
}

type PinnedFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<Request<axum::body::Body>> for NormalizePath<S>
where
    S: Service<Request<axum::body::Body>, Response = http::Response<axum::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<S::Future, PinnedFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<axum::body::Body>) -> Self::Future {
        let path = req.uri().path();
        if crate::path::is_plain(path) {
            return futures_util::future::Either::Left(self.inner.call(req));
        }
        match crate::path::normalize(path) {
            Ok(p) => {
                let changed = p != path;
                let pq = match req.uri().query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p.clone(),
                };
                if let Ok(pq) = pq.parse::<http::uri::PathAndQuery>() {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
                if changed && p == req.uri().path() {
                    let fut = self.inner.call(req);
                    futures_util::future::Either::Right(Box::pin(async move {
                        let mut resp = fut.await?;
                        resp.extensions_mut().insert(crate::path::NormalizedPath(p));
                        Ok(resp)
                    }))
                } else {
                    futures_util::future::Either::Left(self.inner.call(req))
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "refused ambiguous path");
                let detail = e.to_string();
                let resp =
                    Refusal::new(Rejection::BadPath(e), "bad_path").detail(detail).response();
                futures_util::future::Either::Right(Box::pin(async move { Ok(resp) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[test]
    fn header_spellings_are_compared_loosely() {
        assert!(same_header("X_Forwarded_User", "x-forwarded-user"));
        assert!(same_header("x-forwarded_user", "x-forwarded-user"));
        assert!(!same_header("x-forwarded-users", "x-forwarded-user"));
        // `_` stands for `-` only, and only in that place
        assert!(!same_header("xaforwarded-user", "x-forwarded-user"));
        assert!(!same_header("x_forwarded_usex", "x-forwarded-user"));
        assert!(!same_header("x-forwarded-user", "x-forwarded_user".replace('_', "a").as_str()));
        assert!(has_prefix("x_auth_request_user", "x-auth-request-"));
    }

    #[test]
    fn connection_named_headers_are_removed_but_not_guaranteed_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static(
                "keep-alive, X-Secret , close, host, x-request-id, x-forwarded-host, X_Forwarded_For, x-real-ip",
            ),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(header::HOST, HeaderValue::from_static("app"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("app"));
        h.insert("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        remove_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["accept", "host", "x-forwarded-host", "x-real-ip", "x-request-id"]);
        // an option that is not ASCII hides nothing
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_bytes(b"x-secret, \xc3\xa9").unwrap());
        h.insert("x-secret", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // one without `Connection`, and one with none at all
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["accept"]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    async fn strip(
        trusted: bool,
        headers: &[(&str, &str)],
        identity: &[&'static str],
    ) -> Vec<String> {
        let identity: Vec<HeaderName> =
            identity.iter().map(|n| HeaderName::from_static(n)).collect();
        let proxies: Arc<[ipnet::IpNet]> = match trusted {
            true => vec!["10.0.0.0/8".parse().unwrap()].into(),
            false => Vec::new().into(),
        };
        let out = strip_from("10.0.0.1:5000", proxies, headers, &identity).await;
        let mut left: Vec<_> = out.headers().keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        left
    }

    /// The request `StripUntrusted` passes on, from `peer`, with `proxies` trusted.
    async fn strip_from(
        peer: &str,
        proxies: Arc<[ipnet::IpNet]>,
        headers: &[(&str, &str)],
        identity: &[HeaderName],
    ) -> Request<()> {
        let svc = ServiceBuilder::new()
            .layer(StripUntrustedLayer::new(Arc::new(UntrustedHeaders::new(identity)), proxies))
            .service(service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req) }));
        let mut req = Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).unwrap();
        let mut addr = ClientAddr::new(peer.parse().unwrap());
        // whatever the connection thought: the layer judges each request itself
        addr.trusted = true;
        req.extensions_mut().insert(addr);
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn trust_is_judged_per_request_by_the_layers_own_list() {
        let sent = [("x-forwarded-for", "1.2.3.4")];
        let list = |nets: &[&str]| -> Arc<[ipnet::IpNet]> {
            nets.iter().map(|n| n.parse().unwrap()).collect::<Vec<_>>().into()
        };
        for (peer, nets, trusted) in [
            ("10.0.0.1:5000", &["10.0.0.0/8"][..], true),
            ("[::ffff:10.0.0.1]:5000", &["10.0.0.0/8"][..], true),
            ("[::1]:5000", &["::1/128"][..], true),
            ("10.0.0.1:5000", &[][..], false),
            ("192.168.0.1:5000", &["10.0.0.0/8", "::1/128"][..], false),
        ] {
            let out = strip_from(peer, list(nets), &sent, &[]).await;
            let judged = out.extensions().get::<ClientAddr>().unwrap().trusted;
            assert_eq!(judged, trusted, "{peer} in {nets:?}");
            assert_eq!(out.headers().contains_key("x-forwarded-for"), trusted, "{peer}");
        }
    }

    #[tokio::test]
    async fn identity_and_override_headers_go_from_every_peer() {
        let sent = [
            ("X-Forwarded-User", "evil"),
            ("x_forwarded_user", "evil"),
            ("X-FORWARDED_EMAIL", "evil"),
            ("X-Auth-Request-Groups", "admins"),
            ("remote-user", "evil"),
            ("Remote_User", "evil"),
            ("X-Original-URL", "/admin"),
            ("x_rewrite_url", "/admin"),
            ("X-Forwarded-Method", "DELETE"),
            ("x-request-id", "keep"),
            ("accept", "keep"),
        ];
        let identity = ["x-forwarded-user", "x-forwarded-email", "remote-user"];
        for trusted in [false, true] {
            assert_eq!(strip(trusted, &sent, &identity).await, vec!["accept", "x-request-id"]);
        }
    }

    #[tokio::test]
    async fn forwarding_headers_only_from_trusted_proxies() {
        let sent: Vec<(&str, &str)> =
            TRUSTED_PROXY_HEADERS.iter().map(|n| (*n, "1.2.3.4")).collect();
        assert!(strip(false, &sent, &[]).await.is_empty());
        let mut kept: Vec<String> = TRUSTED_PROXY_HEADERS.iter().map(|s| s.to_string()).collect();
        kept.sort();
        assert_eq!(strip(true, &sent, &[]).await, kept);
        // the `_` spellings go even from a trusted proxy
        let sent = [("x_forwarded_for", "1.2.3.4"), ("True_Client_IP", "1.2.3.4")];
        assert!(strip(true, &sent, &[]).await.is_empty());
    }

    #[test]
    fn trailer_declarations_keep_only_what_may_travel() {
        let untrusted = UntrustedHeaders::new(&[HeaderName::from_static("x-forwarded-user")]);
        let mut h = HeaderMap::new();
        h.insert(
            header::TRAILER,
            HeaderValue::from_bytes(
                b"grpc-status, Authorization,X-Forwarded-User , x-checksum, , set-cookie, \xc3\xa9",
            )
            .unwrap(),
        );
        h.append(header::TRAILER, HeaderValue::from_static("x_auth_request_user, Grpc-Message"));
        clean_trailer_declaration(&mut h, Some(&untrusted));
        let left: Vec<_> = h.get_all(header::TRAILER).iter().collect();
        assert_eq!(left, ["grpc-status, x-checksum, grpc-message"]);
        // responses (no untrusted list): identity names may be declared by the app
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("x-forwarded-user, content-length"));
        clean_trailer_declaration(&mut h, None);
        assert!(h.get(header::TRAILER).is_none(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("x-app-sum"));
        clean_trailer_declaration(&mut h, None);
        assert_eq!(h[header::TRAILER], "x-app-sum");
        // nothing left to declare: no Trailer at all; none at all: none added
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, HeaderValue::from_static("cookie"));
        clean_trailer_declaration(&mut h, None);
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        clean_trailer_declaration(&mut h, None);
        assert!(h.is_empty());
    }

    #[test]
    fn methods_with_lower_case_letters_are_not_canonical() {
        for ok in ["GET", "POST", "DELETE", "PROPFIND", "M-SEARCH", "BREW"] {
            assert!(is_canonical_method(&http::Method::from_bytes(ok.as_bytes()).unwrap()), "{ok}");
        }
        for bad in ["get", "delete", "Post", "heaD", "propfind", "x"] {
            assert!(
                !is_canonical_method(&http::Method::from_bytes(bad.as_bytes()).unwrap()),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_http1_request_needs_one_valid_host() {
        let req = |version: http::Version, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri("/x");
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            settle_host(&mut b.body(()).unwrap())
        };
        use http::Version;
        assert!(req(Version::HTTP_11, &["app.example"]).is_ok());
        assert!(req(Version::HTTP_11, &["app.example:8080"]).is_ok());
        assert!(req(Version::HTTP_11, &[]).is_err(), "HTTP/1.1 needs a Host");
        assert!(req(Version::HTTP_10, &[]).is_ok(), "HTTP/1.0 may go without");
        assert!(req(Version::HTTP_11, &["a.example", "b.example"]).is_err());
        for bad in ["", "user@app.example", "app example", "app.example:x"] {
            assert!(req(Version::HTTP_11, &[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_h2_host_must_name_the_authority() {
        let req = |host: Option<&str>| {
            let mut b =
                Request::builder().version(http::Version::HTTP_2).uri("http://App.Example/x");
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            let mut r = b.body(()).unwrap();
            settle_host(&mut r).map(|()| r.headers()[header::HOST].clone())
        };
        for same in [None, Some("app.example"), Some("APP.EXAMPLE:80"), Some("app.example:80")] {
            assert_eq!(req(same), Ok(HeaderValue::from_static("App.Example")), "{same:?}");
        }
        for other in ["evil.example", "app.example:8080", "app.example.evil", "", "a b"] {
            assert!(req(Some(other)).is_err(), "{other:?}");
        }
        // HTTP/1.1 absolute-form: the target's authority wins, Host is replaced (RFC 9112 §3.2.2)
        let mut r = Request::builder()
            .uri("http://app.example/x")
            .header(header::HOST, "other")
            .body(())
            .unwrap();
        assert!(settle_host(&mut r).is_ok());
        assert_eq!(r.headers()[header::HOST], "app.example");
    }

    #[test]
    fn h2_values_with_edge_whitespace_are_malformed() {
        for bad in [" v", "v ", "\tv", "v\t", " ", "\t"] {
            assert!(has_edge_whitespace(&HeaderValue::from_str(bad).unwrap()), "{bad:?}");
        }
        for ok in ["v", "a b", "a\tb", ""] {
            assert!(!has_edge_whitespace(&HeaderValue::from_str(ok).unwrap()), "{ok:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("fine"));
        assert!(malformed_h2_field(&h).is_none());
        h.append("x-b", HeaderValue::from_static("ok"));
        h.append("x-b", HeaderValue::from_static("not ok "));
        assert_eq!(malformed_h2_field(&h).map(HeaderName::as_str), Some("x-b"));
    }

    #[test]
    fn framing_limits_and_codings() {
        let mut h = HeaderMap::new();
        for i in 0..MAX_REQUEST_HEADERS {
            h.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        assert!(framing_problem(&h).is_none(), "exactly the limit is fine");
        h.insert("x-one-more", HeaderValue::from_static("v"));
        assert!(matches!(framing_problem(&h), Some(Rejection::HeadTooLarge)));
        // bytes: name + value + 4 per line
        let mut h = HeaderMap::new();
        let value = "v".repeat(MAX_REQUEST_HEAD_BYTES - "x-big".len() - 4);
        h.insert("x-big", HeaderValue::from_str(&value).unwrap());
        assert!(framing_problem(&h).is_none(), "exactly the byte limit is fine");
        let value = "v".repeat(MAX_REQUEST_HEAD_BYTES - "x-big".len() - 3);
        h.insert("x-big", HeaderValue::from_str(&value).unwrap());
        assert!(matches!(framing_problem(&h), Some(Rejection::HeadTooLarge)));
        let te = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            framing_problem(&h)
        };
        assert!(te("chunked").is_none());
        assert!(te("Chunked").is_none());
        assert!(te(" chunked , ").is_none());
        for bad in ["gzip, chunked", "chunked, chunked", "gzip", "identity"] {
            assert!(matches!(te(bad), Some(Rejection::UnsupportedTransferCoding)), "{bad}");
        }
        assert!(framing_problem(&HeaderMap::new()).is_none());
    }
}
