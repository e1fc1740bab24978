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
/// Default bound on requests in flight to the upstream (per process).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Default bound on new connections to the app not answered yet (per process): half the
/// accept backlog of a listener made by Rust's std or tokio, Go or Node (128 or 511).
pub const DEFAULT_MAX_CONNECTING: usize = 64;
/// Default time to open a TCP connection to the upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time to wait for the upstream's response head.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default interval between background JWKS refreshes.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default minimum time between two fetches caused by an unknown `kid`.
pub const DEFAULT_JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Default number of verified tokens kept.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;
/// Default `identity.user_claim`.
pub const DEFAULT_USER_CLAIM: &str = "sub";
/// Default `identity.email_claim`.
pub const DEFAULT_EMAIL_CLAIM: &str = "email";
/// Default `identity.groups_claim`.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// Default `identity.preferred_username_claim`.
pub const DEFAULT_PREFERRED_USERNAME_CLAIM: &str = "preferred_username";
/// Default `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default `realm` in `WWW-Authenticate`.
pub const DEFAULT_REALM: &str = "portcullis";
/// Every asymmetric algorithm portcullis verifies; the default for `bearer.algorithms`.
pub const ASYMMETRIC_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

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
    pub upstream: UpstreamConfig,
    pub oidc: OidcConfig,
    pub bearer: BearerConfig,
    pub identity: IdentityConfig,
    /// `[authorization]`: requirements for every protected request and per-route rules.
    pub authorization: Policy,
    /// Browser login: on when `oidc.client_id` and `[session]` are both set.
    pub login: Option<LoginConfig>,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where proxied traffic arrives. Defaults to `0.0.0.0:4180`.
    pub listen: SocketAddr,
    /// Where `/healthz` and `/readyz` answer. Defaults to `0.0.0.0:9090`.
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM/SIGINT. Defaults to 30 s.
    pub shutdown_timeout: Duration,
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
}

/// The login keys of `[oidc]`, checked once `[session]` says login is on.
#[derive(Debug, Default)]
struct RawLoginKeys {
    redirect_url: Option<String>,
    scopes: Option<Vec<String>>,
    prefix: Option<String>,
    allowed_redirect_hosts: Option<Vec<String>>,
    post_logout_redirect_url: Option<String>,
    skip_sign_in_page: Option<bool>,
}

/// Default `oidc.scopes`.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];
/// Default `oidc.prefix`: where portcullis's own endpoints live.
pub const DEFAULT_PREFIX: &str = "/oauth2";
/// Default `session.cookie_name`.
pub const DEFAULT_COOKIE_NAME: &str = "_portcullis";
/// Default `session.max_lifetime`.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Default `session.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

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

impl LoginConfig {
    /// Whether cookies are `Secure` (and `__Host-`/`__Secure-` prefixed): over https.
    pub fn secure_cookies(&self) -> bool {
        self.redirect_url.as_ref().is_some_and(|u| u.scheme() == "https")
    }
}

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

#[derive(Debug, Clone)]
pub struct BearerConfig {
    /// Every issuer trusted for bearer tokens (`oidc.issuer` first, then `bearer.issuers`).
    pub issuers: Vec<TrustedIssuer>,
    /// Algorithms accepted. Defaults to every asymmetric algorithm.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated. Defaults to 30 s.
    pub leeway: Duration,
    /// Claims a token must carry besides `exp`, `iss` and `aud`. Defaults to `["sub"]`.
    pub required_claims: Vec<String>,
    /// Routes that skip authentication.
    pub public_routes: Vec<PublicRoute>,
    /// `realm` in `WWW-Authenticate`. Defaults to `portcullis`.
    pub realm: String,
    /// Background JWKS refresh interval. Defaults to 5 minutes.
    pub jwks_refresh_interval: Duration,
    /// At most one fetch per issuer in this interval is caused by unknown `kid`s. Defaults to 30 s.
    pub jwks_min_refetch_interval: Duration,
    /// Verified tokens kept in memory. Defaults to 10,000; 0 disables the cache.
    pub token_cache_size: usize,
    /// JOSE `typ` values accepted besides none at all (compared case-insensitively,
    /// `application/` optional). Defaults to `JWT` and `at+jwt` (RFC 9068).
    pub token_types: Vec<String>,
}

impl BearerConfig {
    /// The documented defaults, trusting `issuers`.
    pub fn with_issuers(issuers: Vec<TrustedIssuer>) -> Self {
        Self {
            issuers,
            algorithms: ASYMMETRIC_ALGORITHMS.to_vec(),
            leeway: DEFAULT_LEEWAY,
            required_claims: vec!["sub".to_string()],
            public_routes: Vec::new(),
            realm: DEFAULT_REALM.to_string(),
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            jwks_min_refetch_interval: DEFAULT_JWKS_MIN_REFETCH_INTERVAL,
            token_cache_size: DEFAULT_TOKEN_CACHE_SIZE,
            token_types: default_token_types(),
        }
    }
}

/// Default `bearer.token_types`: a plain JWT and an RFC 9068 access token.
pub const DEFAULT_TOKEN_TYPES: &[&str] = &["JWT", "at+jwt"];

fn default_token_types() -> Vec<String> {
    DEFAULT_TOKEN_TYPES.iter().map(|s| s.to_string()).collect()
}

/// One issuer whose tokens are accepted.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Explicit JWKS URL; discovery otherwise.
    pub jwks_url: Option<Url>,
}

/// `[METHOD=]regex` matched against the normalised path.
#[derive(Debug, Clone)]
pub struct PublicRoute {
    pub method: Option<Method>,
    pub path: Regex,
}

impl PublicRoute {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (method, pattern) = match spec.split_once('=') {
            Some((m, rest)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                let method = Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("invalid method {m:?}"))?;
                (Some(method), rest)
            }
            // `get=^/x` would otherwise be a regex that never matches
            Some((m, _)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                return Err(format!(
                    "method {m:?} is not upper case (methods are case-sensitive; write {:?})",
                    m.to_ascii_uppercase()
                ));
            }
            _ => (None, spec),
        };
        let path = Regex::new(pattern).map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
        Ok(Self { method, path })
    }

    /// A `GET` route covers `HEAD` too (apps answer `HEAD` with their `GET` handler).
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| method_covers(m, method)) && self.path.is_match(path)
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Claim sent as `X-Forwarded-User`. Defaults to `sub`.
    pub user_claim: String,
    /// Claim sent as `X-Forwarded-Email`. Defaults to `email`.
    pub email_claim: String,
    /// Claim sent as `X-Forwarded-Groups`, comma-joined. Defaults to `groups`.
    pub groups_claim: String,
    /// Claim sent as `X-Forwarded-Preferred-Username`. Defaults to `preferred_username`.
    pub preferred_username_claim: String,
    /// Extra headers set from claims, in a stable order.
    pub claim_headers: Vec<(HeaderName, String)>,
    /// What happens to the bearer token. Defaults to `none`.
    pub pass_token: PassToken,
    /// Whether a token without `email_verified` counts as unverified (its email is then never
    /// sent, and refused as the user). `email_verified: false` always counts as unverified.
    /// Defaults to false for bearer tokens (access tokens rarely carry the claim) and true for
    /// browser sessions; set, it applies to both.
    pub require_verified_email: Option<bool>,
    /// Send the token's issuer as `X-Forwarded-Issuer` (`sub` is unique only per issuer).
    /// Defaults to true when more than one issuer is trusted.
    pub pass_issuer: bool,
}

impl Default for IdentityConfig {
    /// The documented defaults: `sub`, `email`, `groups`, `preferred_username`, no claim map,
    /// `pass_token = "none"`.
    fn default() -> Self {
        Self {
            user_claim: DEFAULT_USER_CLAIM.to_string(),
            email_claim: DEFAULT_EMAIL_CLAIM.to_string(),
            groups_claim: DEFAULT_GROUPS_CLAIM.to_string(),
            preferred_username_claim: DEFAULT_PREFERRED_USERNAME_CLAIM.to_string(),
            claim_headers: Vec::new(),
            pass_token: PassToken::None,
            require_verified_email: None,
            pass_issuer: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassToken {
    /// Remove `Authorization` before forwarding.
    None,
    /// Keep `Authorization` as the client sent it.
    Authorization,
    /// Remove `Authorization`, send the token as `X-Forwarded-Access-Token`.
    XForwardedAccessToken,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `portcullis=debug`. Defaults to `info`.
    pub level: String,
    /// `text` or `json`. Defaults to `text`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

// ----- the file's shape -----

/// How an environment value becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    /// comma-separated
    List,
    /// comma-separated `KEY=VALUE` pairs
    Map,
}

/// The environment kind of a raw field's type; `None` for keys only the file can set (tables).
trait EnvKind {
    const KIND: Option<Kind>;
}
impl EnvKind for Option<String> {
    const KIND: Option<Kind> = Some(Kind::Str);
}
impl EnvKind for Option<bool> {
    const KIND: Option<Kind> = Some(Kind::Bool);
}
impl EnvKind for Option<i64> {
    const KIND: Option<Kind> = Some(Kind::Int);
}
impl EnvKind for Option<Vec<String>> {
    const KIND: Option<Kind> = Some(Kind::List);
}
impl EnvKind for Option<BTreeMap<String, String>> {
    const KIND: Option<Kind> = Some(Kind::Map);
}
impl EnvKind for Option<Vec<RawIssuer>> {
    const KIND: Option<Kind> = None;
}
impl EnvKind for Option<Vec<RawRule>> {
    const KIND: Option<Kind> = None;
}
impl EnvKind for Option<BTreeMap<String, Vec<String>>> {
    const KIND: Option<Kind> = None;
}

/// Declares one section of the file: its shape as written (every key optional, unknown keys
/// refused) and, from the same list, the environment variables that can set its keys
/// (`PORTCULLIS_<SECTION>_<KEY>`). Adding a key here is all the environment needs.
macro_rules! section {
    ($(#[$doc:meta])* $name:ident = $section:literal { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($field: $ty,)*
        }
        impl $name {
            const NAME: &'static str = $section;
            const KEYS: &'static [SectionKey] =
                &[$((stringify!($field), <$ty as EnvKind>::KIND),)*];
        }
    };
}

section!(RawServer = "server" {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_timeout: Option<String>,
    workers: Option<i64>,
    trusted_proxies: Option<Vec<String>>,
    request_body_idle_timeout: Option<String>,
    templates_dir: Option<String>,
});

section!(RawUpstream = "upstream" {
    url: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    pass_host_header: Option<bool>,
    max_concurrent_requests: Option<i64>,
    max_connecting: Option<i64>,
    protocol: Option<String>,
});

section!(RawOidc = "oidc" {
    issuer: Option<String>,
    jwks_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<String>,
    insecure_allow_http: Option<bool>,
    redirect_url: Option<String>,
    scopes: Option<Vec<String>>,
    prefix: Option<String>,
    allowed_redirect_hosts: Option<Vec<String>>,
    post_logout_redirect_url: Option<String>,
    skip_sign_in_page: Option<bool>,
});

section!(RawSession = "session" {
    secret: Option<String>,
    secret_file: Option<String>,
    store: Option<String>,
    cookie_name: Option<String>,
    cookie_domain: Option<String>,
    max_lifetime: Option<String>,
    idle_timeout: Option<String>,
});

section!(RawBearer = "bearer" {
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    required_claims: Option<Vec<String>>,
    public_routes: Option<Vec<String>>,
    realm: Option<String>,
    jwks_refresh_interval: Option<String>,
    jwks_min_refetch_interval: Option<String>,
    token_cache_size: Option<i64>,
    token_types: Option<Vec<String>>,
    issuers: Option<Vec<RawIssuer>>,
});

section!(RawIdentity = "identity" {
    user_claim: Option<String>,
    email_claim: Option<String>,
    groups_claim: Option<String>,
    preferred_username_claim: Option<String>,
    claim_headers: Option<BTreeMap<String, String>>,
    pass_token: Option<String>,
    require_verified_email: Option<bool>,
    pass_issuer: Option<bool>,
});

section!(RawAuthorization = "authorization" {
    issuers: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    emails: Option<Vec<String>>,
    email_domains: Option<Vec<String>>,
    claims: Option<BTreeMap<String, Vec<String>>>,
    case_insensitive_paths: Option<bool>,
    rules: Option<Vec<RawRule>>,
});

/// One `[[authorization.rules]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: Option<String>,
    path_regex: Option<String>,
    methods: Option<Vec<String>>,
    issuers: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    emails: Option<Vec<String>>,
    email_domains: Option<Vec<String>>,
    claims: Option<BTreeMap<String, Vec<String>>>,
}

section!(RawLog = "log" {
    level: Option<String>,
    format: Option<String>,
});

/// A key of a section and how the environment sets it (`None`: only the file can).
type SectionKey = (&'static str, Option<Kind>);

/// Every section's keys, for the environment overrides.
const SECTIONS: &[(&str, &[SectionKey])] = &[
    (RawServer::NAME, RawServer::KEYS),
    (RawUpstream::NAME, RawUpstream::KEYS),
    (RawOidc::NAME, RawOidc::KEYS),
    (RawSession::NAME, RawSession::KEYS),
    (RawBearer::NAME, RawBearer::KEYS),
    (RawIdentity::NAME, RawIdentity::KEYS),
    (RawAuthorization::NAME, RawAuthorization::KEYS),
    (RawLog::NAME, RawLog::KEYS),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    oidc: RawOidc,
    /// Present (even empty) turns browser login on, with `oidc.client_id`.
    session: Option<RawSession>,
    #[serde(default)]
    bearer: RawBearer,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    authorization: RawAuthorization,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    jwks_url: Option<String>,
}

/// Every key an environment variable can set: (section, key, kind).
fn env_keys() -> impl Iterator<Item = (&'static str, &'static str, Kind)> {
    SECTIONS.iter().flat_map(|(section, keys)| {
        keys.iter().filter_map(move |(key, kind)| kind.map(|k| (*section, *key, k)))
    })
}

/// Variables of ours that are not config keys (read by the CLI).
const ENV_NOT_KEYS: &[&str] = &["PORTCULLIS_CONFIG"];

/// The environment variable for a key: `server.admin_listen` → `PORTCULLIS_SERVER_ADMIN_LISTEN`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("PORTCULLIS_{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase())
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
    for (i, r) in config.bearer.public_routes.iter().enumerate() {
        if !r.path.as_str().starts_with('^') {
            warnings.push(format!(
                "bearer.public_routes[{i}] {:?} is not anchored with '^': it also matches paths that merely contain it",
                r.path.as_str()
            ));
        }
    }
    Ok(Loaded { config, warnings })
}

fn env_value(kind: Kind, value: &str) -> Result<toml::Value, String> {
    let list = || {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_string()))
            .collect::<Vec<_>>()
    };
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_string()),
        Kind::Bool => match value.trim() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            other => return Err(format!("expected true or false, got {other:?}")),
        },
        Kind::Int => toml::Value::Integer(
            value.trim().parse().map_err(|_| format!("expected an integer, got {value:?}"))?,
        ),
        Kind::List => toml::Value::Array(list()),
        Kind::Map => {
            let mut t = toml::Table::new();
            for pair in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("expected KEY=VALUE pairs, got {pair:?}"))?;
                t.insert(k.trim().to_string(), toml::Value::String(v.trim().to_string()));
            }
            toml::Value::Table(t)
        }
    })
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
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

fn socket_addr(key: &str, value: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let v = value.unwrap_or(default);
    v.parse().map_err(|_| {
        ConfigError::new(key, format!("expected an address like \"0.0.0.0:4180\", got {v:?}"))
    })
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

fn idp_url(key: &str, value: &str, allow_http: bool) -> Result<Url, ConfigError> {
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

fn nonempty(key: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(ConfigError::new(key, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// `server.trusted_proxies`: CIDR ranges, or single addresses.
fn trusted_proxies(list: Vec<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
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
    fn from_raw(raw: RawServer) -> Result<Self, ConfigError> {
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

impl UpstreamConfig {
    fn from_raw(raw: RawUpstream) -> Result<Self, ConfigError> {
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

impl OidcConfig {
    fn from_raw(mut raw: RawOidc) -> Result<(Self, RawLoginKeys), ConfigError> {
        let login = RawLoginKeys {
            redirect_url: raw.redirect_url.take(),
            scopes: raw.scopes.take(),
            prefix: raw.prefix.take(),
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
        let oidc = OidcConfig {
            issuer,
            jwks_url,
            client_id: raw.client_id,
            client_secret,
            insecure_allow_http: allow_http,
        };
        Ok((oidc, login))
    }
}

impl BearerConfig {
    /// `oidc` is the provider section: its issuer is the first one trusted. With browser login
    /// (`login`), `oidc.issuer` may sign users in without being trusted for bearer tokens.
    fn from_raw(b: RawBearer, oidc: &OidcConfig, login: bool) -> Result<Self, ConfigError> {
        let allow_http = oidc.insecure_allow_http;
        let mut issuers = Vec::new();
        let audiences = b.audiences.unwrap_or_default();
        for (i, a) in audiences.iter().enumerate() {
            nonempty(&format!("bearer.audiences[{i}]"), a.clone())?;
        }
        if let Some(issuer) = oidc.issuer.clone().filter(|_| !(login && audiences.is_empty())) {
            if audiences.is_empty() {
                return Err(ConfigError::new(
                    "bearer.audiences",
                    "needs at least one audience for tokens from oidc.issuer (e.g. [\"api://my-app\"])",
                ));
            }
            issuers.push(TrustedIssuer { issuer, audiences, jwks_url: oidc.jwks_url.clone() });
        } else if !audiences.is_empty() {
            return Err(ConfigError::new(
                "bearer.audiences",
                "applies to oidc.issuer, which is not set",
            ));
        }
        for (i, ri) in b.issuers.unwrap_or_default().into_iter().enumerate() {
            let key = format!("bearer.issuers[{i}]");
            let issuer = nonempty(&format!("{key}.issuer"), ri.issuer)?;
            idp_url(&format!("{key}.issuer"), &issuer, allow_http)?;
            if ri.audiences.is_empty() || ri.audiences.iter().any(|a| a.trim().is_empty()) {
                return Err(ConfigError::new(
                    format!("{key}.audiences"),
                    "needs at least one non-empty audience",
                ));
            }
            let jwks_url = match ri.jwks_url {
                Some(u) => Some(idp_url(&format!("{key}.jwks_url"), &u, allow_http)?),
                None => None,
            };
            if issuers.iter().any(|t: &TrustedIssuer| t.issuer == issuer) {
                return Err(ConfigError::new(
                    format!("{key}.issuer"),
                    format!("{issuer:?} is configured twice"),
                ));
            }
            issuers.push(TrustedIssuer { issuer, audiences: ri.audiences, jwks_url });
        }
        if issuers.is_empty() && !login {
            return Err(ConfigError::new(
                "oidc.issuer",
                "is required (or at least one [[bearer.issuers]]): portcullis needs an issuer to trust",
            ));
        }

        let algorithms = match b.algorithms {
            None => ASYMMETRIC_ALGORITHMS.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    return Err(ConfigError::new("bearer.algorithms", "must not be empty"));
                }
                let mut out = Vec::new();
                for (i, a) in list.iter().enumerate() {
                    let alg: Algorithm = a.trim().parse().map_err(|_| {
                        ConfigError::new(
                            format!("bearer.algorithms[{i}]"),
                            format!("unknown algorithm {a:?}; expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"),
                        )
                    })?;
                    if !ASYMMETRIC_ALGORITHMS.contains(&alg) {
                        return Err(ConfigError::new(
                            format!("bearer.algorithms[{i}]"),
                            format!("{a:?} is refused: only asymmetric algorithms are verified against a JWKS"),
                        ));
                    }
                    if !out.contains(&alg) {
                        out.push(alg);
                    }
                }
                out
            }
        };
        let leeway = duration("bearer.leeway", b.leeway.as_deref(), DEFAULT_LEEWAY)?;
        if leeway > Duration::from_secs(300) {
            return Err(ConfigError::new("bearer.leeway", "must be at most 5m"));
        }
        let required_claims = b.required_claims.unwrap_or_else(|| vec!["sub".to_string()]);
        for (i, c) in required_claims.iter().enumerate() {
            nonempty(&format!("bearer.required_claims[{i}]"), c.clone())?;
        }
        let mut public_routes = Vec::new();
        for (i, spec) in b.public_routes.unwrap_or_default().iter().enumerate() {
            public_routes.push(
                PublicRoute::parse(spec)
                    .map_err(|m| ConfigError::new(format!("bearer.public_routes[{i}]"), m))?,
            );
        }
        let realm = b.realm.unwrap_or_else(|| DEFAULT_REALM.to_string());
        if realm.contains(['"', '\\']) || !realm.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "bearer.realm",
                "must be printable ASCII without quotes or backslashes",
            ));
        }
        let jwks_refresh_interval = duration(
            "bearer.jwks_refresh_interval",
            b.jwks_refresh_interval.as_deref(),
            DEFAULT_JWKS_REFRESH_INTERVAL,
        )?;
        let jwks_min_refetch_interval = duration(
            "bearer.jwks_min_refetch_interval",
            b.jwks_min_refetch_interval.as_deref(),
            DEFAULT_JWKS_MIN_REFETCH_INTERVAL,
        )?;
        for (key, d) in [
            ("bearer.jwks_refresh_interval", jwks_refresh_interval),
            ("bearer.jwks_min_refetch_interval", jwks_min_refetch_interval),
        ] {
            if d < Duration::from_millis(10) {
                return Err(ConfigError::new(key, "must be at least 10ms"));
            }
        }
        let token_cache_size = match b.token_cache_size {
            None => DEFAULT_TOKEN_CACHE_SIZE,
            Some(n) if (0..=10_000_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(ConfigError::new(
                    "bearer.token_cache_size",
                    format!("must be between 0 and 10000000, got {n}"),
                ))
            }
        };
        let token_types = b.token_types.unwrap_or_else(default_token_types);
        if token_types.is_empty() {
            return Err(ConfigError::new(
                "bearer.token_types",
                "must not be empty (the default is [\"JWT\", \"at+jwt\"])",
            ));
        }
        for (i, t) in token_types.iter().enumerate() {
            nonempty(&format!("bearer.token_types[{i}]"), t.clone())?;
        }
        Ok(BearerConfig {
            issuers,
            token_types,
            algorithms,
            leeway,
            required_claims,
            public_routes,
            realm,
            jwks_refresh_interval,
            jwks_min_refetch_interval,
            token_cache_size,
        })
    }
}

impl IdentityConfig {
    /// `issuers` is how many issuers are trusted (`pass_issuer` defaults to on with several).
    fn from_raw(id: RawIdentity, issuers: usize) -> Result<Self, ConfigError> {
        let claim = |key: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
            nonempty(key, v.unwrap_or_else(|| default.to_string()))
        };
        let mut claim_headers = Vec::new();
        for (name, claim_name) in id.claim_headers.unwrap_or_default() {
            let key = format!("identity.claim_headers.{name:?}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::new(key.clone(), "not a valid header name"))?;
            if is_reserved_request_header(&header) {
                return Err(ConfigError::new(
                    key,
                    "this header cannot carry a claim (it is hop-by-hop or framing)",
                ));
            }
            claim_headers.push((header, nonempty(&key, claim_name)?));
        }
        let pass_token = match id.pass_token.as_deref().unwrap_or("none") {
            "none" => PassToken::None,
            "authorization" => PassToken::Authorization,
            "x-forwarded-access-token" => PassToken::XForwardedAccessToken,
            other => {
                return Err(ConfigError::new(
                    "identity.pass_token",
                    format!("expected \"none\", \"authorization\" or \"x-forwarded-access-token\", got {other:?}"),
                ))
            }
        };
        Ok(IdentityConfig {
            user_claim: claim("identity.user_claim", id.user_claim, DEFAULT_USER_CLAIM)?,
            email_claim: claim("identity.email_claim", id.email_claim, DEFAULT_EMAIL_CLAIM)?,
            groups_claim: claim("identity.groups_claim", id.groups_claim, DEFAULT_GROUPS_CLAIM)?,
            preferred_username_claim: claim(
                "identity.preferred_username_claim",
                id.preferred_username_claim,
                DEFAULT_PREFERRED_USERNAME_CLAIM,
            )?,
            claim_headers,
            pass_token,
            require_verified_email: id.require_verified_email,
            pass_issuer: id.pass_issuer.unwrap_or(issuers > 1),
        })
    }
}

/// The parts of a requirement as written, at `key` (`authorization` or a rule).
struct RawRequirement {
    issuers: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    emails: Option<Vec<String>>,
    email_domains: Option<Vec<String>>,
    claims: Option<BTreeMap<String, Vec<String>>>,
}

impl RawRequirement {
    /// `trusted` are the trusted issuers: a requirement may only name those.
    fn validate(self, key: &str, trusted: &[TrustedIssuer]) -> Result<Requirement, ConfigError> {
        let list = |field: &str, v: Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
            let v = v.unwrap_or_default();
            for (i, item) in v.iter().enumerate() {
                nonempty(&format!("{key}.{field}[{i}]"), item.clone())?;
            }
            Ok(v)
        };
        let issuers = list("issuers", self.issuers)?;
        for (i, iss) in issuers.iter().enumerate() {
            if !trusted.iter().any(|t| &t.issuer == iss) {
                return Err(ConfigError::new(
                    format!("{key}.issuers[{i}]"),
                    format!("{iss:?} is not a trusted issuer (oidc.issuer or bearer.issuers)"),
                ));
            }
        }
        let scopes = list("scopes", self.scopes)?;
        for (i, sc) in scopes.iter().enumerate() {
            // RFC 6749 §3.3 scope-token: no spaces, quotes or backslashes.
            if !sc.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                return Err(ConfigError::new(
                    format!("{key}.scopes[{i}]"),
                    format!("{sc:?} is not a scope token (printable ASCII, no spaces, quotes or backslashes)"),
                ));
            }
        }
        let mut claims = Vec::new();
        for (path, values) in self.claims.unwrap_or_default() {
            let k = format!("{key}.claims.{path:?}");
            nonempty(&k, path.clone())?;
            if values.is_empty() {
                return Err(ConfigError::new(k, "needs at least one accepted value"));
            }
            claims.push((path, values));
        }
        Ok(Requirement {
            issuers,
            groups: list("groups", self.groups)?,
            scopes,
            emails: list("emails", self.emails)?,
            email_domains: list("email_domains", self.email_domains)?,
            claims,
        })
    }
}

/// `[authorization]`: the requirements every protected request must meet, and the rules.
fn authorization_from_raw(
    raw: RawAuthorization,
    trusted: &[TrustedIssuer],
) -> Result<Policy, ConfigError> {
    let base = RawRequirement {
        issuers: raw.issuers,
        groups: raw.groups,
        scopes: raw.scopes,
        emails: raw.emails,
        email_domains: raw.email_domains,
        claims: raw.claims,
    }
    .validate("authorization", trusted)?;
    let case_insensitive_paths = raw.case_insensitive_paths.unwrap_or(false);
    let mut rules = Vec::new();
    for (i, r) in raw.rules.unwrap_or_default().into_iter().enumerate() {
        let key = format!("authorization.rules[{i}]");
        let path = match (r.path, r.path_regex) {
            (Some(p), None) => {
                let normalised = crate::path::normalize(p.trim()).map_err(|e| {
                    ConfigError::new(
                        format!("{key}.path"),
                        format!("{p:?} is not a clean path: {e}"),
                    )
                })?;
                let trimmed = normalised.trim_end_matches('/');
                let prefix = if trimmed.is_empty() { "/".into() } else { trimmed.to_string() };
                RulePath::Prefix(if case_insensitive_paths {
                    prefix.to_ascii_lowercase()
                } else {
                    prefix
                })
            }
            (None, Some(re)) => RulePath::Regex(
                regex::RegexBuilder::new(&re)
                    .case_insensitive(case_insensitive_paths)
                    .build()
                    .map_err(|e| {
                        ConfigError::new(
                            format!("{key}.path_regex"),
                            format!("invalid regex {re:?}: {e}"),
                        )
                    })?,
            ),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(key, "set either path or path_regex, not both"))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    key,
                    "needs path (a prefix like \"/admin\") or path_regex",
                ))
            }
        };
        let mut methods = Vec::new();
        for (j, m) in r.methods.unwrap_or_default().iter().enumerate() {
            // Methods are case-sensitive (RFC 9110 §9.1): `post` is not `POST`, and requests
            // with lower-case letters in their method are refused before any rule is read.
            let method = Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| !m.is_empty() && !m.bytes().any(|b| b.is_ascii_lowercase()))
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{key}.methods[{j}]"),
                        format!("not an upper-case method: {m:?} (methods are case-sensitive; write {:?})", m.trim().to_ascii_uppercase()),
                    )
                })?;
            methods.push(method);
        }
        let require = RawRequirement {
            issuers: r.issuers,
            groups: r.groups,
            scopes: r.scopes,
            emails: r.emails,
            email_domains: r.email_domains,
            claims: r.claims,
        }
        .validate(&key, trusted)?;
        if require.is_empty() {
            return Err(ConfigError::new(
                key,
                "requires nothing: give it issuers, groups, scopes, emails, email_domains or claims",
            ));
        }
        rules.push(Rule { key, path, methods, require });
    }
    Ok(Policy { base, rules, case_insensitive_paths })
}

impl LogConfig {
    fn from_raw(raw: RawLog) -> Result<Self, ConfigError> {
        let level = raw.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
        if tracing_subscriber::EnvFilter::builder().parse(&level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("not a valid filter {level:?} (try \"info\" or \"portcullis=debug\")"),
            ));
        }
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ))
            }
        };
        Ok(LogConfig { level, format })
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
fn session_secret(key: &str, text: &str) -> Result<Secret, ConfigError> {
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
    fn from_raw(raw: RawSession) -> Result<Self, ConfigError> {
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

/// A URL portcullis redirects browsers to: https, or http on loopback or with
/// `oidc.insecure_allow_http`.
fn browser_url(key: &str, value: &str, allow_http: bool) -> Result<Url, ConfigError> {
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

fn login_from_raw(
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
    let prefix = keys.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
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

/// Each section validates itself; what spans sections is passed in.
fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let server = ServerConfig::from_raw(raw.server)?;
    let upstream = UpstreamConfig::from_raw(raw.upstream)?;
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
    let log = LogConfig::from_raw(raw.log)?;
    Ok(Config { server, upstream, oidc, bearer, identity, authorization, login, log })
}

// ----- [authorization]: what the rules say (evaluated in `auth::policy`) -----

/// What an identity must have. Every non-empty field must hold (`groups`, `emails` and
/// `email_domains`: any of; `scopes`: all of; `claims`: for each claim, any of its values).
#[derive(Debug, Clone, Default)]
pub struct Requirement {
    pub issuers: Vec<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub emails: Vec<String>,
    /// Domains of the verified email; `*` is any verified email.
    pub email_domains: Vec<String>,
    /// Claim paths (an exact top-level key first, else split on `.`) and accepted values.
    pub claims: Vec<(String, Vec<String>)>,
}

/// Where a rule applies.
#[derive(Debug, Clone)]
pub enum RulePath {
    /// A path prefix, matched at a segment boundary (`/admin` covers `/admin` and `/admin/x`,
    /// not `/administrator`).
    Prefix(String),
    /// A regex on the path.
    Regex(Regex),
}

/// One `[[authorization.rules]]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `authorization.rules[N]`, for logs and `check`.
    pub key: String,
    pub path: RulePath,
    /// Empty: every method.
    pub methods: Vec<Method>,
    pub require: Requirement,
}

/// Whether a rule or public route naming `named` covers a request's `method`: the same method,
/// or `HEAD` under `GET` (frameworks run the `GET` handler for a `HEAD`, RFC 9110 §9.3.2).
pub fn method_covers(named: &Method, method: &Method) -> bool {
    named == method || (*named == Method::GET && *method == Method::HEAD)
}

/// The requirements and rules of `[authorization]`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub base: Requirement,
    pub rules: Vec<Rule>,
    /// `authorization.case_insensitive_paths`: the app routes `/ADMIN` to `/admin` (Express,
    /// ASP.NET), so rules match without regard to ASCII case (prefixes are stored lower case,
    /// regexes built case-insensitive). Public routes follow the same switch.
    pub case_insensitive_paths: bool,
}

/// Headers a claim may never be mapped to: framing, hop-by-hop, credentials, forwarding.
pub fn is_reserved_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "authorization"
            | "cookie"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [upstream]
        url = "http://127.0.0.1:8080"
        [oidc]
        issuer = "https://idp.example.com/realms/main"
        [bearer]
        audiences = ["api://my-app"]
    "#;

    const LOGIN_SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    /// MINIMAL with browser login on.
    fn login_config() -> String {
        "[server]\nlisten = \"127.0.0.1:4180\"\n".to_string()
            + &MINIMAL.replace("[oidc]", "[oidc]\nclient_id = \"web\"")
            + &format!("\n[session]\nsecret = \"{LOGIN_SECRET}\"\n")
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn err(text: &str, env: Vec<(String, String)>) -> ConfigError {
        load_str(text, env).expect_err("config should be refused")
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = load_str(MINIMAL, no_env()).unwrap().config;
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.server.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(30));
        assert!(c.server.workers >= 1);
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.response_timeout, Duration::from_secs(60));
        assert_eq!(c.bearer.algorithms, ASYMMETRIC_ALGORITHMS);
        assert_eq!(c.bearer.leeway, Duration::from_secs(30));
        assert_eq!(c.bearer.required_claims, vec!["sub"]);
        assert_eq!(c.bearer.issuers.len(), 1);
        assert_eq!(c.bearer.issuers[0].audiences, vec!["api://my-app"]);
        assert_eq!(c.identity.user_claim, "sub");
        assert_eq!(c.identity.pass_token, PassToken::None);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&format!("{MINIMAL}\n[server]\nlistn = \"x\"\n"), no_env());
        assert!(e.to_string().contains("listn"), "{e}");
    }

    #[test]
    fn unknown_key_in_section_is_named_with_its_path() {
        let text = MINIMAL.replace("[bearer]", "[bearer]\naudience = \"x\"");
        let e = err(&text, no_env());
        assert!(e.to_string().contains("audience"), "{e}");
        assert!(e.key.starts_with("bearer"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = MINIMAL.replace("audiences = [\"api://my-app\"]", "audiences = 5");
        let e = err(&text, no_env());
        assert_eq!(e.key, "bearer.audiences", "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = err(&format!("{MINIMAL}\n[server]\nshutdown_timeout = \"soon\"\n"), no_env());
        assert_eq!(e.key, "server.shutdown_timeout");
    }

    #[test]
    fn env_overrides_file_values() {
        let env = vec![
            ("PORTCULLIS_SERVER_ADMIN_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
            ("PORTCULLIS_BEARER_AUDIENCES".to_string(), "a, b".to_string()),
            ("PORTCULLIS_BEARER_TOKEN_CACHE_SIZE".to_string(), "7".to_string()),
            ("PORTCULLIS_UPSTREAM_PASS_HOST_HEADER".to_string(), "false".to_string()),
            ("PORTCULLIS_IDENTITY_CLAIM_HEADERS".to_string(), "X-Tenant=tid,X-Org=org".to_string()),
        ];
        let c = load_str(MINIMAL, env).unwrap().config;
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.bearer.issuers[0].audiences, vec!["a", "b"]);
        assert_eq!(c.bearer.token_cache_size, 7);
        assert!(!c.upstream.pass_host_header);
        let names: Vec<_> =
            c.identity.claim_headers.iter().map(|(h, c)| (h.as_str(), c.as_str())).collect();
        assert_eq!(names, vec![("x-org", "org"), ("x-tenant", "tid")]);
    }

    #[test]
    fn every_env_key_is_a_real_key() {
        // Setting each documented variable to a plausible value must be accepted by the schema:
        // a key with a variable that the file does not know would fail as an unknown field.
        let mut n = 0;
        for (section, key, kind) in env_keys() {
            n += 1;
            let value = match (section, key, kind) {
                (_, _, Kind::Bool) => "false",
                (_, _, Kind::Int) => "5",
                (_, _, Kind::Map) => "X-A=a",
                (_, "algorithms", _) => "RS256",
                (_, "public_routes", _) => "^/x",
                (_, "trusted_proxies", _) => "10.0.0.0/8, 192.168.1.1",
                ("session", "secret", _) => LOGIN_SECRET,
                ("session", "secret_file", _) => continue,
                ("session", "store", _) => "cookie",
                ("session", "max_lifetime" | "idle_timeout", _) => "2h",
                ("oidc", "redirect_url" | "post_logout_redirect_url", _) => {
                    "https://app.example.com/oauth2/callback"
                }
                ("oidc", "scopes", _) => "openid,email",
                ("oidc", "prefix", _) => "/auth",
                ("upstream", "protocol", _) => "h2c",
                ("server", "templates_dir", _) => "/nonexistent",
                ("authorization", "issuers", _) => "https://idp.example.com/realms/main",
                (_, k, _) if k.ends_with("listen") => "127.0.0.1:1",
                (_, k, _) if k.ends_with("timeout") || k.ends_with("interval") || k == "leeway" => {
                    "1s"
                }
                (_, "url", _) => "http://127.0.0.1:1",
                (_, "issuer", _) | (_, "jwks_url", _) => "https://idp.example.com",
                (_, "pass_token", _) => "authorization",
                (_, "format", _) => "json",
                (_, "level", _) => "debug",
                (_, "client_secret_file", _) => continue, // needs a file; tested below
                _ => "x",
            };
            let env = vec![(env_name(section, key), value.to_string())];
            let base = if section == "session" { login_config() } else { MINIMAL.to_string() };
            let loaded = load_str(&base, env);
            assert!(loaded.is_ok(), "{section}.{key}: {:?}", loaded.err());
            assert!(loaded.unwrap().warnings.is_empty());
        }
        assert!(n >= 35, "only {n} keys can be set from the environment");
        // tables are for the file only
        assert!(env_keys().all(|(s, k, _)| (s, k) != ("bearer", "issuers")));
        assert!(env_keys().all(|(_, k, _)| k != "rules" && k != "claims"));
    }

    #[test]
    fn unknown_env_only_warns() {
        let env = vec![
            ("PORTCULLIS_SERVICE_HOST".to_string(), "10.0.0.1".to_string()),
            ("PORTCULLIS_CONFIG".to_string(), "/etc/p.toml".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let loaded = load_str(MINIMAL, env).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("PORTCULLIS_SERVICE_HOST"));
    }

    #[test]
    fn bad_env_value_names_the_variable_and_the_key() {
        let env = vec![("PORTCULLIS_UPSTREAM_PASS_HOST_HEADER".to_string(), "yes".to_string())];
        let e = err(MINIMAL, env);
        assert_eq!(e.key, "upstream.pass_host_header");
        assert_eq!(e.variable.as_deref(), Some("PORTCULLIS_UPSTREAM_PASS_HOST_HEADER"));
        // a value that parses but does not validate
        let env = vec![("PORTCULLIS_SERVER_SHUTDOWN_TIMEOUT".to_string(), "soon".to_string())];
        let e = err(MINIMAL, env);
        assert_eq!(e.key, "server.shutdown_timeout");
        assert_eq!(e.variable.as_deref(), Some("PORTCULLIS_SERVER_SHUTDOWN_TIMEOUT"));
        assert!(e.to_string().contains("set by PORTCULLIS_SERVER_SHUTDOWN_TIMEOUT"), "{e}");
        let env = vec![("PORTCULLIS_BEARER_ALGORITHMS".to_string(), "RS256,HS256".to_string())];
        let e = err(MINIMAL, env);
        assert_eq!(e.key, "bearer.algorithms[1]");
        assert_eq!(e.variable.as_deref(), Some("PORTCULLIS_BEARER_ALGORITHMS"));
        // the file's own mistakes name no variable
        let e = err(&format!("{MINIMAL}\n[server]\nshutdown_timeout = \"soon\"\n"), no_env());
        assert_eq!(e.variable, None);
    }

    #[test]
    fn hmac_and_none_are_refused_as_algorithms() {
        for alg in ["HS256", "none"] {
            let text = MINIMAL.replace("[bearer]", &format!("[bearer]\nalgorithms = [\"{alg}\"]"));
            let e = err(&text, no_env());
            assert_eq!(e.key, "bearer.algorithms[0]", "{e}");
        }
    }

    #[test]
    fn http_issuer_off_loopback_is_refused() {
        let text = MINIMAL.replace("https://idp.example.com", "http://idp.example.com");
        assert_eq!(err(&text, no_env()).key, "oidc.issuer");
        let text = MINIMAL.replace("https://idp.example.com", "http://127.0.0.1:5556");
        assert!(load_str(&text, no_env()).is_ok());
    }

    #[test]
    fn missing_issuer_and_upstream_are_named() {
        assert_eq!(err("[upstream]\nurl = \"http://127.0.0.1:1\"", no_env()).key, "oidc.issuer");
        let text = MINIMAL.replace("url = \"http://127.0.0.1:8080\"", "");
        assert_eq!(err(&text, no_env()).key, "upstream.url");
    }

    #[test]
    fn more_issuers_need_audiences() {
        let text = format!(
            "{MINIMAL}\n[[bearer.issuers]]\nissuer = \"https://b.example\"\naudiences = []\n"
        );
        assert_eq!(err(&text, no_env()).key, "bearer.issuers[0].audiences");
    }

    #[test]
    fn unanchored_public_route_warns() {
        let text =
            MINIMAL.replace("[bearer]", "[bearer]\npublic_routes = [\"^/ok\", \"GET=/public/\"]");
        let loaded = load_str(&text, no_env()).unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("bearer.public_routes[1]"));
    }

    #[test]
    fn public_routes_parse_method_and_regex() {
        let r = PublicRoute::parse("GET=^/healthz$").unwrap();
        assert!(r.matches(&Method::GET, "/healthz"));
        assert!(!r.matches(&Method::POST, "/healthz"));
        assert!(r.matches(&Method::HEAD, "/healthz"), "HEAD follows GET");
        let r = PublicRoute::parse("HEAD=^/healthz$").unwrap();
        assert!(!r.matches(&Method::GET, "/healthz"), "GET does not follow HEAD");
        assert!(PublicRoute::parse("get=^/healthz$").unwrap_err().contains("upper case"));
        assert!(PublicRoute::parse("Get=^/x").is_err());
        let r = PublicRoute::parse("^/public/").unwrap();
        assert!(r.matches(&Method::DELETE, "/public/x"));
        let text = MINIMAL.replace("[bearer]", "[bearer]\npublic_routes = [\"^/ok\", \"(\"]");
        assert_eq!(err(&text, no_env()).key, "bearer.public_routes[1]");
    }

    #[test]
    fn secret_from_file_is_read_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let text = MINIMAL.replace(
            "[oidc]",
            &format!("[oidc]\nclient_secret_file = {:?}", path.display().to_string()),
        );
        let c = load_str(&text, no_env()).unwrap().config;
        let secret = c.oidc.client_secret.clone().unwrap();
        assert_eq!(secret.expose(), "s3cr3t-value");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn claim_header_cannot_be_a_framing_header() {
        let text =
            format!("{MINIMAL}\n[identity]\nclaim_headers = {{ \"Content-Length\" = \"sub\" }}\n");
        assert!(err(&text, no_env()).key.starts_with("identity.claim_headers"));
    }

    #[test]
    fn rules_are_read_and_their_mistakes_named() {
        let text = format!(
            r#"{MINIMAL}
[authorization]
email_domains = ["example.com"]
[[authorization.rules]]
path = "/admin/"
methods = ["POST", "DELETE"]
groups = ["admins"]
scopes = ["admin:write"]
claims = {{ "realm_access.roles" = ["auditor"] }}
[[authorization.rules]]
path_regex = "^/reports/.*\\.csv$"
issuers = ["https://idp.example.com/realms/main"]
"#
        );
        let c = load_str(&text, no_env()).unwrap().config;
        let p = &c.authorization;
        assert_eq!(p.base.email_domains, vec!["example.com"]);
        assert_eq!(p.rules.len(), 2);
        assert!(matches!(&p.rules[0].path, RulePath::Prefix(x) if x == "/admin"));
        assert_eq!(p.rules[0].methods, vec![Method::POST, Method::DELETE]);
        assert_eq!(p.rules[0].require.claims[0].0, "realm_access.roles");
        assert!(matches!(&p.rules[1].path, RulePath::Regex(_)));
        let bad = |rule: &str| {
            err(&format!("{MINIMAL}\n[[authorization.rules]]\n{rule}\n"), no_env()).key
        };
        assert_eq!(bad("path = \"/admin\""), "authorization.rules[0]");
        assert_eq!(bad("groups = [\"a\"]"), "authorization.rules[0]");
        assert_eq!(
            bad("path_regex = \"(\"\ngroups = [\"a\"]"),
            "authorization.rules[0].path_regex"
        );
        assert_eq!(
            bad("path = \"/a\"\npath_regex = \"^/a\"\ngroups = [\"a\"]"),
            "authorization.rules[0]"
        );
        assert!(bad("path = \"/a\"\ngroup = [\"a\"]").starts_with("authorization.rules[0]"));
        assert_eq!(
            bad("path = \"/a\"\nissuers = [\"https://elsewhere.example\"]"),
            "authorization.rules[0].issuers[0]"
        );
        assert_eq!(bad("path = \"/a\"\nscopes = [\"a b\"]"), "authorization.rules[0].scopes[0]");
        assert_eq!(
            bad("path = \"/a\"\nmethods = [\"\"]\ngroups = [\"a\"]"),
            "authorization.rules[0].methods[0]"
        );
        for lower in ["post", "Delete", "GET ", " GET"] {
            assert_eq!(
                bad(&format!("path = \"/a\"\nmethods = [\"GET\", {lower:?}]\ngroups = [\"a\"]")),
                "authorization.rules[0].methods[1]",
                "{lower:?}"
            );
        }
        // the top-level requirements come from the environment too
        let env =
            vec![("PORTCULLIS_AUTHORIZATION_GROUPS".to_string(), "staff, admins".to_string())];
        let c = load_str(MINIMAL, env).unwrap().config;
        assert_eq!(c.authorization.base.groups, vec!["staff", "admins"]);
    }

    #[test]
    fn login_start_up_errors_name_the_key() {
        let c = load_str(&login_config(), no_env()).unwrap().config;
        let l = c.login.unwrap();
        assert_eq!(l.client_id, "web");
        assert_eq!(l.prefix, "/oauth2");
        assert_eq!(l.scopes, vec!["openid", "email", "profile"]);
        assert!(l.redirect_url.is_none(), "on loopback the redirect URL follows the Host");
        let key = |text: String| err(&text, no_env()).key;
        // [session] without client_id
        assert_eq!(
            key(format!("{MINIMAL}\n[session]\nsecret = \"{LOGIN_SECRET}\"\n")),
            "oidc.client_id"
        );
        // no secret, short or non-random secrets
        let no_secret = login_config().replace(&format!("secret = \"{LOGIN_SECRET}\""), "");
        assert_eq!(key(no_secret), "session.secret");
        let short = login_config().replace(LOGIN_SECRET, "c2hvcnQ=");
        assert_eq!(key(short), "session.secret");
        let zeros =
            login_config().replace(LOGIN_SECRET, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(key(zeros), "session.secret");
        // the client id as a bearer audience
        let clash =
            login_config().replace("audiences = [\"api://my-app\"]", "audiences = [\"web\"]");
        assert_eq!(key(clash), "oidc.client_id");
        // a public listener without redirect_url
        let public = login_config().replace("127.0.0.1:4180", "0.0.0.0:4180");
        assert_eq!(key(public), "oidc.redirect_url");
        let http = login_config()
            .replace("[oidc]", "[oidc]\nredirect_url = \"http://app.example.com/oauth2/callback\"");
        assert_eq!(key(http), "oidc.redirect_url");
        let no_openid = login_config().replace("[oidc]", "[oidc]\nscopes = [\"email\"]");
        assert_eq!(key(no_openid), "oidc.scopes");
        // a secret file: one per line, all read
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secrets");
        std::fs::write(
            &f,
            format!("{LOGIN_SECRET}\n\nMTIzNDU2Nzg5MGFiY2RlZjEyMzQ1Njc4OTBhYmNkZWY=\n"),
        )
        .unwrap();
        let text = login_config().replace(
            &format!("secret = \"{LOGIN_SECRET}\""),
            &format!("secret_file = {:?}", f.display().to_string()),
        );
        let l = load_str(&text, no_env()).unwrap().config.login.unwrap();
        assert_eq!(l.session.secrets.len(), 2);
        assert!(!format!("{l:?}").contains(LOGIN_SECRET));
    }
}
