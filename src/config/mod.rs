//! Typed configuration: one TOML file, `PORTCULLIS_*` environment overrides, `*_file` secrets,
//! defaults, and validation that names the key at fault before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;
use regex::Regex;
use serde::Deserialize;
use url::Url;

mod authorization;
mod bearer;
mod file;
mod forward_auth;
mod hosts;
mod identity;
mod log;
mod oidc;
mod server;
mod session;
mod upstream;

pub use authorization::*;
pub use bearer::*;
pub use file::env_name;
use file::*;
pub use forward_auth::*;
pub use hosts::*;
pub use identity::*;
pub use log::*;
pub use oidc::*;
pub use server::*;
pub use session::*;
pub use upstream::*;

/// A configuration problem, naming the key at fault (and the environment variable that set
/// it, when one did).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    /// The `PORTCULLIS_*` variable that set the key, if the value came from the environment.
    pub variable: Option<String>,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), variable: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.variable {
            Some(v) => write!(f, "{} (set by {v}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// A secret value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// The app; `None` without an `[upstream]` section: portcullis only answers forward-auth
    /// checks (and its own endpoints).
    pub upstream: Option<UpstreamConfig>,
    pub oidc: OidcConfig,
    pub bearer: BearerConfig,
    pub identity: IdentityConfig,
    /// `[authorization]`: requirements for every protected request and per-route rules.
    pub authorization: Policy,
    /// Browser login: on when `oidc.client_id` and `[session]` are both set.
    pub login: Option<LoginConfig>,
    /// `[forward_auth]`: the `{oidc.prefix}/auth` endpoint.
    pub forward_auth: ForwardAuthConfig,
    pub log: LogConfig,
}

impl Config {
    /// Every issuer whose keys portcullis needs: the bearer issuers, and the login provider
    /// (which may sign users in without being trusted for bearer tokens).
    pub fn key_issuers(&self) -> Vec<TrustedIssuer> {
        let mut out = self.bearer.issuers.clone();
        if let Some(l) = &self.login {
            if !out.iter().any(|i| i.issuer == l.issuer) {
                out.push(TrustedIssuer {
                    issuer: l.issuer.clone(),
                    audiences: Vec::new(),
                    jwks_url: self.oidc.jwks_url.clone(),
                });
            }
        }
        out
    }
}

/// The outcome of loading: the config and warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads `path` (if any), applies `env`, validates.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", p.display()))
        })?,
        None => String::new(),
    };
    load_str(&text, env)
}

/// Like [`load`], from the file's text.
pub fn load_str(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().to_string();
        let key = match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            }
            None => "file".into(),
        };
        ConfigError::new(key, format!("not valid TOML: {msg}"))
    })?;
    let mut warnings = Vec::new();
    let mut env: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with("PORTCULLIS_")).collect();
    env.sort();
    // (key, variable) for every key the environment set, to name the variable in errors.
    let mut overrides: Vec<(String, String)> = Vec::new();
    for (name, value) in env {
        if ENV_NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let Some((section, key, kind)) = env_keys().find(|(s, k, _)| env_name(s, k) == name) else {
            warnings.push(format!("ignoring unknown environment variable {name}"));
            continue;
        };
        let full_key = format!("{section}.{key}");
        let value = env_value(kind, &value).map_err(|m| ConfigError {
            key: full_key.clone(),
            variable: Some(name.clone()),
            message: m,
        })?;
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
            }
            _ => return Err(ConfigError::new(section, "must be a table")),
        }
        overrides.push((full_key, name));
    }
    // An error in a key the environment set names the variable too.
    let attribute = |mut e: ConfigError| {
        e.variable = overrides
            .iter()
            .find(|(k, _)| {
                e.key == *k
                    || e.key.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with(['[', '.']))
            })
            .map(|(_, v)| v.clone());
        e
    };
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." { "file".to_string() } else { path };
            ConfigError::new(key, e.into_inner().to_string())
        })
        .map_err(attribute)?;
    let config = validate(raw).map_err(attribute)?;
    for net in config.server.trusted_proxies.iter().filter(|n| n.prefix_len() == 0) {
        warnings.push(format!(
            "server.trusted_proxies includes {net}: every peer may send forwarding headers and name the request a forward-auth check decides on"
        ));
    }
    for (i, r) in config.bearer.public_routes.iter().enumerate() {
        if !r.path.as_str().starts_with('^') && r.hosts.is_empty() {
            warnings.push(format!(
                "bearer.public_routes[{i}] {:?} is not anchored with '^': it also matches paths that merely contain it",
                r.path.as_str()
            ));
        }
    }
    Ok(Loaded { config, warnings })
}

pub(crate) fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v.trim()).map_err(|e| {
            ConfigError::new(
                key,
                format!("expected a duration like \"30s\" or \"5m\", got {v:?} ({e})"),
            )
        }),
    }
}

/// `localhost` or a loopback IP.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Why `url` may not be used to reach an issuer (discovery, JWKS), if it may not: it must be
/// https, or http on loopback, or http anywhere with `oidc.insecure_allow_http`.
pub fn idp_url_problem(url: &Url, allow_http: bool) -> Option<String> {
    match url.scheme() {
        "https" => None,
        "http" if allow_http || is_loopback_host(url) => None,
        "http" => Some(format!(
            "{url} uses http off loopback; use https, or set oidc.insecure_allow_http = true for development"
        )),
        other => Some(format!("unsupported scheme {other:?} in {url}")),
    }
}

pub(crate) fn idp_url(key: &str, value: &str, allow_http: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(key, format!("not a valid URL {value:?}: {e}")))?;
    if let Some(problem) = idp_url_problem(&url, allow_http) {
        return Err(ConfigError::new(key, problem));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(key, "must not have a query or fragment"));
    }
    Ok(url)
}

pub(crate) fn nonempty(key: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(ConfigError::new(key, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// Each section validates itself; what spans sections is passed in.
pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let server = ServerConfig::from_raw(raw.server)?;
    let upstream = raw.upstream.map(UpstreamConfig::from_raw).transpose()?;
    let (oidc, login_keys) = OidcConfig::from_raw(raw.oidc)?;
    let bearer = BearerConfig::from_raw(raw.bearer, &oidc, raw.session.is_some())?;
    let login = login_from_raw(login_keys, raw.session, &oidc, &bearer, &server)?;
    let identity = IdentityConfig::from_raw(raw.identity, bearer.issuers.len())?;
    let mut bearer = bearer;
    let authorization = authorization_from_raw(raw.authorization, &bearer.issuers)?;
    if authorization.case_insensitive_paths {
        // One switch for rules and public routes: it describes how the app routes.
        for (i, r) in bearer.public_routes.iter_mut().enumerate() {
            r.path =
                regex::RegexBuilder::new(r.path.as_str()).case_insensitive(true).build().map_err(
                    |e| ConfigError::new(format!("bearer.public_routes[{i}]"), e.to_string()),
                )?;
        }
    }
    let forward_auth = ForwardAuthConfig::from_raw(raw.forward_auth)?;
    let log = LogConfig::from_raw(raw.log)?;
    Ok(Config { server, upstream, oidc, bearer, identity, authorization, login, forward_auth, log })
}

#[cfg(test)]
mod tests;
