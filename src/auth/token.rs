//! Bearer JWT validation (jsonwebtoken, `aws_lc_rs`) and the verified-token cache.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::kept::Kept;
use crate::clock::Clock;
use crate::config::BearerConfig;
use crate::identity::{Identity, IdentityError, IdentityMapper};
use crate::idp::jwks::{IssuerKeys, KeyStore, Lookup, VerifyKey};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. `reason()` goes to the log; the client sees only
/// `invalid_token` and [`TokenError::client_description`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("crit header names {0:?}, which is not understood")]
    UnsupportedCrit(Vec<String>),
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("issuer {0:?} is not trusted")]
    UntrustedIssuer(String),
    #[error("no key {kid:?} for {alg:?} at issuer {issuer:?}")]
    UnknownKey { issuer: String, kid: Option<String>, alg: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    #[error("audience not accepted")]
    BadAudience,
    #[error("issuer claim does not match")]
    BadIssuer,
    #[error("required claim {0:?} missing")]
    MissingClaim(String),
    #[error("claim {0:?} has the wrong type")]
    BadClaim(String),
    #[error("keys of issuer {0:?} are not loaded yet")]
    KeysNotLoaded(String),
    #[error("token type (typ) {0:?} is not an access token type")]
    WrongType(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl TokenError {
    /// A short machine-friendly code for the access log.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnsupportedCrit(_) => "token_crit",
            TokenError::AlgorithmNotAllowed(_) => "token_alg_not_allowed",
            TokenError::UntrustedIssuer(_) => "token_untrusted_issuer",
            TokenError::UnknownKey { .. } => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::IssuedInFuture => "token_iat_in_future",
            TokenError::BadAudience => "token_bad_audience",
            TokenError::BadIssuer => "token_bad_issuer",
            TokenError::MissingClaim(_) => "token_missing_claim",
            TokenError::BadClaim(_) => "token_bad_claim",
            TokenError::KeysNotLoaded(_) => "keys_not_loaded",
            TokenError::WrongType(_) => "token_wrong_type",
            TokenError::Identity(IdentityError::UnverifiedEmail(_)) => "email_not_verified",
            TokenError::Identity(IdentityError::NoUser(_)) => "token_no_user",
        }
    }

    /// What the client is told (RFC 6750 `error_description`): no more than that it failed.
    pub fn client_description(&self) -> &'static str {
        match self {
            TokenError::Expired => "The access token expired",
            _ => "The access token is invalid",
        }
    }
}

#[derive(Deserialize)]
struct PeekIssuer {
    iss: Option<Value>,
}

/// One trusted issuer as the verifier sees it.
struct IssuerPolicy {
    keys: Arc<IssuerKeys>,
    validations: HashMap<Algorithm, Validation>,
}

/// A verified token in the cache.
struct CachedToken {
    identity: Arc<Identity>,
    exp: u64,
    nbf: Option<u64>,
    /// The issuer's keys, their generation when the token was verified, and the key that
    /// verified it: on a hit after the keys changed, the entry holds only while its key is
    /// still published.
    keys: Arc<IssuerKeys>,
    generation: u64,
    key_fingerprint: u64,
    /// The generation of the configuration it was verified under: what a verified token
    /// becomes depends on audiences, algorithms, leeway, token types, required claims and the
    /// identity mapping, so after a pipeline swap an entry of an older one is a miss.
    config: u64,
}

impl CachedToken {
    fn key_still_published(&self) -> bool {
        self.keys.generation() == self.generation
            || self.keys.current().has_fingerprint(self.key_fingerprint)
    }
}

/// Bounded map from a token to its verified identity. `exp` and `nbf` are re-checked on every
/// hit; entries whose key left the JWKS are dropped on their next hit; when full, the expired
/// ones go first.
///
/// Kept by the token's own bytes (`auth::kept`): that costs the token's bytes per entry (at most
/// `token_cache_size` times 16 KiB) and far less work per request than a SHA-256 of it (or
/// SipHash: about 4,000 instructions for an 800-byte token, against a few hundred).
pub struct TokenCache(Kept<Arc<CachedToken>>);

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self(Kept::new(capacity))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token whose signature and claims verified.
struct Signed {
    issuer: String,
    claims: Map<String, Value>,
    keys: Arc<IssuerKeys>,
    generation: u64,
    key_fingerprint: u64,
}

/// How a token was accepted (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Cached,
    Fresh,
}

/// Validates bearer tokens against the trusted issuers.
pub struct Verifier {
    issuers: HashMap<String, IssuerPolicy>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    required_claims: Vec<String>,
    token_types: Vec<String>,
    clock: Clock,
    cache: Arc<TokenCache>,
    /// The configuration generation this verifier was made for (see [`CachedToken`]).
    config: u64,
    mapper: IdentityMapper,
    keys: Arc<KeyStore>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

impl Verifier {
    pub fn new(cfg: &BearerConfig, keys: Arc<KeyStore>, mapper: IdentityMapper) -> Self {
        let cache = Arc::new(TokenCache::new(cfg.token_cache_size));
        let mut issuers = HashMap::new();
        for trusted in &cfg.issuers {
            let Some(ik) = keys.issuer(&trusted.issuer) else {
                tracing::error!(issuer = %trusted.issuer, "no key cache for a trusted issuer; its tokens are refused");
                continue;
            };
            let mut validations = HashMap::new();
            for alg in &cfg.algorithms {
                let mut v = Validation::new(*alg);
                v.leeway = cfg.leeway.as_secs();
                // `exp`, `nbf` and `iat` are checked against our clock (check_claims).
                v.validate_exp = false;
                v.validate_nbf = false;
                v.validate_aud = true;
                v.set_issuer(&[trusted.issuer.as_str()]);
                v.set_audience(&trusted.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                validations.insert(*alg, v);
            }
            issuers.insert(trusted.issuer.clone(), IssuerPolicy { keys: ik.clone(), validations });
        }
        Self {
            issuers,
            algorithms: cfg.algorithms.clone(),
            leeway: cfg.leeway.as_secs(),
            required_claims: cfg.required_claims.clone(),
            token_types: cfg.token_types.clone(),
            clock: Clock::System,
            cache,
            config: 0,
            mapper,
            keys,
        }
    }

    /// The same verifier keeping verified tokens in `cache`, which outlives pipeline swaps;
    /// `config` is the generation of the configuration it was made from (entries of another
    /// generation are misses).
    pub fn with_cache(mut self, cache: Arc<TokenCache>, config: u64) -> Self {
        self.cache = cache;
        self.config = config;
        self
    }

    /// The same verifier reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Validates `token`; a cache hit costs a keyed hash, a map lookup and a comparison (a
    /// hit is the very bytes of a token that verified, so they need no other check).
    pub async fn verify(
        &self,
        token: impl AsRef<[u8]>,
    ) -> Result<(Arc<Identity>, Verified), TokenError> {
        self.verify_bytes(token.as_ref()).await
    }

    async fn verify_bytes(&self, token: &[u8]) -> Result<(Arc<Identity>, Verified), TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let cache = &self.cache.0;
        let now = self.clock.now();
        if let Some(hit) = cache.get(token).filter(|hit| hit.config == self.config) {
            if hit.exp.saturating_add(self.leeway) < now {
                cache.remove(token);
                return Err(TokenError::Expired);
            }
            if hit.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
                return Err(TokenError::NotYetValid);
            }
            if hit.key_still_published() {
                return Ok((hit.identity.clone(), Verified::Cached));
            }
            // Its key left the JWKS: verify afresh (which refuses it, or finds the key back).
            cache.remove(token);
        }
        // ASCII checked a word at a time (not a byte at a time, as `HeaderValue::to_str` does);
        // control characters, which a header value cannot hold anyway, fail as a token would.
        let text = match std::str::from_utf8(token) {
            Ok(t) if t.is_ascii() => t,
            _ => return Err(TokenError::Malformed("non-ASCII token".into())),
        };
        let (identity, entry) = self.verify_fresh(text, now).await?;
        cache.insert_dropping_first(token, Arc::new(entry), |e| e.exp <= now);
        Ok((identity, Verified::Fresh))
    }

    /// Verifies `token` without the cache and without turning it into an identity: its claims,
    /// for tokens that are not bearer credentials (ID tokens at login).
    pub async fn verify_claims(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        Ok(self.verify_signed(token, self.clock.now()).await?.claims)
    }

    async fn verify_fresh(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(Arc<Identity>, CachedToken), TokenError> {
        let s = self.verify_signed(token, now).await?;
        let exp = s.claims.get("exp").and_then(as_u64).unwrap_or(0);
        let nbf = s.claims.get("nbf").and_then(as_u64);
        let identity = Arc::new(self.mapper.identity(&s.issuer, s.claims)?);
        let entry = CachedToken {
            identity: identity.clone(),
            exp,
            nbf,
            keys: s.keys,
            generation: s.generation,
            key_fingerprint: s.key_fingerprint,
            config: self.config,
        };
        Ok((identity, entry))
    }

    /// Header, issuer, key, signature and claim checks.
    async fn verify_signed(&self, token: &str, now: u64) -> Result<Signed, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) if token.split('.').count() == 3 => {
                // `alg` values outside the enum ("none", "HS1", ...) fail here.
                TokenError::Malformed(format!("header not understood: {e}"))
            }
            _ => TokenError::Malformed(e.to_string()),
        })?;
        if let Some(crit) = &header.crit {
            // RFC 7515 §4.1.11: we understand no extension, so any `crit` is refused.
            return Err(TokenError::UnsupportedCrit(crit.clone()));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        if let Some(typ) = &header.typ {
            if !self.token_types.iter().any(|t| same_media_type(t, typ)) {
                return Err(TokenError::WrongType(typ.clone()));
            }
        }
        // `jku`, `x5u`, `x5c` and `jwk` are never used: keys come only from the issuer's JWKS.
        let peek: PeekIssuer = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        let iss = match peek.iss {
            Some(Value::String(s)) => s,
            Some(_) => return Err(TokenError::BadClaim("iss".into())),
            None => return Err(TokenError::MissingClaim("iss".into())),
        };
        let Some(policy) = self.issuers.get(&iss) else {
            return Err(TokenError::UntrustedIssuer(iss));
        };
        if !policy.keys.is_loaded() {
            return Err(TokenError::KeysNotLoaded(iss));
        }
        // Read before the lookup: a change after it makes a later hit re-check the key.
        let generation = policy.keys.generation();
        let candidates: Vec<Arc<VerifyKey>> =
            match policy.keys.lookup(header.kid.as_deref(), header.alg).await {
                Lookup::Found(k) => vec![k],
                Lookup::Candidates(c) => c,
                Lookup::Unknown => {
                    return Err(TokenError::UnknownKey {
                        issuer: iss,
                        kid: header.kid.clone(),
                        alg: format!("{:?}", header.alg),
                    })
                }
            };
        let validation = policy
            .validations
            .get(&header.alg)
            .ok_or_else(|| TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)))?;
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    let claims = data.claims;
                    self.check_claims(&claims, now)?;
                    return Ok(Signed {
                        issuer: iss,
                        claims,
                        keys: policy.keys.clone(),
                        generation,
                        key_fingerprint: key.fingerprint,
                    });
                }
                Err(e) => {
                    last = map_jwt_error(e.kind());
                    if last != TokenError::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), TokenError> {
        let exp = match claims.get("exp") {
            None | Some(Value::Null) => return Err(TokenError::MissingClaim("exp".into())),
            Some(v) => as_u64(v).ok_or_else(|| TokenError::BadClaim("exp".into()))?,
        };
        if exp.saturating_add(self.leeway) < now {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
            let nbf = as_u64(nbf).ok_or_else(|| TokenError::BadClaim("nbf".into()))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(iat) = claims.get("iat") {
            let iat = as_u64(iat).ok_or_else(|| TokenError::BadClaim("iat".into()))?;
            if iat > now.saturating_add(self.leeway) {
                return Err(TokenError::IssuedInFuture);
            }
        }
        for c in &self.required_claims {
            match claims.get(c) {
                None | Some(Value::Null) => return Err(TokenError::MissingClaim(c.clone())),
                _ => {}
            }
        }
        if let Some(sub) = claims.get("sub") {
            if !sub.is_string() {
                return Err(TokenError::BadClaim("sub".into()));
            }
        }
        Ok(())
    }
}

/// JOSE `typ` values are media types: compared case-insensitively, `application/` optional
/// (RFC 7515 §4.1.9).
fn same_media_type(a: &str, b: &str) -> bool {
    let strip = |s: &str| -> String {
        let s = s.trim().to_ascii_lowercase();
        s.strip_prefix("application/").map(str::to_string).unwrap_or(s)
    };
    strip(a) == strip(b)
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::BadAudience,
        ErrorKind::InvalidIssuer => TokenError::BadIssuer,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed("for this key".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devissuer::{DevIssuer, KeyAlg};
    use base64::Engine as _;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    const AUD: &str = "api://test";

    struct Fixture {
        dev: DevIssuer,
        verifier: Verifier,
    }

    async fn fixture(algs: &[KeyAlg], cache: usize) -> Fixture {
        let dev = DevIssuer::start(algs).await.unwrap();
        let verifier = dev
            .verifier(AUD, |cfg| {
                cfg.jwks_min_refetch_interval = Duration::from_millis(50);
                cfg.token_cache_size = cache;
            })
            .await
            .unwrap();
        Fixture { dev, verifier }
    }

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[tokio::test]
    async fn valid_tokens_of_each_key_type_verify() {
        let f = fixture(&[KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa], 100).await;
        for kid in f.dev.kids() {
            let key = f.dev.key(&kid).unwrap();
            let t = key.sign(Header::new(key.alg), &f.dev.claims_for("alice", AUD));
            let (id, how) = f.verifier.verify(&t).await.unwrap();
            assert_eq!(id.subject, "alice");
            assert_eq!(how, Verified::Fresh);
            let (_, how) = f.verifier.verify(&t).await.unwrap();
            assert_eq!(how, Verified::Cached);
        }
    }

    #[tokio::test]
    async fn claim_checks() {
        let f = fixture(&[KeyAlg::Rs256], 100).await;
        let now = jsonwebtoken::get_current_timestamp();
        let base = f.dev.claims_for("alice", AUD);
        let cases: Vec<(&str, Value, TokenError)> = vec![
            (
                "wrong iss",
                json!({"iss": "https://evil.example"}),
                TokenError::UntrustedIssuer("https://evil.example".into()),
            ),
            ("wrong aud", json!({"aud": "api://other"}), TokenError::BadAudience),
            ("missing aud", json!({"aud": null}), TokenError::BadAudience),
            ("expired", json!({"exp": now - 120}), TokenError::Expired),
            ("nbf ahead", json!({"nbf": now + 600}), TokenError::NotYetValid),
            ("iat ahead", json!({"iat": now + 600}), TokenError::IssuedInFuture),
            ("no sub", json!({"sub": null}), TokenError::MissingClaim("sub".into())),
            ("no exp", json!({"exp": null}), TokenError::MissingClaim("exp".into())),
        ];
        for (name, patch, want) in cases {
            let mut c = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            let got = f.verifier.verify(&f.dev.mint(&c)).await.unwrap_err();
            if name == "missing aud" {
                assert!(
                    matches!(got, TokenError::MissingClaim(_) | TokenError::BadAudience),
                    "{name}: {got:?}"
                );
            } else {
                assert_eq!(got, want, "{name}");
            }
        }
        // the audience may be a list containing ours
        let mut c = base.clone();
        c["aud"] = json!(["other", AUD]);
        assert!(f.verifier.verify(&f.dev.mint(&c)).await.is_ok());
    }

    #[tokio::test]
    async fn forged_headers_are_refused() {
        let f = fixture(&[KeyAlg::Rs256], 100).await;
        let claims = f.dev.claims_for("alice", AUD);
        let kid = f.dev.kids()[0].clone();
        let payload = b64(claims.to_string().as_bytes());

        // alg none
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), payload);
        assert!(matches!(f.verifier.verify(&none).await, Err(TokenError::Malformed(_))));

        // HS256 signed with the RSA public key as the secret
        let key = f.dev.key(&kid).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        let hs = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&key.public_bytes))
            .unwrap();
        assert_eq!(f.verifier.verify(&hs).await.unwrap_err().code(), "token_alg_not_allowed");

        // flipped signature byte
        let good = f.dev.mint(&claims);
        let (head, sig) = good.rsplit_once('.').unwrap();
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[10] ^= 1;
        let bad = format!("{head}.{}", b64(&raw));
        assert_eq!(f.verifier.verify(&bad).await.unwrap_err(), TokenError::BadSignature);

        // crit
        let mut h = Header::new(Algorithm::RS256);
        h.crit = Some(vec!["exp".into()]);
        let t = key.sign(h, &claims);
        assert!(matches!(f.verifier.verify(&t).await, Err(TokenError::UnsupportedCrit(_))));

        // attacker key advertised through jku and embedded jwk
        let attacker = crate::devissuer::DevKey::generate(KeyAlg::Rs256).unwrap();
        let mut h = Header::new(Algorithm::RS256);
        h.jku = Some("http://127.0.0.1:1/attacker-jwks".into());
        let t = attacker.sign(h, &claims);
        assert!(matches!(f.verifier.verify(&t).await, Err(TokenError::UnknownKey { .. })));
        let mut h = Header::new(Algorithm::RS256);
        h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
        h.kid = Some(kid.clone());
        let t = attacker.sign(h, &claims);
        assert_eq!(f.verifier.verify(&t).await.unwrap_err(), TokenError::BadSignature);

        // oversize and malformed
        assert_eq!(
            f.verifier.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).await.unwrap_err(),
            TokenError::TooLarge
        );
        assert!(matches!(f.verifier.verify("abc.d$f.ghi").await, Err(TokenError::Malformed(_))));
        assert!(matches!(f.verifier.verify("not-a-jwt").await, Err(TokenError::Malformed(_))));
    }

    #[tokio::test]
    async fn kidless_token_verifies_against_fitting_key() {
        let f = fixture(&[KeyAlg::Es256, KeyAlg::Rs256], 100).await;
        let kid = f.dev.kids()[1].clone();
        let key = f.dev.key(&kid).unwrap();
        let claims = f.dev.claims_for("bob", AUD);
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key.encoding).unwrap();
        assert_eq!(f.verifier.verify(&t).await.unwrap().0.subject, "bob");
    }

    #[tokio::test]
    async fn expiry_and_not_before_follow_the_clock_on_fresh_and_cached_paths() {
        let dev = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
        let clock = Clock::tokio();
        let v = dev.verifier(AUD, |_| {}).await.unwrap().with_clock(clock);
        let now = clock.now();
        let mut c = dev.claims_for("alice", AUD);
        c["exp"] = json!(now + 60);
        c["nbf"] = json!(now + 40);
        let t = dev.mint(&c);
        // nbf beyond the 30 s leeway: not yet
        assert_eq!(v.verify(&t).await.unwrap_err(), TokenError::NotYetValid);
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(v.verify(&t).await.unwrap().1, Verified::Fresh);
        assert_eq!(v.verify(&t).await.unwrap().1, Verified::Cached);
        // exp + leeway passed: refused from the cache too
        tokio::time::advance(Duration::from_secs(80)).await;
        assert_eq!(v.verify(&t).await.unwrap_err(), TokenError::Expired);
        assert_eq!(v.cache().len(), 0);
        // and a fresh copy of the same claims is refused as expired on the cold path
        let other = dev.verifier(AUD, |_| {}).await;
        tokio::time::resume();
        let other = other.unwrap().with_clock(clock);
        assert_eq!(other.verify(&t).await.unwrap_err(), TokenError::Expired);
    }

    #[tokio::test]
    async fn a_cached_token_fails_once_its_key_leaves_the_jwks_for_every_verifier() {
        let f = fixture(&[KeyAlg::Rs256, KeyAlg::Es256], 100).await;
        // a second verifier over the same key store (as ID-token checks will be)
        let cfg = BearerConfig::with_issuers(vec![crate::config::TrustedIssuer {
            issuer: f.dev.issuer(),
            audiences: vec![AUD.into()],
            jwks_url: None,
        }]);
        let mapper = IdentityMapper::new(crate::config::IdentityConfig::default());
        let second = Verifier::new(&cfg, f.verifier.keys().clone(), mapper);
        let t = f.dev.token_for("alice", AUD);
        for v in [&f.verifier, &second] {
            v.verify(&t).await.unwrap();
            assert_eq!(v.verify(&t).await.unwrap().1, Verified::Cached);
        }
        let kid = f.dev.kids()[0].clone();
        f.dev.remove_key(&kid);
        f.verifier.keys().issuers[0].refresh().await.unwrap();
        for v in [&f.verifier, &second] {
            assert!(matches!(v.verify(&t).await, Err(TokenError::UnknownKey { .. })));
            assert_eq!(v.cache().len(), 0);
        }
        // a token of a key that stayed keeps hitting after the change
        let es = f.dev.kids()[0].clone();
        let key = f.dev.key(&es).unwrap();
        let t2 = key.sign(Header::new(key.alg), &f.dev.claims_for("bob", AUD));
        f.verifier.verify(&t2).await.unwrap();
        f.dev.rotate(KeyAlg::EdDsa);
        f.verifier.keys().issuers[0].refresh().await.unwrap();
        assert_eq!(f.verifier.verify(&t2).await.unwrap().1, Verified::Cached);
    }

    #[tokio::test]
    async fn only_the_very_same_token_hits_the_cache() {
        let f = fixture(&[KeyAlg::Rs256], 100).await;
        let good = f.dev.token_for("alice", AUD);
        assert_eq!(f.verifier.verify(&good).await.unwrap().1, Verified::Fresh);
        assert_eq!(f.verifier.verify(&good).await.unwrap().1, Verified::Cached);
        // one byte of the signature flipped: a different token, verified (and refused) afresh
        let (head, sig) = good.rsplit_once('.').unwrap();
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[5] ^= 1;
        let forged = format!("{head}.{}", b64(&raw));
        assert_eq!(f.verifier.verify(&forged).await.unwrap_err(), TokenError::BadSignature);
        // a prefix or an extension of a cached token is not it either
        assert!(f.verifier.verify(&good[..good.len() - 1]).await.is_err());
        assert!(f.verifier.verify(&format!("{good}A")).await.is_err());
        assert_eq!(f.verifier.cache().len(), 1);
    }

    #[tokio::test]
    async fn a_token_cached_under_one_configuration_is_verified_afresh_under_the_next() {
        let f = fixture(&[KeyAlg::Rs256], 100).await;
        let shared = Arc::new(TokenCache::new(100));
        let cfg = |aud: &str| {
            BearerConfig::with_issuers(vec![crate::config::TrustedIssuer {
                issuer: f.dev.issuer(),
                audiences: vec![aud.into()],
                jwks_url: None,
            }])
        };
        let mapper = IdentityMapper::new(crate::config::IdentityConfig::default());
        let keys = f.verifier.keys().clone();
        let first =
            Verifier::new(&cfg(AUD), keys.clone(), mapper.clone()).with_cache(shared.clone(), 1);
        let t = f.dev.token_for("alice", AUD);
        first.verify(&t).await.unwrap();
        assert_eq!(first.verify(&t).await.unwrap().1, Verified::Cached);
        // the next configuration no longer accepts AUD: the cached entry is not its to use
        let next = Verifier::new(&cfg("api://other"), keys.clone(), mapper.clone())
            .with_cache(shared.clone(), 2);
        assert_eq!(next.verify(&t).await.unwrap_err(), TokenError::BadAudience);
        // with the same settings a new generation verifies afresh once, then hits
        let same = Verifier::new(&cfg(AUD), keys, mapper).with_cache(shared.clone(), 3);
        assert_eq!(same.verify(&t).await.unwrap().1, Verified::Fresh);
        assert_eq!(same.verify(&t).await.unwrap().1, Verified::Cached);
        assert_eq!(shared.len(), 1);
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let f = fixture(&[KeyAlg::EdDsa], 16).await;
        for i in 0..50 {
            let t = f.dev.token_for(&format!("user{i}"), AUD);
            f.verifier.verify(&t).await.unwrap();
            assert!(f.verifier.cache().len() <= 16);
        }
    }
}
