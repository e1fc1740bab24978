//! Authentication: who is calling. `discovery` (provider metadata) → `keys` (JWKS cache) →
//! `token` (JWT validation and the verified-token cache) → `identity` (the headers an identity
//! becomes), and the
//! [`Authenticate`] layer that ties them to a request.

pub mod discovery;
pub mod identity;
pub mod keys;
pub mod token;

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::config::PublicRoute;
use crate::response::{Decision, Rejection};
use identity::Authenticated;
use token::{TokenError, Verified, Verifier};

/// Headers some frameworks take as the real method of a POST or GET (any spelling).
const METHOD_OVERRIDE_HEADERS: &[&str] =
    &["x-http-method-override", "x-http-method", "x-method-override"];
/// The query parameter Rails, Laravel, Symfony and others take as the real method.
const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Whether the request carries a method override a framework could act on.
fn has_method_override<B>(req: &Request<B>) -> bool {
    let in_headers = req.headers().keys().any(|k| {
        METHOD_OVERRIDE_HEADERS.iter().any(|h| crate::headers::same_header(k.as_str(), h))
    });
    in_headers
        || req.uri().query().is_some_and(|q| {
            url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == METHOD_OVERRIDE_PARAM)
        })
}

/// Whether an `Authorization` value uses the `Bearer` scheme (RFC 6750 §2.1: any case).
fn is_bearer(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"bearer") && (b.len() == 6 || b[6] == b' ')
}

/// What [`Authenticate`] needs: the verifier and the public routes.
#[derive(Debug)]
pub struct AuthSettings {
    pub verifier: Arc<Verifier>,
    pub public_routes: Vec<PublicRoute>,
    pub realm: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    settings: Arc<AuthSettings>,
}

impl AuthenticateLayer {
    pub fn new(settings: Arc<AuthSettings>) -> Self {
        Self { settings }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, settings: self.settings.clone() }
    }
}

/// Lets public routes through, validates the bearer token of every other request, and leaves
/// [`Authenticated`] in the request for the layers after it. Rejects with 401/400/503.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    settings: Arc<AuthSettings>,
}

/// The bearer token in a request, if any.
enum Credentials {
    None,
    Bearer {
        authorization: HeaderValue,
        token: HeaderValue,
    },
    /// More than one `Authorization` header.
    Ambiguous,
}

fn credentials<B>(req: &Request<B>) -> Credentials {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credentials::None;
    };
    if values.next().is_some() {
        return Credentials::Ambiguous;
    }
    let bytes = value.as_bytes();
    // RFC 6750 §2.1: the scheme is case-insensitive.
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return Credentials::None;
    }
    let token = bytes[7..].trim_ascii();
    match HeaderValue::from_bytes(token) {
        Ok(t) if !token.is_empty() => {
            Credentials::Bearer { authorization: value.clone(), token: t }
        }
        _ => Credentials::None,
    }
}

impl AuthSettings {
    fn is_public<B>(&self, req: &Request<B>) -> bool {
        // Matched on the path without `;` parameters: servlet containers route `/admin;x.css`
        // to `/admin`, so it must not match a public `\.css$`.
        let path = crate::path::route_path(req.uri().path());
        let mut matching = self.public_routes.iter().filter(|r| r.matches(req.method(), &path));
        let Some(first) = matching.next() else {
            return false;
        };
        // A method-restricted public route ("GET=^/healthz$") must not let a client reach the
        // app with another method through a method override.
        if first.method.is_none() {
            return true;
        }
        let any_method = matching.any(|r| r.method.is_none());
        any_method || !has_method_override(req)
    }

    /// A public route: forwarded without authentication. A bearer token on it is verified
    /// anyway: a valid one gives the app the identity, as on a protected route; one that cannot
    /// be verified is removed, so the app never takes it for a verified one. Other schemes
    /// (`Basic` for the app itself) pass untouched.
    async fn public(&self, mut req: Request<Body>) -> (Request<Body>, Decision) {
        let mut decision = Decision::new("public_route");
        match credentials(&req) {
            Credentials::Bearer { authorization, token } => {
                let verified = match token.to_str() {
                    Ok(t) => self.verifier.verify(t).await,
                    Err(_) => Err(TokenError::Malformed("non-ASCII token".into())),
                };
                match verified {
                    Ok((identity, _)) => {
                        decision.identity = Some(identity.clone());
                        req.extensions_mut().insert(Authenticated {
                            identity,
                            authorization,
                            token,
                        });
                    }
                    Err(e) => {
                        decision.detail = Some(format!("bearer token removed: {e}"));
                        req.headers_mut().remove(header::AUTHORIZATION);
                    }
                }
            }
            _ if req.headers().get_all(header::AUTHORIZATION).iter().any(is_bearer) => {
                decision.detail = Some("bearer token removed: malformed or ambiguous".into());
                req.headers_mut().remove(header::AUTHORIZATION);
            }
            _ => {}
        }
        (req, decision)
    }

    /// Decides about one request: `Ok` with the request (identity attached) to forward, or the
    /// answer to give.
    async fn authenticate(
        &self,
        mut req: Request<Body>,
    ) -> Result<(Request<Body>, Decision), (Response<Body>, Decision)> {
        if self.is_public(&req) {
            return Ok(self.public(req).await);
        }
        let (authorization, token) = match credentials(&req) {
            Credentials::Bearer { authorization, token } => (authorization, token),
            Credentials::Ambiguous => {
                let r = Rejection::InvalidRequest {
                    realm: self.realm.clone(),
                    description: "Send one Authorization header",
                };
                return Err((r.into_response(&req), Decision::new("ambiguous_authorization")));
            }
            Credentials::None => {
                // Until some issuer's keys are in, no token could be checked: 503, not 401.
                if !self.verifier.keys().any_loaded() {
                    return Err((
                        Rejection::NotReady.into_response(&req),
                        Decision::new("keys_not_loaded"),
                    ));
                }
                let r = Rejection::NoToken { realm: self.realm.clone() };
                return Err((r.into_response(&req), Decision::new("no_token")));
            }
        };
        let token_str = match token.to_str() {
            Ok(t) => t,
            Err(_) => {
                return Err(self.invalid(&req, TokenError::Malformed("non-ASCII token".into())))
            }
        };
        match self.verifier.verify(token_str).await {
            Ok((identity, how)) => {
                let decision = Decision {
                    reason: match how {
                        Verified::Cached => "token_cached".into(),
                        Verified::Fresh => "token_verified".into(),
                    },
                    detail: None,
                    identity: Some(identity.clone()),
                };
                req.extensions_mut().insert(Authenticated { identity, authorization, token });
                Ok((req, decision))
            }
            Err(e) => Err(self.invalid(&req, e)),
        }
    }

    fn invalid(&self, req: &Request<Body>, e: TokenError) -> (Response<Body>, Decision) {
        let decision = Decision::refused(e.code(), e.to_string());
        let r = match e {
            TokenError::KeysNotLoaded(_) => Rejection::NotReady,
            e => Rejection::InvalidToken {
                realm: self.realm.clone(),
                description: e.client_description(),
            },
        };
        (r.into_response(req), decision)
    }
}

impl<S> Service<Request<Body>> for Authenticate<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let settings = self.settings.clone();
        // Take the service that was driven to readiness, leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match settings.authenticate(req).await {
                Ok((req, decision)) => {
                    let mut resp = inner.call(req).await?;
                    // A later layer's refusal (the proxy's 408, 502, ...) is the final decision;
                    // it keeps the identity authentication found.
                    match resp.extensions_mut().get_mut::<Decision>() {
                        Some(later) => {
                            if later.identity.is_none() {
                                later.identity = decision.identity;
                            }
                        }
                        None => {
                            resp.extensions_mut().insert(decision);
                        }
                    }
                    Ok(resp)
                }
                Err((mut resp, decision)) => {
                    resp.extensions_mut().insert(decision);
                    Ok(resp)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devissuer::{DevIssuer, KeyAlg};
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    async fn settings(dev: &DevIssuer) -> Arc<AuthSettings> {
        let verifier = Arc::new(dev.verifier("api", |_| {}).await.unwrap());
        Arc::new(AuthSettings {
            verifier,
            public_routes: vec![PublicRoute::parse("GET=^/open$").unwrap()],
            realm: "r".into(),
        })
    }

    /// Runs one request through `Authenticate` in front of a counting inner service; returns
    /// the status, the subject the inner service saw, and how often it was called.
    async fn run(s: Arc<AuthSettings>, req: Request<Body>) -> (u16, Option<String>, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(None));
        let (c, se) = (calls.clone(), seen.clone());
        let svc = ServiceBuilder::new().layer(AuthenticateLayer::new(s)).service(service_fn(
            move |req: Request<Body>| {
                c.fetch_add(1, Ordering::SeqCst);
                *se.lock().unwrap() =
                    req.extensions().get::<Authenticated>().map(|a| a.identity.subject.clone());
                async { Ok::<_, Infallible>(Response::new(Body::empty())) }
            },
        ));
        let resp = svc.oneshot(req).await.unwrap();
        let subject = seen.lock().unwrap().clone();
        (resp.status().as_u16(), subject, calls.load(Ordering::SeqCst))
    }

    fn get(path: &str, auth: &[&str]) -> Request<Body> {
        let mut b = Request::get(path);
        for a in auth {
            b = b.header(header::AUTHORIZATION, *a);
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn missing_token_is_401_and_the_app_is_not_called() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        assert_eq!(run(settings(&dev).await, get("/x", &[])).await, (401, None, 0));
        assert_eq!(run(settings(&dev).await, get("/x", &["Basic dTpw"])).await, (401, None, 0));
    }

    #[tokio::test]
    async fn valid_token_reaches_the_app_with_its_identity() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let auth = format!("bEaReR  {} ", dev.token_for("alice", "api"));
        let got = run(settings(&dev).await, get("/x", &[&auth])).await;
        assert_eq!(got, (200, Some("alice".into()), 1));
    }

    #[tokio::test]
    async fn two_authorization_headers_are_400() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let t = format!("Bearer {}", dev.token_for("alice", "api"));
        assert_eq!(run(settings(&dev).await, get("/x", &[&t, &t])).await, (400, None, 0));
    }

    #[tokio::test]
    async fn public_route_passes_without_identity() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        assert_eq!(run(settings(&dev).await, get("/open", &[])).await, (200, None, 1));
        let post = Request::post("/open").body(Body::empty()).unwrap();
        assert_eq!(run(settings(&dev).await, post).await, (401, None, 0));
    }
}
