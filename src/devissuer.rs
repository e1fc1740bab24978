//! A built-in development issuer, **for development and tests only**: OIDC discovery, a JWKS and
//! a token endpoint minting tokens for demo users, on loopback. `portcullis demo` and the
//! integration tests use it; production never does.

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
    DevUser { name: "bob", email: "bob@example.com", groups: &["developers"] },
];

struct Shared {
    issuer: String,
    keys: Mutex<Vec<DevKey>>,
    down: AtomicBool,
    jwks_fetches: AtomicU64,
    discovery_fetches: AtomicU64,
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
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token_endpoint))
            .route("/dev/token", get(dev_token))
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
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "grant_types_supported": ["password", "client_credentials"],
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
    Json(json!({ "keys": keys })).into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    username: Option<String>,
    client_id: Option<String>,
    audience: Option<String>,
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

/// `POST /token` with `grant_type=password&username=alice` or
/// `grant_type=client_credentials&client_id=svc`.
async fn token_endpoint(State(s): State<Arc<Shared>>, Form(f): Form<TokenForm>) -> Response {
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
        use crate::auth::keys::{KeyCacheSettings, KeyStore};
        let mut cfg =
            crate::config::BearerConfig::with_issuers(vec![crate::config::TrustedIssuer {
                issuer: self.issuer(),
                audiences: vec![audience.to_string()],
                jwks_url: None,
            }]);
        tune(&mut cfg);
        let keys = Arc::new(KeyStore::new(&cfg.issuers, KeyCacheSettings::new(&cfg, false)));
        keys.issuers[0].refresh().await?;
        let mapper =
            crate::auth::identity::IdentityMapper::new(crate::config::IdentityConfig::default());
        Ok(crate::auth::token::Verifier::new(&cfg, keys, mapper))
    }
}
