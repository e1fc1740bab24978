//! Forwarding to the app: `X-Forwarded-*`, the worker's own connections to it
//! ([`crate::upstream`]), streamed bodies, and 502/504 on a failing upstream. What is stripped
//! from requests, and why, is in [`crate::headers`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Request, Response, Version};
use tower::Service;

use crate::body::{AppBody, ClientBody, ClientBodyError};
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::headers::WebSocketUpgrade;
use crate::peer::ClientAddr;
use crate::response::{Refusal, Rejection};
use crate::upstream::{Answer, Upstream, UpstreamError};
use http::StatusCode;
use http_body::Body as _;
use tokio::sync::Semaphore;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The authority as a `Host` header (when the client's is not passed on).
    host: HeaderValue,
    /// The upstream URL's path without a trailing `/` ("" for the root).
    base_path: String,
    pass_host_header: bool,
    /// `server.request_body_idle_timeout`.
    body_idle_timeout: Duration,
    /// `upstream.protocol = "h2c"`.
    h2c: bool,
}

/// The last service: sends the request to the app and streams its answer back. (One `Arc`, so
/// that each request's future takes one reference, not one per field.)
#[derive(Clone)]
pub struct ProxyService {
    inner: Arc<Proxy>,
}

struct Proxy {
    upstream: Upstream,
    target: Target,
    /// Slots of `upstream.max_concurrent_requests`, shared by every worker (`None`: no limit).
    slots: Option<Arc<Semaphore>>,
    /// What a client may not send, in trailers either.
    untrusted: Arc<crate::headers::UntrustedHeaders>,
}

impl std::fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyService").field("upstream", &self.inner.target.authority).finish()
    }
}

impl ProxyService {
    /// A client for the app; `slots` bounds the requests in flight across every worker.
    pub fn new(
        cfg: &UpstreamConfig,
        body_idle_timeout: Duration,
        slots: Option<Arc<Semaphore>>,
        untrusted: Arc<crate::headers::UntrustedHeaders>,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let h2c = cfg.protocol == UpstreamProtocol::H2c;
        // h2c: one multiplexed connection to the app per worker.
        let connecting = cfg.max_connecting / workers.max(1);
        let base_path = cfg.url.path().trim_end_matches('/').to_string();
        let upstream = Upstream::new(
            cfg.connect_target(),
            cfg.connect_timeout,
            cfg.response_timeout,
            h2c,
            connecting,
            base_path.clone(),
        );
        let host = cfg.url.host_str().ok_or_else(|| anyhow::anyhow!("upstream.url has no host"))?;
        let authority = match cfg.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Ok(Self {
            inner: Arc::new(Proxy {
                upstream,
                target: Target {
                    scheme: Scheme::HTTP,
                    host: HeaderValue::from_str(&authority)?,
                    authority: authority.parse()?,
                    base_path,
                    pass_host_header: cfg.pass_host_header,
                    body_idle_timeout,
                    h2c,
                },
                slots,
                untrusted,
            }),
        })
    }
}

impl Proxy {
    fn prepare(&self, req: &mut Request<Body>) -> Result<(), http::Error> {
        let t = &self.target;
        let original_host =
            req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        // HTTP/1.1: the lean client writes the upstream URL's path and the request's own path
        // and query straight into the request line (nothing formatted and parsed again); h2c:
        // `:scheme` and `:authority` from an absolute URI.
        if t.h2c {
            let pq = req.uri().path_and_query().map(PathAndQuery::as_str).unwrap_or("/");
            let pq: PathAndQuery = if t.base_path.is_empty() {
                pq.parse()?
            } else {
                format!("{}{}", t.base_path, pq).parse()?
            };
            *req.uri_mut() = Uri::builder()
                .scheme(t.scheme.clone())
                .authority(t.authority.clone())
                .path_and_query(pq)
                .build()?;
        }
        let te_trailers = req.extensions_mut().remove::<crate::headers::TeTrailers>().is_some();
        crate::headers::clean_trailer_declaration(req.headers_mut(), Some(&self.untrusted));
        *req.version_mut() = if t.h2c { Version::HTTP_2 } else { Version::HTTP_11 };
        // The client accepts trailers, and portcullis passes them on: tell the app (the one TE
        // HTTP/2 allows; gRPC servers look for it).
        if te_trailers {
            req.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let client = req.extensions().get::<ClientAddr>().cloned();
        let h = req.headers_mut();
        match client {
            // From a trusted proxy: its forwarding headers stay, the peer is appended to
            // `X-Forwarded-For`, and what it did not say is filled in.
            Some(ClientAddr { ip: Some(ip), trusted: true, scheme, .. }) => {
                // The chain it sent (its ASCII values), then the peer: built on bytes, and
                // just the peer when it sent none.
                let mut chain = Vec::new();
                for v in h.get_all(&X_FORWARDED_FOR).iter().filter(|v| v.to_str().is_ok()) {
                    chain.extend_from_slice(v.as_bytes());
                    chain.extend_from_slice(b", ");
                }
                let value = if chain.is_empty() {
                    Some(ip.clone())
                } else {
                    chain.extend_from_slice(ip.as_bytes());
                    HeaderValue::from_bytes(&chain).ok()
                };
                if let Some(v) = value {
                    h.insert(X_FORWARDED_FOR, v);
                }
                h.entry(X_REAL_IP).or_insert(ip);
                h.entry(X_FORWARDED_PROTO).or_insert(HeaderValue::from_static(scheme));
                if let Some(v) = original_host {
                    h.entry(X_FORWARDED_HOST).or_insert(v);
                }
            }
            // From anyone else (their copies were stripped): what portcullis saw.
            _ => {
                let scheme = client.as_ref().map_or("http", |c| c.scheme);
                match client.and_then(|c| c.ip) {
                    Some(v) => {
                        h.insert(X_FORWARDED_FOR, v.clone());
                        h.insert(X_REAL_IP, v);
                    }
                    None => {
                        h.remove(X_FORWARDED_FOR);
                        h.remove(X_REAL_IP);
                    }
                };
                h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
                match original_host {
                    Some(v) => h.insert(X_FORWARDED_HOST, v),
                    None => h.remove(X_FORWARDED_HOST),
                };
            }
        }
        if !t.pass_host_header {
            if t.h2c {
                h.remove(header::HOST);
            } else {
                h.insert(header::HOST, t.host.clone());
            }
        } else if !t.h2c && !h.contains_key(header::HOST) {
            h.insert(header::HOST, t.host.clone());
        }
        Ok(())
    }
}

/// The app switched protocols: answer the client with the app's `101` (hop-by-hop headers
/// removed but `Connection: upgrade` and `Upgrade`), then copy bytes both ways (first those the
/// app sent with its `101`) until either side closes, and close both. The concurrency slot is
/// held for as long.
fn splice(
    client_side: hyper::upgrade::OnUpgrade,
    app_side: (tokio::net::TcpStream, bytes::Bytes),
    mut headers: http::HeaderMap,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response<Body> {
    let upgrade = headers.get(header::UPGRADE).cloned();
    crate::headers::remove_hop_by_hop(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
    }
    tokio::spawn(async move {
        let _permit = permit;
        let (mut app, early) = app_side;
        match client_side.await {
            Ok(client) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                if !early.is_empty() {
                    if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &early).await {
                        tracing::debug!(error = %e, "websocket ended with an error");
                        return;
                    }
                }
                match tokio::io::copy_bidirectional(&mut client, &mut app).await {
                    Ok((up, down)) => tracing::debug!(up, down, "websocket closed"),
                    Err(e) => tracing::debug!(error = %e, "websocket ended with an error"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *out.headers_mut() = headers;
    out
}

/// Whether the upstream accepts a TCP connection within `timeout` (for `/readyz` and `check`).
pub async fn upstream_reachable(target: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("upstream {target} not reachable: {e}")),
        Err(_) => Err(format!("upstream {target} connect timed out")),
    }
}

impl Service<Request<Body>> for ProxyService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let this = self.inner.clone();
        Box::pin(async move {
            let error = |rejection: Rejection, reason: &'static str, detail: String| {
                Refusal::new(rejection, reason).detail(detail).response()
            };
            let permit = match &this.slots {
                None => None,
                Some(slots) => match slots.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::warn!(upstream = %this.target.authority, "upstream.max_concurrent_requests reached; answering 503");
                        return Ok(error(
                            Rejection::Busy,
                            "upstream_busy",
                            "upstream.max_concurrent_requests reached".into(),
                        ));
                    }
                },
            };
            let from_h2 = req.version() == Version::HTTP_2;
            if let Err(e) = this.prepare(&mut req) {
                tracing::warn!(error = %e, "could not build the upstream request");
                return Ok(error(Rejection::BadGateway, "upstream_request", e.to_string()));
            }
            if !req.body().is_end_stream() {
                let idle = this.target.body_idle_timeout;
                let untrusted = this.untrusted.clone();
                req = req.map(|b| {
                    Body::new(
                        ClientBody::new(b, idle).cleaning_trailers(untrusted).from_h2(from_h2),
                    )
                });
            }
            // A WebSocket upgrade that got this far was authenticated (and authorised): ask the
            // app for it, and splice the two connections together if it agrees.
            let upgrade = req.extensions_mut().remove::<WebSocketUpgrade>().map(|u| {
                let client_side = hyper::upgrade::on(&mut req);
                let h = req.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, u.0);
                client_side
            });
            let asks_upgrade = upgrade.is_some();
            match this.upstream.send(req, asks_upgrade).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    let body = match body {
                        Answer::H1(body) => {
                            if let Some(client_side) =
                                upgrade.filter(|_| parts.status == StatusCode::SWITCHING_PROTOCOLS)
                            {
                                // the connection is the WebSocket's now: never back in the pool
                                let Some(app_side) = body.into_upgraded() else {
                                    return Ok(error(
                                        Rejection::BadGateway,
                                        "upstream_failed",
                                        "the app's 101 came without its connection".into(),
                                    ));
                                };
                                return Ok(splice(client_side, app_side, parts.headers, permit));
                            }
                            // (its hop-by-hop fields were left out as the head was read)
                            Body::new(AppBody::new(body, permit))
                        }
                        Answer::H2(body) => {
                            if let Some(name) = crate::headers::malformed_h2_field(&parts.headers) {
                                let detail = format!(
                                    "the app's HTTP/2 field {name} starts or ends with whitespace"
                                );
                                tracing::warn!(upstream = %this.target.authority, "{detail}");
                                return Ok(error(
                                    Rejection::BadGateway,
                                    "upstream_malformed",
                                    detail,
                                ));
                            }
                            crate::headers::remove_hop_by_hop(&mut parts.headers);
                            Body::new(AppBody::new(body, permit))
                        }
                    };
                    crate::headers::clean_trailer_declaration(&mut parts.headers, None);
                    Ok(Response::from_parts(parts, body))
                }
                Err(UpstreamError::ResponseTimeout { timeout }) => {
                    tracing::warn!(upstream = %this.target.authority, timeout = ?timeout, "upstream sent no response head in time");
                    Ok(error(
                        Rejection::GatewayTimeout,
                        "upstream_timeout",
                        format!("no response head within {timeout:?}"),
                    ))
                }
                Err(e) => {
                    let detail = crate::error::error_chain(&e);
                    // The client's fault first: its body stopped or broke while being sent.
                    match ClientBodyError::find(&e) {
                        Some(ClientBodyError::Idle(_)) => {
                            tracing::info!(error = %detail, "client stopped sending its request body");
                            return Ok(error(
                                Rejection::RequestBodyTimeout,
                                "client_body_timeout",
                                detail,
                            ));
                        }
                        Some(ClientBodyError::Broken(_) | ClientBodyError::MalformedTrailer(_)) => {
                            tracing::info!(error = %detail, "client's request body broke off");
                            return Ok(error(
                                Rejection::BadRequestBody,
                                "client_body_broken",
                                detail,
                            ));
                        }
                        None => {}
                    }
                    if let Some(f) = e.framing() {
                        tracing::warn!(upstream = %this.target.authority, error = %f, "the app's response is framed ambiguously; connection closed");
                        return Ok(error(Rejection::BadGateway, "upstream_malformed", detail));
                    }
                    if e.is_timeout() {
                        tracing::warn!(upstream = %this.target.authority, error = %detail, "upstream connect timed out");
                        Ok(error(Rejection::GatewayTimeout, "upstream_timeout", detail))
                    } else {
                        tracing::warn!(upstream = %this.target.authority, error = %detail, "upstream failed");
                        Ok(error(Rejection::BadGateway, "upstream_failed", detail))
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forwarding headers the app gets from a peer on a connection of `scheme`.
    fn forwarded(scheme: &'static str, trusted: bool, sent_proto: Option<&str>) -> http::HeaderMap {
        let text = "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
                    [oidc]\nissuer = \"https://idp.example.com\"\n[bearer]\naudiences = [\"api\"]\n";
        let cfg = crate::config::load_str(text, std::iter::empty()).unwrap().config;
        let untrusted = Arc::new(crate::headers::UntrustedHeaders::new(&[]));
        let svc = ProxyService::new(
            cfg.upstream.as_ref().unwrap(),
            Duration::from_secs(5),
            None,
            untrusted,
            1,
        )
        .unwrap();
        let mut req = Request::get("/x").header(header::HOST, "app.example");
        if let Some(p) = sent_proto {
            req = req.header(&X_FORWARDED_PROTO, p);
        }
        let mut req = req.body(Body::empty()).unwrap();
        let mut peer = ClientAddr::with_scheme("192.0.2.7:4000".parse().unwrap(), scheme);
        peer.trusted = trusted;
        req.extensions_mut().insert(peer);
        svc.inner.prepare(&mut req).unwrap();
        req.headers().clone()
    }

    #[tokio::test]
    async fn x_forwarded_proto_is_the_connections_scheme_unless_a_trusted_proxy_said() {
        for scheme in ["http", "https"] {
            let h = forwarded(scheme, false, None);
            assert_eq!(h[&X_FORWARDED_PROTO], scheme);
            assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
            // a client's claim is not taken (StripUntrusted removed it; prepare overwrites)
            assert_eq!(forwarded(scheme, false, Some("https"))[&X_FORWARDED_PROTO], scheme);
            assert_eq!(forwarded(scheme, true, None)[&X_FORWARDED_PROTO], scheme);
        }
        // a trusted proxy's own word stands
        assert_eq!(forwarded("http", true, Some("https"))[&X_FORWARDED_PROTO], "https");
    }
}
