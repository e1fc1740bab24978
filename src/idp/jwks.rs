//! The JWKS cache: OIDC discovery, fetch, background refresh, a rate-limited single-flight
//! refetch for unknown `kid`s, and the last good keys kept while an issuer is unreachable.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::config::TrustedIssuer;

/// At most this many keys without a matching `kid` are tried for a token without `kid`.
pub const MAX_KIDLESS_CANDIDATES: usize = 4;

/// Which curve or key type a key is; an algorithm must fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

/// One verification key from an issuer's JWKS.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it names one: the token's `alg` must then equal it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// Stable identity of the key material (same key → same value across fetches).
    pub fingerprint: u64,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyKey {
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one issuer at one moment.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
}

/// The keys a token may be checked against.
#[derive(Debug)]
pub enum Lookup {
    /// The key named by `kid`.
    Found(Arc<VerifyKey>),
    /// Keys of a fitting type, for a token without `kid`.
    Candidates(Vec<Arc<VerifyKey>>),
    /// A `kid` that this issuer does not publish (or none that fits the `alg`).
    Unknown,
}

impl KeySet {
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.fits(alg))
                .map(|k| Lookup::Found(k.clone()))
                .unwrap_or(Lookup::Unknown),
            None => {
                let c: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|k| k.fits(alg))
                    .take(MAX_KIDLESS_CANDIDATES)
                    .cloned()
                    .collect();
                if c.is_empty() {
                    Lookup::Unknown
                } else {
                    Lookup::Candidates(c)
                }
            }
        }
    }

    pub fn has_fingerprint(&self, fp: u64) -> bool {
        self.keys.iter().any(|k| k.fingerprint == fp)
    }

    fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".into())).collect()
    }
}

pub use crate::idp::discovery::FetchError;
use crate::idp::discovery::ProviderMetadata;

/// Settings shared by every issuer's key cache.
#[derive(Debug, Clone)]
pub struct KeyCacheSettings {
    pub refresh_interval: Duration,
    pub min_refetch_interval: Duration,
    pub allow_http: bool,
}

impl KeyCacheSettings {
    pub fn new(bearer: &crate::config::BearerConfig, allow_http: bool) -> Self {
        Self {
            refresh_interval: bearer.jwks_refresh_interval,
            min_refetch_interval: bearer.jwks_min_refetch_interval,
            allow_http,
        }
    }
}

/// One issuer's keys and how to get them.
pub struct IssuerKeys {
    pub issuer: String,
    configured_jwks: Option<Url>,
    http: reqwest::Client,
    settings: KeyCacheSettings,
    current: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    /// Bumped each time the key set changes: users of the keys (cached verifications) compare
    /// it with the one they saw, and re-check their key only when it moved.
    generation: AtomicU64,
    /// The provider's metadata from the last discovery (none with a configured `jwks_url`).
    metadata: RwLock<Option<Arc<ProviderMetadata>>>,
    /// Serialises fetches (single flight) and remembers when the last one started.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// The last JWKS response's `Cache-Control: max-age`.
    max_age: std::sync::Mutex<Option<Duration>>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("issuer", &self.issuer).finish()
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The JWK members we read; unknown members are ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64len(s: &str) -> Option<usize> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .map(|v| v.iter().skip_while(|b| **b == 0).count())
}

/// Turns one JWK into a verification key, or says why it is skipped.
fn parse_jwk(value: serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: RawJwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if let Some(u) = &jwk.use_ {
        if u != "sig" {
            return Err(format!("use is {u:?}, not \"sig\""));
        }
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return Err("key_ops does not allow \"verify\"".into());
        }
    }
    let alg = match &jwk.alg {
        None => None,
        Some(a) => Some(
            a.parse::<Algorithm>()
                .map_err(|_| format!("alg {a:?} is not a signature algorithm we verify"))?,
        ),
    };
    let missing = |m: &str| format!("{} key without {m:?}", jwk.kty);
    let mut h = DefaultHasher::new();
    jwk.kid.hash(&mut h);
    jwk.kty.hash(&mut h);
    let (kind, key) = match jwk.kty.as_str() {
        "RSA" => {
            let n = jwk.n.as_deref().ok_or_else(|| missing("n"))?;
            let e = jwk.e.as_deref().ok_or_else(|| missing("e"))?;
            let bits = b64len(n).ok_or("n is not base64url")? * 8;
            if bits < 2048 {
                return Err(format!("RSA key of {bits} bits is too weak (at least 2048)"));
            }
            (n, e).hash(&mut h);
            let key = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
            (KeyKind::Rsa, key)
        }
        "EC" => {
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            let y = jwk.y.as_deref().ok_or_else(|| missing("y"))?;
            let (kind, len) = match jwk.crv.as_deref() {
                Some("P-256") => (KeyKind::EcP256, 32),
                Some("P-384") => (KeyKind::EcP384, 48),
                other => return Err(format!("EC curve {other:?} is not supported")),
            };
            if b64len(x).is_none_or(|l| l > len) || b64len(y).is_none_or(|l| l > len) {
                return Err("EC coordinates do not fit the curve".into());
            }
            (jwk.crv.as_deref(), x, y).hash(&mut h);
            let key = DecodingKey::from_ec_components(x, y).map_err(|e| e.to_string())?;
            (kind, key)
        }
        "OKP" => {
            let x = jwk.x.as_deref().ok_or_else(|| missing("x"))?;
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("OKP curve {:?} is not supported", jwk.crv));
            }
            if b64len(x).is_none_or(|l| l > 32) {
                return Err("Ed25519 key is not 32 bytes".into());
            }
            x.hash(&mut h);
            let key = DecodingKey::from_ed_components(x).map_err(|e| e.to_string())?;
            (KeyKind::Ed25519, key)
        }
        "oct" => return Err("symmetric keys are never used".into()),
        other => return Err(format!("key type {other:?} is not supported")),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err(format!("alg {a:?} does not fit a {} key", jwk.kty));
        }
    }
    Ok(VerifyKey { kid: jwk.kid, kind, alg, key, fingerprint: h.finish() })
}

/// Parses a JWKS document, skipping (and reporting) keys that cannot be used.
pub fn parse_jwks(body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let raw: RawJwks = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, v) in raw.keys.into_iter().enumerate() {
        let kid = v.get("kid").and_then(|k| k.as_str()).map(str::to_string);
        match parse_jwk(v) {
            Ok(k) => keys.push(Arc::new(k)),
            Err(why) => {
                skipped.push(format!("key {} ({}): {why}", i, kid.as_deref().unwrap_or("no kid")))
            }
        }
    }
    Ok((KeySet { keys }, skipped))
}

impl IssuerKeys {
    pub fn new(issuer: &TrustedIssuer, http: reqwest::Client, settings: KeyCacheSettings) -> Self {
        Self {
            issuer: issuer.issuer.clone(),
            configured_jwks: issuer.jwks_url.clone(),
            http,
            settings,
            current: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metadata: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
            max_age: std::sync::Mutex::new(None),
        }
    }

    /// The current keys (cheap: one read lock and a reference count).
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// True once a fetch has succeeded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Changes each time the key set does (a key added, removed or replaced).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The provider's metadata, once discovery has succeeded.
    pub fn metadata(&self) -> Option<Arc<ProviderMetadata>> {
        self.metadata.read().ok().and_then(|g| g.clone())
    }

    /// Looks a key up; on an unknown `kid`, refetches at most once per
    /// `min_refetch_interval`, with concurrent callers sharing that one fetch.
    pub async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let found = self.current().lookup(kid, alg);
        let Some(kid) = kid else { return found };
        if !matches!(found, Lookup::Unknown) {
            return found;
        }
        let mut last = self.fetch.lock().await;
        // Someone else may have fetched while we waited: look again first.
        let again = self.current().lookup(Some(kid), alg);
        if !matches!(again, Lookup::Unknown) {
            return again;
        }
        if last.is_some_and(|t| t.elapsed() < self.settings.min_refetch_interval) {
            tracing::debug!(issuer = %self.issuer, kid, "unknown kid; refetch rate-limited");
            return Lookup::Unknown;
        }
        tracing::info!(issuer = %self.issuer, kid, "unknown kid; refetching JWKS");
        *last = Some(Instant::now());
        if let Err(e) = self.fetch_and_store().await {
            tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refetch failed; keeping the last good keys");
        }
        drop(last);
        self.current().lookup(Some(kid), alg)
    }

    /// Fetches now (serialised with other fetches) and stores the keys.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let mut last = self.fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<usize, FetchError> {
        let (set, skipped, url) = self.fetch_keys().await?;
        for s in &skipped {
            tracing::debug!(issuer = %self.issuer, "JWKS {s}; skipped");
        }
        let n = set.keys.len();
        let old = self.current();
        let new_fps: Vec<u64> = set.keys.iter().map(|k| k.fingerprint).collect();
        let changed =
            old.keys.len() != n || old.keys.iter().any(|k| !new_fps.contains(&k.fingerprint));
        if changed || !self.is_loaded() {
            tracing::info!(issuer = %self.issuer, jwks = %url, keys = ?set.kids(), "JWKS loaded");
        }
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = set.clone(),
            Err(poisoned) => *poisoned.into_inner() = set.clone(),
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// Discovery (unless a JWKS URL is configured), then the JWKS.
    pub async fn fetch_keys(&self) -> Result<(KeySet, Vec<String>, Url), FetchError> {
        let url = match &self.configured_jwks {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let (body, max_age) = crate::idp::discovery::get_cached(&self.http, &url, "JWKS").await?;
        if let Ok(mut g) = self.max_age.lock() {
            *g = max_age;
        }
        let (set, skipped) = parse_jwks(&body).map_err(|detail| FetchError::Invalid {
            url: url.to_string(),
            what: "JWKS",
            detail,
        })?;
        if set.keys.is_empty() {
            if !skipped.is_empty() {
                tracing::warn!(issuer = %self.issuer, skipped = ?skipped, "no usable key in JWKS");
            }
            return Err(FetchError::NoKeys { url: url.to_string() });
        }
        Ok((set, skipped, url))
    }

    /// `issuer` without a trailing `/`, then `/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        crate::idp::discovery::discovery_url(&self.issuer)
    }

    async fn discover(&self) -> Result<Url, FetchError> {
        let meta =
            crate::idp::discovery::discover(&self.http, &self.issuer, self.settings.allow_http)
                .await?;
        let jwks = meta.jwks_uri.clone();
        if let Ok(mut g) = self.metadata.write() {
            *g = Some(Arc::new(meta));
        }
        Ok(jwks)
    }

    /// When to refresh next: the JWKS's `Cache-Control: max-age` within the configured bounds
    /// (no sooner than `jwks_min_refetch_interval`, no later than `jwks_refresh_interval`).
    pub fn next_refresh(&self) -> Duration {
        let max_age = self.max_age.lock().ok().and_then(|g| *g);
        refresh_after(max_age, self.settings.min_refetch_interval, self.settings.refresh_interval)
    }

    /// Loads the keys, retrying until it works, then refreshes every `refresh_interval`.
    /// Failures keep the last good keys and are logged.
    pub async fn maintain(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.refresh().await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, error = %e, retry_in = ?backoff, "could not load the issuer's keys");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2)
                        .min(self.settings.refresh_interval)
                        .min(Duration::from_secs(30));
                }
            }
        }
        loop {
            tokio::time::sleep(self.next_refresh()).await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping the last good keys");
            }
        }
    }
}

/// `max_age` clamped to `[min, max]`; `max` without one.
fn refresh_after(max_age: Option<Duration>, min: Duration, max: Duration) -> Duration {
    match max_age {
        Some(a) => a.clamp(min, max.max(min)),
        None => max,
    }
}

/// Every trusted issuer's key cache.
#[derive(Debug)]
pub struct KeyStore {
    pub issuers: Vec<Arc<IssuerKeys>>,
}

impl KeyStore {
    pub fn new(issuers: &[TrustedIssuer], settings: KeyCacheSettings) -> Self {
        let http = crate::idp::discovery::idp_client();
        Self {
            issuers: issuers
                .iter()
                .map(|i| Arc::new(IssuerKeys::new(i, http.clone(), settings.clone())))
                .collect(),
        }
    }

    /// The key cache of `issuer`, if it is trusted.
    pub fn issuer(&self, issuer: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.iter().find(|i| i.issuer == issuer)
    }

    pub fn all_loaded(&self) -> bool {
        self.issuers.iter().all(|i| i.is_loaded())
    }

    /// True once some issuer's keys are loaded: tokens can be checked at all.
    pub fn any_loaded(&self) -> bool {
        self.issuers.iter().any(|i| i.is_loaded())
    }

    /// Starts each issuer's background maintenance; the tasks end when the runtime does
    /// or when the returned handles are aborted.
    pub fn spawn_maintenance(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers.iter().map(|i| tokio::spawn(i.clone().maintain())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devissuer::{DevIssuer, KeyAlg};
    use crate::idp::discovery::idp_client;
    use serde_json::json;

    fn settings(min_refetch: Duration) -> KeyCacheSettings {
        KeyCacheSettings {
            refresh_interval: Duration::from_secs(3600),
            min_refetch_interval: min_refetch,
            allow_http: false,
        }
    }

    /// Moves tokio's clock forward without waiting (time runs normally again afterwards, so the
    /// HTTP client's timeouts behave).
    async fn skip(d: Duration) {
        tokio::time::pause();
        tokio::time::advance(d).await;
        tokio::time::resume();
    }

    fn trusted(dev: &DevIssuer) -> TrustedIssuer {
        TrustedIssuer { issuer: dev.issuer(), audiences: vec!["api".into()], jwks_url: None }
    }

    #[test]
    fn jwks_skips_unusable_keys() {
        let body = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "FOO"},
        ]});
        let (set, skipped) = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert!(set.keys.is_empty());
        assert_eq!(skipped.len(), 5, "{skipped:?}");
    }

    #[test]
    fn alg_must_fit_the_key_type() {
        assert!(KeyKind::Rsa.fits(Algorithm::PS384));
        assert!(!KeyKind::Rsa.fits(Algorithm::ES256));
        assert!(!KeyKind::Rsa.fits(Algorithm::HS256));
        assert!(!KeyKind::EcP256.fits(Algorithm::ES384));
        assert!(KeyKind::Ed25519.fits(Algorithm::EdDSA));
    }

    #[tokio::test]
    async fn discovery_then_jwks_loads_keys() {
        let dev = DevIssuer::start(&[KeyAlg::Rs256, KeyAlg::Es256]).await.unwrap();
        let keys = IssuerKeys::new(&trusted(&dev), idp_client(), settings(Duration::from_secs(30)));
        assert_eq!(keys.refresh().await.unwrap(), 2);
        assert!(keys.is_loaded());
        let kid = dev.kids()[0].clone();
        assert!(matches!(keys.lookup(Some(&kid), Algorithm::RS256).await, Lookup::Found(_)));
        // the right kid with an algorithm that does not fit its key is no match
        assert!(matches!(keys.current().lookup(Some(&kid), Algorithm::ES256), Lookup::Unknown));
    }

    #[tokio::test]
    async fn discovery_metadata_is_kept_and_a_change_bumps_the_generation() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let keys = IssuerKeys::new(&trusted(&dev), idp_client(), settings(Duration::from_secs(30)));
        assert!(keys.metadata().is_none());
        keys.refresh().await.unwrap();
        let meta = keys.metadata().unwrap();
        assert_eq!(meta.issuer, dev.issuer());
        assert_eq!(meta.token_endpoint.as_ref().map(|u| u.path()), Some("/token"));
        let g = keys.generation();
        keys.refresh().await.unwrap();
        assert_eq!(keys.generation(), g, "the same keys are no change");
        dev.rotate(KeyAlg::EdDsa);
        keys.refresh().await.unwrap();
        assert_eq!(keys.generation(), g + 1);
    }

    #[test]
    fn jwks_max_age_is_honoured_within_bounds() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(300));
        assert_eq!(refresh_after(None, min, max), max);
        assert_eq!(refresh_after(Some(Duration::from_secs(60)), min, max), Duration::from_secs(60));
        assert_eq!(refresh_after(Some(Duration::from_secs(5)), min, max), min);
        assert_eq!(refresh_after(Some(Duration::ZERO), min, max), min);
        assert_eq!(refresh_after(Some(Duration::from_secs(86400)), min, max), max);
    }

    #[tokio::test]
    async fn the_jwks_cache_control_sets_the_next_refresh() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let keys = IssuerKeys::new(&trusted(&dev), idp_client(), settings(Duration::from_secs(1)));
        keys.refresh().await.unwrap();
        assert_eq!(keys.next_refresh(), Duration::from_secs(3600), "no Cache-Control");
        dev.set_jwks_cache_control(Some("public, max-age=120"));
        keys.refresh().await.unwrap();
        assert_eq!(keys.next_refresh(), Duration::from_secs(120));
    }

    #[tokio::test]
    async fn discovered_issuer_must_match_exactly() {
        let dev = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
        let mut t = trusted(&dev);
        t.issuer.push('/');
        let keys = IssuerKeys::new(&t, idp_client(), settings(Duration::from_secs(30)));
        let err = keys.refresh().await.unwrap_err();
        assert!(matches!(err, FetchError::IssuerMismatch { .. }), "{err}");
        assert!(!keys.is_loaded());
    }

    #[tokio::test]
    async fn thousand_concurrent_unknown_kids_cause_one_fetch() {
        let dev = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
        let keys = Arc::new(IssuerKeys::new(
            &trusted(&dev),
            idp_client(),
            settings(Duration::from_secs(1)),
        ));
        keys.refresh().await.unwrap();
        // let the rate limit of the start-up fetch pass, so exactly one refetch is allowed (the
        // flood then has a whole second of rate limit, far more than it needs)
        skip(Duration::from_millis(1050)).await;
        let before = dev.jwks_fetches();
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                matches!(
                    keys.lookup(Some(&format!("attacker-{i}")), Algorithm::RS256).await,
                    Lookup::Unknown
                )
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(dev.jwks_fetches() - before, 1);
    }

    #[tokio::test]
    async fn new_kid_is_found_after_rotation_and_refetch_is_rate_limited() {
        let dev = DevIssuer::start(&[KeyAlg::EdDsa]).await.unwrap();
        let keys =
            IssuerKeys::new(&trusted(&dev), idp_client(), settings(Duration::from_millis(500)));
        keys.refresh().await.unwrap();
        // Ed25519: generating the key takes microseconds, well inside the interval
        let new_kid = dev.rotate(KeyAlg::EdDsa);
        // the last fetch was just now: rate-limited
        assert!(matches!(keys.lookup(Some(&new_kid), Algorithm::EdDSA).await, Lookup::Unknown));
        skip(Duration::from_millis(550)).await;
        assert!(matches!(keys.lookup(Some(&new_kid), Algorithm::EdDSA).await, Lookup::Found(_)));
    }

    #[tokio::test]
    async fn unreachable_issuer_keeps_last_good_keys() {
        let dev = DevIssuer::start(&[KeyAlg::Rs256]).await.unwrap();
        let keys =
            IssuerKeys::new(&trusted(&dev), idp_client(), settings(Duration::from_millis(10)));
        keys.refresh().await.unwrap();
        let kid = dev.kids()[0].clone();
        dev.set_down(true);
        assert!(keys.refresh().await.is_err());
        assert!(matches!(keys.lookup(Some(&kid), Algorithm::RS256).await, Lookup::Found(_)));
    }

    #[tokio::test]
    async fn kidless_token_gets_at_most_four_candidates_of_its_type() {
        let dev = DevIssuer::start(&[
            KeyAlg::Rs256,
            KeyAlg::Rs256,
            KeyAlg::Rs256,
            KeyAlg::Rs256,
            KeyAlg::Rs256,
            KeyAlg::Es256,
        ])
        .await
        .unwrap();
        let keys =
            IssuerKeys::new(&trusted(&dev), idp_client(), settings(Duration::from_millis(10)));
        keys.refresh().await.unwrap();
        let before = dev.jwks_fetches();
        match keys.lookup(None, Algorithm::RS256).await {
            Lookup::Candidates(c) => assert_eq!(c.len(), MAX_KIDLESS_CANDIDATES),
            other => panic!("{other:?}"),
        }
        match keys.lookup(None, Algorithm::ES256).await {
            Lookup::Candidates(c) => assert_eq!(c.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(keys.lookup(None, Algorithm::EdDSA).await, Lookup::Unknown));
        assert_eq!(dev.jwks_fetches(), before, "a kid-less token never causes a refetch");
    }
}
