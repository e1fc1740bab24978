//! The headers only portcullis or a trusted proxy may set: removed from every request before
//! any layer could trust them, with trust judged per request against the pipeline's own
//! `server.trusted_proxies`.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::Request;
use tower::{Layer, Service};

use super::{has_prefix, IDENTITY_PREFIX, PATH_OVERRIDE_HEADERS, TRUSTED_PROXY_HEADERS};
use crate::peer::ClientAddr;

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
    /// Hashed with foldhash: a lookup per `x-`-like header of every request.
    names: HashMap<String, Class, foldhash::fast::RandomState>,
    /// First bytes (lower case) of every name and prefix: most request headers are ruled out
    /// by one lookup, without hashing.
    first: [bool; 256],
}

impl UntrustedHeaders {
    /// `identity` are the identity headers portcullis can set (defaults and configured ones).
    pub fn new(identity: &[HeaderName]) -> Self {
        let mut names = HashMap::default();
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
    pub(super) fn removes(&self, name: &str, trusted_peer: bool) -> bool {
        self.judge(name, trusted_peer) != Verdict::Keep
    }

    /// What becomes of a client-sent header named `name`, given whether the peer is trusted.
    fn judge(&self, name: &str, trusted_peer: bool) -> Verdict {
        if !name.bytes().next().is_some_and(|b| self.first[usize::from(b)]) {
            return Verdict::Keep;
        }
        let folded;
        let canonical = if name.contains('_') {
            folded = name.to_ascii_lowercase().replace('_', "-");
            folded.as_str()
        } else {
            name
        };
        if has_prefix(canonical, IDENTITY_PREFIX) {
            return Verdict::Remove;
        }
        // A trusted proxy sends the canonical spelling; an `_` spelling is a client's copy it
        // passed through.
        let from_proxy = trusted_peer && !name.contains('_');
        match self.names.get(canonical) {
            None => Verdict::Keep,
            Some(Class::Identity) => Verdict::Remove,
            Some(Class::PathOverride) if from_proxy => Verdict::Original,
            Some(Class::PathOverride) => Verdict::Remove,
            Some(Class::TrustedProxyOnly) if from_proxy => Verdict::Keep,
            Some(Class::TrustedProxyOnly) => Verdict::Remove,
        }
    }
}

/// What [`StripUntrusted`] does with one header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    Remove,
    /// Removed from the request, kept aside in [`OriginalRequest`]: a trusted proxy naming the
    /// request it asks about (forward-auth).
    Original,
}

/// The headers a trusted proxy sent that name the original request it asks about
/// (`X-Original-URI`, `X-Forwarded-Uri`, `X-Forwarded-Method`, ...), in the canonical spelling
/// only, taken off the request (they never reach the app) and kept here for an endpoint that
/// decides on the original request (forward-auth). From any other peer they are dropped, and this
/// extension is absent.
#[derive(Debug, Clone, Default)]
pub struct OriginalRequest(pub http::HeaderMap);

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
        let doomed: Vec<(HeaderName, Verdict)> = req
            .headers()
            .keys()
            .filter_map(|n| match self.names.judge(n.as_str(), trusted) {
                Verdict::Keep => None,
                v => Some((n.clone(), v)),
            })
            .collect();
        let mut original = http::HeaderMap::new();
        for (name, verdict) in doomed {
            if verdict == Verdict::Original {
                // moved, not copied
                if let http::header::Entry::Occupied(e) = req.headers_mut().entry(&name) {
                    let (name, values) = e.remove_entry_mult();
                    for v in values {
                        original.append(name.clone(), v);
                    }
                }
            } else {
                tracing::debug!(header = %name, "stripped client-sent header");
                req.headers_mut().remove(&name);
            }
        }
        if !original.is_empty() {
            req.extensions_mut().insert(OriginalRequest(original));
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

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
    async fn a_trusted_proxys_original_request_is_kept_aside_and_never_forwarded() {
        let sent = [
            ("X-Original-URI", "/admin?a=1"),
            ("X-Forwarded-Method", "DELETE"),
            ("x-forwarded-uri", "/one"),
            ("x-forwarded-uri", "/two"),
            ("x_original_method", "PUT"),
            ("accept", "keep"),
        ];
        for (peer, trusted) in [("10.0.0.1:5000", true), ("192.168.0.1:5000", false)] {
            let proxies: Arc<[ipnet::IpNet]> = vec!["10.0.0.0/8".parse().unwrap()].into();
            let out = strip_from(peer, proxies, &sent, &[]).await;
            let left: Vec<_> = out.headers().keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["accept"], "{peer}");
            let original = out.extensions().get::<OriginalRequest>();
            if !trusted {
                assert!(original.is_none(), "{peer}");
                continue;
            }
            let h = &original.unwrap().0;
            assert_eq!(h["x-original-uri"], "/admin?a=1");
            assert_eq!(h["x-forwarded-method"], "DELETE");
            // repeated as sent, so a caller can refuse a repeat; an `_` spelling is a client's
            let uris: Vec<_> = h.get_all("x-forwarded-uri").iter().collect();
            assert_eq!(uris, ["/one", "/two"]);
            assert_eq!(h.len(), 4);
        }
        // a request without them carries no extension
        let proxies: Arc<[ipnet::IpNet]> = vec!["10.0.0.0/8".parse().unwrap()].into();
        let out = strip_from("10.0.0.1:5000", proxies, &[("accept", "x")], &[]).await;
        assert!(out.extensions().get::<OriginalRequest>().is_none());
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
}
