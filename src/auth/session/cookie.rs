//! Sealed cookie sessions, the first [`SessionStore`]: the session is in the browser.
//! AES-256-GCM (aws-lc-rs) with a key derived (HKDF-SHA256) from
//! each 32-byte `session.secret`, the issuer, client id, cookie name and purpose bound in as
//! associated data (another app's cookie, made with the same secret, does not open here), split
//! into numbered chunks when large. Also the short-lived login-attempt cookies, and removing
//! every cookie of ours before a request reaches the app.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use base64::Engine as _;
use cookie::{Cookie, SameSite};

use crate::cookie_header::{fold_name, Pair};
use http::header::{self, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::flight::RefreshSlots;
use super::opened::{OpenedSessions, OPENED_SESSIONS};
use super::store::{
    Cleared, Loaded, Opened, Refreshed, Refresher, Save, SessionError, SessionIndex, SessionStore,
    StoreError,
};
use super::Session;
use crate::config::{LoginConfig, Secret};

/// Bytes of cookie value per chunk (browsers keep about 4096 bytes per cookie, name included).
pub const CHUNK_BYTES: usize = 3800;
/// The most chunks a session may take; a larger session is not stored (and logged).
pub const MAX_CHUNKS: usize = 6;
/// The most login attempts (tabs signing in at once) kept; the oldest is dropped.
pub const MAX_ATTEMPTS: usize = 5;
/// How long a login attempt may take, from start to callback.
pub const ATTEMPT_LIFETIME: Duration = Duration::from_secs(600);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const FORMAT_VERSION: u8 = 1;

/// Why a cookie gave no session (logged at debug; the browser just signs in again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("not base64url")]
    Encoding,
    #[error("too short or of an unknown format")]
    Format,
    #[error("does not decrypt with any session secret (tampered, truncated, swapped or foreign)")]
    Decrypt,
    #[error("decrypts but does not parse: {0}")]
    Parse(String),
    #[error("chunks missing or out of order")]
    Chunks,
}

/// Seals and opens cookie values.
pub struct Codec {
    /// One per secret; the first seals.
    keys: Vec<LessSafeKey>,
    /// `issuer`, client id and cookie name, bound into every value.
    context: String,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("keys", &self.keys.len()).finish()
    }
}

fn derive_key(secret: &Secret) -> anyhow::Result<LessSafeKey> {
    let ikm = crate::config::secret_bytes(secret.expose())
        .ok_or_else(|| anyhow::anyhow!("session secret is not base64"))?;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"portcullis session v1").extract(&ikm);
    let okm = prk
        .expand(&[b"aes-256-gcm cookie key"], &AES_256_GCM)
        .map_err(|_| anyhow::anyhow!("cannot derive the session key"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

impl Codec {
    pub fn new(
        secrets: &[Secret],
        issuer: &str,
        client_id: &str,
        cookie_name: &str,
    ) -> anyhow::Result<Self> {
        let keys = secrets.iter().map(derive_key).collect::<anyhow::Result<Vec<_>>>()?;
        if keys.is_empty() {
            anyhow::bail!("no session secret");
        }
        Ok(Self { keys, context: format!("{issuer}\n{client_id}\n{cookie_name}") })
    }

    fn aad(&self, purpose: &str) -> Vec<u8> {
        format!("portcullis\n{purpose}\n{}", self.context).into_bytes()
    }

    /// `plaintext` encrypted for `purpose`, as base64url.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // aws-lc's DRBG; a failure here means the process cannot make secrets at all.
        if aws_lc_rs::rand::fill(&mut nonce).is_err() {
            tracing::error!("no randomness for a cookie nonce");
        }
        let mut buf = plaintext.to_vec();
        let sealed = self.keys[0].seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.aad(purpose)),
            &mut buf,
        );
        if sealed.is_err() {
            tracing::error!("cookie encryption failed");
            return String::new();
        }
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        B64.encode(out)
    }

    /// The plaintext of a value sealed for `purpose` with any of the secrets.
    pub fn open(&self, purpose: &str, text: &str) -> Result<Vec<u8>, CookieError> {
        let raw = B64.decode(text.trim()).map_err(|_| CookieError::Encoding)?;
        if raw.len() < 1 + NONCE_LEN + aead::AES_256_GCM.tag_len() || raw[0] != FORMAT_VERSION {
            return Err(CookieError::Format);
        }
        let nonce: [u8; NONCE_LEN] =
            raw[1..1 + NONCE_LEN].try_into().map_err(|_| CookieError::Format)?;
        for key in &self.keys {
            let mut buf = raw[1 + NONCE_LEN..].to_vec();
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(purpose)),
                &mut buf,
            ) {
                return Ok(plain.to_vec());
            }
        }
        Err(CookieError::Decrypt)
    }

    pub fn seal_json<T: Serialize>(&self, purpose: &str, value: &T) -> String {
        match serde_json::to_vec(value) {
            Ok(v) => self.seal(purpose, &v),
            Err(_) => String::new(),
        }
    }

    pub fn open_json<T: for<'de> Deserialize<'de>>(
        &self,
        purpose: &str,
        text: &str,
    ) -> Result<T, CookieError> {
        let plain = self.open(purpose, text)?;
        serde_json::from_slice(&plain).map_err(|e| CookieError::Parse(e.to_string()))
    }
}

/// The last activity of a session, in its own small cookie: recorded as often as the idle
/// timeout needs without resealing the session's tokens each time (a reseal racing a refresh
/// could hand the browser a rotated-out refresh token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    /// The session it belongs to ([`Session::id`]); any other is ignored.
    pub id: String,
    pub seen: u64,
}

/// One login in progress (one browser tab), sealed into its own short-lived cookie.
#[derive(Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Where to go after login (already checked to be safe).
    pub rd: String,
    pub created: u64,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt").field("rd", &self.rd).field("created", &self.created).finish()
    }
}

/// The names and attributes of portcullis's cookies.
#[derive(Debug, Clone)]
pub struct Cookies {
    /// The session cookie's name, prefixed `__Host-` (or `__Secure-` with a domain) over https.
    pub name: String,
    /// The name as [`fold_name`] reads it, for stripping every spelling of our cookies.
    folded_base: Vec<u8>,
    secure: bool,
    domain: Option<String>,
}

/// `purpose` values bound into the encryption.
pub const SESSION: &str = "session";
pub const ATTEMPT: &str = "attempt";
pub const ACTIVITY: &str = "activity";

impl Cookies {
    pub fn new(cfg: &LoginConfig) -> Self {
        let secure = cfg.secure_cookies();
        let domain = cfg.session.cookie_domain.clone();
        let prefix = match (secure, &domain) {
            (true, None) => "__Host-",
            (true, Some(_)) => "__Secure-",
            (false, _) => "",
        };
        Self::named(format!("{prefix}{}", cfg.session.cookie_name), secure, domain)
    }

    fn named(name: String, secure: bool, domain: Option<String>) -> Self {
        Self { folded_base: fold_name(name.as_bytes()), name, secure, domain }
    }

    /// Whether a cookie the client sent could be taken for one of ours (the session, its
    /// chunks, login attempts, the activity cookie) by the app: its name in any spelling
    /// ([`fold_name`]), or a piece without `=` that is such a name.
    pub fn is_ours(&self, pair: &Pair<'_>) -> bool {
        if pair.name == self.name.as_bytes() {
            return true; // the usual case, without folding
        }
        let folded = fold_name(pair.name);
        let base = &self.folded_base;
        folded == *base
            || (folded.len() > base.len() && folded.starts_with(base) && folded[base.len()] == b'_')
    }

    fn chunk_name(&self, i: usize) -> String {
        format!("{}_{i}", self.name)
    }

    /// The name of the attempt cookie for `state`.
    pub fn attempt_name(&self, state: &str) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, state.as_bytes());
        let hex: String = d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}_login_{hex}", self.name)
    }

    fn cookie(&self, name: String, value: String, max_age: Option<Duration>) -> HeaderValue {
        let mut c = Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure);
        if let Some(d) = &self.domain {
            c = c.domain(d.clone());
        }
        if let Some(age) = max_age {
            c = c.max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
        }
        HeaderValue::from_str(&c.build().encoded().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn removal(&self, name: String) -> HeaderValue {
        self.cookie(name, String::new(), Some(Duration::ZERO))
    }

    /// `Set-Cookie` values storing the sealed session `value` for `max_age`, and clearing
    /// chunks the request had that the new value does not use. `None` when too large.
    pub fn set_session(
        &self,
        value: &str,
        max_age: Duration,
        request: &HeaderMap,
    ) -> Option<Vec<HeaderValue>> {
        let chunks: Vec<&str> = value
            .as_bytes()
            .chunks(CHUNK_BYTES)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        if chunks.len() > MAX_CHUNKS {
            return None;
        }
        let mut out = Vec::new();
        let mut written = Vec::new();
        if chunks.len() <= 1 {
            written.push(self.name.clone());
            out.push(self.cookie(self.name.clone(), value.to_string(), Some(max_age)));
        } else {
            for (i, c) in chunks.iter().enumerate() {
                written.push(self.chunk_name(i));
                out.push(self.cookie(self.chunk_name(i), c.to_string(), Some(max_age)));
            }
        }
        for name in self.session_names_in(request) {
            if !written.contains(&name) {
                out.push(self.removal(name));
            }
        }
        Some(out)
    }

    /// The activity cookie's name.
    pub fn activity_name(&self) -> String {
        format!("{}_seen", self.name)
    }

    /// The sealed activity value the request carries (exact raw name).
    pub fn activity_value(&self, request: &HeaderMap) -> Option<String> {
        self.activity_value_in(&request_cookies(request))
    }

    fn activity_value_in(&self, all: &[(&[u8], &[u8])]) -> Option<String> {
        let name = self.activity_name();
        all.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok().map(str::to_string))
    }

    /// The sealed session value and the sealed activity value, from one pass over the request's
    /// cookies (what [`Cookies::session_value`] and [`Cookies::activity_value`] say).
    pub fn session_and_activity(
        &self,
        request: &HeaderMap,
    ) -> (Option<Result<String, CookieError>>, Option<String>) {
        let all = request_cookies(request);
        (self.session_value_in(&all), self.activity_value_in(&all))
    }

    /// `Set-Cookie` storing the sealed activity `value` for `max_age`.
    pub fn set_activity(&self, value: String, max_age: Duration) -> HeaderValue {
        self.cookie(self.activity_name(), value, Some(max_age))
    }

    /// `Set-Cookie` values removing the session and every login attempt the request carries.
    pub fn clear_all(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        let mut names = self.session_names_in(request);
        names.extend(self.attempts_in(request).into_iter().map(|(n, _)| n));
        if self.activity_value(request).is_some() {
            names.push(self.activity_name());
        }
        if !names.contains(&self.name) {
            names.push(self.name.clone());
        }
        names.into_iter().map(|n| self.removal(n)).collect()
    }

    /// Whether the request carries a session cookie (the single one, or a first chunk): what
    /// [`Cookies::session_value`] would find something for, without joining or copying it.
    pub fn has_session(&self, request: &HeaderMap) -> bool {
        let first_chunk = self.chunk_name(0);
        crate::cookie_header::request_pairs(request).any(|p| {
            p.has_value && (p.name == self.name.as_bytes() || p.name == first_chunk.as_bytes())
        })
    }

    /// The sealed session value the request carries: the single cookie, or its chunks joined.
    /// Found by the exact raw name only: another spelling never opens a session.
    pub fn session_value(&self, request: &HeaderMap) -> Option<Result<String, CookieError>> {
        self.session_value_in(&request_cookies(request))
    }

    fn session_value_in(&self, all: &[(&[u8], &[u8])]) -> Option<Result<String, CookieError>> {
        let value = |name: &str| all.iter().find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| *v);
        if let Some(v) = value(&self.name) {
            return Some(
                std::str::from_utf8(v).map(str::to_string).map_err(|_| CookieError::Encoding),
            );
        }
        value(&self.chunk_name(0))?;
        let mut joined = String::new();
        for i in 0..MAX_CHUNKS {
            match value(&self.chunk_name(i)) {
                Some(v) => match std::str::from_utf8(v) {
                    Ok(v) => joined.push_str(v),
                    Err(_) => return Some(Err(CookieError::Encoding)),
                },
                None => break,
            }
        }
        if value(&self.chunk_name(MAX_CHUNKS)).is_some() {
            return Some(Err(CookieError::Chunks));
        }
        Some(Ok(joined))
    }

    /// The names of the session cookie and its chunks the request carries (exact raw names).
    fn session_names_in(&self, request: &HeaderMap) -> Vec<String> {
        request_cookies(request)
            .into_iter()
            .filter_map(|(n, _)| std::str::from_utf8(n).ok())
            .filter(|n| {
                *n == self.name
                    || n.strip_prefix(self.name.as_str())
                        .and_then(|r| r.strip_prefix('_'))
                        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(str::to_string)
            .collect()
    }

    /// The login-attempt cookies in a request: (name, value), by exact raw name.
    pub fn attempts_in(&self, request: &HeaderMap) -> Vec<(String, String)> {
        let prefix = format!("{}_login_", self.name);
        request_cookies(request)
            .into_iter()
            .filter(|(n, _)| n.starts_with(prefix.as_bytes()))
            .filter_map(|(n, v)| {
                Some((
                    std::str::from_utf8(n).ok()?.to_string(),
                    std::str::from_utf8(v).ok()?.to_string(),
                ))
            })
            .collect()
    }

    /// `Set-Cookie` for a new attempt, and removals of the oldest ones beyond
    /// [`MAX_ATTEMPTS`] (`existing` are the request's attempts with their creation times).
    pub fn set_attempt(
        &self,
        state: &str,
        sealed: String,
        mut existing: Vec<(String, u64)>,
    ) -> Vec<HeaderValue> {
        let mut out = vec![self.cookie(self.attempt_name(state), sealed, Some(ATTEMPT_LIFETIME))];
        existing.sort_by_key(|(_, created)| *created);
        let excess = (existing.len() + 1).saturating_sub(MAX_ATTEMPTS);
        for (name, _) in existing.into_iter().take(excess) {
            out.push(self.removal(name));
        }
        out
    }

    pub fn remove(&self, name: &str) -> HeaderValue {
        self.removal(name.to_string())
    }

    /// Removes every cookie the app could take for one of ours ([`Cookies::is_ours`]) from the
    /// request's `Cookie` header(s); the app's pass byte for byte.
    pub fn strip_from(&self, headers: &mut HeaderMap) {
        if headers.contains_key(header::COOKIE) {
            crate::cookie_header::strip(headers, |p| self.is_ours(p));
        }
    }
}

/// Our cookies: their names and attributes, and the codec sealing them. Shared by the cookie
/// store (sessions, activity) and the login (attempts).
#[derive(Debug)]
pub struct Jar {
    pub codec: Codec,
    pub cookies: Cookies,
}

impl Jar {
    pub fn new(cfg: &LoginConfig) -> anyhow::Result<Self> {
        let s = &cfg.session;
        let codec = Codec::new(&s.secrets, &cfg.issuer, &cfg.client_id, &s.cookie_name)?;
        Ok(Self { codec, cookies: Cookies::new(cfg) })
    }
}

/// Sessions sealed into the browser's cookies (chunked when large), activity in its own small
/// cookie. Refreshes run one per session at a time in this process; a refreshed session is a
/// new cookie (the session is the cookie). Sessions cannot be ended by an index: they are in
/// the browsers, and live until they expire (or their refresh token is revoked).
#[derive(Debug)]
pub struct CookieStore {
    jar: Arc<Jar>,
    refreshes: Arc<RefreshSlots>,
    /// Sessions opened, by their sealed value (see [`OpenedSessions`]).
    opened: OpenedSessions,
}

impl CookieStore {
    /// Sessions sealed with `jar`'s codec into its cookies, refreshed through `refreshes`.
    pub fn new(jar: Arc<Jar>, refreshes: Arc<RefreshSlots>) -> Self {
        Self { jar, refreshes, opened: OpenedSessions::new(OPENED_SESSIONS) }
    }

    /// How many opened sessions it keeps now (for tests).
    pub fn opened_len(&self) -> usize {
        self.opened.len()
    }

    fn load_now(&self, request: &HeaderMap) -> Option<Result<Loaded, SessionError>> {
        let (codec, cookies) = (&self.jar.codec, &self.jar.cookies);
        let (session, activity) = cookies.session_and_activity(request);
        let value = match session? {
            Ok(v) => v,
            Err(e) => return Some(Err(SessionError::Invalid(e.to_string()))),
        };
        let opened = match self.opened.get(value.as_bytes()) {
            Some(o) => o,
            None => {
                let session: Session = match codec.open_json(SESSION, &value) {
                    Ok(s) => s,
                    Err(e) => return Some(Err(format!("session cookie {e}").into())),
                };
                let opened = Arc::new(Opened::new(session));
                self.opened.insert(value.as_bytes(), opened.clone());
                opened
            }
        };
        let session = &opened.session;
        let recorded = activity
            .and_then(|v| codec.open_json::<Activity>(ACTIVITY, &v).ok())
            .filter(|a| a.id == session.id)
            .map_or(0, |a| a.seen);
        let last_seen = session.seen.max(recorded);
        Some(Ok(Loaded { opened, last_seen }))
    }

    fn save_now(
        &self,
        s: &Session,
        ttl: Duration,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, StoreError> {
        let sealed = self.jar.codec.seal_json(SESSION, s);
        self.jar.cookies.set_session(&sealed, ttl, request).ok_or_else(|| {
            tracing::warn!(bytes = sealed.len(), "session too large for its cookies; not stored");
            StoreError::TooLarge(sealed.len())
        })
    }
}

impl SessionStore for CookieStore {
    fn present(&self, request: &HeaderMap) -> bool {
        self.jar.cookies.has_session(request)
    }

    fn load<'a>(
        &'a self,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Option<Result<Loaded, SessionError>>> {
        Box::pin(std::future::ready(self.load_now(request)))
    }

    fn save<'a>(
        &'a self,
        session: &'a Session,
        _why: Save,
        ttl: Duration,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Vec<HeaderValue>, StoreError>> {
        Box::pin(std::future::ready(self.save_now(session, ttl, request)))
    }

    fn touch<'a>(
        &'a self,
        session: &'a Session,
        seen: u64,
        ttl: Duration,
        _request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Vec<HeaderValue>, StoreError>> {
        let activity = Activity { id: session.id.clone(), seen };
        let sealed = self.jar.codec.seal_json(ACTIVITY, &activity);
        Box::pin(std::future::ready(Ok(vec![self.jar.cookies.set_activity(sealed, ttl)])))
    }

    fn clear<'a>(&'a self, request: &'a HeaderMap) -> BoxFuture<'a, Cleared> {
        let set_cookie = self.jar.cookies.clear_all(request);
        Box::pin(std::future::ready(Cleared { set_cookie, ended: Ok(()) }))
    }

    /// One refresh per session at a time in the process; requests of that moment, and those
    /// arriving with the old cookie within [`REFRESH_GRACE`](super::flight::REFRESH_GRACE), get its outcome.
    fn refresh<'a>(
        &'a self,
        session: Session,
        refresher: &'a dyn Refresher,
        _request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<(Session, Refreshed), SessionError>> {
        Box::pin(async move {
            let run = || async {
                let refreshed = refresher.refresh(session.clone()).await;
                Ok((refreshed.map_err(SessionError::Invalid)?, Refreshed::Here))
            };
            self.refreshes.run(&session, run).await
        })
    }

    fn end<'a>(&'a self, _index: &'a SessionIndex) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::Unsupported(
            "end sessions by sid or sub: cookie sessions are kept by the browsers",
        ))))
    }

    fn strip(&self, headers: &mut HeaderMap) {
        self.jar.cookies.strip_from(headers)
    }
}

/// Every `name=value` cookie of the request's `Cookie` headers, as raw bytes (pieces without
/// `=` are not cookies of ours).
fn request_cookies(headers: &HeaderMap) -> Vec<(&[u8], &[u8])> {
    crate::cookie_header::request_pairs(headers)
        .filter(|p| p.has_value)
        .map(|p| (p.name, p.value))
        .collect()
}

/// 16 random bytes as base64url (ids, states, nonces: 128 bits).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        tracing::error!("no randomness");
    }
    B64.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(byte: u8) -> Secret {
        let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7).wrapping_add(byte)).collect();
        Secret::new(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    fn codec(secrets: &[Secret], client: &str) -> Codec {
        Codec::new(secrets, "https://idp", client, "_portcullis").unwrap()
    }

    #[test]
    fn sealed_values_open_only_where_they_were_made() {
        let c = codec(&[secret(1)], "app");
        let v = c.seal(SESSION, b"hello");
        assert_eq!(c.open(SESSION, &v).unwrap(), b"hello");
        // another purpose, another client, another secret: nothing
        assert_eq!(c.open(ATTEMPT, &v), Err(CookieError::Decrypt));
        assert_eq!(codec(&[secret(1)], "other-app").open(SESSION, &v), Err(CookieError::Decrypt));
        assert_eq!(codec(&[secret(2)], "app").open(SESSION, &v), Err(CookieError::Decrypt));
        // tampered and truncated
        let mut raw = B64.decode(&v).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(c.open(SESSION, &B64.encode(&raw)), Err(CookieError::Decrypt));
        assert!(c.open(SESSION, &v[..v.len() - 4]).is_err());
        assert!(c.open(SESSION, &v[..v.len() - 3]).is_err());
        assert_eq!(c.open(SESSION, "abc"), Err(CookieError::Format));
        assert_eq!(c.open(SESSION, "!!!"), Err(CookieError::Encoding));
        // two seals of the same value differ (fresh nonce)
        assert_ne!(c.seal(SESSION, b"hello"), v);
    }

    #[test]
    fn secret_rotation_first_seals_all_open() {
        let old = codec(&[secret(1)], "app");
        let v_old = old.seal(SESSION, b"x");
        let rotated = codec(&[secret(2), secret(1)], "app");
        assert_eq!(rotated.open(SESSION, &v_old).unwrap(), b"x");
        let v_new = rotated.seal(SESSION, b"y");
        assert_eq!(codec(&[secret(2)], "app").open(SESSION, &v_new).unwrap(), b"y");
        assert_eq!(old.open(SESSION, &v_new), Err(CookieError::Decrypt));
    }

    fn cookies() -> Cookies {
        Cookies::named("_portcullis".into(), false, None)
    }

    fn request_with(set_cookies: &[HeaderValue]) -> HeaderMap {
        // what a browser sends back: name=value of each cookie with a value
        let pairs: Vec<String> = set_cookies
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .filter(|p| !p.ends_with('='))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        h
    }

    #[test]
    fn large_sessions_are_chunked_and_read_back_and_stale_chunks_cleared() {
        let c = cookies();
        let codec = codec(&[secret(1)], "app");
        let big = "x".repeat(9000);
        let sealed = codec.seal(SESSION, big.as_bytes());
        let set = c.set_session(&sealed, Duration::from_secs(60), &HeaderMap::new()).unwrap();
        assert_eq!(set.len(), 4, "{set:?}");
        assert!(set.iter().all(|v| v.to_str().unwrap().contains("HttpOnly")));
        assert!(set.iter().all(|v| v.to_str().unwrap().contains("SameSite=Lax")));
        let req = request_with(&set);
        let back = c.session_value(&req).unwrap().unwrap();
        assert_eq!(codec.open(SESSION, &back).unwrap(), big.as_bytes());
        // a later small session clears the chunks
        let small = codec.seal(SESSION, b"small");
        let set2 = c.set_session(&small, Duration::from_secs(60), &req).unwrap();
        let cleared: Vec<_> =
            set2.iter().filter(|v| v.to_str().unwrap().contains("Max-Age=0")).collect();
        assert_eq!(cleared.len(), 4, "{set2:?}");
        // a missing middle chunk breaks the value, and it does not open
        let mut h = HeaderMap::new();
        let parts: Vec<String> = set
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{}; {}", parts[0], parts[2])).unwrap(),
        );
        let broken = c.session_value(&h).unwrap().unwrap();
        assert!(codec.open(SESSION, &broken).is_err());
        // swapped chunks do not open either
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "{}; {}; {}",
                parts[1].replacen("_1=", "_0=", 1),
                parts[0].replacen("_0=", "_1=", 1),
                parts[2]
            ))
            .unwrap(),
        );
        let swapped = c.session_value(&h).unwrap().unwrap();
        assert!(codec.open(SESSION, &swapped).is_err());
        // too large for the chunk cap
        let huge = "y".repeat(CHUNK_BYTES * MAX_CHUNKS + 1);
        assert!(c.set_session(&huge, Duration::from_secs(60), &HeaderMap::new()).is_none());
    }

    #[test]
    fn our_cookies_are_stripped_and_the_apps_kept() {
        let c = cookies();
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("app=1; _portcullis=abc; _portcullis_0=x"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("_portcullis_login_ab12=y; theme=dark"));
        h.append(header::COOKIE, HeaderValue::from_static("_portcullisx=keep"));
        c.strip_from(&mut h);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, vec!["app=1; theme=dark; _portcullisx=keep"]);
        let mut only_ours = HeaderMap::new();
        only_ours.insert(header::COOKIE, HeaderValue::from_static("_portcullis=abc"));
        c.strip_from(&mut only_ours);
        assert!(only_ours.get(header::COOKIE).is_none());
    }

    #[test]
    fn a_session_is_present_exactly_when_its_value_can_be_read() {
        let c = cookies();
        for cookie in [
            "_portcullis=abc",
            "_portcullis_0=a; _portcullis_1=b",
            "_portcullis_1=b",
            "_portcullis",
            "_Portcullis=abc",
            "x=1; _portcullis=",
            "_portcullis_seen=1",
            "%5Fportcullis=abc",
        ] {
            let h = request_with(&[]);
            let mut h = h;
            h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            assert_eq!(c.has_session(&h), c.session_value(&h).is_some(), "{cookie}");
        }
        assert!(!c.has_session(&HeaderMap::new()));
    }

    #[test]
    fn our_cookies_are_found_by_their_exact_name_beside_any_bytes() {
        let c = cookies();
        let req = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_bytes(v).unwrap());
            h
        };
        // a non-ASCII cookie of the app's does not hide the session or an attempt
        let h = req(b"name=Zo\xc3\xab; _portcullis=S1; _portcullis_login_ab=A");
        assert_eq!(c.session_value(&h), Some(Ok("S1".into())));
        assert_eq!(c.attempts_in(&h), vec![("_portcullis_login_ab".into(), "A".into())]);
        // another spelling of the name never opens a session
        for spelling in
            [&b"%5Fportcullis"[..], b"_Portcullis", b" _portcullis_x", b"_portcullis_0x"]
        {
            let mut v = spelling.to_vec();
            v.extend_from_slice(b"=S2");
            assert_eq!(c.session_value(&req(&v)), None, "{}", String::from_utf8_lossy(spelling));
        }
        let secure = Cookies::named("__Host-_portcullis".into(), true, None);
        assert_eq!(secure.session_value(&req(b"%5F%5FHost-_portcullis=S3")), None);
        assert_eq!(secure.session_value(&req(b"_portcullis=S3")), None);
        assert_eq!(secure.session_value(&req(b"__Host-_portcullis=S3")), Some(Ok("S3".into())));
    }

    #[test]
    fn every_spelling_of_our_cookies_is_stripped() {
        let c = Cookies::named("__Host-_portcullis".into(), true, None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(
                b"a=1; __Host-_portcullis=S; %5F%5FHost-_portcullis=S; %5Fportcullis=S; \
                  __host-_PORTCULLIS_0=S; .portcullis=S; _portcullis_login_x=S; _portcullis; \
                  name=Zo\xc3\xab; _portcullisx=keep; b=2",
            )
            .unwrap(),
        );
        c.strip_from(&mut h);
        assert_eq!(
            h.get(header::COOKIE).unwrap().as_bytes(),
            b"a=1; name=Zo\xc3\xab; _portcullisx=keep; b=2"
        );
    }

    #[test]
    fn at_most_five_attempts_are_kept_oldest_dropped() {
        let c = cookies();
        let existing: Vec<(String, u64)> =
            (0..5).map(|i| (format!("_portcullis_login_{i}"), 100 + i as u64)).collect();
        let out = c.set_attempt("state", "sealed".into(), existing);
        let removed: Vec<_> = out
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .filter(|v| v.contains("Max-Age=0"))
            .collect();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].starts_with("_portcullis_login_0="), "{removed:?}");
    }

    #[test]
    fn secure_names_over_https() {
        let mut cfg = crate::config::load_str(
            r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:1"
[oidc]
issuer = "https://idp.example.com"
client_id = "web"
redirect_url = "https://app.example.com/oauth2/callback"
[bearer]
audiences = ["api"]
[session]
secret = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
"#,
            std::iter::empty(),
        )
        .unwrap()
        .config
        .login
        .unwrap();
        let c = Cookies::new(&cfg);
        assert_eq!(c.name, "__Host-_portcullis");
        let v = c.set_session("v", Duration::from_secs(5), &HeaderMap::new()).unwrap();
        let v = v[0].to_str().unwrap();
        assert!(v.contains("Secure") && v.contains("Path=/") && !v.contains("Domain"), "{v}");
        cfg.session.cookie_domain = Some("example.com".into());
        let c = Cookies::new(&cfg);
        assert_eq!(c.name, "__Secure-_portcullis");
        let _ = json!({});
    }
}
