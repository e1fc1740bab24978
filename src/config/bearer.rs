//! `[bearer]` (and `[[bearer.issuers]]`): who is trusted for bearer tokens, and how they are
//! checked; public routes.

use super::*;

/// Default clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Default interval between background JWKS refreshes.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Default minimum time between two fetches caused by an unknown `kid`.
pub const DEFAULT_JWKS_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Default number of verified tokens kept.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;

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
    /// CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) pass
    /// without authentication, as a public route (browsers send them without credentials;
    /// oauth2-proxy's `--skip-auth-preflight`). Defaults to false.
    pub skip_auth_preflight: bool,
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
            skip_auth_preflight: false,
        }
    }
}

/// Default `bearer.token_types`: a plain JWT and an RFC 9068 access token.
pub const DEFAULT_TOKEN_TYPES: &[&str] = &["JWT", "at+jwt"];

pub(crate) fn default_token_types() -> Vec<String> {
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
    /// The hosts it applies to; empty: every host.
    pub hosts: Hosts,
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
        Ok(Self { method, path, hosts: Hosts::default() })
    }

    /// A `GET` route covers `HEAD` too (apps answer `HEAD` with their `GET` handler).
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| method_covers(m, method)) && self.path.is_match(path)
    }
}

impl BearerConfig {
    /// `oidc` is the provider section: its issuer is the first one trusted. With browser login
    /// (`login`), `oidc.issuer` may sign users in without being trusted for bearer tokens.
    pub(crate) fn from_raw(
        b: RawBearer,
        oidc: &OidcConfig,
        login: bool,
    ) -> Result<Self, ConfigError> {
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
        for (i, raw) in b.public_routes.unwrap_or_default().into_iter().enumerate() {
            let key = format!("bearer.public_routes[{i}]");
            let (spec, hosts) = match raw {
                RawPublicRoute::Spec(s) => (s, Hosts::default()),
                RawPublicRoute::Table(t) => {
                    if t.hosts.is_empty() {
                        return Err(ConfigError::new(
                            format!("{key}.hosts"),
                            "is empty: name the hosts, or write the route as a string for every host",
                        ));
                    }
                    (t.route, Hosts::parse(&format!("{key}.hosts"), t.hosts)?)
                }
            };
            let mut route = PublicRoute::parse(&spec).map_err(|m| ConfigError::new(&key, m))?;
            route.hosts = hosts;
            public_routes.push(route);
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
            skip_auth_preflight: b.skip_auth_preflight.unwrap_or(false),
        })
    }
}
