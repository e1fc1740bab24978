//! `[authorization]`: what the rules say (they are evaluated in `auth::policy`).

use super::*;

/// The parts of a requirement as written, at `key` (`authorization` or a rule).
pub(crate) struct RawRequirement {
    pub(crate) issuers: Option<Vec<String>>,
    pub(crate) groups: Option<Vec<String>>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) emails: Option<Vec<String>>,
    pub(crate) email_domains: Option<Vec<String>>,
    pub(crate) claims: Option<BTreeMap<String, Vec<String>>>,
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
pub(crate) fn authorization_from_raw(
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
        let hosts = Hosts::parse(&format!("{key}.hosts"), r.hosts.unwrap_or_default())?;
        rules.push(Rule { key, path, methods, hosts, require });
    }
    Ok(Policy { base, rules, case_insensitive_paths })
}

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
    /// Empty: every host.
    pub hosts: Hosts,
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
