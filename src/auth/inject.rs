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
        let found = req.extensions().get::<Authenticated>().map(|auth| {
            let token = match &auth.credential {
                Credential::Bearer(t) => Some(t.clone()),
                Credential::Session { access_token } => access_token.clone(),
            };
            (auth.identity.clone(), token)
        });
        if let Some((identity, token)) = found {
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
                    let mut v = Vec::with_capacity(7 + token.expose().len());
                    v.extend_from_slice(b"Bearer ");
                    v.extend_from_slice(token.expose().as_bytes());
                    if let Ok(mut v) = HeaderValue::from_bytes(&v) {
                        v.set_sensitive(true);
                        headers.insert(header::AUTHORIZATION, v);
                    }
                }
                (PassToken::XForwardedAccessToken, Some(token)) => {
                    headers.remove(header::AUTHORIZATION);
                    headers.insert(X_FORWARDED_ACCESS_TOKEN, token.expose().clone());
                }
            }
        }
        self.inner.call(req)
    }
}
