//! A built-in development issuer, **for development and tests only**: OIDC discovery, a JWKS, a
//! token endpoint minting tokens for demo users, and a small authorization-code flow (a login
//! page with the demo users, PKCE S256, refresh tokens that rotate, UserInfo, logout), on
//! loopback. `portcullis demo` and the integration tests use it; production never does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// The audience the dev issuer puts in tokens unless told otherwise.
pub const DEV_AUDIENCE: &str = "api://portcullis-demo";

/// Key types the dev issuer can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    Rs256,
    Es256,
    EdDsa,
}

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct DevKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key bytes (RSA: PKCS#1 DER; EC: uncompressed point; Ed25519: raw), for tests
    /// that misuse them, e.g. as an HMAC secret.
    pub public_bytes: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

static KID_COUNTER: AtomicU64 = AtomicU64::new(1);

impl DevKey {
    /// Generates a fresh key pair.
    pub fn generate(alg: KeyAlg) -> anyhow::Result<Self> {
        let kid = format!(
            "dev-{}-{}-{}",
            match alg {
                KeyAlg::Rs256 => "rsa",
                KeyAlg::Es256 => "ec",
                KeyAlg::EdDsa => "ed",
            },
            std::process::id(),
            KID_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let rng = SystemRandom::new();
        let e = |e: aws_lc_rs::error::Unspecified| anyhow::anyhow!("key generation failed: {e}");
        Ok(match alg {
            KeyAlg::Rs256 => {
                let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(e)?;
                let der = kp.as_der().map_err(e)?;
                let pem_body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
                let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
                for line in pem_body.as_bytes().chunks(64) {
                    pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                    pem.push('\n');
                }
                pem.push_str("-----END PRIVATE KEY-----\n");
                let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())?;
                let parts = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                                 "n": b64(&parts.n), "e": b64(&parts.e)});
                let public_bytes = kp.public_key().as_ref().to_vec();
                DevKey { kid, alg: Algorithm::RS256, encoding, jwk, public_bytes }
            }
            KeyAlg::Es256 => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(e)?;
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let public = kp.public_key().as_ref().to_vec();
                let (x, y) = public[1..].split_at(32);
                let jwk = json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256",
                                 "crv": "P-256", "x": b64(x), "y": b64(y)});
                DevKey {
                    kid,
                    alg: Algorithm::ES256,
                    encoding: EncodingKey::from_ec_der(doc.as_ref()),
                    jwk,
                    public_bytes: public,
                }
            }
            KeyAlg::EdDsa => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(e)?;
                let kp =
                    Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
                let public = kp.public_key().as_ref().to_vec();
                let jwk = json!({"kty": "OKP", "kid": kid, "use": "sig", "alg": "EdDSA",
                                 "crv": "Ed25519", "x": b64(&public)});
                DevKey {
                    kid,
                    alg: Algorithm::EdDSA,
                    encoding: EncodingKey::from_ed_der(doc.as_ref()),
                    jwk,
                    public_bytes: public,
                }
            }
        })
    }

    /// Signs `claims` with this key; `header` is completed with `alg` and `kid` unless set.
    pub fn sign(&self, mut header: Header, claims: &Value) -> String {
        header.alg = self.alg;
        if header.kid.is_none() {
            header.kid = Some(self.kid.clone());
        }
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }
}

/// A demo user.
#[derive(Debug, Clone)]
pub struct DevUser {
    pub name: &'static str,
    pub email: &'static str,
    pub groups: &'static [&'static str],
}

/// The users `portcullis demo` knows.
pub const DEV_USERS: &[DevUser] = &[
    DevUser { name: "alice", email: "alice@example.com", groups: &["admins", "developers"] },
    DevUser { name: "bob", email: "bob@example.com", groups: &["staff"] },
];

struct Shared {
    issuer: String,
    keys: Mutex<Vec<DevKey>>,
    down: AtomicBool,
    jwks_fetches: AtomicU64,
    discovery_fetches: AtomicU64,
    /// Authorization codes not yet exchanged.
    codes: Mutex<HashMap<String, CodeGrant>>,
    /// Live refresh tokens: token → (user, client).
    refresh_tokens: Mutex<HashMap<String, (String, String)>>,
    /// Claims merged into the next ID tokens (tests forge bad ones with it).
    id_token_patch: Mutex<Option<Value>>,
    /// Seconds access tokens of the code flow live.
    access_ttl: AtomicU64,
    refresh_grants: AtomicU64,
    /// `Cache-Control` of the JWKS response, if any.
    jwks_cache_control: Mutex<Option<String>>,
    /// Groups of a user from now on, in ID tokens and UserInfo of the code flow (`None`: no
    /// `groups` claim at all, as Entra sends for a user in no group).
    groups_override: Mutex<HashMap<String, Option<Vec<String>>>>,
    /// Refresh tokens revoked at the revocation endpoint (RFC 7009).
    revocations: AtomicU64,
}

/// An authorization code and what it was issued for.
#[derive(Debug, Clone)]
struct CodeGrant {
    user: String,
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: Option<String>,
}

/// A running development issuer on `127.0.0.1`. Stops when dropped.
pub struct DevIssuer {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl DevIssuer {
    /// Starts on `127.0.0.1:0` with one key of each given type (the first signs by default).
    pub async fn start(algs: &[KeyAlg]) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, algs).await
    }

    /// Starts on `addr` with one key of each given type.
    pub async fn start_on(addr: SocketAddr, algs: &[KeyAlg]) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut keys = Vec::new();
        for a in algs {
            keys.push(DevKey::generate(*a)?);
        }
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(keys),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicU64::new(0),
            discovery_fetches: AtomicU64::new(0),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            id_token_patch: Mutex::new(None),
            access_ttl: AtomicU64::new(3600),
            refresh_grants: AtomicU64::new(0),
            jwks_cache_control: Mutex::new(None),
            groups_override: Mutex::new(HashMap::new()),
            revocations: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token_endpoint))
            .route("/dev/token", get(dev_token))
            .route("/authorize", get(authorize_page).post(authorize))
            .route("/userinfo", get(userinfo))
            .route("/logout", get(logout))
            .route("/revoke", post(revoke))
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self { shared, stop: Some(tx) })
    }

    /// The issuer identifier (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.shared.issuer)
    }

    /// The published key ids, in JWKS order.
    pub fn kids(&self) -> Vec<String> {
        self.lock().iter().map(|k| k.kid.clone()).collect()
    }

    /// The key with this `kid` (for crafting tokens in tests).
    pub fn key(&self, kid: &str) -> Option<DevKey> {
        self.lock().iter().find(|k| k.kid == kid).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DevKey>> {
        self.shared.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new key first in the JWKS (the old ones stay); returns its `kid`.
    pub fn rotate(&self, alg: KeyAlg) -> String {
        let key = DevKey::generate(alg).unwrap_or_else(|e| panic!("key generation: {e}"));
        let kid = key.kid.clone();
        self.lock().insert(0, key);
        kid
    }

    /// Stops publishing the key with this `kid`.
    pub fn remove_key(&self, kid: &str) {
        self.lock().retain(|k| k.kid != kid);
    }

    /// While down, discovery and the JWKS answer 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> u64 {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Merges `patch` into the ID tokens issued from now on (`None`: back to correct ones).
    pub fn patch_id_tokens(&self, patch: Option<Value>) {
        *self.shared.id_token_patch.lock().unwrap_or_else(|p| p.into_inner()) = patch;
    }

    /// Sets how long access tokens of the code flow live.
    pub fn set_access_ttl(&self, seconds: u64) {
        self.shared.access_ttl.store(seconds, Ordering::SeqCst);
    }

    /// Sets the JWKS response's `Cache-Control` (`None`: no header).
    pub fn set_jwks_cache_control(&self, value: Option<&str>) {
        *self.shared.jwks_cache_control.lock().unwrap_or_else(|p| p.into_inner()) =
            value.map(str::to_string);
    }

    /// Refresh-token grants served.
    /// From now on `user`'s code-flow tokens and UserInfo carry these groups (`None`: no
    /// `groups` claim at all).
    pub fn set_groups(&self, user: &str, groups: Option<&[&str]>) {
        let groups = groups.map(|g| g.iter().map(|s| s.to_string()).collect());
        self.shared
            .groups_override
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_string(), groups);
    }

    /// Refresh tokens revoked at the revocation endpoint so far.
    pub fn revocations(&self) -> u64 {
        self.shared.revocations.load(Ordering::SeqCst)
    }

    pub fn refresh_grants(&self) -> u64 {
        self.shared.refresh_grants.load(Ordering::SeqCst)
    }

    /// Standard claims for `user` and `audience`, valid for an hour.
    pub fn claims_for(&self, user: &str, audience: &str) -> Value {
        claims_for(&self.shared.issuer, user, audience)
    }

    /// A token for `user` (a [`DEV_USERS`] name or any subject) signed by the first key.
    pub fn token_for(&self, user: &str, audience: &str) -> String {
        self.mint(&self.claims_for(user, audience))
    }

    /// Signs any claims with the first key.
    pub fn mint(&self, claims: &Value) -> String {
        self.shared.sign_first(claims).expect("the dev issuer publishes no key")
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Shared {
    fn override_groups(&self, user: &str, claims: &mut Value) {
        let o = self.groups_override.lock().unwrap_or_else(|p| p.into_inner());
        match (o.get(user), claims.as_object_mut()) {
            (Some(Some(g)), Some(m)) => {
                m.insert("groups".into(), json!(g));
            }
            (Some(None), Some(m)) => {
                m.remove("groups");
            }
            _ => {}
        }
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
}

/// RFC 7009 token revocation: a refresh token stops working (an unknown token is 200 too).
async fn revoke(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<RevokeForm>,
) -> Response {
    let client = client_of(&headers, &TokenForm { client_id: f.client_id, ..TokenForm::default() });
    let Some(client) = client else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let mut live = s.refresh_tokens.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = f.token.as_deref() {
        if live.get(t).is_some_and(|(_, c)| *c == client) {
            live.remove(t);
            s.revocations.fetch_add(1, Ordering::SeqCst);
        }
    }
    StatusCode::OK.into_response()
}

fn claims_for(issuer: &str, user: &str, audience: &str) -> Value {
    let now = now();
    let mut c = json!({
        "iss": issuer,
        "sub": user,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    });
    if let Some(u) = DEV_USERS.iter().find(|u| u.name == user) {
        c["email"] = json!(u.email);
        c["preferred_username"] = json!(u.name);
        c["groups"] = json!(u.groups);
    }
    c
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    Json(json!({
        "issuer": s.issuer,
        "jwks_uri": format!("{}/jwks", s.issuer),
        "token_endpoint": format!("{}/token", s.issuer),
        "authorization_endpoint": format!("{}/authorize", s.issuer),
        "userinfo_endpoint": format!("{}/userinfo", s.issuer),
        "end_session_endpoint": format!("{}/logout", s.issuer),
        "revocation_endpoint": format!("{}/revoke", s.issuer),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "grant_types_supported": ["authorization_code", "refresh_token", "password", "client_credentials"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys: Vec<Value> =
        s.keys.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|k| k.jwk.clone()).collect();
    let mut resp = Json(json!({ "keys": keys })).into_response();
    let cc = s.jwks_cache_control.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(v) = cc.and_then(|v| axum::http::HeaderValue::from_str(&v).ok()) {
        resp.headers_mut().insert(axum::http::header::CACHE_CONTROL, v);
    }
    resp
}

#[derive(Deserialize, Default)]
struct TokenForm {
    grant_type: Option<String>,
    username: Option<String>,
    client_id: Option<String>,
    audience: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
}

impl Shared {
    /// Signs `claims` with the first published key; `None` when no key is published.
    fn sign_first(&self, claims: &Value) -> Option<String> {
        let key = self.keys.lock().unwrap_or_else(|p| p.into_inner()).first()?.clone();
        Some(key.sign(Header::new(key.alg), claims))
    }
}

fn issue(s: &Shared, user: &str, audience: Option<&str>) -> Response {
    let audience = audience.unwrap_or(DEV_AUDIENCE);
    match s.sign_first(&claims_for(&s.issuer, user, audience)) {
        Some(token) => {
            Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}))
                .into_response()
        }
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `POST /token` with `grant_type=password&username=alice`,
/// `grant_type=client_credentials&client_id=svc`, `authorization_code` (PKCE S256 required) or
/// `refresh_token` (rotated).
async fn token_endpoint(
    State(s): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    match f.grant_type.as_deref() {
        Some("authorization_code") => return code_grant(&s, &headers, f),
        Some("refresh_token") => return refresh_grant(&s, &headers, f),
        _ => {}
    }
    let user = match f.grant_type.as_deref() {
        Some("password") => f.username,
        Some("client_credentials") => f.client_id,
        _ => None,
    };
    match user {
        Some(u) if !u.is_empty() => issue(&s, &u, f.audience.as_deref()),
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request",
                        "error_description": "use grant_type=password&username=alice or grant_type=client_credentials&client_id=NAME"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct DevTokenQuery {
    user: Option<String>,
    audience: Option<String>,
}

/// `GET /dev/token?user=bob`: the bare token, handy in a shell.
async fn dev_token(State(s): State<Arc<Shared>>, Query(q): Query<DevTokenQuery>) -> Response {
    let user = q.user.unwrap_or_else(|| "alice".into());
    let audience = q.audience.unwrap_or_else(|| DEV_AUDIENCE.into());
    match s.sign_first(&claims_for(&s.issuer, &user, &audience)) {
        Some(token) => token.into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

impl DevIssuer {
    /// A [`Verifier`](crate::auth::token::Verifier) trusting this issuer for `audience` with the
    /// documented defaults (changed by `tune`) and its keys loaded: the one fixture for unit
    /// tests and benchmarks.
    pub async fn verifier(
        &self,
        audience: &str,
        tune: impl FnOnce(&mut crate::config::BearerConfig),
    ) -> anyhow::Result<crate::auth::token::Verifier> {
        use crate::idp::jwks::{KeyCacheSettings, KeyStore};
        let mut cfg =
            crate::config::BearerConfig::with_issuers(vec![crate::config::TrustedIssuer {
                issuer: self.issuer(),
                audiences: vec![audience.to_string()],
                jwks_url: None,
            }]);
        tune(&mut cfg);
        let keys = Arc::new(KeyStore::new(&cfg.issuers, KeyCacheSettings::new(&cfg, false)));
        keys.issuers[0].refresh().await?;
        let mapper = crate::identity::IdentityMapper::new(crate::config::IdentityConfig::default());
        Ok(crate::auth::token::Verifier::new(&cfg, keys, mapper))
    }
}

// ----- the authorization code flow (development only) -----

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

/// The client id from HTTP Basic (`client_secret_basic`) or the form; any secret is accepted.
fn client_of(headers: &axum::http::HeaderMap, f: &TokenForm) -> Option<String> {
    let basic = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(id, _)| id.to_string()))
        .map(|id| {
            url::form_urlencoded::parse(format!("x={id}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or(id)
        });
    basic.or_else(|| f.client_id.clone())
}

fn random_code() -> String {
    let mut b = [0u8; 24];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b64(&b)
}

/// The tokens for `user` and `client`: an ID token (with `nonce`), a JWT access token and a
/// fresh refresh token.
fn code_flow_tokens(s: &Shared, user: &str, client: &str, nonce: Option<&str>) -> Response {
    let now = now();
    let mut id = claims_for(&s.issuer, user, client);
    s.override_groups(user, &mut id);
    id["exp"] = json!(now + 3600);
    id["email_verified"] = json!(true);
    if let Some(n) = nonce {
        id["nonce"] = json!(n);
    }
    if let Some(Value::Object(patch)) =
        s.id_token_patch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    {
        for (k, v) in patch {
            id[k] = v;
        }
    }
    let ttl = s.access_ttl.load(Ordering::SeqCst);
    let mut at = claims_for(&s.issuer, user, DEV_AUDIENCE);
    at["exp"] = json!(now + ttl);
    let (Some(id_token), Some(access_token)) = (s.sign_first(&id), s.sign_first(&at)) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let refresh = random_code();
    s.refresh_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(refresh.clone(), (user.to_string(), client.to_string()));
    Json(json!({
        "access_token": access_token, "token_type": "Bearer", "expires_in": ttl,
        "id_token": id_token, "refresh_token": refresh,
    }))
    .into_response()
}

fn code_grant(s: &Shared, headers: &axum::http::HeaderMap, f: TokenForm) -> Response {
    let Some(client) = client_of(headers, &f) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let grant =
        f.code.as_deref().and_then(|c| s.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(c));
    let Some(grant) = grant else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if grant.client_id != client || Some(grant.redirect_uri.as_str()) != f.redirect_uri.as_deref() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    // PKCE S256 (RFC 7636): required
    let verified = match (&grant.challenge, &f.code_verifier) {
        (Some(challenge), Some(verifier)) => {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
            b64(d.as_ref()) == *challenge
        }
        _ => false,
    };
    if !verified {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    code_flow_tokens(s, &grant.user, &client, grant.nonce.as_deref())
}

fn refresh_grant(s: &Shared, headers: &axum::http::HeaderMap, f: TokenForm) -> Response {
    let Some(client) = client_of(headers, &f) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    // rotation: a refresh token works once
    let owner = f
        .refresh_token
        .as_deref()
        .and_then(|t| s.refresh_tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(t));
    match owner {
        Some((user, c)) if c == client => {
            s.refresh_grants.fetch_add(1, Ordering::SeqCst);
            code_flow_tokens(s, &user, &client, None)
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
    }
}

#[derive(Deserialize, Default)]
struct AuthorizeParams {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    user: Option<String>,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The demo login page: one button per demo user. Redirect URIs must be on loopback.
async fn authorize_page(Query(p): Query<AuthorizeParams>) -> Response {
    let Some(redirect) = p.redirect_uri.as_deref().and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is required").into_response();
    };
    if !crate::config::is_loopback_host(&redirect) {
        return (StatusCode::BAD_REQUEST, "the development issuer only redirects to loopback")
            .into_response();
    }
    if p.code_challenge_method.as_deref() != Some("S256") || p.code_challenge.is_none() {
        return (StatusCode::BAD_REQUEST, "PKCE with S256 is required").into_response();
    }
    let hidden = |name: &str, v: &Option<String>| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            html_escape(v.as_deref().unwrap_or_default())
        )
    };
    let fields = [
        hidden("client_id", &p.client_id),
        hidden("redirect_uri", &p.redirect_uri),
        hidden("state", &p.state),
        hidden("nonce", &p.nonce),
        hidden("code_challenge", &p.code_challenge),
        hidden("code_challenge_method", &p.code_challenge_method),
    ]
    .concat();
    let buttons: String = DEV_USERS
        .iter()
        .map(|u| {
            format!(
                "<button id=\"user-{n}\" name=\"user\" value=\"{n}\">Sign in as {n} <small>({g})</small></button>",
                n = u.name,
                g = u.groups.join(", ")
            )
        })
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>portcullis development issuer</title><style>body{{font:16px system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem}}\
         button{{display:block;width:100%;margin:.5rem 0;padding:.75rem;font:inherit;cursor:pointer}}</style></head><body>\
         <h1>Development issuer</h1><p>For development only: pick a demo user.</p>\
         <form method=\"post\" action=\"/authorize\">{fields}{buttons}</form></body></html>"
    );
    axum::response::Html(html).into_response()
}

/// The button press: a code for the chosen user, back to the client with `state` and `iss`.
async fn authorize(State(s): State<Arc<Shared>>, Form(p): Form<AuthorizeParams>) -> Response {
    let (Some(user), Some(client), Some(redirect)) = (p.user, p.client_id, p.redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "user, client_id and redirect_uri are required")
            .into_response();
    };
    let Ok(mut url) = url::Url::parse(&redirect) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    if !crate::config::is_loopback_host(&url) || !DEV_USERS.iter().any(|u| u.name == user) {
        return (StatusCode::BAD_REQUEST, "unknown user or redirect off loopback").into_response();
    }
    let code = random_code();
    s.codes.lock().unwrap_or_else(|p| p.into_inner()).insert(
        code.clone(),
        CodeGrant {
            user,
            client_id: client,
            redirect_uri: redirect,
            nonce: p.nonce,
            challenge: p.code_challenge,
        },
    );
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", p.state.as_deref().unwrap_or_default())
        .append_pair("iss", &s.issuer);
    axum::response::Redirect::to(url.as_str()).into_response()
}

/// UserInfo for a bearer access token of this issuer (checked only for its `sub`; development).
async fn userinfo(State(s): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Ok(claims) = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let user = claims["sub"].as_str().unwrap_or_default().to_string();
    let mut info = claims_for(&s.issuer, &user, DEV_AUDIENCE);
    s.override_groups(&user, &mut info);
    if let Value::Object(m) = &mut info {
        for k in ["iss", "aud", "iat", "nbf", "exp"] {
            m.remove(k);
        }
        m.insert("email_verified".into(), json!(true));
    }
    Json(info).into_response()
}

#[derive(Deserialize)]
struct LogoutParams {
    post_logout_redirect_uri: Option<String>,
}

/// RP-initiated logout: back to `post_logout_redirect_uri` on loopback, or a page.
async fn logout(Query(p): Query<LogoutParams>) -> Response {
    match p.post_logout_redirect_uri.and_then(|u| url::Url::parse(&u).ok()) {
        Some(u) if crate::config::is_loopback_host(&u) => {
            axum::response::Redirect::to(u.as_str()).into_response()
        }
        _ => axum::response::Html(
            "<!doctype html><title>Signed out</title><p>Signed out of the development issuer.</p>",
        )
        .into_response(),
    }
}
