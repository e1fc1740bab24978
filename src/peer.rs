//! Who is on the other end of a client connection: its address (rendered once per
//! connection), the scheme the connection speaks (`http`; `https` once TLS is served) and,
//! judged per request by the current pipeline, whether it is one of `server.trusted_proxies`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

/// The client's address, set per connection by the server, with its IP already rendered (once
/// per connection, not per request), the connection's scheme, and whether it is one of
/// `server.trusted_proxies` (set on each request's copy by [`crate::headers::StripUntrusted`],
/// from the pipeline serving that request, so a reload's list holds on open connections too).
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    /// The peer's IP as a header value (`X-Forwarded-For`, `X-Real-IP`).
    pub ip: Option<HeaderValue>,
    /// `http` or `https`: what the client's connection speaks (`X-Forwarded-Proto`).
    pub scheme: &'static str,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    pub trusted: bool,
}

impl ClientAddr {
    /// A peer on a plain-text connection, not (yet) judged trusted.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_scheme(addr, "http")
    }

    pub fn with_scheme(addr: SocketAddr, scheme: &'static str) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string()).ok();
        Self { addr, ip, scheme, trusted: false }
    }

    /// Whether the peer's IP is in one of `trusted`.
    pub fn is_in(&self, trusted: &[ipnet::IpNet]) -> bool {
        if trusted.is_empty() {
            return false;
        }
        let ip = canonical_ip(self.addr.ip());
        trusted.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, from a dual-stack listener) as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
