//! `[upstream]`: the app beside the proxy.

use super::*;

/// Default bound on requests in flight to the upstream (per process).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;

/// Default bound on new connections to the app not answered yet (per process): half the
/// accept backlog of a listener made by Rust's std or tokio, Go or Node (128 or 511).
pub const DEFAULT_MAX_CONNECTING: usize = 64;

/// Default time to open a TCP connection to the upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default time to wait for the upstream's response head.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The app, usually on loopback. Only `http` is accepted.
    pub url: Url,
    /// Time to open a connection. Defaults to 2 s.
    pub connect_timeout: Duration,
    /// Time until the response head; streamed bodies have no total limit. Defaults to 60 s.
    pub response_timeout: Duration,
    /// Forward the client's `Host` header (else the upstream's authority). Defaults to true.
    pub pass_host_header: bool,
    /// Requests in flight to the app at once (per process, until the response body ends);
    /// beyond it `503`. Defaults to 1024; 0 = no limit.
    pub max_concurrent_requests: usize,
    /// New connections to the app that have not brought back a response yet, across all
    /// workers (each worker gets its share, at least one). A connection not answered yet may
    /// still wait in the app's accept queue (128 deep for most servers); beyond it the kernel
    /// drops connection attempts, which cost a 1 s retry or a `504`. Requests beyond it wait
    /// for a released or a new connection, within `connect_timeout`. Defaults to 64.
    pub max_connecting: usize,
    /// How portcullis speaks to the app. Defaults to HTTP/1.1.
    pub protocol: UpstreamProtocol,
}

/// `upstream.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections (`"http1"`, the default).
    Http1,
    /// HTTP/2 without TLS, prior knowledge (`"h2c"`): for apps that speak HTTP/2, gRPC servers.
    H2c,
}

impl UpstreamConfig {
    /// `host:port` to open a TCP connection to (IPv6 hosts keep their brackets).
    pub fn connect_target(&self) -> String {
        format!(
            "{}:{}",
            self.url.host_str().unwrap_or("127.0.0.1"),
            self.url.port_or_known_default().unwrap_or(80)
        )
    }
}

impl UpstreamConfig {
    pub(crate) fn from_raw(raw: RawUpstream) -> Result<Self, ConfigError> {
        let url_text = raw.url.ok_or_else(|| {
            ConfigError::new(
                "upstream.url",
                "is required (the app, e.g. \"http://127.0.0.1:8080\")",
            )
        })?;
        let url = Url::parse(&url_text).map_err(|e| {
            ConfigError::new("upstream.url", format!("not a valid URL {url_text:?}: {e}"))
        })?;
        if url.scheme() != "http" {
            return Err(ConfigError::new(
                "upstream.url",
                format!("only http:// is supported for the app beside the proxy, got {url_text:?}"),
            ));
        }
        if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new("upstream.url", "needs a host and no query or fragment"));
        }
        let upstream = UpstreamConfig {
            url,
            connect_timeout: duration(
                "upstream.connect_timeout",
                raw.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            response_timeout: duration(
                "upstream.response_timeout",
                raw.response_timeout.as_deref(),
                DEFAULT_RESPONSE_TIMEOUT,
            )?,
            pass_host_header: raw.pass_host_header.unwrap_or(true),
            max_concurrent_requests: match raw.max_concurrent_requests {
                None => DEFAULT_MAX_CONCURRENT_REQUESTS,
                Some(n) if (0..=1_000_000).contains(&n) => n as usize,
                Some(n) => {
                    return Err(ConfigError::new(
                        "upstream.max_concurrent_requests",
                        format!("must be between 0 (no limit) and 1000000, got {n}"),
                    ))
                }
            },
            max_connecting: match raw.max_connecting {
                None => DEFAULT_MAX_CONNECTING,
                Some(n) if (1..=100_000).contains(&n) => n as usize,
                Some(n) => {
                    return Err(ConfigError::new(
                        "upstream.max_connecting",
                        format!("must be between 1 and 100000, got {n}"),
                    ))
                }
            },
            protocol: match raw.protocol.as_deref().unwrap_or("http1") {
                "http1" => UpstreamProtocol::Http1,
                "h2c" => UpstreamProtocol::H2c,
                other => {
                    return Err(ConfigError::new(
                        "upstream.protocol",
                        format!("expected \"http1\" or \"h2c\", got {other:?}"),
                    ))
                }
            },
        };
        for (key, d) in [
            ("upstream.connect_timeout", upstream.connect_timeout),
            ("upstream.response_timeout", upstream.response_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be greater than zero"));
            }
        }
        Ok(upstream)
    }
}
