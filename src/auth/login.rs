//! Browser login: the OpenID Connect authorization code flow with PKCE (S256, always), `state`
//! and `nonce` (the `oauth2` crate builds the requests), ID tokens verified against
//! `oidc.issuer`'s keys only, UserInfo merged in, sealed cookie sessions refreshed one at a time,
//! RP-initiated logout, and redirects that never leave the allowed hosts.
//!
//! Endpoints under `oidc.prefix`: `sign_in` (page), `start`, `callback`, `sign_out`,
//! `userinfo`. None reaches the app.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::get;
use axum::Router;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Method, Response, StatusCode};
use oauth2::basic::{BasicErrorResponse, BasicTokenType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use url::Url;

use super::discovery::{read_bounded, ProviderMetadata};
use super::keys::{IssuerKeys, KeyStore};
use super::session::{self, Activity, Attempt, Codec, Cookies, Session, ATTEMPT_LIFETIME};
use super::token::Verifier;
use crate::clock::Clock;
use crate::config::{BearerConfig, IdentityConfig, LoginConfig, PassToken, TrustedIssuer};
use crate::error::error_chain;
use crate::identity::{Identity, IdentityMapper};
use crate::pages::Pages;
use crate::response::{redirect as redirect_to, Decision, Refusal, Rejection, RequestId};

/// Protocol claims left out of a session (they describe the token, not the user).
const PROTOCOL_CLAIMS: &[&str] =
    &["aud", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash", "c_hash", "jti", "azp", "sid"];
/// Error codes a provider may send back (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6);
/// anything else is shown as `unknown_error`.
const PROVIDER_ERRORS: &[&str] = &[
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
];
/// How long a refresh's outcome is handed to requests that still carry the old cookie.
pub const REFRESH_GRACE: Duration = Duration::from_secs(30);
/// Activity is recorded (a new activity cookie) at most once in this part of
/// `session.idle_timeout`, and at least once a minute: an active session is never taken for an
/// idle one by more than a tenth of the timeout.
const ACTIVITY_PARTS: u64 = 10;
const ACTIVITY_MAX_INTERVAL: u64 = 60;

/// The token response's `id_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenField {}

type TokenResp = StandardTokenResponse<IdTokenField, BasicTokenType>;
type OidcClient = oauth2::Client<
    BasicErrorResponse,
    TokenResp,
    oauth2::basic::BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The HTTP error the `oauth2` adapter reports.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// Why a login step failed: the log gets the detail, the browser a page with a short message.
#[derive(Debug)]
struct LoginError {
    reason: &'static str,
    detail: String,
    /// What the page says.
    message: &'static str,
    status: StatusCode,
}

impl LoginError {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            message: "Signing in did not work. Please try again.",
            status: StatusCode::BAD_REQUEST,
        }
    }
    fn status(mut self, s: StatusCode) -> Self {
        self.status = s;
        self
    }
    fn message(mut self, m: &'static str) -> Self {
        self.message = m;
        self
    }
}

/// Whether a session check refreshed the session (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    No,
    /// This request's refresh reached the provider.
    Here,
    /// This request got the outcome of another request's refresh.
    Shared,
}

/// A refresh in progress or just done, shared by the requests of one session.
struct RefreshSlot {
    started: tokio::time::Instant,
    outcome: tokio::sync::OnceCell<Result<Session, String>>,
}

/// Everything the login endpoints and session checks need.
pub struct Login {
    cfg: LoginConfig,
    keys: Arc<IssuerKeys>,
    id_tokens: Verifier,
    codec: Codec,
    pub cookies: Cookies,
    pages: Arc<Pages>,
    http: reqwest::Client,
    mapper: IdentityMapper,
    keep_access_token: bool,
    clock: Clock,
    /// `bearer.leeway`, for ID tokens' times.
    leeway: Duration,
    /// `bearer.realm`, for the `401`s of the login endpoints.
    realm: Arc<str>,
    /// Attempt states already used (so a replayed callback fails), with their expiry.
    used_states: Mutex<HashMap<String, u64>>,
    refreshes: Mutex<HashMap<String, Arc<RefreshSlot>>>,
    /// Refreshes that reached the provider (for tests and the log).
    pub refresh_count: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("client_id", &self.cfg.client_id).finish()
    }
}

/// Seconds since the epoch, from `clock`.
fn now(clock: &Clock) -> u64 {
    clock.now()
}

impl Login {
    pub fn new(
        cfg: LoginConfig,
        store: &Arc<KeyStore>,
        bearer: &BearerConfig,
        identity: &IdentityConfig,
        pages: Arc<Pages>,
    ) -> anyhow::Result<Self> {
        let keys = store
            .issuer(&cfg.issuer)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no key cache for oidc.issuer"))?;
        // ID tokens: the same keys, the client id as audience, no cache.
        let mut id_cfg = BearerConfig::with_issuers(vec![TrustedIssuer {
            issuer: cfg.issuer.clone(),
            audiences: vec![cfg.client_id.clone()],
            jwks_url: None,
        }]);
        id_cfg.algorithms = bearer.algorithms.clone();
        id_cfg.leeway = bearer.leeway;
        id_cfg.required_claims = vec!["sub".into(), "iat".into()];
        id_cfg.token_cache_size = 0;
        id_cfg.token_types = vec!["JWT".into(), "id_token+jwt".into()];
        let mapper = IdentityMapper::for_sessions(identity.clone());
        let id_tokens = Verifier::new(&id_cfg, store.clone(), mapper.clone());
        let codec = Codec::new(
            &cfg.session.secrets,
            &cfg.issuer,
            &cfg.client_id,
            &cfg.session.cookie_name,
        )?;
        let cookies = Cookies::new(&cfg);
        Ok(Self {
            keys,
            id_tokens,
            codec,
            cookies,
            pages,
            http: super::discovery::idp_client(),
            mapper,
            keep_access_token: identity.pass_token != PassToken::None,
            clock: Clock::System,
            leeway: bearer.leeway,
            realm: bearer.realm.as_str().into(),
            used_states: Mutex::new(HashMap::new()),
            refreshes: Mutex::new(HashMap::new()),
            refresh_count: std::sync::atomic::AtomicU64::new(0),
            cfg,
        })
    }

    /// The same login reading time from `clock` (sessions' lifetime and idle timeout, attempts,
    /// ID tokens): tests move it with paused tokio time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.id_tokens = self.id_tokens.with_clock(clock);
        self
    }

    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    pub fn pages(&self) -> &Arc<Pages> {
        &self.pages
    }

    pub fn skip_sign_in_page(&self) -> bool {
        self.cfg.skip_sign_in_page
    }

    /// The endpoints, for the server's router.
    pub fn routes(self: &Arc<Self>) -> Router {
        let p = &self.cfg.prefix;
        Router::new()
            .route(&format!("{p}/sign_in"), get(sign_in))
            .route(&format!("{p}/start"), get(start))
            .route(&format!("{p}/callback"), get(callback))
            .route(&format!("{p}/sign_out"), get(sign_out).post(sign_out))
            .route(&format!("{p}/userinfo"), get(userinfo))
            // everything else under the prefix is ours too, and does not exist
            .route(&format!("{p}/{{*rest}}"), axum::routing::any(not_found))
            .with_state(self.clone())
    }

    fn metadata(&self) -> Result<Arc<ProviderMetadata>, LoginError> {
        self.keys.metadata().ok_or_else(|| {
            LoginError::new(
                "login_unavailable",
                "the provider's discovery document is not loaded yet",
            )
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .message("Signing in is not available yet. Please try again in a moment.")
        })
    }

    /// The redirect URL: configured, or (on a loopback listener only) this host's callback.
    fn redirect_url(&self, headers: &HeaderMap) -> Result<Url, LoginError> {
        if let Some(u) = &self.cfg.redirect_url {
            return Ok(u.clone());
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        Url::parse(&format!("http://{host}{}/callback", self.cfg.prefix))
            .map_err(|e| LoginError::new("bad_host", format!("cannot build the redirect URL: {e}")))
    }

    /// The `oauth2` client for the provider; `redirect` for the code flow (a refresh needs none).
    fn client(
        &self,
        meta: &ProviderMetadata,
        redirect: Option<Url>,
    ) -> Result<OidcClient, LoginError> {
        let unavailable = |what: &str| {
            LoginError::new("login_unavailable", format!("the provider publishes no {what}"))
                .status(StatusCode::SERVICE_UNAVAILABLE)
        };
        let auth = meta
            .authorization_endpoint
            .clone()
            .ok_or_else(|| unavailable("authorization_endpoint"))?;
        let token = meta.token_endpoint.clone().ok_or_else(|| unavailable("token_endpoint"))?;
        let mut c = oauth2::Client::new(ClientId::new(self.cfg.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(auth))
            .set_token_uri(TokenUrl::from_url(token))
            .set_auth_type(auth_type(meta));
        if let Some(r) = redirect {
            c = c.set_redirect_uri(RedirectUrl::from_url(r));
        }
        if let Some(s) = &self.cfg.client_secret {
            c = c.set_client_secret(ClientSecret::new(s.expose().to_string()));
        }
        Ok(c)
    }

    /// Calls the provider through the issuer HTTP client (no redirects, bounded timeouts).
    fn http_client(
        &self,
    ) -> impl Fn(oauth2::HttpRequest) -> BoxFuture<'static, Result<oauth2::HttpResponse, HttpError>> + '_
    {
        move |req: oauth2::HttpRequest| {
            let http = self.http.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let url = parts.uri.to_string();
                let resp = http
                    .request(parts.method, url)
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| HttpError(error_chain(&e)))?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let mut resp = resp;
                let body = read_bounded(&mut resp).await.map_err(|e| HttpError(e.to_string()))?;
                let mut out = http::Response::new(body);
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok(out)
            })
        }
    }

    // ----- sessions -----

    fn seal_session(&self, s: &Session, request: &HeaderMap) -> Option<Vec<HeaderValue>> {
        let sealed = self.codec.seal_json(session::SESSION, s);
        let out = self.cookies.set_session(&sealed, self.time_left(s), request);
        if out.is_none() {
            tracing::warn!(bytes = sealed.len(), "session too large for its cookies; not stored");
        }
        out
    }

    /// The session a request carries, checked for lifetime and refreshed when its access token
    /// expired: the identity and the cookies to set, or why there is none (logged at debug).
    pub async fn session_of(
        &self,
        parts: &request::Parts,
    ) -> Option<Result<(Session, Identity, HeaderMap, Refreshed), String>> {
        let value = match self.cookies.session_value(&parts.headers)? {
            Ok(v) => v,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(self.check_session(&value, &parts.headers).await)
    }

    /// How often activity is recorded: a tenth of the idle timeout, at most a minute.
    fn activity_interval(&self) -> u64 {
        (self.cfg.session.idle_timeout.as_secs() / ACTIVITY_PARTS).clamp(1, ACTIVITY_MAX_INTERVAL)
    }

    /// Opens the sealed session `value`, checks `max_lifetime` and `idle_timeout` (the last
    /// activity is the later of the session's and its activity cookie's), refreshes it when its
    /// access token expired, and records activity: the session, its identity, the cookies to
    /// set, and whether it was refreshed.
    pub async fn check_session(
        &self,
        value: &str,
        request: &HeaderMap,
    ) -> Result<(Session, Identity, HeaderMap, Refreshed), String> {
        let mut s: Session = self
            .codec
            .open_json(session::SESSION, value)
            .map_err(|e| format!("session cookie {e}"))?;
        let t = now(&self.clock);
        if t >= s.created + self.cfg.session.max_lifetime.as_secs() {
            return Err("session reached session.max_lifetime".into());
        }
        let recorded = self
            .cookies
            .activity_value(request)
            .and_then(|v| self.codec.open_json::<Activity>(session::ACTIVITY, &v).ok())
            .filter(|a| a.id == s.id)
            .map_or(0, |a| a.seen);
        let last = s.seen.max(recorded);
        if t >= last + self.cfg.session.idle_timeout.as_secs() {
            return Err("session idle longer than session.idle_timeout".into());
        }
        let mut refreshed = Refreshed::No;
        if s.at_exp.is_some_and(|exp| exp <= t) && s.refresh_token.is_some() {
            (s, refreshed) = self.refresh_once(s).await?;
        }
        let identity = self
            .mapper
            .identity(&s.iss, s.claims.clone())
            .map_err(|e| format!("session identity: {e}"))?;
        let mut set = HeaderMap::new();
        if refreshed != Refreshed::No {
            s.seen = t;
            for v in self.seal_session(&s, request).unwrap_or_default() {
                set.append(header::SET_COOKIE, v);
            }
        } else if t.saturating_sub(last) >= self.activity_interval() {
            let sealed =
                self.codec.seal_json(session::ACTIVITY, &Activity { id: s.id.clone(), seen: t });
            set.append(header::SET_COOKIE, self.cookies.set_activity(sealed, self.time_left(&s)));
        }
        Ok((s, identity, set, refreshed))
    }

    /// What is left of a session's `max_lifetime`.
    fn time_left(&self, s: &Session) -> Duration {
        Duration::from_secs(
            (s.created + self.cfg.session.max_lifetime.as_secs()).saturating_sub(now(&self.clock)),
        )
    }

    /// One refresh per session at a time in the process; requests of that moment, and those
    /// arriving with the old cookie within [`REFRESH_GRACE`], get its outcome.
    async fn refresh_once(&self, s: Session) -> Result<(Session, Refreshed), String> {
        let key = {
            let rt = s.refresh_token.as_deref().unwrap_or_default();
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rt.as_bytes());
            format!(
                "{}:{}",
                s.id,
                d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        let slot = {
            let mut map = self.refreshes.lock().map_err(|_| "refresh lock poisoned".to_string())?;
            map.retain(|_, v| v.started.elapsed() < REFRESH_GRACE);
            map.entry(key)
                .or_insert_with(|| {
                    Arc::new(RefreshSlot {
                        started: tokio::time::Instant::now(),
                        outcome: tokio::sync::OnceCell::new(),
                    })
                })
                .clone()
        };
        let mut ran = false;
        let outcome = slot
            .outcome
            .get_or_init(|| {
                ran = true;
                self.refresh(s)
            })
            .await
            .clone()?;
        Ok((outcome, if ran { Refreshed::Here } else { Refreshed::Shared }))
    }

    async fn refresh(&self, mut s: Session) -> Result<Session, String> {
        let meta = self.metadata().map_err(|e| e.detail)?;
        let client = self.client(&meta, None).map_err(|e| e.detail)?;
        let rt = RefreshToken::new(s.refresh_token.clone().unwrap_or_default());
        self.refresh_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http = self.http_client();
        let resp = client
            .exchange_refresh_token(&rt)
            .request_async(&http)
            .await
            .map_err(|e| format!("refresh failed: {}", token_error(&e)))?;
        let t = now(&self.clock);
        s.at_exp = resp.expires_in().map(|d| t + d.as_secs());
        if let Some(new_rt) = resp.refresh_token() {
            s.refresh_token = Some(new_rt.secret().clone());
        }
        if self.keep_access_token {
            s.access_token = Some(resp.access_token().secret().clone());
        }
        // What the provider says about the user now: a refreshed ID token (OpenID Connect Core
        // §12.2: same issuer, subject and client, newly issued) and a fresh UserInfo. Together
        // they replace the session's claims, so a group the user lost is gone too.
        let sub = s.claims.get("sub").cloned();
        let mut fresh: Option<Map<String, Value>> = None;
        if let Some(id_token) = resp.extra_fields().id_token.clone() {
            let claims = self
                .id_tokens
                .verify_claims(&id_token)
                .await
                .map_err(|e| format!("refreshed ID token: {e}"))?;
            if claims.get("sub") != sub.as_ref() {
                return Err("refreshed ID token is for another subject".into());
            }
            self.check_azp(&claims).map_err(|e| format!("refreshed ID token: {e}"))?;
            let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
            if iat + self.id_tokens_leeway() < s.created {
                return Err("refreshed ID token was issued before the session began".into());
            }
            fresh = Some(claims);
            s.id_token = Some(id_token);
        }
        let mut userinfo_failed = false;
        if let Some(ui) = &meta.userinfo_endpoint {
            match self.userinfo_claims(ui, resp.access_token().secret()).await {
                Ok(info) => {
                    if info.get("sub") != sub.as_ref() {
                        return Err("UserInfo after a refresh is for another subject".into());
                    }
                    let claims = fresh.get_or_insert_with(Map::new);
                    for (k, v) in info {
                        if !PROTOCOL_CLAIMS.contains(&k.as_str()) && k != "iss" {
                            claims.insert(k, v);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(reason = e.reason, detail = %e.detail, "UserInfo failed after a refresh; the session keeps its claims");
                    userinfo_failed = true;
                }
            }
        }
        match fresh {
            Some(mut claims) if !userinfo_failed => {
                claims.retain(|k, _| !PROTOCOL_CLAIMS.contains(&k.as_str()));
                s.claims = claims;
            }
            Some(_) => {}
            None => tracing::info!(
                sub = ?sub,
                "the refresh brought neither an ID token nor UserInfo; the session keeps its claims"
            ),
        }
        tracing::info!(sub = ?sub, "session refreshed");
        Ok(s)
    }

    /// The clock skew ID tokens are allowed (`bearer.leeway`).
    fn id_tokens_leeway(&self) -> u64 {
        self.leeway.as_secs()
    }

    /// Marks `state` used; false if it already was.
    fn first_use(&self, state: &str) -> bool {
        let t = now(&self.clock);
        let Ok(mut used) = self.used_states.lock() else {
            return false;
        };
        used.retain(|_, exp| *exp > t);
        if used.len() > 100_000 {
            used.clear();
        }
        used.insert(state.to_string(), t + ATTEMPT_LIFETIME.as_secs()).is_none()
    }

    // ----- the flow -----

    async fn start(&self, parts: &request::Parts) -> Result<Response<Body>, LoginError> {
        let rd = self.safe_rd(parts, query_param(parts, "rd").as_deref());
        let meta = self.metadata()?;
        let redirect = self.redirect_url(&parts.headers)?;
        let client = self.client(&meta, Some(redirect))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = session::random_token();
        let nonce = session::random_token();
        let mut req = client
            .authorize_url(|| CsrfToken::new(state.clone()))
            .add_extra_param("nonce", nonce.clone())
            .set_pkce_challenge(challenge);
        for s in &self.cfg.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        if self.cfg.scopes.iter().any(|s| s == "offline_access") {
            // Providers only grant offline_access with consent (OpenID Connect Core §11).
            req = req.add_extra_param("prompt", "consent");
        }
        let (url, _) = req.url();
        let attempt = Attempt {
            state: state.clone(),
            nonce,
            pkce_verifier: verifier.secret().clone(),
            rd,
            created: now(&self.clock),
        };
        let existing: Vec<(String, u64)> = self
            .cookies
            .attempts_in(&parts.headers)
            .into_iter()
            .map(|(name, value)| {
                let created = self
                    .codec
                    .open_json::<Attempt>(session::ATTEMPT, &value)
                    .map(|a| a.created)
                    .unwrap_or(0);
                (name, created)
            })
            .collect();
        let sealed = self.codec.seal_json(session::ATTEMPT, &attempt);
        let mut resp = redirect_to(url.as_str());
        for v in self.cookies.set_attempt(&state, sealed, existing) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.extensions_mut().insert(Decision::new("login_start"));
        Ok(resp)
    }

    async fn callback(&self, parts: &request::Parts) -> Result<Response<Body>, LoginError> {
        // Parsers disagree on which of two `code`s or `state`s counts: refuse the question.
        for name in ["code", "state", "iss", "error"] {
            if query_count(parts, name) > 1 {
                return Err(LoginError::new(
                    "login_duplicate_parameter",
                    format!("the callback has {name} more than once"),
                ));
            }
        }
        let state = query_param(parts, "state").unwrap_or_default();
        let attempt_cookie = self.cookies.attempt_name(&state);
        let clear_attempt = self.cookies.remove(&attempt_cookie);
        if let Some(err) = query_param(parts, "error") {
            let code =
                if PROVIDER_ERRORS.contains(&err.as_str()) { err } else { "unknown_error".into() };
            let mut e =
                LoginError::new("provider_error", format!("the provider answered error={code}"))
                    .status(StatusCode::FORBIDDEN);
            e.message = provider_error_message(&code);
            return Err(e);
        }
        let attempt_value = self
            .cookies
            .attempts_in(&parts.headers)
            .into_iter()
            .find(|(n, _)| *n == attempt_cookie)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                LoginError::new(
                    "login_state_unknown",
                    "no login attempt matches this state (expired, replayed, or another browser)",
                )
                .message("This sign-in link has expired or was already used. Please sign in again.")
            })?;
        let attempt: Attempt = self
            .codec
            .open_json(session::ATTEMPT, &attempt_value)
            .map_err(|e| LoginError::new("login_state_unknown", format!("attempt cookie {e}")))?;
        if attempt.state != state || state.is_empty() {
            return Err(LoginError::new(
                "login_state_mismatch",
                "state does not match the attempt",
            ));
        }
        if now(&self.clock) > attempt.created + ATTEMPT_LIFETIME.as_secs() {
            return Err(LoginError::new("login_state_expired", "the login attempt expired")
                .message("This sign-in took too long. Please sign in again."));
        }
        if !self.first_use(&state) {
            return Err(LoginError::new("login_replayed", "this callback was already used")
                .message("This sign-in link was already used. Please sign in again."));
        }
        let meta = self.metadata()?;
        // RFC 9207: the issuer of the response, checked when sent, required when advertised.
        match query_param(parts, "iss") {
            Some(iss) if iss != self.cfg.issuer => {
                return Err(LoginError::new(
                    "login_wrong_issuer",
                    format!("iss parameter {iss:?} is not oidc.issuer"),
                ));
            }
            None if meta.authorization_response_iss_parameter_supported => {
                return Err(LoginError::new(
                    "login_wrong_issuer",
                    "the provider advertises the iss parameter but sent none",
                ));
            }
            _ => {}
        }
        let code = query_param(parts, "code")
            .ok_or_else(|| LoginError::new("login_no_code", "the callback has no code"))?;
        let redirect = self.redirect_url(&parts.headers)?;
        let client = self.client(&meta, Some(redirect))?;
        let http = self.http_client();
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(attempt.pkce_verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|e| {
                LoginError::new("login_code_exchange", token_error(&e))
                    .status(StatusCode::BAD_GATEWAY)
            })?;
        let id_token = tokens.extra_fields().id_token.clone().ok_or_else(|| {
            LoginError::new("login_no_id_token", "the token response has no id_token")
        })?;
        let mut claims = self.verify_id_token(&id_token, &attempt.nonce).await?;
        if let Some(ui) = &meta.userinfo_endpoint {
            let info = self.userinfo_claims(ui, tokens.access_token().secret()).await?;
            if info.get("sub") != claims.get("sub") {
                return Err(LoginError::new(
                    "login_userinfo_sub",
                    "UserInfo's sub differs from the ID token's",
                ));
            }
            for (k, v) in info {
                if !PROTOCOL_CLAIMS.contains(&k.as_str()) && k != "iss" {
                    claims.insert(k, v);
                }
            }
        }
        claims.retain(|k, _| !PROTOCOL_CLAIMS.contains(&k.as_str()));
        let t = now(&self.clock);
        let session = Session {
            id: session::random_token(),
            iss: self.cfg.issuer.clone(),
            claims,
            created: t,
            seen: t,
            at_exp: tokens.expires_in().map(|d| t + d.as_secs()),
            refresh_token: tokens.refresh_token().map(|r| r.secret().clone()),
            id_token: Some(id_token),
            access_token: self.keep_access_token.then(|| tokens.access_token().secret().clone()),
        };
        let identity = self.mapper.identity(&session.iss, session.claims.clone()).map_err(|e| {
            LoginError::new("login_identity", e.to_string())
                .status(StatusCode::FORBIDDEN)
                .message("Your account cannot be used here (for example, its email address is not verified).")
        })?;
        let cookies = self.seal_session(&session, &parts.headers).ok_or_else(|| {
            LoginError::new("session_too_large", "the session does not fit its cookies")
                .status(StatusCode::INTERNAL_SERVER_ERROR)
        })?;
        let mut resp = redirect_to(&attempt.rd);
        for v in cookies {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.headers_mut().append(header::SET_COOKIE, clear_attempt);
        let mut d = Decision::new("login_complete");
        d.identity = Some(Arc::new(identity));
        resp.extensions_mut().insert(d);
        Ok(resp)
    }

    async fn verify_id_token(
        &self,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, LoginError> {
        let claims = self
            .id_tokens
            .verify_claims(token)
            .await
            .map_err(|e| LoginError::new("login_bad_id_token", format!("ID token: {e}")))?;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(LoginError::new(
                "login_bad_id_token",
                "ID token nonce does not match the attempt",
            ));
        }
        self.check_azp(&claims).map_err(|e| LoginError::new("login_bad_id_token", e))?;
        Ok(claims)
    }

    /// The ID token was issued to this client (OpenID Connect Core §3.1.3.7): `azp`, when
    /// present, is our client id, and there is one when there are several audiences.
    fn check_azp(&self, claims: &Map<String, Value>) -> Result<(), &'static str> {
        let multiple = matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1);
        match claims.get("azp") {
            Some(Value::String(azp)) if *azp != self.cfg.client_id => {
                Err("ID token azp is another client")
            }
            Some(Value::String(_)) => Ok(()),
            Some(_) => Err("ID token azp is not a string"),
            None if multiple => Err("ID token has several audiences and no azp"),
            None => Ok(()),
        }
    }

    async fn userinfo_claims(
        &self,
        url: &Url,
        access_token: &str,
    ) -> Result<Map<String, Value>, LoginError> {
        let fail = |d: String| LoginError::new("login_userinfo", d).status(StatusCode::BAD_GATEWAY);
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(access_token)
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fail(format!("UserInfo answered HTTP {}", resp.status().as_u16())));
        }
        let mut resp = resp;
        let body = read_bounded(&mut resp).await.map_err(|e| fail(format!("UserInfo: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| fail(format!("UserInfo is not a JSON object: {e}")))
    }

    /// Signing out ends the session here (every cookie of ours cleared), at the provider's
    /// revocation endpoint (RFC 7009: its refresh token, and with it the grant's access tokens,
    /// so a copied cookie dies at its next refresh) and, when it has one, at its end-session
    /// endpoint. Another site cannot do it for the user: a `POST` must be same-origin, and a
    /// `GET` that is not same-origin, same-site or typed by the user (`Sec-Fetch-Site`) gets a
    /// page asking first.
    async fn sign_out(&self, parts: &request::Parts) -> Response<Body> {
        if parts.method == Method::POST {
            if !super::same_origin_or_safe(parts) {
                return Refusal::new(Rejection::CrossSite, "cross_site")
                    .detail("a sign-out POST from another origin")
                    .response();
            }
        } else {
            let site = parts.headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
            let asked_here = site.is_some_and(|s| {
                [&b"same-origin"[..], b"same-site", b"none"]
                    .iter()
                    .any(|v| s.eq_ignore_ascii_case(v))
            });
            if !asked_here {
                return self.confirm_sign_out(parts);
            }
        }
        let session = match self.cookies.session_value(&parts.headers) {
            Some(Ok(v)) => self.codec.open_json::<Session>(session::SESSION, &v).ok(),
            _ => None,
        };
        if let Some(rt) = session.as_ref().and_then(|s| s.refresh_token.clone()) {
            self.revoke(rt).await;
        }
        let rd = query_param(parts, "rd").map(|rd| self.safe_rd(parts, Some(&rd)));
        let end_session = self.keys.metadata().and_then(|m| m.end_session_endpoint.clone());
        let mut resp = match (end_session, session.as_ref().and_then(|s| s.id_token.clone())) {
            (Some(mut url), Some(hint)) => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("id_token_hint", &hint);
                    q.append_pair("client_id", &self.cfg.client_id);
                    if let Some(p) = &self.cfg.post_logout_redirect_url {
                        q.append_pair("post_logout_redirect_uri", p.as_str());
                    }
                }
                redirect_to(url.as_str())
            }
            _ => match rd {
                Some(rd) => redirect_to(&rd),
                None => self.pages.render(
                    "signed_out.html",
                    StatusCode::OK,
                    json!({"app_name": app_name(parts), "sign_in_url": format!("{}/sign_in", self.cfg.prefix)}),
                ),
            },
        };
        for v in self.cookies.clear_all(&parts.headers) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.extensions_mut().insert(Decision::new("sign_out"));
        resp
    }

    /// The page that asks before signing out (a same-origin form `POST`s it).
    fn confirm_sign_out(&self, parts: &request::Parts) -> Response<Body> {
        let mut action = format!("{}/sign_out", self.cfg.prefix);
        if let Some(rd) = query_param(parts, "rd") {
            let rd: String =
                url::form_urlencoded::byte_serialize(self.safe_rd(parts, Some(&rd)).as_bytes())
                    .collect();
            action.push_str("?rd=");
            action.push_str(&rd);
        }
        let mut resp = self.pages.render(
            "sign_out.html",
            StatusCode::OK,
            json!({"app_name": app_name(parts), "sign_out_url": action}),
        );
        resp.extensions_mut().insert(Decision::new("sign_out_confirm"));
        resp
    }

    /// Revokes a refresh token at the provider's revocation endpoint (RFC 7009 §2.1), when it
    /// has one, authenticating as at the token endpoint. A failure is logged; the sign-out goes
    /// on. (The `oauth2` crate would refuse an `http` endpoint, which a loopback provider has.)
    async fn revoke(&self, refresh_token: String) {
        let Some(meta) = self.keys.metadata() else { return };
        let Some(url) = meta.revocation_endpoint.clone() else { return };
        let mut form =
            vec![("token", refresh_token), ("token_type_hint", "refresh_token".to_string())];
        let mut req = self.http.post(url);
        match (&self.cfg.client_secret, auth_type(&meta)) {
            (Some(secret), AuthType::BasicAuth) => {
                // RFC 6749 §2.3.1: both form-encoded before Basic
                let enc = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.cfg.client_id), Some(enc(secret.expose())));
            }
            (Some(secret), _) => {
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push(("client_secret", secret.expose().to_string()));
            }
            (None, _) => form.push(("client_id", self.cfg.client_id.clone())),
        }
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let req = req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body);
        match req.send().await {
            Ok(r) if r.status().is_success() => tracing::info!("refresh token revoked at sign-out"),
            Ok(r) => tracing::warn!(
                status = r.status().as_u16(),
                "the provider did not revoke the refresh token"
            ),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "the provider did not revoke the refresh token")
            }
        }
    }

    /// `rd` if it is a safe place to send the browser after login or sign-out, else `/`.
    fn safe_rd(&self, parts: &request::Parts, rd: Option<&str>) -> String {
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        rd.and_then(|rd| safe_redirect(rd, host, &self.cfg.allowed_redirect_hosts))
            .unwrap_or_else(|| "/".to_string())
    }

    /// Where browsers are sent to sign in, for the answers of every layer.
    pub fn sign_in(&self) -> crate::response::SignIn {
        crate::response::SignIn {
            prefix: self.cfg.prefix.clone(),
            skip_page: self.cfg.skip_sign_in_page,
        }
    }
}

/// `client_secret_basic` unless the provider only takes `client_secret_post`.
fn auth_type(meta: &ProviderMetadata) -> AuthType {
    let m = &meta.token_endpoint_auth_methods_supported;
    if !m.is_empty()
        && !m.iter().any(|x| x == "client_secret_basic")
        && m.iter().any(|x| x == "client_secret_post")
    {
        AuthType::RequestBody
    } else {
        AuthType::BasicAuth
    }
}

/// Why the provider's token endpoint refused, without the provider's free text.
fn token_error<E: std::error::Error>(
    e: &oauth2::RequestTokenError<E, BasicErrorResponse>,
) -> String {
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            format!("the provider answered {}", r.error())
        }
        other => error_chain(other),
    }
}

fn provider_error_message(code: &str) -> &'static str {
    match code {
        "access_denied" => "The sign-in was cancelled or refused (access_denied).",
        "login_required" | "interaction_required" | "consent_required" => {
            "The provider needs you to sign in again."
        }
        "temporarily_unavailable" | "server_error" => {
            "The identity provider is having trouble. Please try again later."
        }
        _ => "The identity provider refused the sign-in.",
    }
}

/// How often `name` appears in the query.
fn query_count(parts: &request::Parts, name: &str) -> usize {
    parts
        .uri
        .query()
        .map_or(0, |q| url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == name).count())
}

fn query_param(parts: &request::Parts, name: &str) -> Option<String> {
    let q = parts.uri.query()?;
    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn app_name(parts: &request::Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.to_string())
        .unwrap_or_else(|| "this app".into())
}

/// Where a browser may be sent after login or sign-out: a path on this host, or a URL on this
/// host or an allowed one (`.example.com` matches subdomains at a dot boundary), re-serialised
/// by the URL parser; `None` for anything else (then `/`).
pub fn safe_redirect(rd: &str, this_host: &str, allowed: &[String]) -> Option<String> {
    if rd.is_empty()
        || rd.len() > 4096
        || rd.chars().any(|c| c.is_control() || c == '\\' || c.is_whitespace() && c != ' ')
        || rd.starts_with(' ')
    {
        return None;
    }
    if rd.starts_with('/') {
        // `//host` and `/\host` are other hosts to a browser, and so are their encodings.
        let decoded: String = percent_decode(rd);
        if rd.starts_with("//") || decoded.starts_with("//") || decoded.contains('\\') {
            return None;
        }
        let base = Url::parse("http://portcullis.invalid/").ok()?;
        let u = base.join(rd).ok()?;
        if u.host_str() != Some("portcullis.invalid") {
            return None;
        }
        let mut out = u.path().to_string();
        if let Some(q) = u.query() {
            out.push('?');
            out.push_str(q);
        }
        if out.starts_with("//") {
            return None;
        }
        return Some(out);
    }
    let lower = rd.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return None;
    }
    let u = Url::parse(rd).ok()?;
    if !u.username().is_empty() || u.password().is_some() {
        return None;
    }
    let host = u.host_str()?.to_ascii_lowercase();
    let with_port = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let this = this_host.to_ascii_lowercase();
    let ok = with_port == this
        || host == this
        || allowed.iter().any(|a| match a.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")) || host == domain,
            None => host == *a || with_port == *a,
        });
    ok.then(|| u.to_string())
}

fn percent_decode(s: &str) -> String {
    // Decoded twice: `%252F` is `%2F` to one decoder and `/` to the next.
    let once: String = percent_encoding_decode(s);
    percent_encoding_decode(&once)
}

fn percent_encoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

// ----- handlers -----

/// The login error page, or an answer; through the one place refusals become answers.
fn login_answer(result: Result<Response<Body>, LoginError>) -> Response<Body> {
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(reason = e.reason, detail = %e.detail, "login step failed");
            Refusal::new(Rejection::LoginFailed { status: e.status, message: e.message }, e.reason)
                .detail(e.detail)
                .response()
        }
    }
}

async fn sign_in(State(login): State<Arc<Login>>, req: Request) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let rd = query_param(&parts, "rd").unwrap_or_else(|| "/".into());
    let rd: String =
        url::form_urlencoded::byte_serialize(login.safe_rd(&parts, Some(&rd)).as_bytes()).collect();
    let request_id =
        parts.extensions.get::<RequestId>().and_then(|r| r.0.to_str().ok().map(str::to_string));
    let mut resp = login.pages.render(
        "sign_in.html",
        StatusCode::OK,
        json!({
            "app_name": app_name(&parts),
            "provider": Url::parse(&login.cfg.issuer).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default(),
            "start_url": format!("{}/start?rd={rd}", login.cfg.prefix),
            "request_id": request_id,
        }),
    );
    resp.extensions_mut().insert(Decision::new("sign_in_page"));
    resp
}

async fn start(State(login): State<Arc<Login>>, req: Request) -> Response<Body> {
    let (parts, _) = req.into_parts();
    login_answer(login.start(&parts).await)
}

async fn callback(State(login): State<Arc<Login>>, req: Request) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let mut resp = login_answer(login.callback(&parts).await);
    if resp.status().is_client_error() || resp.status().is_server_error() {
        // a failed callback still removes its attempt cookie
        let state = query_param(&parts, "state").unwrap_or_default();
        resp.headers_mut()
            .append(header::SET_COOKIE, login.cookies.remove(&login.cookies.attempt_name(&state)));
    }
    resp
}

async fn sign_out(State(login): State<Arc<Login>>, req: Request) -> Response<Body> {
    let (parts, _) = req.into_parts();
    login.sign_out(&parts).await
}

async fn not_found() -> Response<Body> {
    let mut resp = Response::new(Body::from("not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.extensions_mut().insert(Decision::new("own_endpoint_not_found"));
    resp
}

async fn userinfo(State(login): State<Arc<Login>>, req: Request) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let no_session = |why: Option<String>| {
        let r = Rejection::NoToken { realm: login.realm.clone() };
        let refusal = Refusal::new(r, "no_session");
        match why {
            Some(why) => refusal.detail(why),
            None => refusal,
        }
        .response()
    };
    if parts.method != Method::GET {
        return no_session(None);
    }
    match login.session_of(&parts).await {
        Some(Ok((_, id, set, _))) => {
            let body = json!({
                "user": id.headers.iter().find(|(n, _)| n == crate::identity::X_FORWARDED_USER).and_then(|(_, v)| v.to_str().ok()),
                "subject": id.subject,
                "issuer": id.issuer,
                "email": id.email,
                "groups": id.groups,
                "preferred_username": id.claims.get("preferred_username"),
            });
            let mut resp = Response::new(Body::from(body.to_string()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            for v in set.get_all(header::SET_COOKIE) {
                resp.headers_mut().append(header::SET_COOKIE, v.clone());
            }
            let mut d = Decision::new("session");
            d.identity = Some(Arc::new(id));
            resp.extensions_mut().insert(d);
            resp
        }
        Some(Err(why)) => no_session(Some(why)),
        None => no_session(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login (no provider is asked) whose clock follows paused tokio time.
    fn paused_login(session: &str) -> Login {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"web\"\n\
             [bearer]\naudiences = [\"api\"]\n\
             [session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n{session}\n"
        );
        let cfg = crate::config::load_str(&text, std::iter::empty()).unwrap().config;
        let store = Arc::new(KeyStore::new(
            &cfg.key_issuers(),
            super::super::keys::KeyCacheSettings::new(&cfg.bearer, false),
        ));
        let pages = Arc::new(Pages::load(None).unwrap());
        Login::new(cfg.login.unwrap(), &store, &cfg.bearer, &cfg.identity, pages)
            .unwrap()
            .with_clock(Clock::tokio())
    }

    /// A browser's cookie jar: what `Set-Cookie` values leave in it, as a request's headers.
    #[derive(Default)]
    struct Jar(std::collections::BTreeMap<String, String>);

    impl Jar {
        fn take(&mut self, set: impl IntoIterator<Item = HeaderValue>) {
            for v in set {
                let v = v.to_str().unwrap().to_string();
                let pair = v.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if v.contains("Max-Age=0") {
                    self.0.remove(name);
                } else {
                    self.0.insert(name.into(), value.into());
                }
            }
        }
        fn headers(&self) -> HeaderMap {
            let mut h = HeaderMap::new();
            let c: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            h.insert(header::COOKIE, HeaderValue::from_str(&c.join("; ")).unwrap());
            h
        }
    }

    /// A signed-in browser's jar, as the callback leaves it (no tokens to refresh).
    fn signed_in(login: &Login) -> Jar {
        let t = login.clock.now();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let s = Session {
            id: session::random_token(),
            iss: "https://idp.example.com".into(),
            claims,
            created: t,
            seen: t,
            at_exp: None,
            refresh_token: None,
            id_token: None,
            access_token: None,
        };
        let mut jar = Jar::default();
        jar.take(login.seal_session(&s, &HeaderMap::new()).unwrap());
        jar
    }

    /// One request of the browser: whether its session held, and the cookies it got.
    async fn visit(login: &Login, jar: &mut Jar) -> Result<(), String> {
        let h = jar.headers();
        let value = login.cookies.session_value(&h).ok_or("no session cookie")?.unwrap();
        let (_, _, set, _) = login.check_session(&value, &h).await?;
        jar.take(set.get_all(header::SET_COOKIE).iter().cloned());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_session_outlives_the_idle_timeout_and_an_idle_one_does_not() {
        let login = paused_login("idle_timeout = \"1m\"\nmax_lifetime = \"1h\"");
        let mut jar = signed_in(&login);
        let session_cookie = jar.0["_portcullis"].clone();
        // a request every 11 s for five minutes: never idle
        for i in 0..30 {
            tokio::time::advance(Duration::from_secs(11)).await;
            visit(&login, &mut jar).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        }
        // activity went into its own cookie; the session (and its tokens) was never resealed
        assert_eq!(jar.0["_portcullis"], session_cookie);
        assert!(jar.0.contains_key("_portcullis_seen"), "{:?}", jar.0.keys());
        // then a minute without a request: signed out
        tokio::time::advance(Duration::from_secs(60)).await;
        let err = visit(&login, &mut jar).await.unwrap_err();
        assert!(err.contains("idle_timeout"), "{err}");
        // a fresher activity cookie of another session does not keep this one alive
        let mut other = signed_in(&login);
        let mut third = signed_in(&login);
        tokio::time::advance(Duration::from_secs(50)).await;
        visit(&login, &mut third).await.unwrap();
        other.0.insert("_portcullis_seen".into(), third.0["_portcullis_seen"].clone());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(visit(&login, &mut other).await.unwrap_err().contains("idle_timeout"));
        assert!(visit(&login, &mut third).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn max_lifetime_ends_even_an_active_session() {
        let login = paused_login("idle_timeout = \"1m\"\nmax_lifetime = \"5m\"");
        let mut jar = signed_in(&login);
        for _ in 0..29 {
            tokio::time::advance(Duration::from_secs(10)).await;
            visit(&login, &mut jar).await.unwrap();
        }
        // 290 s in: still fine; at 300 s: over
        tokio::time::advance(Duration::from_secs(10)).await;
        let err = visit(&login, &mut jar).await.unwrap_err();
        assert!(err.contains("max_lifetime"), "{err}");
    }

    #[test]
    fn activity_is_recorded_often_enough_for_the_idle_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        for (idle, every) in [("1m", 6), ("5m", 30), ("10m", 60), ("12h", 60)] {
            let login = paused_login(&format!("idle_timeout = \"{idle}\""));
            assert_eq!(login.activity_interval(), every, "{idle}");
        }
    }

    const HOST: &str = "app.example.com";

    fn allowed() -> Vec<String> {
        vec!["allowed.com".into(), ".example.org".into()]
    }

    fn check(rd: &str) -> Option<String> {
        safe_redirect(rd, HOST, &allowed())
    }

    #[test]
    fn safe_targets_are_kept_re_serialised() {
        assert_eq!(check("/").as_deref(), Some("/"));
        assert_eq!(check("/deep/link?x=1&y=%20z").as_deref(), Some("/deep/link?x=1&y=%20z"));
        assert_eq!(check("/a/../b").as_deref(), Some("/b"));
        assert_eq!(
            check("https://app.example.com/x").as_deref(),
            Some("https://app.example.com/x")
        );
        assert_eq!(check("https://allowed.com/").as_deref(), Some("https://allowed.com/"));
        assert_eq!(check("https://a.example.org/p").as_deref(), Some("https://a.example.org/p"));
        assert_eq!(check("https://example.org/").as_deref(), Some("https://example.org/"));
    }

    #[test]
    fn the_known_tricks_fall_back() {
        for rd in [
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "https://evil.com",
            "http:evil.com",
            "http:/evil.com",
            "/%2F%2Fevil.com",
            "/%2f%2fevil.com",
            "/%5Cevil.com",
            "/%252F%252Fevil.com",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "/\tevil",
            "\t/x",
            " /x",
            "/x\r\nSet-Cookie: a=b",
            "/\u{0}",
            "https://allowed.com.evil.com",
            "https://evil.com@allowed.com",
            "https://user@allowed.com/",
            "https://user:pw@app.example.com/",
            "https://notexample.org/",
            "https://evilexample.org/",
            "ftp://allowed.com/",
            "///evil.com",
            "/../../evil.com",
        ] {
            let got = check(rd);
            let ok = match &got {
                None => true,
                Some(s) => s.starts_with('/') && !s.starts_with("//") && !s.contains("evil.com/"),
            };
            assert!(ok, "{rd:?} -> {got:?}");
            assert!(got.as_deref() != Some(rd) || rd.starts_with('/'), "{rd:?} passed as is");
        }
    }

    /// A generated list: every prefix trick with every encoding of the separators, around a
    /// host that is not allowed. Whatever is accepted must stay on this host or an allowed one.
    #[test]
    fn generated_encodings_never_leave_the_allowed_hosts() {
        let slashes = [
            "/",
            "\\",
            "%2F",
            "%2f",
            "%5C",
            "%5c",
            "%252F",
            "%09",
            "%0D%0A",
            "\t",
            " ",
            "%20",
            "%00",
            "%E3%80%82",
        ];
        let schemes = ["", "http:", "https:", "HTTPS:", "javascript:", "//", "http://", "https://"];
        let hosts = [
            "evil.com",
            "allowed.com.evil.com",
            "evil.com@allowed.com",
            "evil.com%40allowed.com",
            "evil.com\\@allowed.com",
            "[::1]",
            "127.0.0.1",
            "allowed.com:443@evil.com",
        ];
        let mut n = 0;
        for scheme in schemes {
            for a in slashes {
                for b in slashes {
                    for host in hosts {
                        let rd = format!("{scheme}{a}{b}{host}/x");
                        n += 1;
                        let Some(out) = check(&rd) else { continue };
                        if out.starts_with('/') {
                            assert!(
                                !out.starts_with("//") && !out.contains('\\'),
                                "{rd:?} -> {out:?}"
                            );
                            continue;
                        }
                        let u = Url::parse(&out).unwrap();
                        let h = u.host_str().unwrap_or_default();
                        assert!(
                            h == HOST
                                || h == "allowed.com"
                                || h.ends_with(".example.org")
                                || h == "example.org",
                            "{rd:?} -> {out:?}"
                        );
                        assert!(
                            u.username().is_empty() && u.password().is_none(),
                            "{rd:?} -> {out:?}"
                        );
                    }
                }
            }
        }
        assert!(n > 10_000, "{n}");
    }
}
