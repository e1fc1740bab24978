//! The last step of authentication: the verified identity becomes the request's identity
//! headers (after hop-by-hop removal, so a client cannot name them in `Connection` to have them
//! dropped), and `identity.pass_token` decides what becomes of the token.

use http::header::{self, HeaderMap, HeaderValue};

use super::{Authenticated, Credential};
use crate::config::PassToken;
use crate::identity::X_FORWARDED_ACCESS_TOKEN;

/// Sets the verified identity's headers in `headers` (after hop-by-hop removal, so a client
/// cannot name them in `Connection` to have them dropped) and applies `identity.pass_token`
/// and `identity.pass_id_token` to its credential.
pub(crate) fn inject_identity(
    headers: &mut HeaderMap,
    auth: Authenticated,
    pass_token: PassToken,
    pass_id_token: bool,
) {
    let (token, id_token) = match auth.credential {
        Credential::Bearer(t) => (Some(t), None),
        Credential::Session { access_token, id_token } => (access_token, id_token),
    };
    headers.reserve(auth.identity.headers.len());
    for (name, value) in &auth.identity.headers {
        headers.insert(name.clone(), value.clone());
    }
    match (pass_token, token) {
        (PassToken::None, _) | (_, None) => {
            headers.remove(header::AUTHORIZATION);
        }
        (PassToken::Authorization, Some(token)) => {
            if let Some(v) = token.bearer() {
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        (PassToken::XForwardedAccessToken, Some(token)) => {
            headers.remove(header::AUTHORIZATION);
            headers.insert(X_FORWARDED_ACCESS_TOKEN, token.value());
        }
    }
    // A session's ID token, as oauth2-proxy's `--set-authorization-header` sends it (never
    // with pass_token = "authorization": the configuration refuses both).
    if let Some(id_token) = id_token.filter(|_| pass_id_token) {
        if let Some(v) = id_token.bearer() {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
}

/// `Bearer <token>`, marked sensitive.
pub fn bearer_value(token: &[u8]) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(7 + token.len());
    v.extend_from_slice(b"Bearer ");
    v.extend_from_slice(token);
    let mut v = HeaderValue::from_bytes(&v).ok()?;
    v.set_sensitive(true);
    Some(v)
}
