//! The file's shape: each section as written (every key optional, unknown keys refused) and
//! the environment variables that can set its keys.

use super::*;

/// How an environment value becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Bool,
    Int,
    /// comma-separated
    List,
    /// comma-separated `KEY=VALUE` pairs
    Map,
}

/// The environment kind of a raw field's type; `None` for keys only the file can set (tables).
pub(crate) trait EnvKind {
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

impl EnvKind for Option<Vec<RawPublicRoute>> {
    const KIND: Option<Kind> = Some(Kind::List);
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
        pub(crate) struct $name {
            $(pub(crate) $field: $ty,)*
        }
        impl $name {
            pub(crate) const NAME: &'static str = $section;
            pub(crate) const KEYS: &'static [SectionKey] =
                &[$((stringify!($field), <$ty as EnvKind>::KIND),)*];
        }
    };
}

section!(RawServer = "server" {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_timeout: Option<String>,
    shutdown_delay: Option<String>,
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
    redis_url: Option<String>,
    redis_password_file: Option<String>,
    redis_ca_file: Option<String>,
    redis_key_prefix: Option<String>,
    redis_connect_timeout: Option<String>,
    redis_timeout: Option<String>,
    refresh_lock_lease: Option<String>,
});

section!(RawBearer = "bearer" {
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    required_claims: Option<Vec<String>>,
    public_routes: Option<Vec<RawPublicRoute>>,
    realm: Option<String>,
    jwks_refresh_interval: Option<String>,
    jwks_min_refetch_interval: Option<String>,
    token_cache_size: Option<i64>,
    token_types: Option<Vec<String>>,
    skip_auth_preflight: Option<bool>,
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
    pass_id_token: Option<bool>,
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
pub(crate) struct RawRule {
    pub(crate) path: Option<String>,
    pub(crate) path_regex: Option<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) issuers: Option<Vec<String>>,
    pub(crate) groups: Option<Vec<String>>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) emails: Option<Vec<String>>,
    pub(crate) email_domains: Option<Vec<String>>,
    pub(crate) claims: Option<BTreeMap<String, Vec<String>>>,
    pub(crate) hosts: Option<Vec<String>>,
}

/// One `bearer.public_routes` entry as written: `"[METHOD=]regex"`, or a table with the same
/// `route` and the `hosts` it applies to.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawPublicRoute {
    Spec(String),
    Table(RawPublicRouteTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPublicRouteTable {
    pub(crate) route: String,
    pub(crate) hosts: Vec<String>,
}

section!(RawForwardAuth = "forward_auth" {
    dialect: Option<String>,
    redirect_browsers: Option<bool>,
});

section!(RawLog = "log" {
    level: Option<String>,
    format: Option<String>,
});

/// A key of a section and how the environment sets it (`None`: only the file can).
pub(crate) type SectionKey = (&'static str, Option<Kind>);

/// Every section's keys, for the environment overrides.
pub(crate) const SECTIONS: &[(&str, &[SectionKey])] = &[
    (RawServer::NAME, RawServer::KEYS),
    (RawUpstream::NAME, RawUpstream::KEYS),
    (RawOidc::NAME, RawOidc::KEYS),
    (RawSession::NAME, RawSession::KEYS),
    (RawBearer::NAME, RawBearer::KEYS),
    (RawIdentity::NAME, RawIdentity::KEYS),
    (RawAuthorization::NAME, RawAuthorization::KEYS),
    (RawForwardAuth::NAME, RawForwardAuth::KEYS),
    (RawLog::NAME, RawLog::KEYS),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    /// Absent: no app, forward-auth checks only.
    pub(crate) upstream: Option<RawUpstream>,
    #[serde(default)]
    pub(crate) oidc: RawOidc,
    /// Present (even empty) turns browser login on, with `oidc.client_id`.
    pub(crate) session: Option<RawSession>,
    #[serde(default)]
    pub(crate) bearer: RawBearer,
    #[serde(default)]
    pub(crate) identity: RawIdentity,
    #[serde(default)]
    pub(crate) authorization: RawAuthorization,
    #[serde(default)]
    pub(crate) forward_auth: RawForwardAuth,
    #[serde(default)]
    pub(crate) log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    pub(crate) issuer: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) jwks_url: Option<String>,
}

/// Every key an environment variable can set: (section, key, kind).
pub(crate) fn env_keys() -> impl Iterator<Item = (&'static str, &'static str, Kind)> {
    SECTIONS.iter().flat_map(|(section, keys)| {
        keys.iter().filter_map(move |(key, kind)| kind.map(|k| (*section, *key, k)))
    })
}

/// Variables of ours that are not config keys (read by the CLI).
pub(crate) const ENV_NOT_KEYS: &[&str] = &["PORTCULLIS_CONFIG"];

/// The environment variable for a key: `server.admin_listen` → `PORTCULLIS_SERVER_ADMIN_LISTEN`.
pub fn env_name(section: &str, key: &str) -> String {
    format!("PORTCULLIS_{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase())
}

pub(crate) fn env_value(kind: Kind, value: &str) -> Result<toml::Value, String> {
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
