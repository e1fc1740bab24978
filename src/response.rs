//! Every answer portcullis makes itself (as opposed to forwarding the app's) is built here. A
//! layer that refuses a request returns [`Refusal::response`]: a response that carries the
//! [`Refusal`] (what to tell the client, [`Rejection`], and what to log, [`Decision`]). The
//! [`Answers`] layer, just inside the access log, renders it in the form that suits who asked:
//! status, RFC 6750 challenge and a short JSON body with the request id for API clients (and, with
//! browser login, a redirect or a page for browsers). The log line has the full reason; the
//! client gets a plain one.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::json;
use tower::{Layer, Service};

use crate::identity::Identity;
use crate::path::PathError;

/// The request id's header, set on every request and response.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The request's id, as the outermost layer set it (`telemetry::AccessLog`).
pub fn request_id_of(headers: &http::HeaderMap) -> Option<&HeaderValue> {
    headers.get(&X_REQUEST_ID)
}

/// What authentication decided, left in the response's extensions for the access log.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Short code: `public_route`, `token_verified`, `token_cached`, `no_token`, `token_expired`, …
    pub reason: Cow<'static, str>,
    /// Longer detail for the log (never a token or secret).
    pub detail: Option<String>,
    pub identity: Option<Arc<Identity>>,
}

impl Decision {
    pub fn new(reason: &'static str) -> Self {
        Self { reason: Cow::Borrowed(reason), detail: None, identity: None }
    }

    /// A refusal with its reason for the log.
    pub fn refused(reason: &'static str, detail: String) -> Self {
        Self { reason: Cow::Borrowed(reason), detail: Some(detail), identity: None }
    }
}

/// A request portcullis answers itself: what the client is told and what the log says.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub rejection: Rejection,
    pub decision: Decision,
    /// `Set-Cookie` values that go out with the answer (a broken session cleared).
    pub set_cookies: Vec<HeaderValue>,
    /// Answered as to an API client whoever asked: no redirect into login, no page. For a
    /// caller that relays only the status (an ingress asking forward-auth: nginx turns anything
    /// but 2xx, 401 and 403 into a 500).
    pub plain: bool,
}

impl Refusal {
    pub fn new(rejection: Rejection, reason: &'static str) -> Self {
        Self { rejection, decision: Decision::new(reason), set_cookies: Vec::new(), plain: false }
    }

    /// The same refusal, answered plainly whoever asked (see [`Refusal::plain`]).
    pub fn plainly(mut self) -> Self {
        self.plain = true;
        self
    }

    /// The same refusal with a detail for the log (never a token or secret).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.decision.detail = Some(detail.into());
        self
    }

    /// A response carrying this refusal, for [`Answers`] to render.
    pub fn response(mut self) -> Response<Body> {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = self.rejection.status();
        for v in std::mem::take(&mut self.set_cookies) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

/// A `302` to `location`, never cached (it may follow a sign-in or carry a session's cookies).
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What a refusal's answer depends on in the request: who asked, and how.
#[derive(Debug, Clone, Default)]
struct Asker {
    request_id: Option<HeaderValue>,
    /// The client waits for `100 Continue` before sending its body, which is never read.
    expects_continue: bool,
    /// A browser navigating (`Sec-Fetch-Mode: navigate`, or without that header an `Accept`
    /// with `text/html`): it can follow a redirect into login and read a page.
    navigating: bool,
    /// `GET` or `HEAD` without `Authorization`: a navigation that may be redirected.
    redirectable: bool,
    /// The path and query the client asked for (where to come back after login).
    path_and_query: String,
    host: Option<String>,
    /// A gRPC call (`content-type: application/grpc...`): refusals become gRPC statuses.
    grpc: bool,
}

/// Whether `haystack` contains `needle` (lower-case ASCII), ignoring ASCII case.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether a request with `method` and `headers` is a browser navigation that may be sent into
/// login (as [`Answers`] tells one): forward-auth asks it about the original request.
pub fn may_send_into_login(method: &http::Method, headers: &http::HeaderMap) -> bool {
    Asker::from_head(method, headers).redirectable
}

impl Asker {
    fn of<B>(req: &Request<B>) -> Self {
        let mut asker = Self::from_head(req.method(), req.headers());
        asker.request_id = request_id_of(req.headers()).cloned();
        // Only a browser's answer needs where it was going (API clients are the hot path).
        if asker.navigating {
            asker.path_and_query =
                req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            asker.host =
                req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        asker
    }

    /// What the method and headers say (no request id, path or host).
    fn from_head(method: &http::Method, h: &http::HeaderMap) -> Self {
        // One pass over the names instead of a hashed lookup for each (every request pays
        // for this, though only refusals need it); the first value of a name counts, as `get`.
        let (mut fetch_mode, mut expect, mut content_type) = (None, None, None);
        let mut html = false;
        for (name, value) in h {
            if name == header::ACCEPT {
                html = html || contains_ignore_case(value.as_bytes(), b"text/html");
            } else if name == header::EXPECT {
                expect = expect.or(Some(value));
            } else if name == header::CONTENT_TYPE {
                content_type = content_type.or(Some(value));
            } else if name.as_str() == "sec-fetch-mode" {
                fetch_mode = fetch_mode.or(Some(value));
            }
        }
        let navigating = match fetch_mode {
            Some(v) => v.as_bytes().eq_ignore_ascii_case(b"navigate"),
            None => html,
        };
        Self {
            expects_continue: expect
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
            navigating,
            redirectable: navigating
                && (method == http::Method::GET || method == http::Method::HEAD)
                && !h.contains_key(header::AUTHORIZATION),
            grpc: content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
            ..Self::default()
        }
    }
}

/// What browsers get instead of JSON, when browser login is on: the pages, and where signing
/// in starts.
#[derive(Clone)]
pub struct BrowserAnswers {
    pub pages: Arc<crate::pages::Pages>,
    pub sign_in: SignIn,
}

/// Where a browser is sent to sign in: the login endpoints' prefix, and whether the sign-in
/// page is skipped.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub prefix: String,
    pub skip_page: bool,
}

impl SignIn {
    /// The sign-in entry for a browser that asked for `path_and_query`.
    pub fn location(&self, path_and_query: &str) -> String {
        let page = if self.skip_page { "start" } else { "sign_in" };
        let rd: String = url::form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect();
        format!("{}/{page}?rd={rd}", self.prefix)
    }
}

/// Renders every [`Refusal`] the layers inside it return; other responses pass untouched.
#[derive(Clone, Default)]
pub struct AnswersLayer {
    browsers: Option<Arc<BrowserAnswers>>,
}

impl AnswersLayer {
    /// With `browsers`, browser navigations are sent into login and shown pages.
    pub fn new(browsers: Option<BrowserAnswers>) -> Self {
        Self { browsers: browsers.map(Arc::new) }
    }
}

impl std::fmt::Debug for AnswersLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswersLayer").field("browsers", &self.browsers.is_some()).finish()
    }
}

impl<S> Layer<S> for AnswersLayer {
    type Service = Answers<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Answers { inner, browsers: self.browsers.clone() }
    }
}

#[derive(Clone)]
pub struct Answers<S> {
    inner: S,
    /// Shared, so a request costs a reference count, not a copy of the sign-in prefix.
    browsers: Option<Arc<BrowserAnswers>>,
}

impl<S> Service<Request<Body>> for Answers<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let asker = Asker::of(&req);
        let browsers = self.browsers.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            Ok(match resp.extensions_mut().remove::<Refusal>() {
                Some(refusal) => {
                    let extra = std::mem::take(resp.headers_mut());
                    // what the layers noted for the log (the normalised path) stays
                    let mut noted = std::mem::take(resp.extensions_mut());
                    let mut answer = render(refusal, &asker, browsers.as_deref());
                    noted.extend(std::mem::take(answer.extensions_mut()));
                    *answer.extensions_mut() = noted;
                    // cookies a refusing layer set (a session it cleared) still go out
                    for v in extra.get_all(header::SET_COOKIE) {
                        answer.headers_mut().append(header::SET_COOKIE, v.clone());
                    }
                    answer
                }
                None => resp,
            })
        })
    }
}

/// The one place a refusal becomes an answer: a redirect into login or a page for a browser,
/// JSON with an RFC 6750 challenge for everyone else.
fn render(refusal: Refusal, asker: &Asker, browsers: Option<&BrowserAnswers>) -> Response<Body> {
    let Refusal { rejection, decision, plain, .. } = refusal;
    let mut resp = match browsers {
        // First: a gRPC status travels in a 200, which an ingress would take for "allowed".
        _ if plain => rejection.api_answer(asker),
        _ if asker.grpc => rejection.grpc_answer(asker),
        Some(b) if asker.navigating || matches!(rejection, Rejection::LoginFailed { .. }) => {
            browser_answer(&rejection, &decision, asker, b)
        }
        _ => rejection.api_answer(asker),
    };
    resp.extensions_mut().insert(decision);
    resp
}

fn browser_answer(
    rejection: &Rejection,
    decision: &Decision,
    asker: &Asker,
    b: &BrowserAnswers,
) -> Response<Body> {
    let pages = &b.pages;
    let prefix = b.sign_in.prefix.as_str();
    let request_id = asker.request_id.as_ref().and_then(|r| r.to_str().ok()).unwrap_or_default();
    let app_name = asker.host.clone().unwrap_or_else(|| "this app".into());
    let sign_in_url = b.sign_in.location(if asker.path_and_query.is_empty() {
        "/"
    } else {
        &asker.path_and_query
    });
    match rejection {
        Rejection::NoToken { .. } | Rejection::InvalidToken { .. } if asker.redirectable => {
            redirect(&sign_in_url)
        }
        Rejection::NoToken { .. } | Rejection::InvalidToken { .. } => pages.render(
            "sign_in.html",
            StatusCode::UNAUTHORIZED,
            json!({"app_name": app_name, "provider": "your identity provider",
                   "start_url": sign_in_url, "request_id": request_id}),
        ),
        Rejection::Forbidden { .. } => {
            let user = decision
                .identity
                .as_ref()
                .map(|i| i.email.clone().unwrap_or_else(|| i.subject.clone()));
            pages.render(
                "forbidden.html",
                StatusCode::FORBIDDEN,
                json!({"app_name": app_name, "user": user, "request_id": request_id,
                       "sign_out_url": format!("{prefix}/sign_out")}),
            )
        }
        other => {
            let (title, message) = match other {
                Rejection::LoginFailed { message, .. } => {
                    ("Sign-in failed", (*message).to_string())
                }
                other => ("Something went wrong", other.body().1.into_owned()),
            };
            let sign_in =
                matches!(other, Rejection::LoginFailed { .. }).then(|| format!("{prefix}/sign_in"));
            let mut resp = pages.render(
                "error.html",
                other.status(),
                json!({"app_name": app_name, "title": title, "message": message,
                       "status": other.status().as_u16(), "request_id": request_id,
                       "sign_in_url": sign_in}),
            );
            if let Some(after) = other.retry_after() {
                resp.headers_mut().insert(header::RETRY_AFTER, after);
            }
            resp
        }
    }
}

/// What a client denied by the rules is told (the log says which rule and why).
const FORBIDDEN: &str = "The access rules do not allow this request";

/// What portcullis tells the client when it answers a request itself.
#[derive(Debug, Clone)]
pub enum Rejection {
    /// No bearer token: `401` with a bare challenge (RFC 6750 §3.1).
    NoToken { realm: Arc<str> },
    /// A token that does not validate: `401`, `error="invalid_token"`.
    InvalidToken { realm: Arc<str>, description: &'static str },
    /// A malformed request (e.g. two `Authorization` headers): `400`, `error="invalid_request"`.
    InvalidRequest { realm: Arc<str>, description: &'static str },
    /// The rules deny the request: `403`, `error="insufficient_scope"` (RFC 6750 §3.1), with
    /// `scope` naming the scopes that were missing, if any.
    Forbidden { realm: Arc<str>, scope: Option<String> },
    /// A login step failed (a bad state, a provider error, ...): an error page with a short
    /// message; the log has the detail.
    LoginFailed { status: StatusCode, message: &'static str },
    /// A cookie-authenticated request with an unsafe method from another origin: `403`.
    CrossSite,
    /// A forward-auth check from a peer outside `server.trusted_proxies`: `403`.
    ForwardAuthCaller,
    /// No app is configured (forward-auth only): `404`.
    NoApp,
    /// Keys not loaded yet: `503`.
    NotReady,
    /// An ambiguous path: `400`.
    BadPath(PathError),
    /// A request malformed in a way the client can be told (`Host` missing or twice): `400`.
    BadRequest(&'static str),
    /// A request head over our limits: `431`.
    HeadTooLarge,
    /// A transfer coding other than `chunked`: `501` (RFC 9112 §6.1).
    UnsupportedTransferCoding,
    /// The client's request body broke off or was malformed: `400`, connection closed.
    BadRequestBody,
    /// The client stopped sending its request body for `server.request_body_idle_timeout`:
    /// `408`, connection closed.
    RequestBodyTimeout,
    /// `upstream.max_concurrent_requests` are in flight: `503` with `Retry-After`.
    Busy,
    /// The session store (Redis) cannot say whether a session holds: `503` with
    /// `Retry-After`. Bearer tokens are not affected.
    SessionsUnavailable,
    /// The upstream refused, reset or broke the connection: `502`.
    BadGateway,
    /// No response head within `upstream.response_timeout`: `504`.
    GatewayTimeout,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoToken { .. } | Rejection::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden { .. } | Rejection::CrossSite | Rejection::ForwardAuthCaller => {
                StatusCode::FORBIDDEN
            }
            Rejection::LoginFailed { status, .. } => *status,
            Rejection::InvalidRequest { .. }
            | Rejection::BadRequest(_)
            | Rejection::BadPath(_)
            | Rejection::BadRequestBody => StatusCode::BAD_REQUEST,
            Rejection::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Rejection::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::NotReady | Rejection::Busy | Rejection::SessionsUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::NoApp => StatusCode::NOT_FOUND,
            Rejection::BadGateway => StatusCode::BAD_GATEWAY,
            Rejection::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// `Retry-After` for what passes by itself: starting, busy, the session store back.
    fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Rejection::NotReady | Rejection::Busy => Some(HeaderValue::from_static("1")),
            Rejection::SessionsUnavailable => Some(HeaderValue::from_static("2")),
            _ => None,
        }
    }

    fn challenge(&self) -> Option<String> {
        match self {
            Rejection::NoToken { realm } => Some(format!("Bearer realm=\"{realm}\"")),
            Rejection::InvalidToken { realm, description } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
            )),
            Rejection::InvalidRequest { realm, description } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{description}\""
            )),
            Rejection::Forbidden { realm, scope } => {
                let mut c = format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{FORBIDDEN}\""
                );
                if let Some(scope) = scope {
                    c.push_str(&format!(", scope=\"{scope}\""));
                }
                Some(c)
            }
            _ => None,
        }
    }

    pub fn body(&self) -> (&'static str, Cow<'static, str>) {
        match self {
            Rejection::NoToken { .. } => ("unauthorized", "A bearer token is required".into()),
            Rejection::InvalidToken { description, .. } => ("invalid_token", (*description).into()),
            Rejection::Forbidden { .. } => ("insufficient_scope", FORBIDDEN.into()),
            Rejection::CrossSite => {
                ("forbidden", "Cross-site requests with the session cookie are refused".into())
            }
            Rejection::ForwardAuthCaller => {
                ("forbidden", "Only a trusted proxy may ask for a forward-auth decision".into())
            }
            Rejection::NoApp => ("not_found", "Nothing is served here".into()),
            Rejection::LoginFailed { message, .. } => ("login_failed", (*message).into()),
            Rejection::InvalidRequest { description, .. } => {
                ("invalid_request", (*description).into())
            }
            Rejection::NotReady => {
                ("unavailable", "The proxy is starting; try again shortly".into())
            }
            Rejection::SessionsUnavailable => {
                ("unavailable", "Sessions are unavailable for a moment; try again shortly".into())
            }
            Rejection::BadPath(e) => ("invalid_request", format!("Refused path: {e}").into()),
            Rejection::HeadTooLarge => ("invalid_request", "The request head is too large".into()),
            Rejection::BadRequest(why) => ("invalid_request", (*why).into()),
            Rejection::UnsupportedTransferCoding => {
                ("not_implemented", "Only the chunked transfer coding is supported".into())
            }
            Rejection::BadRequestBody => {
                ("invalid_request", "The request body is malformed".into())
            }
            Rejection::RequestBodyTimeout => {
                ("request_timeout", "The request body stopped arriving".into())
            }
            Rejection::Busy => ("unavailable", "Too many requests in flight; try again".into()),
            Rejection::BadGateway => ("bad_gateway", "The app did not answer".into()),
            Rejection::GatewayTimeout => {
                ("gateway_timeout", "The app did not answer in time".into())
            }
        }
    }

    /// The gRPC status code for this refusal.
    fn grpc_status(&self) -> u8 {
        match self {
            Rejection::NoToken { .. } | Rejection::InvalidToken { .. } => 16, // UNAUTHENTICATED
            Rejection::Forbidden { .. } | Rejection::CrossSite | Rejection::ForwardAuthCaller => 7, // PERMISSION_DENIED
            Rejection::NotReady
            | Rejection::Busy
            | Rejection::SessionsUnavailable
            | Rejection::BadGateway => 14, // UNAVAILABLE
            Rejection::GatewayTimeout | Rejection::RequestBodyTimeout => 4, // DEADLINE_EXCEEDED
            Rejection::InvalidRequest { .. }
            | Rejection::BadRequest(_)
            | Rejection::BadPath(_)
            | Rejection::BadRequestBody => 3, // INVALID_ARGUMENT
            Rejection::UnsupportedTransferCoding => 12,                     // UNIMPLEMENTED
            _ => 13,                                                        // INTERNAL
        }
    }

    /// The answer for a gRPC client: HTTP `200` and a trailers-only response carrying
    /// `grpc-status` and a percent-encoded `grpc-message` (gRPC over HTTP/2 §Responses), which
    /// gRPC clients report as the call's status. `WWW-Authenticate` goes along for debugging.
    fn grpc_answer(&self, asker: &Asker) -> Response<Body> {
        let (_, description) = self.body();
        let mut message = String::new();
        for b in description.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                message.push(b as char);
            } else {
                message.push_str(&format!("%{b:02X}"));
            }
        }
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(u16::from(self.grpc_status())));
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
        if let Some(c) = self.challenge().and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        let _ = asker;
        resp
    }

    /// The answer for an API client: JSON with the request id, and the RFC 6750 challenge.
    fn api_answer(&self, asker: &Asker) -> Response<Body> {
        let request_id =
            asker.request_id.as_ref().and_then(|r| r.to_str().ok()).unwrap_or_default();
        let (error, description) = self.body();
        let body =
            json!({"error": error, "error_description": description, "request_id": request_id});
        let mut resp = Response::new(Body::from(format!("{body}\n")));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = self.challenge().and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if let Some(after) = self.retry_after() {
            h.insert(header::RETRY_AFTER, after);
        }
        // The connection is closed after these, and the client is told so: a body that broke
        // off or was never sent (a refused `Expect: 100-continue`) leaves the stream unusable.
        if asker.expects_continue
            || matches!(
                self,
                Rejection::UnsupportedTransferCoding
                    | Rejection::BadRequestBody
                    | Rejection::RequestBodyTimeout
            )
        {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{service_fn, ServiceExt};

    /// What a browser navigation gets when the layer inside refuses with `refusal`.
    async fn answer_to_a_browser(refusal: Refusal) -> Response<Body> {
        answer_to(refusal, "text/html").await
    }

    /// What a navigation with `content-type` gets when the layer inside refuses with `refusal`.
    async fn answer_to(refusal: Refusal, content_type: &str) -> Response<Body> {
        let browsers = BrowserAnswers {
            pages: Arc::new(crate::pages::Pages::load(None).unwrap()),
            sign_in: SignIn { prefix: "/oauth2".into(), skip_page: true },
        };
        let inner = service_fn(move |_req: Request<Body>| {
            let r = refusal.clone();
            async move { Ok::<_, std::convert::Infallible>(r.response()) }
        });
        let req = Request::get("/app?x=1")
            .header("host", "app.example")
            .header("sec-fetch-mode", "navigate")
            .header("accept", "text/html")
            .header("content-type", content_type)
            .body(Body::empty())
            .unwrap();
        AnswersLayer::new(Some(browsers)).layer(inner).oneshot(req).await.unwrap()
    }

    #[test]
    fn who_asked_is_read_in_one_pass_with_the_first_value_of_each_name() {
        let asker = |headers: &[(&str, &str)]| {
            let mut req = Request::post("/p?q=1").header("host", "app.example");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            Asker::of(&req.body(()).unwrap())
        };
        let a = asker(&[("accept", "application/json"), ("Accept", "Text/HTML;q=0.1")]);
        assert!(a.navigating && !a.grpc && !a.expects_continue);
        // only a GET or HEAD navigation without credentials may be sent into login
        let nav = [("sec-fetch-mode", "navigate")];
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            m
        };
        for (method, headers, may) in [
            (http::Method::GET, h(&nav), true),
            (http::Method::HEAD, h(&nav), true),
            (http::Method::POST, h(&nav), false),
            (http::Method::GET, h(&[nav[0], ("authorization", "Bearer x")]), false),
            (http::Method::GET, h(&[("accept", "text/html")]), true),
            (http::Method::GET, h(&[("accept", "text/html"), ("sec-fetch-mode", "cors")]), false),
            (http::Method::GET, h(&[]), false),
        ] {
            assert_eq!(may_send_into_login(&method, &headers), may, "{method} {headers:?}");
        }
        assert_eq!((a.path_and_query.as_str(), a.host.as_deref()), ("/p?q=1", Some("app.example")));
        assert!(!a.redirectable, "a POST is not redirected into login");
        // Sec-Fetch-Mode decides over Accept, its first value counts
        let a = asker(&[("accept", "text/html"), ("sec-fetch-mode", "cors")]);
        assert!(!a.navigating && a.path_and_query.is_empty());
        let a = asker(&[("sec-fetch-mode", "Navigate"), ("sec-fetch-mode", "cors")]);
        assert!(a.navigating);
        let a = asker(&[("content-type", "application/grpc+proto"), ("content-type", "text/x")]);
        assert!(a.grpc && !a.navigating);
        let a = asker(&[("content-type", "text/plain"), ("content-type", "application/grpc")]);
        assert!(!a.grpc);
        let a = asker(&[("expect", "100-Continue")]);
        assert!(a.expects_continue);
        let a = asker(&[("expect", "nothing"), ("expect", "100-continue")]);
        assert!(!a.expects_continue);
        assert!(!asker(&[]).navigating);
    }

    #[tokio::test]
    async fn a_plain_refusal_is_never_a_redirect_or_a_page() {
        let no_token = Refusal::new(Rejection::NoToken { realm: "portcullis".into() }, "no_token");
        let resp = answer_to_a_browser(no_token.clone()).await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(resp.headers()[header::LOCATION], "/oauth2/start?rd=%2Fapp%3Fx%3D1");

        let resp = answer_to_a_browser(no_token.plainly()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"portcullis\"");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.extensions().get::<Decision>().unwrap().reason, "no_token");

        let forbidden = Refusal::new(
            Rejection::Forbidden { realm: "portcullis".into(), scope: None },
            "rule_denied",
        );
        let resp = answer_to_a_browser(forbidden.clone()).await;
        assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        let resp = answer_to_a_browser(forbidden.clone().plainly()).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");

        // a gRPC call's refusal is a gRPC status in a 200, unless it is to be answered plainly
        let resp = answer_to(forbidden.clone(), "application/grpc").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = answer_to(forbidden.plainly(), "application/grpc").await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
}
