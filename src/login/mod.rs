//! Browser login: the OpenID Connect authorization code flow with PKCE (S256, always), `state`
//! and `nonce` (the `oauth2` crate builds the requests), ID tokens verified against
//! `oidc.issuer`'s keys only, UserInfo merged in, sealed cookie sessions refreshed one at a time,
//! RP-initiated logout, and redirects that never leave the allowed hosts.
//!
//! Endpoints under `oidc.prefix`: `sign_in` (page), `start`, `callback`, `sign_out`,
//! `userinfo`. None reaches the app.
//!
//! - this file: [`Login`], its routes and handlers;
//! - `flow`: start, callback, sign-out;
//! - `provider`: the `oauth2` client, ID tokens, UserInfo, revocation, refresh;
//! - `redirect`: where a browser may be sent.

mod flow;
mod provider;
mod redirect;

use provider::token_error;
pub use provider::{HttpError, Provider};
pub use redirect::safe_redirect;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::get;
use axum::Router;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
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

use crate::auth::session::cookie::{self as session, Attempt, ATTEMPT_LIFETIME};
use crate::auth::session::redis::{Redis, RedisStore};
use crate::auth::session::{
    CookieStore, Jar, Lifetimes, Refresher, Session, SessionError, SessionStore, Sessions,
    StoreError,
};
use crate::auth::token::Verifier;
use crate::clock::Clock;
use crate::config::{
    BearerConfig, IdentityConfig, LoginConfig, PassToken, StoreConfig, TrustedIssuer,
};
use crate::error::error_chain;
use crate::identity::IdentityMapper;
use crate::idp::discovery::{read_bounded, ProviderMetadata};
use crate::idp::jwks::{IssuerKeys, KeyStore};
use crate::pages::Pages;
use crate::response::{redirect as redirect_to, Decision, Refusal, Rejection};

/// Protocol claims left out of a session (they describe the token, not the user).
pub(super) const PROTOCOL_CLAIMS: &[&str] =
    &["aud", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash", "c_hash", "jti", "azp", "sid"];

/// Why a login step failed: the log gets the detail, the browser a page with a short message.
#[derive(Debug)]
pub(super) struct LoginError {
    reason: &'static str,
    detail: String,
    /// What the page says.
    message: &'static str,
    status: StatusCode,
}

impl LoginError {
    pub(super) fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            message: "Signing in did not work. Please try again.",
            status: StatusCode::BAD_REQUEST,
        }
    }
    pub(super) fn status(mut self, s: StatusCode) -> Self {
        self.status = s;
        self
    }
    pub(super) fn message(mut self, m: &'static str) -> Self {
        self.message = m;
        self
    }
}

/// Everything the login endpoints need.
pub struct Login {
    cfg: LoginConfig,
    provider: Arc<Provider>,
    /// Our cookies (login attempts here; sessions through `sessions`).
    jar: Arc<Jar>,
    sessions: Arc<Sessions>,
    pages: Arc<Pages>,
    mapper: IdentityMapper,
    clock: Clock,
    /// `bearer.realm`, for the `401`s of the login endpoints.
    realm: Arc<str>,
    /// What outlives this login when the pipeline is swapped.
    kept: Arc<LoginState>,
}

/// What a login keeps across pipeline swaps (a new configuration makes a new [`Login`]): the
/// attempt states already used, so a callback replayed after a swap still fails, and the
/// cookie sessions' refreshes in flight.
#[derive(Debug, Default)]
pub struct LoginState {
    /// Attempt states already used, with their expiry.
    used_states: Mutex<HashMap<String, u64>>,
    refreshes: Arc<crate::auth::session::RefreshSlots>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("client_id", &self.cfg.client_id).finish()
    }
}

/// Seconds since the epoch, from `clock`.
pub(super) fn now(clock: &Clock) -> u64 {
    clock.now()
}

impl Login {
    /// The login for `cfg`, with sealed cookie sessions, reading time from `clock` (sessions'
    /// lifetime and idle timeout, attempts, ID tokens; tests move it with paused tokio time),
    /// keeping what must outlive it in `kept`.
    pub fn new(
        cfg: LoginConfig,
        store: &Arc<KeyStore>,
        bearer: &BearerConfig,
        identity: &IdentityConfig,
        pages: Arc<Pages>,
        clock: Clock,
        kept: Arc<LoginState>,
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
        let id_tokens = Verifier::new(&id_cfg, store.clone(), mapper.clone()).with_clock(clock);
        let provider = Arc::new(Provider {
            cfg: cfg.clone(),
            keys,
            id_tokens,
            http: crate::idp::discovery::idp_client(),
            keep_access_token: identity.pass_token != PassToken::None,
            clock,
            leeway: bearer.leeway,
            refresh_count: std::sync::atomic::AtomicU64::new(0),
        });
        let jar = Arc::new(Jar::new(&cfg)?);
        let lifetimes = Lifetimes {
            max_lifetime: cfg.session.max_lifetime,
            idle_timeout: cfg.session.idle_timeout,
        };
        let store: Arc<dyn SessionStore> = match &cfg.session.store {
            StoreConfig::Cookie => Arc::new(CookieStore::new(jar.clone(), kept.refreshes.clone())),
            StoreConfig::Redis(r) => Arc::new(RedisStore::new(
                jar.clone(),
                Arc::new(Redis::new(r)?),
                r,
                lifetimes,
                clock,
                kept.refreshes.clone(),
            )),
        };
        let sessions =
            Arc::new(Sessions::new(store, provider.clone(), mapper.clone(), lifetimes, clock));
        Ok(Self {
            provider,
            jar,
            sessions,
            pages,
            mapper,
            clock,
            realm: bearer.realm.as_str().into(),
            kept,
            cfg,
        })
    }

    /// The sessions this login opens, for authentication to check.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The provider client (refresh counts, for tests).
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    pub fn prefix(&self) -> &str {
        &self.cfg.prefix
    }

    pub fn pages(&self) -> &Arc<Pages> {
        &self.pages
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

    /// Where browsers are sent to sign in, for the answers of every layer.
    pub fn sign_in(&self) -> crate::response::SignIn {
        crate::response::SignIn {
            prefix: self.cfg.prefix.clone(),
            skip_page: self.cfg.skip_sign_in_page,
        }
    }

    /// `rd` if it is a safe place to send the browser after login or sign-out, else `/`.
    pub(super) fn safe_rd(&self, parts: &request::Parts, rd: Option<&str>) -> String {
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        rd.and_then(|rd| safe_redirect(rd, host, &self.cfg.allowed_redirect_hosts))
            .unwrap_or_else(|| "/".to_string())
    }
}

/// How often `name` appears in the query.
pub(super) fn query_count(parts: &request::Parts, name: &str) -> usize {
    parts
        .uri
        .query()
        .map_or(0, |q| url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == name).count())
}

pub(super) fn query_param(parts: &request::Parts, name: &str) -> Option<String> {
    let q = parts.uri.query()?;
    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

pub(super) fn app_name(parts: &request::Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.to_string())
        .unwrap_or_else(|| "this app".into())
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
    let request_id = crate::response::request_id_of(&parts.headers)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
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
        resp.headers_mut().append(
            header::SET_COOKIE,
            login.jar.cookies.remove(&login.jar.cookies.attempt_name(&state)),
        );
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
    match login.sessions.check(&parts.headers).await {
        Some(Ok(checked)) => {
            let id = checked.identity;
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
            for v in checked.set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            let mut d = Decision::new("session");
            d.identity = Some(id);
            resp.extensions_mut().insert(d);
            resp
        }
        Some(Err(SessionError::Unavailable(why))) => {
            tracing::warn!(reason = %why, "session store unavailable");
            Refusal::new(Rejection::SessionsUnavailable, "session_store_unavailable")
                .detail(why)
                .response()
        }
        Some(Err(SessionError::Invalid(why))) => no_session(Some(why)),
        None => no_session(None),
    }
}
