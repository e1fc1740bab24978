//! What refuses a request before anything reads it: methods with lower-case letters, HTTP/2
//! fields with edge whitespace, framing portcullis will not pass on, a missing or ambiguous
//! `Host`, ambiguous paths; and the layers that apply these checks.

use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::{ready, Either, Ready};
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use tower::{Layer, Service};

use super::{remove_present, HopByHop};
use crate::response::{Refusal, Rejection};

/// The most request headers accepted; more is `431`.
pub const MAX_REQUEST_HEADERS: usize = 100;
/// The largest request head (header names and values) accepted; larger is `431`.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// What is wrong with a request's framing, if anything: a head over our limits, or a transfer
/// coding other than a single `chunked` (hyper has decoded `chunked`; another coding before it,
/// `gzip, chunked`, would reach the app as a body it cannot tell is compressed).
///
/// Notes the hop-by-hop headers in `present` in the same pass over the fields (all of them
/// unless the head is too large).
pub fn framing_problem(headers: &HeaderMap, present: &mut HopByHop) -> Option<Rejection> {
    if headers.len() > MAX_REQUEST_HEADERS {
        return Some(Rejection::HeadTooLarge);
    }
    let mut size = 0;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        present.note(name);
    }
    if size > MAX_REQUEST_HEAD_BYTES {
        return Some(Rejection::HeadTooLarge);
    }
    if !present.has(&header::TRANSFER_ENCODING) {
        return None;
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
            // the common shape first, decided on its bytes without parsing (which copies)
            let valid = plain_host(h.as_bytes())
                || !h.is_empty()
                    && !h.as_bytes().contains(&b'@')
                    && port_is_digits(h.as_bytes())
                    && h.to_str()
                        .ok()
                        .and_then(|s| s.parse::<http::uri::Authority>().ok())
                        .is_some();
            if valid {
                Ok(())
            } else {
                Err("invalid Host header")
            }
        }
    }
}

/// Whether `h` is a name of letters, digits, dots and dashes with at most a port of up to 5
/// digits below 65536: a valid authority by construction, which the full parse would accept.
fn plain_host(h: &[u8]) -> bool {
    let (name, port) = match h.iter().position(|b| *b == b':') {
        Some(i) => (&h[..i], Some(&h[i + 1..])),
        None => (h, None),
    };
    !name.is_empty()
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')
        && port.is_none_or(|p| {
            (1..=5).contains(&p.len())
                && p.iter().all(u8::is_ascii_digit)
                && p.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
        })
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

fn websocket_upgrade(
    headers: &HeaderMap,
    version: http::Version,
    present: HopByHop,
) -> Option<WebSocketUpgrade> {
    if version != http::Version::HTTP_11
        || !present.has(&header::CONNECTION)
        || !present.has(&header::UPGRADE)
    {
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
        // one pass over the fields: the head's size, and which hop-by-hop fields it holds
        let mut present = HopByHop::default();
        if let Some(r) = framing_problem(req.headers(), &mut present) {
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
        if let Some(upgrade) = websocket_upgrade(req.headers(), req.version(), present) {
            req.extensions_mut().insert(upgrade);
        }
        let te_trailers = present.has(&header::TE)
            && req
                .headers()
                .get_all(header::TE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        if te_trailers {
            req.extensions_mut().insert(TeTrailers);
        }
        // (settle_host may have set Host, never a hop-by-hop field)
        remove_present(req.headers_mut(), present);
        Either::Left(self.inner.call(req))
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
    fn a_plain_host_is_one_the_full_parse_accepts() {
        let full =
            |h: &str| port_is_digits(h.as_bytes()) && h.parse::<http::uri::Authority>().is_ok();
        let mut cases: Vec<String> = [
            "app.example",
            "APP-1.example",
            "a",
            "127.0.0.1",
            "app:1",
            "app:8080",
            "app:65535",
            "app:65536",
            "app:99999",
            "app:123456",
            "app:",
            ":80",
            "",
            "a b",
            "a_b",
            "[::1]",
            "[::1]:80",
            "a@b",
            "a:b",
            "a:1:2",
            "é.example",
            "a/b",
            "a?b",
            "a%41",
            "app.:080",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // every byte in a name and in a port
        for b in 0u8..=255 {
            if let Ok(c) = std::str::from_utf8(&[b]) {
                cases.push(format!("a{c}b"));
                cases.push(format!("app:8{c}"));
            }
        }
        for h in &cases {
            if plain_host(h.as_bytes()) {
                assert!(full(h), "{h:?} taken as plain, refused by the parse");
            }
        }
        for h in ["app.example", "app.example:8080", "10.0.0.1:65535", "x-y"] {
            assert!(plain_host(h.as_bytes()), "{h}");
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
        assert!(
            framing_problem(&h, &mut HopByHop::default()).is_none(),
            "exactly the limit is fine"
        );
        h.insert("x-one-more", HeaderValue::from_static("v"));
        assert!(matches!(
            framing_problem(&h, &mut HopByHop::default()),
            Some(Rejection::HeadTooLarge)
        ));
        // bytes: name + value + 4 per line
        let mut h = HeaderMap::new();
        let value = "v".repeat(MAX_REQUEST_HEAD_BYTES - "x-big".len() - 4);
        h.insert("x-big", HeaderValue::from_str(&value).unwrap());
        assert!(
            framing_problem(&h, &mut HopByHop::default()).is_none(),
            "exactly the byte limit is fine"
        );
        let value = "v".repeat(MAX_REQUEST_HEAD_BYTES - "x-big".len() - 3);
        h.insert("x-big", HeaderValue::from_str(&value).unwrap());
        assert!(matches!(
            framing_problem(&h, &mut HopByHop::default()),
            Some(Rejection::HeadTooLarge)
        ));
        let te = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            framing_problem(&h, &mut HopByHop::default())
        };
        assert!(te("chunked").is_none());
        assert!(te("Chunked").is_none());
        assert!(te(" chunked , ").is_none());
        for bad in ["gzip, chunked", "chunked, chunked", "gzip", "identity"] {
            assert!(matches!(te(bad), Some(Rejection::UnsupportedTransferCoding)), "{bad}");
        }
        assert!(framing_problem(&HeaderMap::new(), &mut HopByHop::default()).is_none());
        // the pass notes each hop-by-hop field, as a scan of the names does, in any spelling
        for h in &super::super::HOP_BY_HOP {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            m.insert(
                HeaderName::from_bytes(h.as_str().to_ascii_uppercase().as_bytes()).unwrap(),
                HeaderValue::from_static("chunked"),
            );
            m.insert("x-long-enough-name", HeaderValue::from_static("1"));
            let mut present = HopByHop::default();
            let _ = framing_problem(&m, &mut present);
            assert_eq!(present, HopByHop::of(&m), "{h}");
            assert!(present.has(h) && present.any(), "{h}");
            let others = super::super::HOP_BY_HOP.iter().filter(|o| *o != h);
            assert!(others.clone().all(|o| !present.has(o)), "{h}");
        }
        assert!(!HopByHop::of(&HeaderMap::new()).any());
    }
}
