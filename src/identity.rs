//! Identity and the headers it becomes, and the layer that sets them. Client-sent copies are
//! stripped earlier, by [`crate::headers`].

use http::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::IdentityConfig;

pub const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const X_FORWARDED_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-forwarded-preferred-username");
pub const X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");
pub const X_FORWARDED_ACCESS_TOKEN: HeaderName =
    HeaderName::from_static("x-forwarded-access-token");
pub const X_FORWARDED_ISSUER: HeaderName = HeaderName::from_static("x-forwarded-issuer");

/// A verified caller. Built once per token, shared by the cache; headers are precomputed.
#[derive(Debug)]
pub struct Identity {
    /// The token's `sub` (or empty when absent and not required).
    pub subject: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The verified claims, for the layers after authentication (policy).
    pub claims: Map<String, Value>,
    /// The email, only when verified (see `identity.require_verified_email`).
    pub email: Option<String>,
    /// The groups (`identity.groups_claim`: a string or an array of strings).
    pub groups: Vec<String>,
    /// The scopes: the space-separated `scope` string, or the `scp` array (or string).
    pub scopes: Vec<String>,
    /// The identity headers to set on the forwarded request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why verified claims give no identity the app could trust (the request is refused, `401`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The user claim is the email claim, and the email is not verified.
    #[error("the user claim {0:?} is an email that is not verified (email_verified)")]
    UnverifiedEmail(String),
    /// The user claim is missing, empty, or holds CR, LF or NUL.
    #[error("the user claim {0:?} is missing, empty or cannot be sent in a header")]
    NoUser(String),
}

/// The claim at `path`: an exact top-level key first (`https://example.com/groups`), else the
/// path split on `.` (`realm_access.roles`, `resource_access.my-app.roles`).
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// A claim holding a string or an array of strings, as strings.
fn strings(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_whitespace().map(str::to_string).collect()
        }
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect()
        }
        _ => Vec::new(),
    }
}

/// Turns verified claims into an [`Identity`].
#[derive(Debug, Clone)]
pub struct IdentityMapper {
    cfg: IdentityConfig,
    /// `identity.require_verified_email`, resolved for this kind of credential.
    require_verified_email: bool,
}

/// `email_verified` as providers send it: `true`/`false` or the strings `"true"`/`"false"`.
/// Absent, the email counts as verified unless `require` says otherwise; anything else counts
/// as unverified.
fn email_verified(claims: &Map<String, Value>, require: bool) -> bool {
    match claims.get("email_verified") {
        None | Some(Value::Null) => !require,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        Some(_) => false,
    }
}

impl IdentityMapper {
    /// For bearer tokens: an absent `email_verified` counts as verified unless configured.
    pub fn new(cfg: IdentityConfig) -> Self {
        let require_verified_email = cfg.require_verified_email.unwrap_or(false);
        Self { cfg, require_verified_email }
    }

    /// For browser sessions: an absent `email_verified` counts as unverified unless configured.
    pub fn for_sessions(cfg: IdentityConfig) -> Self {
        let require_verified_email = cfg.require_verified_email.unwrap_or(true);
        Self { cfg, require_verified_email }
    }

    /// Every header portcullis can set; client-sent copies are stripped.
    pub fn identity_header_names(&self) -> Vec<HeaderName> {
        let mut names = vec![
            X_FORWARDED_USER,
            X_FORWARDED_EMAIL,
            X_FORWARDED_PREFERRED_USERNAME,
            X_FORWARDED_GROUPS,
            X_FORWARDED_ACCESS_TOKEN,
            X_FORWARDED_ISSUER,
        ];
        for (h, _) in &self.cfg.claim_headers {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        names
    }

    /// The identity verified `claims` of `issuer` give, or why they give none the app could
    /// trust. An unverified email never becomes a header (whichever header names its claim).
    pub fn identity(
        &self,
        issuer: &str,
        claims: Map<String, Value>,
    ) -> Result<Identity, IdentityError> {
        let cfg = &self.cfg;
        let email_ok = email_verified(&claims, self.require_verified_email);
        let user = claim_at(&claims, &cfg.user_claim)
            .and_then(header_value)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| IdentityError::NoUser(cfg.user_claim.clone()))?;
        if !email_ok && cfg.user_claim == cfg.email_claim {
            return Err(IdentityError::UnverifiedEmail(cfg.user_claim.clone()));
        }
        let mut headers = vec![(X_FORWARDED_USER, user)];
        let mut push = |name: &HeaderName, claim: &str| {
            if claim == cfg.email_claim && !email_ok {
                tracing::debug!(header = %name, claim, "email not verified; header left out");
                return;
            }
            if let Some(v) = claim_at(&claims, claim) {
                match header_value(v) {
                    Some(value) => headers.push((name.clone(), value)),
                    None if !v.is_null() => {
                        tracing::warn!(header = %name, claim, "claim value contains CR, LF or NUL; header left out")
                    }
                    None => {}
                }
            }
        };
        push(&X_FORWARDED_EMAIL, &cfg.email_claim);
        push(&X_FORWARDED_PREFERRED_USERNAME, &cfg.preferred_username_claim);
        push(&X_FORWARDED_GROUPS, &cfg.groups_claim);
        for (name, claim) in &cfg.claim_headers {
            push(name, claim);
        }
        if cfg.pass_issuer {
            if let Some(v) = header_value(&Value::String(issuer.to_string())) {
                headers.push((X_FORWARDED_ISSUER, v));
            }
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let email = match claim_at(&claims, &cfg.email_claim) {
            Some(Value::String(e)) if email_ok => Some(e.clone()),
            _ => None,
        };
        let groups = strings(claim_at(&claims, &cfg.groups_claim), false);
        let scopes = match claims.get("scope") {
            Some(v @ Value::String(_)) => strings(Some(v), true),
            _ => strings(claims.get("scp"), true),
        };
        Ok(Identity { subject, issuer: issuer.to_string(), claims, email, groups, scopes, headers })
    }
}

/// A claim as a header value, so that the app can always tell values apart and get the exact
/// claim back by percent-decoding: strings as they are; arrays comma-joined, with a `,` inside
/// an element encoded; other JSON as JSON text. `%`, bytes that are not visible ASCII, and
/// leading or trailing spaces are percent-encoded. `None` for CR, LF or NUL (or JSON `null`).
pub fn header_value(v: &Value) -> Option<HeaderValue> {
    let mut out = String::new();
    match v {
        Value::Null => return None,
        Value::String(s) => encode_into(&mut out, s, false)?,
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::String(s) => encode_into(&mut out, s, true)?,
                    other => encode_into(&mut out, &other.to_string(), true)?,
                }
            }
        }
        other => encode_into(&mut out, &other.to_string(), false)?,
    }
    HeaderValue::from_str(&out).ok()
}

/// Appends `text` percent-encoded (see [`header_value`]); `None` on CR, LF or NUL.
fn encode_into(out: &mut String, text: &str, in_list: bool) -> Option<()> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = text.as_bytes();
    let first_kept = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    let last_kept = bytes.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'\r' | b'\n' | 0) {
            return None;
        }
        let plain = match b {
            b'%' => false,
            b',' => !in_list,
            b' ' => i >= first_kept && i < last_kept,
            _ => b.is_ascii_graphic(),
        };
        if plain {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapper(claim_headers: Vec<(HeaderName, String)>) -> IdentityMapper {
        IdentityMapper::new(IdentityConfig { claim_headers, ..IdentityConfig::default() })
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn header<'a>(id: &'a Identity, name: &str) -> Option<&'a str> {
        id.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap())
    }

    fn id(m: &IdentityMapper, v: Value) -> Identity {
        m.identity("https://idp", claims(v)).unwrap()
    }

    #[test]
    fn claims_become_headers() {
        let m = mapper(vec![(HeaderName::from_static("x-forwarded-tenant"), "tid".into())]);
        let id = id(
            &m,
            json!({"sub": "u1", "email": "a@b.c", "groups": ["admins", "dev"], "tid": "t9",
                   "preferred_username": "alice"}),
        );
        assert_eq!(header(&id, "x-forwarded-user"), Some("u1"));
        assert_eq!(header(&id, "x-forwarded-email"), Some("a@b.c"));
        assert_eq!(header(&id, "x-forwarded-groups"), Some("admins,dev"));
        assert_eq!(header(&id, "x-forwarded-preferred-username"), Some("alice"));
        assert_eq!(header(&id, "x-forwarded-tenant"), Some("t9"));
        assert_eq!(header(&id, "x-forwarded-issuer"), None);
        assert_eq!(id.subject, "u1");
    }

    #[test]
    fn crlf_in_a_claim_drops_its_header_and_in_the_user_refuses() {
        let m = mapper(vec![]);
        let id = id(&m, json!({"sub": "u1", "email": "a@b.c\r\nX-Admin: 1"}));
        assert_eq!(header(&id, "x-forwarded-email"), None);
        assert_eq!(header(&id, "x-forwarded-user"), Some("u1"));
        for sub in [json!("u\u{0}1"), json!("u\n1"), json!(""), Value::Null] {
            let e = m.identity("i", claims(json!({ "sub": sub }))).unwrap_err();
            assert_eq!(e, IdentityError::NoUser("sub".into()), "{sub}");
        }
        let e = m.identity("i", claims(json!({"email": "a@b.c"}))).unwrap_err();
        assert_eq!(e, IdentityError::NoUser("sub".into()));
    }

    #[test]
    fn header_values_are_unambiguous() {
        let m = mapper(vec![]);
        let cases = [
            (json!("José\tx"), "Jos%C3%A9%09x"),
            (json!("jos%C3%A9"), "jos%25C3%25A9"),
            (json!(" padded  "), "%20padded%20%20"),
            (json!("in ner"), "in ner"),
            (json!("a,b"), "a,b"),
            (json!(["a,b", "c"]), "a%2Cb,c"),
            (json!(["x y", 7, true]), "x y,7,true"),
            (json!({"k": "v"}), "{\"k\":\"v\"}"),
        ];
        for (v, want) in cases {
            let got = id(&m, json!({"sub": "u1", "preferred_username": v.clone()}));
            assert_eq!(header(&got, "x-forwarded-preferred-username"), Some(want), "{v}");
        }
        // distinct values stay distinct
        let a = id(&m, json!({"sub": "u1", "groups": ["a,b"]}));
        let b = id(&m, json!({"sub": "u1", "groups": ["a", "b"]}));
        assert_ne!(header(&a, "x-forwarded-groups"), header(&b, "x-forwarded-groups"));
    }

    #[test]
    fn unverified_email_is_never_a_header() {
        let tenant = (HeaderName::from_static("x-mail"), "email".to_string());
        let m = mapper(vec![tenant]);
        for v in [json!(false), json!("false"), json!("no"), json!(0)] {
            let got = id(&m, json!({"sub": "u1", "email": "a@b.c", "email_verified": v.clone()}));
            assert_eq!(header(&got, "x-forwarded-email"), None, "{v}");
            assert_eq!(header(&got, "x-mail"), None, "{v}");
        }
        for v in [json!(true), json!("true")] {
            let got = id(&m, json!({"sub": "u1", "email": "a@b.c", "email_verified": v.clone()}));
            assert_eq!(header(&got, "x-forwarded-email"), Some("a@b.c"), "{v}");
        }
        // absent: verified unless required
        let got = id(&m, json!({"sub": "u1", "email": "a@b.c"}));
        assert_eq!(header(&got, "x-forwarded-email"), Some("a@b.c"));
        let strict = IdentityMapper::new(IdentityConfig {
            require_verified_email: Some(true),
            ..IdentityConfig::default()
        });
        let got = id(&strict, json!({"sub": "u1", "email": "a@b.c"}));
        assert_eq!(header(&got, "x-forwarded-email"), None);
    }

    #[test]
    fn email_as_the_user_must_be_verified() {
        let m = IdentityMapper::new(IdentityConfig {
            user_claim: "email".into(),
            ..IdentityConfig::default()
        });
        let e = m.identity(
            "i",
            claims(json!({"sub": "u1", "email": "a@b.c", "email_verified": "false"})),
        );
        assert_eq!(e.unwrap_err(), IdentityError::UnverifiedEmail("email".into()));
        let ok = id(&m, json!({"sub": "u1", "email": "a@b.c", "email_verified": true}));
        assert_eq!(header(&ok, "x-forwarded-user"), Some("a@b.c"));
    }

    #[test]
    fn issuer_header_when_asked() {
        let m =
            IdentityMapper::new(IdentityConfig { pass_issuer: true, ..IdentityConfig::default() });
        let got = id(&m, json!({"sub": "u1"}));
        assert_eq!(header(&got, "x-forwarded-issuer"), Some("https://idp"));
    }
}
