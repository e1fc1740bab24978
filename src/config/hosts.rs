//! `hosts = [...]` on rules and public routes: behind a multi-app ingress one portcullis sees
//! many hosts, and `^/public/` for one app must not make `/public/` public on every host.

use super::*;

/// The hosts a rule or public route applies to: exact names (`app.example.com`, with a port
/// when it is not the scheme's default) or `.example.com` for its subdomains (any port). Empty:
/// every host, as without `hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts(Vec<String>);

impl Hosts {
    /// `key` names the list in errors.
    pub(crate) fn parse(key: &str, list: Vec<String>) -> Result<Self, ConfigError> {
        let mut out = Vec::new();
        for (i, h) in list.into_iter().enumerate() {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_prefix('.').unwrap_or(&h);
            let ok = !bare.is_empty()
                && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
                && bare.parse::<http::uri::Authority>().is_ok();
            if !ok {
                return Err(ConfigError::new(
                    format!("{key}[{i}]"),
                    format!("{h:?} is not a host name (\"app.example.com\", or \".example.com\" for subdomains)"),
                ));
            }
            out.push(h);
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a request to `host` (as [`canonical_host`] made it; `None` when it named none)
    /// is one of these.
    pub fn matches(&self, host: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(host) = host else { return false };
        let name = host_name(host);
        self.0.iter().any(|want| match want.strip_prefix('.') {
            Some(domain) => name.len() > domain.len() + 1 && name.ends_with(want.as_str()),
            None => host == want,
        })
    }

    /// The list as written, for `portcullis check`.
    pub fn describe(&self) -> String {
        self.0.join(", ")
    }
}

/// A request's host as rules compare it: lower case, the scheme's default port dropped.
pub fn canonical_host(host: &str, scheme: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    match host.strip_suffix(default) {
        Some(h) if !h.is_empty() && !h.ends_with(':') => h.to_string(),
        _ => host,
    }
}

/// The name of a `host[:port]` (an IPv6 literal keeps its brackets).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}
