//! Authentication: who is calling, with the keys of [`crate::idp`]:
//! `token` (JWT validation and the verified-token cache) → `identity` (the headers an identity
//! becomes). [`AuthSettings::check`] answers "who is this?" from a request head alone, as a
//! value; the [`Authenticate`] layer applies it to proxied requests (public routes included),
//! and a forward-auth endpoint will apply it to requests it only hears about.

pub mod inject;
pub mod policy;
pub mod session;
pub mod token;

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Method, Request, Response};
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

/// A bearer token. Its `Debug` never shows it; the header value is marked sensitive.
#[derive(Clone)]
pub struct Token(HeaderValue);

impl Token {
    fn new(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        Self(value)
    }

    /// The token, for passing it on (`identity.pass_token`); never for a log.
    pub fn expose(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// Marks a request that matched a public route: rules never deny it, even when a valid token
/// on it gave the app an identity.
#[derive(Debug, Clone, Copy)]
pub struct PublicRoute;

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A bearer JWT in `Authorization`.
    Bearer(Token),
    /// A browser session cookie; the access token is kept only when `pass_token` passes it on.
    Session { access_token: Option<Token> },
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
}

/// Whether a cookie-authenticated request may have effects: safe methods always; others (and
/// WebSocket upgrades) only from the same origin (`Sec-Fetch-Site: same-origin`, or an `Origin`
/// whose host is this request's `Host`). `SameSite=Lax` alone lets sibling subdomains through.
pub(crate) fn same_origin_or_safe(parts: &request::Parts) -> bool {
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    // The Upgrade header itself is hop-by-hop and already gone; its mark is in the extensions.
    let upgrade = parts.headers.contains_key(header::UPGRADE)
        || parts.extensions.get::<crate::headers::WebSocketUpgrade>().is_some();
    if safe && !upgrade {
        return true;
    }
    if let Some(site) = parts.headers.get("sec-fetch-site") {
        return site.as_bytes().eq_ignore_ascii_case(b"same-origin");
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let origin = parts.headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match (origin.and_then(|o| url::Url::parse(o).ok()), host) {
        // Compared canonically: host without case, the origin scheme's default port explicit.
        (Some(o), Some(host)) => {
            let (Some(o_host), Some(o_port)) = (o.host_str(), o.port_or_known_default()) else {
                return false;
            };
            // (A Host without a port came on the default port of the scheme the browser used.)
            let same_port = host.port_u16().map_or(o.port().is_none(), |p| p == o_port);
            o_host.eq_ignore_ascii_case(host.host()) && same_port
        }
        _ => false,
    }
}

/// Whether the request carries a method override a framework could act on.
fn has_method_override(parts: &request::Parts) -> bool {
    let in_headers = parts.headers.keys().any(|k| {
        METHOD_OVERRIDE_HEADERS.iter().any(|h| crate::headers::same_header(k.as_str(), h))
    });
    in_headers
        || parts.uri.query().is_some_and(|q| {
            url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == METHOD_OVERRIDE_PARAM)
        })
}

/// The credentials of an `Authorization` value whose scheme is `Bearer` (RFC 6750 §2.1: in
/// any case), or `None` for another scheme. Whitespace around the value is not part of it (RFC
/// 9110 §5.5), and SP or HTAB after the scheme both end it: `Bearer<TAB>token` is a bearer
/// token to parsers that split on any whitespace, so it is one here too. The token may be empty.
fn bearer_credentials(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes().trim_ascii();
    let end = v.iter().position(|b| matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let (scheme, rest) = v.split_at(end);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

/// Whether an `Authorization` value uses the `Bearer` scheme, however it is spelled.
fn is_bearer(value: &HeaderValue) -> bool {
    bearer_credentials(value).is_some()
}

/// The bearer token in a request head, if any.
enum Credentials {
    None,
    Bearer(HeaderValue),
    /// More than one `Authorization` header.
    Ambiguous,
}

fn credentials(headers: &HeaderMap) -> Credentials {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credentials::None;
    };
    if values.next().is_some() {
        return Credentials::Ambiguous;
    }
    match bearer_credentials(value).map(HeaderValue::from_bytes) {
        Some(Ok(t)) if !t.is_empty() => Credentials::Bearer(t),
        _ => Credentials::None,
    }
}

/// What authentication needs: the verifier, the public routes, and browser sessions.
#[derive(Debug)]
pub struct AuthSettings {
    pub verifier: Arc<Verifier>,
    pub public_routes: Vec<PublicRouteSpec>,
    pub realm: Arc<str>,
    /// Browser sessions, when browser login is on.
    pub sessions: Option<Arc<session::Sessions>>,
}

impl AuthSettings {
    /// Whether a request may skip authentication.
    pub fn is_public(&self, parts: &request::Parts) -> bool {
        // Matched on the path without `;` parameters: servlet containers route `/admin;x.css`
        // to `/admin`, so it must not match a public `\.css$`.
        let path = crate::path::route_path(parts.uri.path());
        let mut matching = self.public_routes.iter().filter(|r| r.matches(&parts.method, &path));
        let Some(first) = matching.next() else {
            return false;
        };
        // A method-restricted public route ("GET=^/healthz$") must not let a client reach the
        // app with another method through a method override.
        if first.method.is_none() {
            return true;
        }
        let any_method = matching.any(|r| r.method.is_none());
        any_method || !has_method_override(parts)
    }

    /// Who is calling, from the request head alone: a verified credential, or the refusal to
    /// answer with (`401`, `400`, `503`).
    pub async fn check(&self, parts: &request::Parts) -> Result<Authenticated, Refusal> {
        // A browser session, when there is no Authorization header at all.
        let mut session_problem = None;
        if let Some(sessions) =
            self.sessions.as_ref().filter(|_| !parts.headers.contains_key(header::AUTHORIZATION))
        {
            if sessions.present(&parts.headers) {
                // Decided before anything that changes state (a refresh, which may rotate the
                // refresh token; a rewritten or cleared cookie).
                if !same_origin_or_safe(parts) {
                    return Err(Refusal::new(Rejection::CrossSite, "cross_site").detail(
                        "an unsafe method or upgrade with the session cookie from another origin",
                    ));
                }
                match sessions.check(&parts.headers).await {
                    Some(Ok(checked)) => {
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
                        return Ok(Authenticated {
                            credential: Credential::Session { access_token },
                            identity: Arc::new(checked.identity),
                            reason: match checked.refreshed {
                                session::Refreshed::No => "session",
                                session::Refreshed::Here => "session_refreshed",
                                session::Refreshed::Shared => "session_refresh_shared",
                            },
                            response_headers,
                        });
                    }
                    Some(Err(why)) => {
                        tracing::debug!(reason = %why, "no session");
                        session_problem = Some((why, sessions.clear(&parts.headers).await));
                    }
                    None => {}
                }
            }
        }
        let token = match credentials(&parts.headers) {
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
        let verified = match token.to_str() {
            Ok(t) => self.verifier.verify(t).await,
            Err(_) => Err(TokenError::Malformed("non-ASCII token".into())),
        };
        match verified {
            Ok((identity, verified)) => Ok(Authenticated {
                credential: Credential::Bearer(Token::new(token)),
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
    async fn public(&self, parts: &mut request::Parts) -> Decision {
        let mut decision = Decision::new("public_route");
        let has_bearer = parts.headers.get_all(header::AUTHORIZATION).iter().any(is_bearer);
        if !has_bearer {
            // A signed-in browser on a public route: the app learns who it is, if it can.
            if let Some(sessions) = &self.sessions {
                if sessions.present(&parts.headers) {
                    if let Ok(auth) = self.check(parts).await {
                        decision.identity = Some(auth.identity.clone());
                        parts.extensions.insert(auth);
                    }
                }
            }
            return decision;
        }
        match self.check(parts).await {
            Ok(auth) => {
                decision.identity = Some(auth.identity.clone());
                parts.extensions.insert(auth);
            }
            Err(refusal) => {
                let why = refusal.decision.detail.unwrap_or(refusal.decision.reason.into_owned());
                decision.detail = Some(format!("bearer token removed: {why}"));
                parts.headers.remove(header::AUTHORIZATION);
            }
        }
        decision
    }

    /// Decides about one request: the request to forward (with [`Authenticated`] in its
    /// extensions unless the route is public and carried no token) and the decision for the
    /// log, or the refusal.
    async fn authenticate(&self, parts: &mut request::Parts) -> Result<Decision, Refusal> {
        if self.is_public(parts) {
            parts.extensions.insert(PublicRoute);
            return Ok(self.public(parts).await);
        }
        let auth = self.check(parts).await?;
        let decision = Decision {
            reason: auth.reason().into(),
            detail: None,
            identity: Some(auth.identity.clone()),
        };
        parts.extensions.insert(auth);
        Ok(decision)
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

/// Lets public routes through, checks every other request ([`AuthSettings::check`]) and leaves
/// [`Authenticated`] in the request for the layers after it, or refuses it.
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
            let decision = match settings.authenticate(&mut parts).await {
                Ok(d) => d,
                Err(refusal) => return Ok(refusal.response()),
            };
            // The app never sees portcullis's cookies, on any route.
            if let Some(sessions) = &settings.sessions {
                sessions.strip(&mut parts.headers);
            }
            let response_headers = parts
                .extensions
                .get_mut::<Authenticated>()
                .map(|a| std::mem::take(&mut a.response_headers));
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
        let auth = s.check(&parts).await.unwrap();
        assert_eq!(auth.identity.subject, "alice");
        assert_eq!(auth.reason(), "token_verified");
        let Credential::Bearer(t) = &auth.credential else { panic!("a bearer credential") };
        assert!(t.expose().is_sensitive());
        let shown = format!("{auth:?}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(!shown.contains(token.rsplit('.').next().unwrap()), "{shown}");
        let (parts, _) = get("/x", &["Bearer nope"]).into_parts();
        let refusal = s.check(&parts).await.unwrap_err();
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

    #[test]
    fn bearer_is_told_by_its_scheme_whatever_the_case_and_whitespace() {
        let creds =
            |v: &str| bearer_credentials(&HeaderValue::from_str(v).unwrap()).map(|t| t.to_vec());
        for v in [
            "Bearer t",
            "bearer t",
            "BEARER t",
            "Bearer\tt",
            "Bearer \t t ",
            " Bearer t",
            "\tbEaReR\t\tt\t",
        ] {
            assert_eq!(creds(v).as_deref(), Some(&b"t"[..]), "{v:?}");
        }
        // a bearer scheme without a token is still a bearer credential (then removed)
        for v in ["Bearer", "bearer ", " BEARER\t"] {
            assert_eq!(creds(v).as_deref(), Some(&b""[..]), "{v:?}");
        }
        for v in ["Basic dTpw", "Bearerx t", "Bearer_t", "Bear t", "", " ", "Token Bearer t"] {
            assert_eq!(creds(v), None, "{v:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer\tabc"));
        assert!(matches!(credentials(&h), Credentials::Bearer(t) if t == "abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer \t"));
        assert!(matches!(credentials(&h), Credentials::None));
    }

    #[test]
    fn cookie_requests_with_effects_must_be_same_origin() {
        let parts = |method: &str, headers: &[(&str, &str)]| {
            let mut b =
                Request::builder().method(method).uri("/x").header("host", "app.example:8443");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(same_origin_or_safe(&parts("GET", &[])));
        assert!(same_origin_or_safe(&parts("HEAD", &[("sec-fetch-site", "cross-site")])));
        assert!(same_origin_or_safe(&parts("POST", &[("sec-fetch-site", "same-origin")])));
        assert!(same_origin_or_safe(&parts("POST", &[("origin", "https://app.example:8443")])));
        assert!(same_origin_or_safe(&parts("POST", &[("origin", "https://APP.example:8443")])));
        let with_host = |host: &str, origin: &str| {
            let (p, _) = Request::post("/x")
                .header("host", host)
                .header("origin", origin)
                .body(())
                .unwrap()
                .into_parts();
            same_origin_or_safe(&p)
        };
        assert!(with_host("app.example:443", "https://app.example"));
        assert!(with_host("app.example", "https://app.example:443"));
        assert!(with_host("[::1]:8080", "http://[::1]:8080"));
        assert!(!with_host("app.example:80", "https://app.example"));
        assert!(!with_host("app.example", "https://app.example:8443"));
        assert!(!with_host("app.example.evil", "https://app.example"));
        for bad in [
            parts("POST", &[]),
            parts("POST", &[("sec-fetch-site", "same-site")]),
            parts("DELETE", &[("origin", "https://evil.example")]),
            parts("PUT", &[("origin", "https://app.example")]),
            parts("POST", &[("origin", "null")]),
            parts(
                "POST",
                &[("sec-fetch-site", "cross-site"), ("origin", "https://app.example:8443")],
            ),
            parts("GET", &[("upgrade", "websocket"), ("origin", "https://evil.example")]),
        ] {
            assert!(!same_origin_or_safe(&bad), "{:?}", bad.headers);
        }
        let mut marked = parts("GET", &[("origin", "https://evil.example")]);
        marked
            .extensions
            .insert(crate::headers::WebSocketUpgrade(http::HeaderValue::from_static("websocket")));
        assert!(!same_origin_or_safe(&marked), "a marked WebSocket upgrade from another origin");
    }
}
