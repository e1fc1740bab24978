//! `[forward_auth]`: the `{oidc.prefix}/auth` endpoint an ingress asks before it forwards.

use super::*;

/// How an ingress names the original request it asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// nginx `auth_request` (and ingress-nginx): `X-Original-URI` or `X-Original-URL`, and
    /// `X-Original-Method`.
    Nginx,
    /// Traefik ForwardAuth and Caddy `forward_auth`: `X-Forwarded-Method`, `-Proto`, `-Host`,
    /// `-Uri`.
    Forwarded,
    /// Envoy `ext_authz` (HTTP service): the original method, the original path after the auth
    /// path, `Host` the original host.
    Envoy,
}

#[derive(Debug, Clone, Default)]
pub struct ForwardAuthConfig {
    /// The one dialect checks may use; `None` (`"auto"`, the default): told by the headers
    /// present, one per request.
    pub dialect: Option<Dialect>,
    /// Answer a browser navigation that has no session with the redirect into login, for every
    /// auth URL (as `?rd=1` does for one): for ingresses that pass the answer to the browser
    /// (Traefik, Caddy). Never for nginx, which turns a redirect into a `500`. Defaults to false.
    pub redirect_browsers: bool,
}

impl ForwardAuthConfig {
    pub(crate) fn from_raw(raw: RawForwardAuth) -> Result<Self, ConfigError> {
        let dialect = match raw.dialect.as_deref().map(str::trim).unwrap_or("auto") {
            "auto" => None,
            "nginx" => Some(Dialect::Nginx),
            "traefik" | "caddy" | "forwarded" => Some(Dialect::Forwarded),
            "envoy" => Some(Dialect::Envoy),
            other => {
                return Err(ConfigError::new(
                    "forward_auth.dialect",
                    format!(
                        "expected \"auto\", \"nginx\", \"traefik\", \"caddy\" or \"envoy\", got {other:?}"
                    ),
                ))
            }
        };
        Ok(Self { dialect, redirect_browsers: raw.redirect_browsers.unwrap_or(false) })
    }
}
