//! `[oidc]`: the provider, and browser login when `client_id` is set with a `[session]`.

use super::*;

#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The OpenID Provider; trusted for bearer tokens (with `bearer.audiences`).
    pub issuer: Option<String>,
    /// JWKS location when discovery is not wanted. Defaults to discovery.
    pub jwks_url: Option<Url>,
    /// OAuth2 client id (used by the browser login).
    pub client_id: Option<String>,
    /// OAuth2 client secret, from `client_secret` or `client_secret_file`.
    pub client_secret: Option<Secret>,
    /// Allow `http://` issuers and JWKS URLs off loopback. Defaults to false.
    pub insecure_allow_http: bool,
    /// Where portcullis's own endpoints live (login, forward-auth). Defaults to `/oauth2`.
    pub prefix: String,
}

/// The login keys of `[oidc]`, checked once `[session]` says login is on.
#[derive(Debug, Default)]
pub(crate) struct RawLoginKeys {
    pub(crate) redirect_url: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) allowed_redirect_hosts: Option<Vec<String>>,
    pub(crate) post_logout_redirect_url: Option<String>,
    pub(crate) skip_sign_in_page: Option<bool>,
}

/// Default `oidc.scopes`.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];

/// Default `oidc.prefix`: where portcullis's own endpoints live.
pub const DEFAULT_PREFIX: &str = "/oauth2";

/// The browser login (`oidc.client_id` with `[session]`).
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// `oidc.issuer`: ID tokens are verified against its keys only.
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only).
    pub client_secret: Option<Secret>,
    /// `None` only on a loopback listener: then `http://<Host><prefix>/callback`.
    pub redirect_url: Option<Url>,
    /// Defaults to `openid email profile`.
    pub scopes: Vec<String>,
    /// Defaults to `/oauth2`.
    pub prefix: String,
    /// Hosts a redirect after login or sign-out may go to besides this one; `.example.com`
    /// matches subdomains at a dot boundary.
    pub allowed_redirect_hosts: Vec<String>,
    pub post_logout_redirect_url: Option<Url>,
    /// Go straight to the provider instead of showing the sign-in page. Defaults to false.
    pub skip_sign_in_page: bool,
    pub session: SessionConfig,
    /// `server.templates_dir`: page templates overriding the embedded ones.
    pub templates_dir: Option<std::path::PathBuf>,
    /// Allow `http://` redirect URLs off loopback (`oidc.insecure_allow_http`).
    pub insecure_allow_http: bool,
}

impl LoginConfig {
    /// Whether cookies are `Secure` (and `__Host-`/`__Secure-` prefixed): over https.
    pub fn secure_cookies(&self) -> bool {
        self.redirect_url.as_ref().is_some_and(|u| u.scheme() == "https")
    }
}

impl OidcConfig {
    pub(crate) fn from_raw(mut raw: RawOidc) -> Result<(Self, RawLoginKeys), ConfigError> {
        let login = RawLoginKeys {
            redirect_url: raw.redirect_url.take(),
            scopes: raw.scopes.take(),
            allowed_redirect_hosts: raw.allowed_redirect_hosts.take(),
            post_logout_redirect_url: raw.post_logout_redirect_url.take(),
            skip_sign_in_page: raw.skip_sign_in_page.take(),
        };
        let allow_http = raw.insecure_allow_http.unwrap_or(false);
        let client_secret = match (raw.client_secret, raw.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "oidc.client_secret_file",
                    "set either oidc.client_secret or oidc.client_secret_file, not both",
                ))
            }
            (Some(s), None) => Some(Secret::new(s)),
            (None, Some(path)) => {
                let s = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        "oidc.client_secret_file",
                        format!("cannot read {path:?}: {e}"),
                    )
                })?;
                Some(Secret::new(s.trim_end_matches(['\r', '\n'])))
            }
            (None, None) => None,
        };
        let issuer = match raw.issuer {
            Some(i) => {
                let i = nonempty("oidc.issuer", i)?;
                idp_url("oidc.issuer", &i, allow_http)?;
                Some(i)
            }
            None => None,
        };
        let jwks_url = match raw.jwks_url {
            Some(u) => Some(idp_url("oidc.jwks_url", &u, allow_http)?),
            None => None,
        };
        if jwks_url.is_some() && issuer.is_none() {
            return Err(ConfigError::new("oidc.jwks_url", "needs oidc.issuer"));
        }
        let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || crate::path::normalize(&prefix).ok().as_deref() != Some(prefix.as_str())
        {
            return Err(ConfigError::new(
                "oidc.prefix",
                "must be a clean path like \"/oauth2\" (not \"/\")",
            ));
        }
        let oidc = OidcConfig {
            issuer,
            jwks_url,
            client_id: raw.client_id,
            client_secret,
            insecure_allow_http: allow_http,
            prefix,
        };
        Ok((oidc, login))
    }
}

/// A URL portcullis redirects browsers to: https, or http on loopback or with
/// `oidc.insecure_allow_http`.
pub(crate) fn browser_url(key: &str, value: &str, allow_http: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(key, format!("not a valid URL {value:?}: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback_host(&url) => {}
        _ => {
            return Err(ConfigError::new(
                key,
                format!(
                "{value:?} must be https (http only on loopback or with oidc.insecure_allow_http)"
            ),
            ))
        }
    }
    if url.host().is_none() || url.fragment().is_some() {
        return Err(ConfigError::new(key, "needs a host and no fragment"));
    }
    Ok(url)
}

pub(crate) fn login_from_raw(
    keys: RawLoginKeys,
    session: Option<RawSession>,
    oidc: &OidcConfig,
    bearer: &BearerConfig,
    server: &ServerConfig,
) -> Result<Option<LoginConfig>, ConfigError> {
    let Some(session) = session else {
        return Ok(None);
    };
    let client_id = oidc.client_id.clone().filter(|c| !c.trim().is_empty()).ok_or_else(|| {
        ConfigError::new(
            "oidc.client_id",
            "is required with [session] (browser login needs a client)",
        )
    })?;
    let issuer = oidc.issuer.clone().ok_or_else(|| {
        ConfigError::new(
            "oidc.issuer",
            "is required for browser login (the provider to sign in with)",
        )
    })?;
    if bearer.issuers.iter().any(|i| i.audiences.contains(&client_id)) {
        return Err(ConfigError::new(
            "oidc.client_id",
            format!("{client_id:?} is also a bearer audience: ID tokens for the login client would pass as access tokens; give the API its own audience"),
        ));
    }
    let session = SessionConfig::from_raw(session)?;
    let allow_http = oidc.insecure_allow_http;
    let redirect_url = match keys.redirect_url {
        Some(u) => Some(browser_url("oidc.redirect_url", &u, allow_http)?),
        None if server.listen.ip().is_loopback() => None,
        None => {
            return Err(ConfigError::new(
                "oidc.redirect_url",
                "is required unless server.listen is on loopback (e.g. \"https://app.example.com/oauth2/callback\")",
            ))
        }
    };
    let prefix = oidc.prefix.clone();
    let scopes =
        keys.scopes.unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ConfigError::new("oidc.scopes", "must include \"openid\""));
    }
    let mut allowed_redirect_hosts = Vec::new();
    for (i, h) in keys.allowed_redirect_hosts.unwrap_or_default().into_iter().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        let bare = h.strip_prefix('.').unwrap_or(&h);
        if bare.is_empty()
            || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(ConfigError::new(
                format!("oidc.allowed_redirect_hosts[{i}]"),
                format!("{h:?} is not a host name (\".example.com\" for subdomains)"),
            ));
        }
        allowed_redirect_hosts.push(h);
    }
    let post_logout_redirect_url = match keys.post_logout_redirect_url {
        Some(u) => Some(browser_url("oidc.post_logout_redirect_url", &u, allow_http)?),
        None => None,
    };
    Ok(Some(LoginConfig {
        issuer,
        client_id,
        client_secret: oidc.client_secret.clone(),
        redirect_url,
        scopes,
        prefix,
        allowed_redirect_hosts,
        post_logout_redirect_url,
        skip_sign_in_page: keys.skip_sign_in_page.unwrap_or(false),
        session,
        templates_dir: server.templates_dir.clone(),
        insecure_allow_http: allow_http,
    }))
}
