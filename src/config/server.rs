//! `[server]`: the listeners, workers, shutdown, trusted proxies.

use super::*;

/// Default listener for proxied traffic.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4180";

/// Default listener for `/healthz` and `/readyz`.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";

/// Default time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for `server.workers`.
pub const MAX_WORKERS: usize = 256;

/// Default time a client may pause while sending a request body.
pub const DEFAULT_REQUEST_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where proxied traffic arrives. Defaults to `0.0.0.0:4180`.
    pub listen: SocketAddr,
    /// Where `/healthz` and `/readyz` answer. Defaults to `0.0.0.0:9090`.
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM/SIGINT. Defaults to 30 s.
    pub shutdown_timeout: Duration,
    /// How long to keep serving new requests after SIGTERM/SIGINT, with `/readyz` answering
    /// `503`, before the drain starts: the time a load balancer takes to stop sending (a pod
    /// leaving a Service's endpoints). Defaults to 0 (a native sidecar stops after its app and
    /// needs none).
    pub shutdown_delay: Duration,
    /// Threads serving proxied traffic, each with its own listener (`SO_REUSEPORT`) and upstream
    /// pool. Defaults to the CPUs available to the process (cgroup limits included).
    pub workers: usize,
    /// Peers (CIDR ranges) whose forwarding headers (`X-Forwarded-For`, `X-Real-IP`, ...) are
    /// kept. Defaults to none: every peer's are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a client may send nothing while a request body is being forwarded before it
    /// gets `408`. Defaults to 10 s.
    pub request_body_idle_timeout: Duration,
    /// Page templates (`sign_in.html`, ...) that replace the embedded ones. Defaults to none.
    pub templates_dir: Option<std::path::PathBuf>,
}

pub(crate) fn socket_addr(
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let v = value.unwrap_or(default);
    v.parse().map_err(|_| {
        ConfigError::new(key, format!("expected an address like \"0.0.0.0:4180\", got {v:?}"))
    })
}

/// `server.trusted_proxies`: CIDR ranges, or single addresses.
pub(crate) fn trusted_proxies(list: Vec<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let s = s.trim();
        let net = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(n) => out.push(n.trunc()),
            Err(_) => {
                return Err(ConfigError::new(
                    format!("server.trusted_proxies[{i}]"),
                    format!("expected a CIDR range like \"10.0.0.0/8\" or an address, got {s:?}"),
                ))
            }
        }
    }
    Ok(out)
}

impl ServerConfig {
    pub(crate) fn from_raw(raw: RawServer) -> Result<Self, ConfigError> {
        let server = ServerConfig {
            listen: socket_addr("server.listen", raw.listen.as_deref(), DEFAULT_LISTEN)?,
            admin_listen: socket_addr(
                "server.admin_listen",
                raw.admin_listen.as_deref(),
                DEFAULT_ADMIN_LISTEN,
            )?,
            shutdown_timeout: duration(
                "server.shutdown_timeout",
                raw.shutdown_timeout.as_deref(),
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            shutdown_delay: duration(
                "server.shutdown_delay",
                raw.shutdown_delay.as_deref(),
                Duration::ZERO,
            )?,
            workers: match raw.workers {
                None | Some(0) => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(MAX_WORKERS),
                Some(n) if (1..=MAX_WORKERS as i64).contains(&n) => n as usize,
                Some(n) => {
                    return Err(ConfigError::new(
                        "server.workers",
                        format!(
                            "must be between 1 and {MAX_WORKERS} (0 or unset: one per CPU), got {n}"
                        ),
                    ))
                }
            },
            trusted_proxies: trusted_proxies(raw.trusted_proxies.unwrap_or_default())?,
            request_body_idle_timeout: duration(
                "server.request_body_idle_timeout",
                raw.request_body_idle_timeout.as_deref(),
                DEFAULT_REQUEST_BODY_IDLE_TIMEOUT,
            )?,
            templates_dir: raw.templates_dir.filter(|d| !d.trim().is_empty()).map(Into::into),
        };
        if server.request_body_idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.request_body_idle_timeout",
                "must be greater than zero",
            ));
        }
        if server.listen == server.admin_listen && server.listen.port() != 0 {
            return Err(ConfigError::new("server.admin_listen", "must differ from server.listen"));
        }
        Ok(server)
    }
}
