//! `[session]`: secrets, the cookie, lifetimes.

use super::*;

/// Default `session.cookie_name`.
pub const DEFAULT_COOKIE_NAME: &str = "_portcullis";

/// Default `session.max_lifetime`.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Default `session.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

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
        let secrets = match (raw.secret, raw.secret_file) {
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
        match raw.store.as_deref().unwrap_or("cookie") {
            "cookie" => {}
            other => {
                return Err(ConfigError::new(
                    "session.store",
                    format!("expected \"cookie\" (the only store so far), got {other:?}"),
                ))
            }
        }
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
        Ok(SessionConfig { secrets, cookie_name, cookie_domain, max_lifetime, idle_timeout })
    }
}
