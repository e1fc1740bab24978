//! Authentication and the rules, as one decision: [`AuthSettings::decide`] takes a request
//! as a [`RequestView`] (method, scheme, host, path and headers given explicitly, so a
//! forward-auth check can pass the original request's) and answers with [`Access`] (who is
//! calling, whether the route is public) or the [`Refusal`] to answer with. It reads the keys of
//! [`crate::idp`] through `token` (JWT validation, the verified-token cache), `session`
//! (browser sessions) and `policy` (`[authorization]`); `bearer` and `csrf` are the request
//! pieces it reads. The [`Authenticate`] layer applies the decision to proxied requests;
//! `inject` then sets the identity headers.

pub mod bearer;
pub mod csrf;
pub mod inject;
mod kept;
pub mod policy;
pub mod session;
pub mod token;

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Method, Request, Response};

pub use bearer::Token;
use bearer::{credentials, is_bearer, Credentials};
pub(crate) use csrf::same_origin_or_safe;
use inject::inject_identity;
use policy::Policy;
use tower::{Layer, Service};

use crate::config::PublicRoute as PublicRouteSpec;
use crate::identity::Identity;
use crate::response::{Decision, Refusal, Rejection};
use token::{TokenError, Verified, Verifier};

/// Headers some frameworks take as the real method of a POST or GET (any spelling).
const METHOD_OVERRIDE_HEADERS: &[&str] =
    &["x-http-method-override", "x-http-method", "x-method-override"];
/// The query parameter Rails, Laravel, Symfony and others take as the real method.
const METHOD_OVERRIDE_PARAM: &str = "_method";

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A bearer JWT in `Authorization`.
    Bearer(Token),
    /// A browser session cookie; the access token is kept only when `pass_token` passes it on,
    /// the ID token for `pass_id_token`.
    Session { access_token: Option<Token>, id_token: Option<Token> },
}

/// A caller whose credential verified: what the layers after authentication (rules, identity
/// headers) read from the request's extensions. Nothing after it re-parses a token.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub credential: Credential,
    /// The issuer, subject, claims and the identity headers they become.
    pub identity: Arc<Identity>,
    /// The access log's reason: `token_verified`, `token_cached`, `session`, `session_refreshed`.
    pub reason: &'static str,
    /// Headers authentication wants on the response (a refreshed session cookie).
    pub response_headers: HeaderMap,
}

impl Authenticated {
    /// The access log's reason for a request let through on this credential.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The `403` refusing this caller (`scope`: the scopes it lacks), with its identity for the
    /// log; a session refreshed on the way keeps its new cookie (its old refresh token may be
    /// spent).
    pub fn forbidden(&self, realm: &Arc<str>, scope: Option<String>, detail: String) -> Refusal {
        let r = Rejection::Forbidden { realm: realm.clone(), scope };
        let mut refusal = Refusal::new(r, "forbidden").detail(detail);
        refusal.decision.identity = Some(self.identity.clone());
        refusal.set_cookies =
            self.response_headers.get_all(header::SET_COOKIE).iter().cloned().collect();
        refusal
    }
}

/// The request a decision is about. Proxied requests give their own parts
/// ([`RequestView::of`]); a forward-auth check gives the original request's method, scheme,
/// host and path, which its ingress sends as headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `http` or `https`, as the client used it.
    pub scheme: &'a str,
    /// The `Host` (authority) the client asked for.
    pub host: Option<&'a str>,
    /// The normalised path ([`crate::path`]), without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The request's headers: credentials, cookies, `Origin`, `Sec-Fetch-Site`, overrides.
    pub headers: &'a HeaderMap,
    /// Whether the request asks to upgrade the connection (a WebSocket).
    pub upgrade: bool,
}

impl<'a> RequestView<'a> {
    /// A request's own parts, as the stack holds them: the path already normalised, upgrades
    /// marked by [`crate::headers`].
    pub fn of(parts: &'a request::Parts) -> Self {
        RequestView {
            method: &parts.method,
            scheme: parts.extensions.get::<crate::peer::ClientAddr>().map_or("http", |c| c.scheme),
            host: parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            upgrade: parts.headers.contains_key(header::UPGRADE)
                || parts.extensions.get::<crate::headers::WebSocketUpgrade>().is_some(),
        }
    }

    /// Whether the request carries a method override a framework could act on.
    fn has_method_override(&self) -> bool {
        let in_headers = self.headers.keys().any(|k| {
            METHOD_OVERRIDE_HEADERS.iter().any(|h| crate::headers::same_header(k.as_str(), h))
        });
        in_headers
            || self.query.is_some_and(|q| {
                url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == METHOD_OVERRIDE_PARAM)
            })
    }
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method` (what a
/// browser sends, without credentials, before a cross-origin request).
fn is_preflight(req: &RequestView<'_>) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// What the decision let through.
#[derive(Debug)]
pub struct Access {
    /// Who is calling, when a credential verified (on a public route, only if one came).
    pub authenticated: Option<Authenticated>,
    /// The route is public: it is forwarded whoever calls, and rules never deny it.
    pub public: bool,
    /// A bearer token that could not be verified, on a public route: removed before the app
    /// could take it for a verified one.
    pub drop_authorization: bool,
    /// For the access log.
    pub decision: Decision,
}

/// What authentication needs: the verifier, the public routes, and browser sessions.
#[derive(Debug)]
pub struct AuthSettings {
    pub verifier: Arc<Verifier>,
    pub public_routes: Vec<PublicRouteSpec>,
    pub realm: Arc<str>,
    /// Browser sessions, when browser login is on.
    pub sessions: Option<Arc<session::Sessions>>,
    /// The `[authorization]` requirements and rules.
    pub policy: Arc<Policy>,
    /// `bearer.skip_auth_preflight`: CORS preflights are public routes.
    pub skip_auth_preflight: bool,
    /// `identity.pass_id_token`: a session's credential carries its ID token (and the app
    /// gets it as `Authorization`).
    pub pass_id_token: bool,
    /// `identity.pass_token`: what becomes of the credential's token on its way to the app.
    pub pass_token: crate::config::PassToken,
}

impl AuthSettings {
    /// Whether a request may skip authentication.
    /// `route` is the request's path without `;` parameters ([`crate::path::route_path`]).
    fn is_public(&self, req: &RequestView<'_>, host: Option<&str>, route: &str) -> bool {
        if self.skip_auth_preflight && is_preflight(req) {
            return true;
        }
        // Matched on the path without `;` parameters: servlet containers route `/admin;x.css`
        // to `/admin`, so it must not match a public `\.css$`.
        let mut matching = self
            .public_routes
            .iter()
            .filter(|r| r.matches(req.method, route) && r.hosts.matches(host));
        let Some(first) = matching.next() else {
            return false;
        };
        // A method-restricted public route ("GET=^/healthz$") must not let a client reach the
        // app with another method through a method override.
        if first.method.is_none() {
            return true;
        }
        let any_method = matching.any(|r| r.method.is_none());
        any_method || !req.has_method_override()
    }

    /// Who is calling, from the request head alone: a verified credential, or the refusal to
    /// answer with (`401`, `400`, `503`).
    pub async fn check(&self, req: &RequestView<'_>) -> Result<Authenticated, Refusal> {
        // A browser session, when there is no Authorization header at all.
        let mut session_problem = None;
        if let Some(sessions) =
            self.sessions.as_ref().filter(|_| !req.headers.contains_key(header::AUTHORIZATION))
        {
            // Read once (one pass over the cookies); nothing changes before the CSRF decision.
            if let Some(loaded) = sessions.load(req.headers).await {
                // Decided before anything that changes state (a refresh, which may rotate the
                // refresh token; a rewritten or cleared cookie).
                if !same_origin_or_safe(req) {
                    return Err(Refusal::new(Rejection::CrossSite, "cross_site").detail(
                        "an unsafe method or upgrade with the session cookie from another origin",
                    ));
                }
                let checked = match loaded {
                    Ok(l) => sessions.check_loaded(l, req.headers).await,
                    Err(why) => Err(why),
                };
                match checked {
                    Ok(checked) => {
                        let access_token = checked
                            .session
                            .access_token
                            .as_deref()
                            .and_then(|t| HeaderValue::from_str(t).ok())
                            .map(Token::new);
                        let mut response_headers = HeaderMap::new();
                        for v in checked.set_cookie {
                            response_headers.append(header::SET_COOKIE, v);
                        }
                        let id_token = checked
                            .session
                            .id_token
                            .as_deref()
                            .filter(|_| self.pass_id_token)
                            .and_then(|t| HeaderValue::from_str(t).ok())
                            .map(Token::new);
                        return Ok(Authenticated {
                            credential: Credential::Session { access_token, id_token },
                            identity: checked.identity,
                            reason: match checked.refreshed {
                                session::Refreshed::No => "session",
                                session::Refreshed::Here => "session_refreshed",
                                session::Refreshed::Shared => "session_refresh_shared",
                            },
                            response_headers,
                        });
                    }
                    Err(session::SessionError::Unavailable(why)) => {
                        // Never a pass, and never a sign-in that would end the same way.
                        tracing::warn!(reason = %why, "session store unavailable");
                        return Err(Refusal::new(
                            Rejection::SessionsUnavailable,
                            "session_store_unavailable",
                        )
                        .detail(why));
                    }
                    Err(session::SessionError::Invalid(why)) => {
                        tracing::debug!(reason = %why, "no session");
                        let cleared = sessions.clear(req.headers).await;
                        if let Err(e) = cleared.ended {
                            tracing::warn!(error = %e, "a session that no longer holds was not removed from its store");
                        }
                        session_problem = Some((why, cleared.set_cookie));
                    }
                }
            }
        }
        let token = match credentials(req.headers) {
            Credentials::Bearer(token) => token,
            Credentials::Ambiguous => {
                let r = Rejection::InvalidRequest {
                    realm: self.realm.clone(),
                    description: "Send one Authorization header",
                };
                return Err(Refusal::new(r, "ambiguous_authorization"));
            }
            Credentials::None => {
                // Until some issuer's keys are in, no token could be checked: 503, not 401.
                if !self.verifier.keys().any_loaded() {
                    return Err(Refusal::new(Rejection::NotReady, "keys_not_loaded"));
                }
                let r = Rejection::NoToken { realm: self.realm.clone() };
                return Err(match session_problem {
                    Some((why, clear)) => {
                        let mut refusal = Refusal::new(r, "session_invalid").detail(why);
                        refusal.set_cookies = clear;
                        refusal
                    }
                    None => Refusal::new(r, "no_token"),
                });
            }
        };
        match self.verifier.verify(token.as_bytes()).await {
            Ok((identity, verified)) => Ok(Authenticated {
                credential: Credential::Bearer(token),
                identity,
                reason: match verified {
                    Verified::Cached => "token_cached",
                    Verified::Fresh => "token_verified",
                },
                response_headers: HeaderMap::new(),
            }),
            Err(e) => {
                let detail = e.to_string();
                let code = e.code();
                let r = match e {
                    TokenError::KeysNotLoaded(_) => Rejection::NotReady,
                    e => Rejection::InvalidToken {
                        realm: self.realm.clone(),
                        description: e.client_description(),
                    },
                };
                Err(Refusal::new(r, code).detail(detail))
            }
        }
    }

    /// A public route: forwarded without authentication. A bearer token on it is verified
    /// anyway: a valid one gives the app the identity, as on a protected route; one that cannot
    /// be verified is removed, so the app never takes it for a verified one. Other schemes
    /// (`Basic` for the app itself) pass untouched.
    async fn public(&self, req: &RequestView<'_>) -> Access {
        let mut access = Access {
            authenticated: None,
            public: true,
            drop_authorization: false,
            decision: Decision::new("public_route"),
        };
        let has_bearer = req.headers.get_all(header::AUTHORIZATION).iter().any(is_bearer);
        if !has_bearer {
            // A signed-in browser on a public route: the app learns who it is, if it can.
            if self.sessions.as_ref().is_some_and(|s| s.present(req.headers)) {
                if let Ok(auth) = self.check(req).await {
                    access.decision.identity = Some(auth.identity.clone());
                    access.authenticated = Some(auth);
                }
            }
            return access;
        }
        match self.check(req).await {
            Ok(auth) => {
                access.decision.identity = Some(auth.identity.clone());
                access.authenticated = Some(auth);
            }
            Err(refusal) => {
                let why = refusal.decision.detail.unwrap_or(refusal.decision.reason.into_owned());
                access.decision.detail = Some(format!("bearer token removed: {why}"));
                access.drop_authorization = true;
            }
        }
        access
    }

    /// The decision about one request: a public route, or who is calling and that the rules
    /// let them ([`Access`]), or the refusal (401, 400, 403, 503).
    pub async fn decide(&self, req: &RequestView<'_>) -> Result<Access, Refusal> {
        let route = crate::path::route_path(req.path);
        // Read only when some route or rule names hosts (most configs name none).
        let host_aware =
            self.policy.host_aware() || self.public_routes.iter().any(|r| !r.hosts.is_empty());
        let host =
            req.host.filter(|_| host_aware).map(|h| crate::config::canonical_host(h, req.scheme));
        if self.is_public(req, host.as_deref(), &route) {
            return Ok(self.public(req).await);
        }
        let auth = self.check(req).await?;
        if let Err(denial) = self.policy.decide(req.method, host.as_deref(), &route, &auth.identity)
        {
            let scope = (!denial.unmet.missing_scopes.is_empty())
                .then(|| denial.unmet.missing_scopes.join(" "));
            let detail = format!("{}: {}", denial.rule, denial.unmet.reason);
            tracing::debug!(rule = %denial.rule, reason = %denial.unmet.reason, "request denied");
            return Err(auth.forbidden(&self.realm, scope, detail));
        }
        let decision = Decision {
            reason: auth.reason().into(),
            detail: None,
            identity: Some(auth.identity.clone()),
        };
        Ok(Access { authenticated: Some(auth), public: false, drop_authorization: false, decision })
    }
}

/// Adds authentication's headers (a rewritten session cookie) to the app's response: appended
/// beside the app's own `Set-Cookie`s, never replacing them; and since the response now carries
/// a session, no shared cache may keep it (the app's `public` or `s-maxage` would let a CDN hand
/// the session to the next visitor).
fn add_session_headers(resp: &mut HeaderMap, ours: HeaderMap) {
    let sets_cookie = ours.contains_key(header::SET_COOKIE);
    for (name, value) in ours.iter() {
        resp.append(name.clone(), value.clone());
    }
    if sets_cookie {
        make_private(resp);
    }
}

/// `Cache-Control` without what lets a shared cache store the response (`public`, `s-maxage`,
/// `private` is added), and without the CDN-only controls that override it (RFC 9213
/// `CDN-Cache-Control`, `Surrogate-Control`). What else the app said (`max-age`, `no-cache`,
/// ...) still holds for the browser.
pub fn make_private(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let name = d.split(|b| *b == b'=').next().unwrap_or_default().trim_ascii();
            !(name.eq_ignore_ascii_case(b"public")
                || name.eq_ignore_ascii_case(b"private")
                || name.eq_ignore_ascii_case(b"s-maxage"))
        })
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    let mut value = String::from("private");
    for d in kept {
        value.push_str(", ");
        value.push_str(&d);
    }
    headers.remove("cdn-cache-control");
    headers.remove("surrogate-control");
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::CACHE_CONTROL, v);
    }
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

/// Lets public routes through, checks every other request ([`AuthSettings::check`]) and hands
/// the verified identity on in the request's headers (`inject::inject_identity`), or refuses it.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    settings: Arc<AuthSettings>,
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
            let (mut parts, body) = req.into_parts();
            let access = match settings.decide(&RequestView::of(&parts)).await {
                Ok(a) => a,
                Err(refusal) => return Ok(refusal.response()),
            };
            let Access { authenticated, drop_authorization, decision, .. } = access;
            if drop_authorization {
                parts.headers.remove(header::AUTHORIZATION);
            }
            // The app never sees portcullis's cookies, on any route.
            if let Some(sessions) = &settings.sessions {
                sessions.strip(&mut parts.headers);
            }
            // The verified identity (never a client's) becomes the app's identity headers.
            let response_headers = authenticated.map(|mut a| {
                let h = std::mem::take(&mut a.response_headers);
                inject_identity(&mut parts.headers, a, settings.pass_token, settings.pass_id_token);
                h
            });
            let mut resp = inner.call(Request::from_parts(parts, body)).await?;
            if let Some(h) = response_headers.filter(|h| !h.is_empty()) {
                add_session_headers(resp.headers_mut(), h);
            }
            // A later layer's refusal (the proxy's 408, 502, ...) is the final decision; it
            // keeps the identity authentication found.
            match resp.extensions_mut().get_mut::<Refusal>() {
                Some(later) => {
                    if later.decision.identity.is_none() {
                        later.decision.identity = decision.identity;
                    }
                }
                None => {
                    resp.extensions_mut().insert(decision);
                }
            }
            Ok(resp)
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
            public_routes: vec![PublicRouteSpec::parse("GET=^/open$").unwrap()],
            realm: "r".into(),
            sessions: None,
            policy: Arc::default(),
            skip_auth_preflight: false,
            pass_id_token: false,
            pass_token: crate::config::PassToken::None,
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
                    req.headers().get("x-forwarded-user").map(|v| v.to_str().unwrap().to_string());
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

    #[tokio::test]
    async fn a_public_route_passes_other_schemes_and_drops_bearer_tokens_it_cannot_verify() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let s = settings(&dev).await;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let se = seen.clone();
        let svc = ServiceBuilder::new().layer(AuthenticateLayer::new(s)).service(service_fn(
            move |req: Request<Body>| {
                se.lock().unwrap().push(req.headers().get(header::AUTHORIZATION).cloned());
                async { Ok::<_, Infallible>(Response::new(Body::empty())) }
            },
        ));
        for (sent, kept) in [
            ("Basic dTpw", Some("Basic dTpw")),
            ("Bearer\tforged", None),
            ("BEARER forged", None),
            ("Bearer", None),
            ("Bearerish x", Some("Bearerish x")),
        ] {
            let resp = svc.clone().oneshot(get("/open", &[sent])).await.unwrap();
            assert_eq!(resp.status(), 200, "{sent}");
            let got = seen.lock().unwrap().pop().unwrap();
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), kept, "{sent}");
        }
    }

    #[tokio::test]
    async fn check_is_a_value_whose_debug_never_shows_the_token() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let s = settings(&dev).await;
        let token = dev.token_for("alice", "api");
        let (parts, _) = get("/x", &[&format!("Bearer {token}")]).into_parts();
        let auth = s.check(&RequestView::of(&parts)).await.unwrap();
        assert_eq!(auth.identity.subject, "alice");
        assert_eq!(auth.reason(), "token_verified");
        let Credential::Bearer(t) = &auth.credential else { panic!("a bearer credential") };
        assert!(t.value().is_sensitive() && t.bearer().unwrap().is_sensitive());
        let shown = format!("{auth:?}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(!shown.contains(token.rsplit('.').next().unwrap()), "{shown}");
        let (parts, _) = get("/x", &["Bearer nope"]).into_parts();
        let refusal = s.check(&RequestView::of(&parts)).await.unwrap_err();
        assert_eq!(refusal.decision.reason, "token_malformed");
        assert_eq!(refusal.rejection.status(), 401);
    }

    #[test]
    fn session_cookies_are_added_beside_the_apps_and_make_the_response_private() {
        let mut resp = HeaderMap::new();
        resp.append(header::SET_COOKIE, HeaderValue::from_static("app=1"));
        resp.append(header::SET_COOKIE, HeaderValue::from_static("csrf=2"));
        resp.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600, S-MaxAge=60"),
        );
        resp.append(header::CACHE_CONTROL, HeaderValue::from_static("no-transform"));
        resp.insert("cdn-cache-control", HeaderValue::from_static("max-age=600"));
        resp.insert("surrogate-control", HeaderValue::from_static("max-age=600"));
        let mut ours = HeaderMap::new();
        ours.append(header::SET_COOKIE, HeaderValue::from_static("_portcullis=x"));
        ours.append(header::SET_COOKIE, HeaderValue::from_static("_portcullis_1=; Max-Age=0"));
        add_session_headers(&mut resp, ours);
        let set: Vec<_> = resp.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(set, ["app=1", "csrf=2", "_portcullis=x", "_portcullis_1=; Max-Age=0"]);
        let cc: Vec<_> = resp.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(cc, ["private, max-age=600, no-transform"]);
        assert!(!resp.contains_key("cdn-cache-control") && !resp.contains_key("surrogate-control"));
        // without a Cache-Control of the app's: private
        let mut resp = HeaderMap::new();
        let mut ours = HeaderMap::new();
        ours.append(header::SET_COOKIE, HeaderValue::from_static("_portcullis=x"));
        add_session_headers(&mut resp, ours);
        assert_eq!(resp[header::CACHE_CONTROL], "private");
        // nothing of ours: the app's response is left alone
        let mut resp = HeaderMap::new();
        resp.insert(header::CACHE_CONTROL, HeaderValue::from_static("public"));
        add_session_headers(&mut resp, HeaderMap::new());
        assert_eq!(resp[header::CACHE_CONTROL], "public");
    }

    #[tokio::test]
    async fn one_decision_holds_authentication_and_the_rules_for_any_request_it_is_shown() {
        use crate::config::{Requirement, Rule, RulePath};
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let base = settings(&dev).await;
        let admins = Requirement { groups: vec!["auditors".into()], ..Default::default() };
        let rule = Rule {
            key: "authorization.rules[0]".into(),
            path: RulePath::Prefix("/admin".into()),
            methods: Vec::new(),
            hosts: Default::default(),
            require: admins,
        };
        let s = AuthSettings {
            verifier: base.verifier.clone(),
            public_routes: base.public_routes.clone(),
            realm: "r".into(),
            sessions: None,
            policy: Arc::new(crate::config::Policy { rules: vec![rule], ..Default::default() }),
            skip_auth_preflight: false,
            pass_id_token: false,
            pass_token: crate::config::PassToken::None,
        };
        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {}", dev.token_for("alice", "api"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&bearer).unwrap());
        // a view given explicitly (as forward-auth gives the original request's)
        let view = |method: &'static Method, path: &'static str, headers: &'static HeaderMap| {
            RequestView {
                method,
                scheme: "https",
                host: Some("app.example"),
                path,
                query: None,
                headers,
                upgrade: false,
            }
        };
        let headers: &'static HeaderMap = Box::leak(Box::new(headers));
        let none: &'static HeaderMap = Box::leak(Box::default());
        // authenticated, no rule for the path
        let a = s.decide(&view(&Method::GET, "/x", headers)).await.unwrap();
        assert!(!a.public && !a.drop_authorization);
        assert_eq!(a.authenticated.unwrap().identity.subject, "alice");
        assert_eq!(a.decision.reason, "token_verified");
        // the rule for /admin needs a group alice lacks (auditors): 403, with who it was for the log
        let r = s.decide(&view(&Method::GET, "/admin/users", headers)).await.unwrap_err();
        assert_eq!((r.rejection.status().as_u16(), &*r.decision.reason), (403, "forbidden"));
        assert_eq!(r.decision.identity.unwrap().subject, "alice");
        assert!(r.decision.detail.unwrap().contains("authorization.rules[0]"));
        // ;parameters do not hide the rule's path
        let r = s.decide(&view(&Method::GET, "/admin;x/users", headers)).await.unwrap_err();
        assert_eq!(r.rejection.status(), 403);
        // public routes: by method and path, never denied by rules
        let a = s.decide(&view(&Method::GET, "/open", none)).await.unwrap();
        assert!(a.public && a.authenticated.is_none());
        let a = s.decide(&view(&Method::HEAD, "/open", headers)).await.unwrap();
        assert!(a.public && a.authenticated.is_some());
        let r = s.decide(&view(&Method::POST, "/open", none)).await.unwrap_err();
        assert_eq!(r.rejection.status(), 401);
        // no credential at all
        let r = s.decide(&view(&Method::GET, "/x", none)).await.unwrap_err();
        assert_eq!((r.rejection.status().as_u16(), &*r.decision.reason), (401, "no_token"));
    }
}
