//! The last step of authentication: the verified identity becomes the request's identity
//! headers (after hop-by-hop removal, so a client cannot name them in `Connection` to have them
//! dropped), and `identity.pass_token` decides what becomes of the token.

use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::Request;
use tower::{Layer, Service};

use super::{Authenticated, Credential};
use crate::config::PassToken;
use crate::identity::X_FORWARDED_ACCESS_TOKEN;

/// Sets the verified identity headers (after hop-by-hop removal, so a client cannot name them in
/// `Connection` to have them dropped) and applies `pass_token`.
#[derive(Debug, Clone)]
pub struct InjectIdentityLayer {
    pass_token: PassToken,
    pass_id_token: bool,
}

impl InjectIdentityLayer {
    /// `identity.pass_token` and `identity.pass_id_token`.
    pub fn new(pass_token: PassToken, pass_id_token: bool) -> Self {
        Self { pass_token, pass_id_token }
    }
}

impl<S> Layer<S> for InjectIdentityLayer {
    type Service = InjectIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InjectIdentity { inner, pass_token: self.pass_token, pass_id_token: self.pass_id_token }
    }
}

#[derive(Debug, Clone)]
pub struct InjectIdentity<S> {
    inner: S,
    pass_token: PassToken,
    pass_id_token: bool,
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
        let found = req.extensions().get::<Authenticated>().map(|auth| {
            let (token, id_token) = match &auth.credential {
                Credential::Bearer(t) => (Some(t.clone()), None),
                Credential::Session { access_token, id_token } => {
                    (access_token.clone(), id_token.clone())
                }
            };
            (auth.identity.clone(), token, id_token)
        });
        if let Some((identity, token, id_token)) = found {
            let headers = req.headers_mut();
            headers.reserve(identity.headers.len());
            for (name, value) in &identity.headers {
                headers.insert(name.clone(), value.clone());
            }
            let token = token.as_ref();
            match (self.pass_token, token) {
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
            // A session's ID token, as oauth2-proxy's `--set-authorization-header` sends it
            // (never with pass_token = "authorization": the configuration refuses both).
            if let Some(id_token) = id_token.filter(|_| self.pass_id_token) {
                if let Some(v) = id_token.bearer() {
                    headers.insert(header::AUTHORIZATION, v);
                }
            }
        }
        self.inner.call(req)
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
