//! Who may pass: the `[authorization]` requirements every protected request must meet, and at
//! most one per-route rule on top (the first matching `path_regex` rule in file order, else the
//! rule with the longest matching `path` prefix). Rules read the verified identity only (its
//! groups, scopes, verified email, issuer and claims), never a header or a token. Evaluated as
//! part of the one decision, [`super::AuthSettings::decide`].

use http::Method;
use serde_json::Value;

pub use crate::config::{method_covers, Policy, Requirement, Rule, RulePath};
use crate::identity::{claim_at, Identity};

/// Why a requirement did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// For the log: what was missing.
    pub reason: String,
    /// Scopes the token lacked (for `WWW-Authenticate: ... scope="..."`).
    pub missing_scopes: Vec<String>,
}

impl Requirement {
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
            && self.groups.is_empty()
            && self.scopes.is_empty()
            && self.emails.is_empty()
            && self.email_domains.is_empty()
            && self.claims.is_empty()
    }

    /// Whether `id` meets every part of this requirement.
    pub fn check(&self, id: &Identity) -> Result<(), Unmet> {
        let unmet = |reason: String| Err(Unmet { reason, missing_scopes: Vec::new() });
        if !self.issuers.is_empty() && !self.issuers.contains(&id.issuer) {
            return unmet(format!("issuer {:?} is not one of {:?}", id.issuer, self.issuers));
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| id.groups.contains(g)) {
            return unmet(format!("needs one of the groups {:?}", self.groups));
        }
        let missing: Vec<String> =
            self.scopes.iter().filter(|s| !id.scopes.contains(s)).cloned().collect();
        if !missing.is_empty() {
            return Err(Unmet {
                reason: format!("needs the scopes {missing:?}"),
                missing_scopes: missing,
            });
        }
        if !self.emails.is_empty() || !self.email_domains.is_empty() {
            let Some(email) = id.email.as_deref() else {
                return unmet("needs a verified email".into());
            };
            if !self.emails.is_empty() && !self.emails.iter().any(|e| e.eq_ignore_ascii_case(email))
            {
                return unmet(format!("email is not one of {:?}", self.emails));
            }
            if !self.email_domains.is_empty() {
                let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                let ok = self
                    .email_domains
                    .iter()
                    .any(|d| d == "*" || (!domain.is_empty() && d.eq_ignore_ascii_case(domain)));
                if !ok {
                    return unmet(format!("email domain is not one of {:?}", self.email_domains));
                }
            }
        }
        for (path, accepted) in &self.claims {
            let values = claim_values(claim_at(&id.claims, path));
            if !values.iter().any(|v| accepted.contains(v)) {
                return unmet(format!("claim {path:?} is not one of {accepted:?}"));
            }
        }
        Ok(())
    }

    /// The requirement in words, for `portcullis check`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let list = |v: &[String]| v.join(", ");
        if !self.issuers.is_empty() {
            parts.push(format!("issuer one of [{}]", list(&self.issuers)));
        }
        if !self.groups.is_empty() {
            parts.push(format!("a group of [{}]", list(&self.groups)));
        }
        if !self.scopes.is_empty() {
            parts.push(format!("all scopes [{}]", list(&self.scopes)));
        }
        if !self.emails.is_empty() {
            parts.push(format!("verified email one of [{}]", list(&self.emails)));
        }
        if !self.email_domains.is_empty() {
            parts.push(format!("verified email domain one of [{}]", list(&self.email_domains)));
        }
        for (path, values) in &self.claims {
            parts.push(format!("claim {path} one of [{}]", list(values)));
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join("; ")
        }
    }
}

/// A claim's value(s) as strings: a string, the strings and numbers of an array, a number or a
/// boolean.
fn claim_values(v: Option<&Value>) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

impl Rule {
    fn applies_to(&self, method: &Method, host: Option<&str>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| method_covers(m, method)))
            && self.hosts.matches(host)
    }

    /// The rule in words, for `portcullis check`.
    pub fn describe(&self) -> String {
        let path = match &self.path {
            RulePath::Prefix(p) => format!("path {p} (prefix)"),
            RulePath::Regex(r) => format!("path_regex {}", r.as_str()),
        };
        let methods = if self.methods.is_empty() {
            "any method".to_string()
        } else {
            self.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
        };
        let hosts = if self.hosts.is_empty() {
            String::new()
        } else {
            format!(", hosts {}", self.hosts.describe())
        };
        format!("{}: {path}, {methods}{hosts}: requires {}", self.key, self.require.describe())
    }
}

/// Whether `path` is `prefix` or below it, at a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Why a request was denied.
#[derive(Debug, Clone)]
pub struct Denial {
    /// `authorization` or `authorization.rules[N]`.
    pub rule: String,
    pub unmet: Unmet,
}

impl Policy {
    /// The rule that applies to `method` on `host` (as [`crate::config::canonical_host`] made
    /// it; `None`: not needed, no rule names hosts, or the request named none) and `path` (the
    /// route path: normalised, `;` parameters removed), if any.
    pub fn rule_for(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Rule> {
        let lower;
        let path = if self.case_insensitive_paths && path.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = path.to_ascii_lowercase();
            lower.as_str()
        } else {
            path
        };
        let applicable = || self.rules.iter().filter(|r| r.applies_to(method, host));
        let by_regex =
            applicable().find(|r| matches!(&r.path, RulePath::Regex(re) if re.is_match(path)));
        by_regex.or_else(|| {
            applicable()
                .filter_map(|r| match &r.path {
                    RulePath::Prefix(p) if under(path, p) => Some((p.len(), r)),
                    _ => None,
                })
                // the longest prefix; the first in file order among equals
                .fold(None, |best: Option<(usize, &Rule)>, (len, r)| match best {
                    Some((l, _)) if l >= len => best,
                    _ => Some((len, r)),
                })
                .map(|(_, r)| r)
        })
    }

    /// Whether `id` may make this request.
    pub fn decide(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        id: &Identity,
    ) -> Result<(), Denial> {
        self.base.check(id).map_err(|unmet| Denial { rule: "authorization".into(), unmet })?;
        if let Some(rule) = self.rule_for(method, host, path) {
            rule.require.check(id).map_err(|unmet| Denial { rule: rule.key.clone(), unmet })?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_empty() && self.rules.is_empty()
    }

    /// Whether some rule names hosts (else a request's host need not be read).
    pub fn host_aware(&self) -> bool {
        self.rules.iter().any(|r| !r.hosts.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentityConfig;
    use crate::identity::IdentityMapper;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        let mapper = IdentityMapper::new(IdentityConfig {
            groups_claim: "realm_access.roles".into(),
            ..IdentityConfig::default()
        });
        let Value::Object(m) = claims else { unreachable!() };
        mapper.identity("https://idp", m).unwrap()
    }

    fn rule(key: &str, path: RulePath, require: Requirement) -> Rule {
        Rule { key: key.into(), path, methods: Vec::new(), hosts: Default::default(), require }
    }

    fn groups(g: &[&str]) -> Requirement {
        Requirement { groups: g.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn prefixes_match_at_segment_boundaries_and_the_longest_wins() {
        let p = Policy {
            base: Requirement::default(),
            rules: vec![
                rule("r0", RulePath::Prefix("/admin".into()), groups(&["admins"])),
                rule("r1", RulePath::Prefix("/admin/reports".into()), groups(&["auditors"])),
                rule("r2", RulePath::Prefix("/".into()), groups(&["staff"])),
            ],
            ..Policy::default()
        };
        let key = |path: &str| p.rule_for(&Method::GET, None, path).map(|r| r.key.as_str());
        assert_eq!(key("/admin"), Some("r0"));
        assert_eq!(key("/admin/"), Some("r0"));
        assert_eq!(key("/admin/users"), Some("r0"));
        assert_eq!(key("/admin/reports/1"), Some("r1"));
        assert_eq!(key("/administrator"), Some("r2"));
        assert_eq!(key("/"), Some("r2"));
    }

    #[test]
    fn the_first_matching_regex_beats_any_prefix() {
        let re = |s: &str| RulePath::Regex(regex::Regex::new(s).unwrap());
        let mut post_only = rule("r2", re("^/admin/"), groups(&["writers"]));
        post_only.methods = vec![Method::POST];
        let p = Policy {
            base: Requirement::default(),
            rules: vec![
                rule("r0", RulePath::Prefix("/admin/reports".into()), groups(&["a"])),
                post_only,
                rule("r3", re("^/admin/.*\\.csv$"), groups(&["b"])),
                rule("r4", re("^/admin/"), groups(&["c"])),
            ],
            ..Policy::default()
        };
        let key = |m: Method, path: &str| {
            p.rule_for(&m, None, path).map(|r| r.key.as_str()).unwrap_or("-")
        };
        assert_eq!(key(Method::POST, "/admin/reports/x"), "r2");
        assert_eq!(key(Method::GET, "/admin/reports/x.csv"), "r3");
        assert_eq!(key(Method::GET, "/admin/reports/x"), "r4");
        assert_eq!(key(Method::GET, "/other"), "-");
    }

    #[test]
    fn paths_are_case_sensitive_unless_the_app_is_not() {
        let mut p = Policy {
            rules: vec![rule("a", RulePath::Prefix("/admin".into()), groups(&["a"]))],
            ..Policy::default()
        };
        let key = |p: &Policy, path: &str| {
            p.rule_for(&Method::GET, None, path).map(|r| r.key.as_str()).unwrap_or("-").to_string()
        };
        assert_eq!(key(&p, "/admin/x"), "a");
        assert_eq!(key(&p, "/ADMIN/x"), "-");
        assert_eq!(key(&p, "/Admin"), "-");
        p.case_insensitive_paths = true;
        assert_eq!(key(&p, "/ADMIN/x"), "a");
        assert_eq!(key(&p, "/Admin"), "a");
        assert_eq!(key(&p, "/administrator"), "-");
    }

    #[test]
    fn a_get_rule_covers_head_and_nothing_else_follows() {
        let mut get_only = rule("g", RulePath::Prefix("/reports".into()), groups(&["a"]));
        get_only.methods = vec![Method::GET];
        let mut head_only = rule("h", RulePath::Prefix("/status".into()), groups(&["a"]));
        head_only.methods = vec![Method::HEAD];
        let p = Policy { rules: vec![get_only, head_only], ..Policy::default() };
        let key = |m: Method, path: &str| {
            p.rule_for(&m, None, path).map(|r| r.key.as_str()).unwrap_or("-")
        };
        assert_eq!(key(Method::GET, "/reports"), "g");
        assert_eq!(key(Method::HEAD, "/reports"), "g");
        assert_eq!(key(Method::POST, "/reports"), "-");
        assert_eq!(key(Method::OPTIONS, "/reports"), "-");
        assert_eq!(key(Method::HEAD, "/status"), "h");
        assert_eq!(key(Method::GET, "/status"), "-", "HEAD does not cover GET");
    }

    #[test]
    fn each_requirement_kind() {
        let id = identity(json!({
            "sub": "u1", "email": "Ops@Example.com", "email_verified": true,
            "realm_access": {"roles": ["auditor", "staff"]},
            "scope": "orders:read orders:write", "tenant": "a", "level": 3,
            "https://example.com/groups": ["x"],
        }));
        let ok = |r: Requirement| r.check(&id).is_ok();
        assert!(ok(groups(&["nope", "auditor"])));
        assert!(!ok(groups(&["admins"])));
        let scopes = |s: &[&str]| Requirement {
            scopes: s.iter().map(|x| x.to_string()).collect(),
            ..Default::default()
        };
        assert!(ok(scopes(&["orders:write", "orders:read"])));
        let e = scopes(&["orders:write", "admin"]).check(&id).unwrap_err();
        assert_eq!(e.missing_scopes, vec!["admin"]);
        let emails = Requirement { emails: vec!["ops@example.com".into()], ..Default::default() };
        assert!(ok(emails));
        for (d, want) in [("example.com", true), ("*", true), ("ample.com", false)] {
            let r = Requirement { email_domains: vec![d.into()], ..Default::default() };
            assert_eq!(ok(r), want, "{d}");
        }
        let claims = |c: &[(&str, &[&str])]| Requirement {
            claims: c
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ..Default::default()
        };
        assert!(ok(claims(&[("tenant", &["b", "a"]), ("level", &["3"])])));
        assert!(ok(claims(&[("realm_access.roles", &["staff"])])));
        assert!(ok(claims(&[("https://example.com/groups", &["x"])])));
        assert!(!ok(claims(&[("tenant", &["b"])])));
        assert!(!ok(claims(&[("missing.path", &["x"])])));
        let iss = Requirement { issuers: vec!["https://other".into()], ..Default::default() };
        assert!(!ok(iss));
    }

    #[test]
    fn email_rules_need_a_verified_email() {
        let id =
            identity(json!({"sub": "u1", "email": "ops@example.com", "email_verified": false}));
        let r = Requirement { email_domains: vec!["*".into()], ..Default::default() };
        assert!(r.check(&id).is_err());
        let r = Requirement { emails: vec!["ops@example.com".into()], ..Default::default() };
        assert!(r.check(&id).is_err());
    }

    #[test]
    fn the_base_requirement_always_applies() {
        let p = Policy {
            base: Requirement { email_domains: vec!["example.com".into()], ..Default::default() },
            rules: vec![rule("r0", RulePath::Prefix("/admin".into()), groups(&["staff"]))],
            ..Policy::default()
        };
        let inside = identity(json!({"sub": "u", "email": "a@example.com",
                                     "realm_access": {"roles": ["staff"]}}));
        let outside = identity(json!({"sub": "u", "email": "a@evil.example",
                                      "realm_access": {"roles": ["staff"]}}));
        assert!(p.decide(&Method::GET, None, "/admin/x", &inside).is_ok());
        let d = p.decide(&Method::GET, None, "/x", &outside).unwrap_err();
        assert_eq!(d.rule, "authorization");
        let no_group = identity(json!({"sub": "u", "email": "a@example.com"}));
        let d = p.decide(&Method::GET, None, "/admin", &no_group).unwrap_err();
        assert_eq!(d.rule, "r0");
        assert!(p.decide(&Method::GET, None, "/x", &no_group).is_ok());
    }

    #[test]
    fn claims_of_every_scalar_kind_and_empty_policies() {
        let id = identity(json!({"sub": "u", "admin": true, "level": 3, "tags": ["a", 7, false]}));
        let claims = |k: &str, v: &str| Requirement {
            claims: vec![(k.to_string(), vec![v.to_string()])],
            ..Default::default()
        };
        assert!(claims("admin", "true").check(&id).is_ok());
        assert!(claims("admin", "false").check(&id).is_err());
        assert!(claims("level", "3").check(&id).is_ok());
        assert!(claims("tags", "7").check(&id).is_ok());
        assert!(claims("tags", "false").check(&id).is_ok());
        assert!(Policy::default().is_empty());
        assert!(!Policy { base: claims("admin", "true"), ..Policy::default() }.is_empty());
        let only_rule = Policy {
            base: Requirement::default(),
            rules: vec![rule("r", RulePath::Prefix("/a".into()), groups(&["g"]))],
            ..Policy::default()
        };
        assert!(!only_rule.is_empty());
    }

    #[test]
    fn descriptions_say_what_is_required() {
        let r = Requirement {
            issuers: vec!["https://i".into()],
            groups: vec!["g1".into(), "g2".into()],
            scopes: vec!["s".into()],
            emails: vec!["a@b".into()],
            email_domains: vec!["b".into()],
            claims: vec![("c.d".into(), vec!["x".into()])],
        };
        assert_eq!(
            r.describe(),
            "issuer one of [https://i]; a group of [g1, g2]; all scopes [s]; verified email one of [a@b]; verified email domain one of [b]; claim c.d one of [x]"
        );
        assert_eq!(Requirement::default().describe(), "nothing");
        let mut rule =
            rule("authorization.rules[0]", RulePath::Prefix("/admin".into()), groups(&["admins"]));
        rule.methods = vec![Method::POST];
        assert_eq!(
            rule.describe(),
            "authorization.rules[0]: path /admin (prefix), POST: requires a group of [admins]"
        );
    }
}
