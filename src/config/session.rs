//! `[session]`: secrets, the cookie, lifetimes, and where sessions are kept (cookies or Redis).

use super::*;

/// Default `session.cookie_name`.
pub const DEFAULT_COOKIE_NAME: &str = "_portcullis";

/// Default `session.max_lifetime`.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Default `session.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default `session.redis_key_prefix`.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "portcullis:";
/// Default `session.redis_connect_timeout`.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `session.redis_timeout` (each command).
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `session.refresh_lock_lease`.
pub const DEFAULT_REFRESH_LOCK_LEASE: Duration = Duration::from_secs(5);
/// The longest a refresh may take at the provider (the token endpoint and UserInfo, each
/// bounded by the provider client's timeout): how long a refresh lock is renewed, at most.
pub const REFRESH_BUDGET: Duration = Duration::from_secs(15);

/// `[session]`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// 32-byte secrets; the first encrypts, all decrypt (rotation).
    pub secrets: Vec<Secret>,
    /// Defaults to `_portcullis` (prefixed `__Host-` over https, `__Secure-` with a domain).
    pub cookie_name: String,
    pub cookie_domain: Option<String>,
    /// Absolute lifetime. Defaults to 12 h.
    pub max_lifetime: Duration,
    /// Sliding idle limit. Defaults to 1 h.
    pub idle_timeout: Duration,
    /// Where sessions are kept (`session.store`).
    pub store: StoreConfig,
}

/// `session.store`: in the browser's cookies, or on a Redis server (the cookie holds a ticket).
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Cookie,
    Redis(Box<RedisConfig>),
}

/// `session.redis_*`. Sentinel and Cluster will be further variants of where the server is;
/// the rest stays.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS); shown only through [`RedisUrl`]'s redacting `Display`.
    pub url: RedisUrl,
    /// From `session.redis_password_file` (or the URL's `user:password`).
    pub password: Option<Secret>,
    /// PEM of a private CA for `rediss://` (`session.redis_ca_file`); the system's roots without.
    pub ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    /// Bounds every command.
    pub timeout: Duration,
    /// A refresh lock's lease, renewed while the refresh is in flight (at most
    /// [`REFRESH_BUDGET`]).
    pub lock_lease: Duration,
}

/// A Redis URL whose password never prints.
#[derive(Clone)]
pub struct RedisUrl(url::Url);

impl RedisUrl {
    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &url::Url {
        &self.0
    }
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "rediss"
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

impl RedisConfig {
    fn from_raw(raw: &RawSession) -> Result<Self, ConfigError> {
        let text = raw.redis_url.as_deref().map(str::trim).unwrap_or_default();
        if text.is_empty() {
            return Err(ConfigError::new(
                "session.redis_url",
                "is required with session.store = \"redis\" (e.g. \"redis://127.0.0.1:6379/0\", or rediss:// for TLS)",
            ));
        }
        // Never echo the URL back: it may hold a password.
        let url = url::Url::parse(text)
            .map_err(|e| ConfigError::new("session.redis_url", format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(ConfigError::new(
                "session.redis_url",
                format!("must start with redis:// or rediss:// (TLS), not {}://", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new("session.redis_url", "has no host"));
        }
        if url.fragment().is_some() || url.query().is_some() {
            // redis-rs reads `#insecure` as "do not verify the certificate": nothing that
            // weakens TLS hides in a URL.
            return Err(ConfigError::new(
                "session.redis_url",
                "must not have a query or a #fragment (such as #insecure): TLS is always verified",
            ));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(ConfigError::new(
                "session.redis_url",
                "its path must be a database number, like /0",
            ));
        }
        let password = match raw.redis_password_file.as_deref().filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(_) if url.password().is_some() => return Err(ConfigError::new(
                "session.redis_password_file",
                "set the password in session.redis_url or in session.redis_password_file, not both",
            )),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "session.redis_password_file",
                        format!("cannot read {path:?}: {e}"),
                    )
                })?;
                let p = text.trim_end_matches(['\r', '\n']);
                if p.is_empty() {
                    return Err(ConfigError::new(
                        "session.redis_password_file",
                        format!("{path:?} is empty"),
                    ));
                }
                Some(Secret::new(p))
            }
        };
        let ca_pem = match raw.redis_ca_file.as_deref().filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(_) if url.scheme() != "rediss" => {
                return Err(ConfigError::new(
                    "session.redis_ca_file",
                    "is for TLS: use a rediss:// session.redis_url",
                ))
            }
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new("session.redis_ca_file", format!("cannot read {path:?}: {e}"))
                })?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(ConfigError::new(
                        "session.redis_ca_file",
                        format!("{path:?} holds no PEM certificate"),
                    ));
                }
                Some(pem)
            }
        };
        let key_prefix =
            raw.redis_key_prefix.clone().unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string());
        if key_prefix.contains(['{', '}']) || key_prefix.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "session.redis_key_prefix",
                "must not contain '{', '}' (portcullis places the hash tags) or control characters",
            ));
        }
        let connect_timeout = duration(
            "session.redis_connect_timeout",
            raw.redis_connect_timeout.as_deref(),
            DEFAULT_REDIS_CONNECT_TIMEOUT,
        )?;
        let timeout =
            duration("session.redis_timeout", raw.redis_timeout.as_deref(), DEFAULT_REDIS_TIMEOUT)?;
        let lock_lease = duration(
            "session.refresh_lock_lease",
            raw.refresh_lock_lease.as_deref(),
            DEFAULT_REFRESH_LOCK_LEASE,
        )?;
        for (key, d, min, max) in [
            ("session.redis_connect_timeout", connect_timeout, 10, 60_000),
            ("session.redis_timeout", timeout, 10, 60_000),
            ("session.refresh_lock_lease", lock_lease, 100, REFRESH_BUDGET.as_millis() as u64),
        ] {
            let ms = d.as_millis() as u64;
            if ms < min || ms > max {
                return Err(ConfigError::new(
                    key,
                    format!("must be between {min}ms and {}s", max / 1000),
                ));
            }
        }
        Ok(RedisConfig {
            url: RedisUrl(url),
            password,
            ca_pem,
            key_prefix,
            connect_timeout,
            timeout,
            lock_lease,
        })
    }
}

/// The bytes of a base64 secret: standard or URL-safe alphabet, padded or not.
pub fn secret_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let t = text.trim();
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('='))
        })
        .ok()
}

/// A session secret: base64 (standard or URL-safe, padded or not) of 32 bytes.
pub(crate) fn session_secret(key: &str, text: &str) -> Result<Secret, ConfigError> {
    let t = text.trim();
    let decoded = secret_bytes(t).ok_or_else(|| {
        ConfigError::new(key, "must be base64 of 32 random bytes (e.g. `openssl rand -base64 32`)")
    })?;
    if decoded.len() != 32 {
        return Err(ConfigError::new(
            key,
            format!(
                "must be 32 random bytes after base64, got {} (e.g. `openssl rand -base64 32`)",
                decoded.len()
            ),
        ));
    }
    if decoded.iter().all(|b| *b == decoded[0]) {
        return Err(ConfigError::new(key, "is not random (every byte is the same)"));
    }
    Ok(Secret::new(t))
}

impl SessionConfig {
    pub(crate) fn from_raw(raw: RawSession) -> Result<Self, ConfigError> {
        let secrets = match (raw.secret.clone(), raw.secret_file.clone()) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "session.secret_file",
                    "set either session.secret or session.secret_file, not both",
                ))
            }
            (Some(s), None) => vec![session_secret("session.secret", &s)?],
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new("session.secret_file", format!("cannot read {path:?}: {e}"))
                })?;
                let lines: Vec<&str> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                if lines.is_empty() {
                    return Err(ConfigError::new(
                        "session.secret_file",
                        format!("{path:?} is empty"),
                    ));
                }
                lines
                    .into_iter()
                    .map(|l| session_secret("session.secret_file", l))
                    .collect::<Result<Vec<_>, _>>()?
            }
            (None, None) => return Err(ConfigError::new(
                "session.secret",
                "is required for browser login (or session.secret_file): base64 of 32 random bytes",
            )),
        };
        let redis_keys = [
            ("redis_url", raw.redis_url.is_some()),
            ("redis_password_file", raw.redis_password_file.is_some()),
            ("redis_ca_file", raw.redis_ca_file.is_some()),
        ];
        let store = match raw.store.as_deref().map(str::trim).unwrap_or("cookie") {
            "cookie" => {
                if let Some((k, _)) = redis_keys.iter().find(|(_, set)| *set) {
                    return Err(ConfigError::new(
                        format!("session.{k}"),
                        "is set but session.store is \"cookie\": set session.store = \"redis\" to keep sessions in Redis",
                    ));
                }
                StoreConfig::Cookie
            }
            "redis" => StoreConfig::Redis(Box::new(RedisConfig::from_raw(&raw)?)),
            other => {
                return Err(ConfigError::new(
                    "session.store",
                    format!("expected \"cookie\" or \"redis\", got {other:?}"),
                ))
            }
        };
        let cookie_name = raw.cookie_name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_string());
        if cookie_name.is_empty()
            || !cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::new(
                "session.cookie_name",
                "must be letters, digits, '_' or '-'",
            ));
        }
        let cookie_domain = raw.cookie_domain.filter(|d| !d.trim().is_empty());
        let max_lifetime =
            duration("session.max_lifetime", raw.max_lifetime.as_deref(), DEFAULT_MAX_LIFETIME)?;
        let idle_timeout =
            duration("session.idle_timeout", raw.idle_timeout.as_deref(), DEFAULT_IDLE_TIMEOUT)?;
        for (key, d) in
            [("session.max_lifetime", max_lifetime), ("session.idle_timeout", idle_timeout)]
        {
            if d < Duration::from_secs(60) {
                return Err(ConfigError::new(key, "must be at least 1m"));
            }
        }
        Ok(SessionConfig { secrets, cookie_name, cookie_domain, max_lifetime, idle_timeout, store })
    }
}
