//! Identity and the headers it becomes, and the layer that sets them. Client-sent copies are
//! stripped earlier, by [`crate::headers`].

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::Request;
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::config::{IdentityConfig, PassToken};

pub const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const X_FORWARDED_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-forwarded-preferred-username");
pub const X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");
pub const X_FORWARDED_ACCESS_TOKEN: HeaderName =
    HeaderName::from_static("x-forwarded-access-token");

/// A verified caller. Built once per token, shared by the cache; headers are precomputed.
#[derive(Debug)]
pub struct Identity {
    /// The token's `sub` (or empty when absent and not required).
    pub subject: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The verified claims, for the layers after authentication (policy).
    pub claims: Map<String, Value>,
    /// The identity headers to set on the forwarded request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What the authentication layer leaves in the request's extensions for the layers after it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Arc<Identity>,
    /// The raw `Authorization` value the client sent (for `pass_token`).
    pub authorization: HeaderValue,
    /// The token alone, for `X-Forwarded-Access-Token`.
    pub token: HeaderValue,
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

/// Turns verified claims into an [`Identity`].
#[derive(Debug, Clone)]
pub struct IdentityMapper {
    cfg: IdentityConfig,
}

impl IdentityMapper {
    pub fn new(cfg: IdentityConfig) -> Self {
        Self { cfg }
    }

    /// Every header portcullis can set; client-sent copies are stripped.
    pub fn identity_header_names(&self) -> Vec<HeaderName> {
        let mut names = vec![
            X_FORWARDED_USER,
            X_FORWARDED_EMAIL,
            X_FORWARDED_PREFERRED_USERNAME,
            X_FORWARDED_GROUPS,
            X_FORWARDED_ACCESS_TOKEN,
        ];
        for (h, _) in &self.cfg.claim_headers {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        names
    }

    pub fn identity(&self, issuer: &str, claims: Map<String, Value>) -> Identity {
        let mut headers = Vec::new();
        let mut push = |name: &HeaderName, claim: &str| {
            if let Some(v) = claims.get(claim) {
                if let Some(value) = claim_header_value(name, claim, v) {
                    headers.push((name.clone(), value));
                }
            }
        };
        push(&X_FORWARDED_USER, &self.cfg.user_claim);
        push(&X_FORWARDED_EMAIL, &self.cfg.email_claim);
        push(&X_FORWARDED_PREFERRED_USERNAME, &self.cfg.preferred_username_claim);
        push(&X_FORWARDED_GROUPS, &self.cfg.groups_claim);
        for (name, claim) in &self.cfg.claim_headers {
            push(name, claim);
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        Identity { subject, issuer: issuer.to_string(), claims, headers }
    }
}

/// A claim as a header value: strings as they are, arrays comma-joined, other JSON as JSON.
/// CR, LF or NUL drop the value (with a warning); other bytes that are not visible ASCII are
/// percent-encoded.
fn claim_header_value(name: &HeaderName, claim: &str, v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    if text.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        tracing::warn!(header = %name, claim, "claim value contains CR, LF or NUL; header left out");
        return None;
    }
    let encoded: String = if text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        text
    } else {
        let mut out = String::with_capacity(text.len() + 8);
        for b in text.bytes() {
            if b == b' ' || b.is_ascii_graphic() {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    HeaderValue::from_str(&encoded).ok()
}

// ----- InjectIdentity -----

/// Sets the verified identity headers (after hop-by-hop removal, so a client cannot name them in
/// `Connection` to have them dropped) and applies `pass_token`.
#[derive(Debug, Clone)]
pub struct InjectIdentityLayer {
    pass_token: PassToken,
}

impl InjectIdentityLayer {
    pub fn new(pass_token: PassToken) -> Self {
        Self { pass_token }
    }
}

impl<S> Layer<S> for InjectIdentityLayer {
    type Service = InjectIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InjectIdentity { inner, pass_token: self.pass_token }
    }
}

#[derive(Debug, Clone)]
pub struct InjectIdentity<S> {
    inner: S,
    pass_token: PassToken,
}

impl<S, B> Service<Request<B>> for InjectIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(auth) = req.extensions().get::<Authenticated>().cloned() {
            let headers = req.headers_mut();
            for (name, value) in &auth.identity.headers {
                headers.insert(name.clone(), value.clone());
            }
            match self.pass_token {
                PassToken::None => {
                    headers.remove(header::AUTHORIZATION);
                }
                PassToken::Authorization => {
                    headers.insert(header::AUTHORIZATION, auth.authorization.clone());
                }
                PassToken::XForwardedAccessToken => {
                    headers.remove(header::AUTHORIZATION);
                    headers.insert(X_FORWARDED_ACCESS_TOKEN, auth.token.clone());
                }
            }
        }
        self.inner.call(req)
    }
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

    #[test]
    fn claims_become_headers() {
        let m = mapper(vec![(HeaderName::from_static("x-forwarded-tenant"), "tid".into())]);
        let id = m.identity(
            "https://idp",
            claims(json!({"sub": "u1", "email": "a@b.c", "groups": ["admins", "dev"], "tid": "t9",
                           "preferred_username": "alice"})),
        );
        assert_eq!(header(&id, "x-forwarded-user"), Some("u1"));
        assert_eq!(header(&id, "x-forwarded-email"), Some("a@b.c"));
        assert_eq!(header(&id, "x-forwarded-groups"), Some("admins,dev"));
        assert_eq!(header(&id, "x-forwarded-preferred-username"), Some("alice"));
        assert_eq!(header(&id, "x-forwarded-tenant"), Some("t9"));
        assert_eq!(id.subject, "u1");
    }

    #[test]
    fn crlf_in_claim_drops_the_header() {
        let m = mapper(vec![]);
        let id = m.identity("i", claims(json!({"sub": "u1", "email": "a@b.c\r\nX-Admin: 1"})));
        assert_eq!(header(&id, "x-forwarded-email"), None);
        assert_eq!(header(&id, "x-forwarded-user"), Some("u1"));
        let id = m.identity("i", claims(json!({"sub": "u\u{0}1"})));
        assert_eq!(header(&id, "x-forwarded-user"), None);
    }

    #[test]
    fn non_ascii_claim_is_percent_encoded() {
        let m = mapper(vec![]);
        let id = m.identity("i", claims(json!({"sub": "u1", "preferred_username": "José\tx"})));
        assert_eq!(header(&id, "x-forwarded-preferred-username"), Some("Jos%C3%A9%09x"));
    }
}
