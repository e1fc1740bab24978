//! Who is on the other end of a client connection: its address (rendered once per
//! connection) and whether it is one of `server.trusted_proxies`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

/// The client's address, set per connection by the server, with its IP already rendered (once
/// per connection, not per request) and whether it is one of `server.trusted_proxies`.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    /// The peer's IP as a header value (`X-Forwarded-For`, `X-Real-IP`).
    pub ip: Option<HeaderValue>,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    pub trusted: bool,
}

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, ip: HeaderValue::from_str(&addr.ip().to_string()).ok(), trusted: false }
    }

    /// The peer, trusted when its IP is in one of `trusted`.
    pub fn with_trusted(addr: SocketAddr, trusted: &[ipnet::IpNet]) -> Self {
        let ip = canonical_ip(addr.ip());
        Self { trusted: trusted.iter().any(|n| n.contains(&ip)), ..Self::new(addr) }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, from a dual-stack listener) as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
