//! Sessions kept in Redis (`session.store = "redis"`): the browser holds only a ticket, so a
//! session can be ended on every replica at once (sign-out deletes it), refreshed once across
//! all of them, and can carry tokens that would outgrow a cookie.
//!
//! - **The ticket** is 16 random bytes naming the session, 32 random bytes of a key that
//!   encrypts it, and its sign-in time, sealed with the session secrets and the same context
//!   binding as cookie sessions (another app's ticket does not open here). A new ticket at
//!   every sign-in; the same one across refreshes, so a refresh sets no cookie.
//! - **The stored value** is the session encrypted with the ticket's key (AES-256-GCM, the key
//!   name bound in), after a 16-byte fingerprint of its refresh token (HMAC-SHA256 under the
//!   same key) for compare-and-set. A dump of Redis alone opens nothing, and holds no token.
//! - **One round trip per request**: `GETEX` reads the session and slides its expiry to
//!   min(sign-in + `max_lifetime`, now + `idle_timeout`). Nothing is cached that a sign-out
//!   elsewhere could not end: what is kept is the decryption of a value just read, keyed by
//!   that value and the ticket.
//! - **One refresh across replicas**: in this process the requests of a session share one
//!   refresh ([`RefreshSlots`]); across replicas a lock next to the session (the same hash
//!   tag), taken with `SET NX PX` under a random owner, renewed while the refresh is in flight
//!   (at most [`REFRESH_BUDGET`]) and renewed or released only by its owner (one script each).
//!   The refreshed session is written only if the stored one still has the refresh token that
//!   was used (one script), so a replica whose lock lapsed cannot overwrite a newer refresh.
//!   The others wait for the new value and use it. A failed refresh ends the session only
//!   after re-reading it: another replica may have won.
//! - **Redis unreachable**: every command is bounded (`session.redis_timeout`); a session that
//!   cannot be read is [`SessionError::Unavailable`] (`503`), never a pass; the connection is
//!   made again by itself when Redis is back.
//! - **Connections**: one multiplexed connection per worker, made on the worker's runtime the
//!   first time it needs one (commands never cross threads; start-up does not wait for Redis).

use std::sync::{Arc, Mutex, RwLock};
use std::thread::ThreadId;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use futures_util::future::BoxFuture;
use http::header::{HeaderMap, HeaderValue};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::cookie::Jar;
use super::flight::RefreshSlots;
use super::opened::{Kept, OPENED_SESSIONS};
use super::store::{
    Cleared, Loaded, Opened, Refreshed, Refresher, Save, SessionError, SessionIndex, SessionStore,
    StoreError,
};
use super::{Lifetimes, Session};
use crate::clock::Clock;
use crate::config::{RedisConfig, REFRESH_BUDGET};

/// The purpose a ticket is sealed for (a session cookie of the cookie store does not open as a
/// ticket, nor the other way round).
pub const TICKET: &str = "ticket";

const ID_LEN: usize = 16;
const KEY_LEN: usize = 32;
const TICKET_LEN: usize = ID_LEN + KEY_LEN + 8;
/// The refresh token's fingerprint before the encrypted session.
const FP_LEN: usize = 16;

/// What the browser's cookie holds (sealed): which session, the key that opens it, and when it
/// was signed in (for the expiry `GETEX` sets without reading the session first).
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    id: [u8; ID_LEN],
    key: [u8; KEY_LEN],
    created: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("created", &self.created).finish_non_exhaustive()
    }
}

impl Ticket {
    /// A new ticket: a new id and key from the system's randomness.
    pub fn new(created: u64) -> Result<Self, StoreError> {
        let mut id = [0u8; ID_LEN];
        let mut key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut id)
            .and_then(|_| aws_lc_rs::rand::fill(&mut key))
            .map_err(|_| StoreError::Unavailable("no randomness for a session ticket".into()))?;
        Ok(Self { id, key, created })
    }

    fn to_bytes(&self) -> [u8; TICKET_LEN] {
        let mut b = [0u8; TICKET_LEN];
        b[..ID_LEN].copy_from_slice(&self.id);
        b[ID_LEN..ID_LEN + KEY_LEN].copy_from_slice(&self.key);
        b[ID_LEN + KEY_LEN..].copy_from_slice(&self.created.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != TICKET_LEN {
            return None;
        }
        Some(Self {
            id: b[..ID_LEN].try_into().ok()?,
            key: b[ID_LEN..ID_LEN + KEY_LEN].try_into().ok()?,
            created: u64::from_be_bytes(b[ID_LEN + KEY_LEN..].try_into().ok()?),
        })
    }

    /// The ticket sealed for the cookie.
    pub fn seal(&self, jar: &Jar) -> String {
        jar.codec.seal(TICKET, &self.to_bytes())
    }

    /// The ticket in a cookie value: `None` when it was tampered with, truncated, or sealed
    /// for something else.
    pub fn open(jar: &Jar, value: &str) -> Result<Self, String> {
        let plain = jar.codec.open(TICKET, value).map_err(|e| format!("session ticket {e}"))?;
        Self::from_bytes(&plain).ok_or_else(|| "session ticket of the wrong length".to_string())
    }

    /// The id in hex, appended to `out`.
    fn push_hex_id(&self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in self.id {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }

    /// The fingerprint of a refresh token under this session's key (none: of the empty one).
    fn fingerprint(&self, refresh_token: Option<&str>) -> [u8; FP_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        let tag = hmac::sign(&key, format!("refresh\n{}", refresh_token.unwrap_or("")).as_bytes());
        let mut fp = [0u8; FP_LEN];
        fp.copy_from_slice(&tag.as_ref()[..FP_LEN]);
        fp
    }

    fn aead(&self) -> Result<LessSafeKey, String> {
        UnboundKey::new(&AES_256_GCM, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| "session key unusable".to_string())
    }

    /// `session` as stored under `key_name`: the fingerprint, a nonce, the ciphertext.
    pub fn seal_session(&self, key_name: &str, session: &Session) -> Result<Vec<u8>, String> {
        let mut buf = serde_json::to_vec(session).map_err(|e| format!("session JSON: {e}"))?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for a nonce".to_string())?;
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_name)),
                &mut buf,
            )
            .map_err(|_| "session encryption failed".to_string())?;
        let mut out = Vec::with_capacity(FP_LEN + NONCE_LEN + buf.len());
        out.extend_from_slice(&self.fingerprint(session.refresh_token.as_deref()));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// The session a stored value holds, if this ticket opens it.
    pub fn open_session(&self, key_name: &str, value: &[u8]) -> Result<Session, String> {
        if value.len() < FP_LEN + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err("stored session too short".into());
        }
        let nonce: [u8; NONCE_LEN] = value[FP_LEN..FP_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| "stored session too short".to_string())?;
        let mut buf = value[FP_LEN + NONCE_LEN..].to_vec();
        let plain = self
            .aead()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad(key_name)), &mut buf)
            .map_err(|_| "stored session does not open with its ticket".to_string())?;
        serde_json::from_slice(plain).map_err(|e| format!("stored session does not parse: {e}"))
    }
}

fn aad(key_name: &str) -> Vec<u8> {
    format!("portcullis redis session v1\n{key_name}").into_bytes()
}

/// When a session's entry expires if it is not used again: the end of its `max_lifetime`, or
/// `idle_timeout` after `now`, whichever comes first (seconds since the epoch).
pub fn expires_at(created: u64, now: u64, lifetimes: &Lifetimes) -> u64 {
    (created + lifetimes.max_lifetime.as_secs()).min(now + lifetimes.idle_timeout.as_secs())
}

/// Renews the lock for its owner only (`PEXPIRE`): 1 if it still was the owner's.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Releases the lock for its owner only: 1 if it still was the owner's.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Writes the refreshed session (keeping its expiry) only if the stored one still has the
/// refresh token that was used, then releases the lock if it is still the owner's: 1 if
/// written, 0 if another refresh got there first, -1 if the session is gone.
const COMPARE_AND_SET: &str = r"local v = redis.call('GET', KEYS[1])
local written = -1
if v then
  if string.sub(v, 1, 16) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    written = 1
  else
    written = 0
  end
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return written";

/// How often a waiting replica looks for the refreshed session.
const WAIT_POLL: Duration = Duration::from_millis(25);

/// Connections, commands and scripts: the Redis side of the store, usable on its own (the
/// tests drive the lock through it).
pub struct Redis {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// One connection per worker thread (each worker has its own runtime).
    connections: RwLock<Vec<(ThreadId, ConnectionManager)>>,
    timeout: Duration,
    prefix: String,
    renew: redis::Script,
    release: redis::Script,
    compare_and_set: redis::Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Redis {
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<Self> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.url.expose().as_str())
            .map_err(|e| anyhow::anyhow!("session.redis_url: {}", e.category()))?;
        if let Some(p) = &cfg.password {
            let settings = info.redis_settings().clone().set_password(p.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &cfg.ca_pem {
            Some(pem) if cfg.url.is_tls() => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
            ),
            _ => redis::Client::open(info),
        }
        .map_err(|e| anyhow::anyhow!("session.redis_url: {}", e.category()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            // Each command is bounded by one timer of ours (connecting included); a second one
            // in the client cost about 700 instructions per request (two timer entries).
            .set_response_timeout(None)
            // a command during an outage fails at once; the next one tries again
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            client,
            config,
            connections: RwLock::new(Vec::new()),
            timeout: cfg.timeout + cfg.connect_timeout,
            prefix: cfg.key_prefix.clone(),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            compare_and_set: redis::Script::new(COMPARE_AND_SET),
        })
    }

    /// The session's key and its lock's, under one hash tag (one Cluster slot).
    pub fn keys(&self, ticket: &Ticket) -> (String, String) {
        let mut key = String::with_capacity(self.prefix.len() + 10 + 2 * ID_LEN);
        key.push_str(&self.prefix);
        key.push_str("session:{");
        ticket.push_hex_id(&mut key);
        key.push('}');
        let lock = format!("{key}:lock");
        (key, lock)
    }

    /// This worker's connection, made (lazily: it connects on first use) on its runtime.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let me = std::thread::current().id();
        if let Ok(c) = self.connections.read() {
            if let Some((_, conn)) = c.iter().find(|(t, _)| *t == me) {
                return Ok(conn.clone());
            }
        }
        let conn =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                .map_err(unavailable)?;
        if let Ok(mut c) = self.connections.write() {
            c.push((me, conn.clone()));
        }
        Ok(conn)
    }

    /// Runs `cmd`, bounded by the command timeout (and the connect timeout, for a reconnect).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection()?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(redis_error(&e))),
            Err(_) => Err(StoreError::Unavailable("Redis did not answer in time".into())),
        }
    }

    async fn script(&self, inv: &redis::ScriptInvocation<'_>) -> Result<i64, StoreError> {
        let mut conn = self.connection()?;
        match tokio::time::timeout(self.timeout, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(redis_error(&e))),
            Err(_) => Err(StoreError::Unavailable("Redis did not answer in time".into())),
        }
    }

    /// Whether Redis answers (`portcullis check`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("PING answered {pong:?}")))
        }
    }

    /// The stored value, its expiry slid to `expire_at` in the same round trip.
    pub async fn get_and_slide(
        &self,
        key: &str,
        expire_at: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GETEX").arg(key).arg("EXAT").arg(expire_at)).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub async fn set(&self, key: &str, value: &[u8], expire_at: u64) -> Result<(), StoreError> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("EXAT").arg(expire_at)).await
    }

    pub async fn delete(&self, keys: &[&str]) -> Result<u64, StoreError> {
        self.query(redis::cmd("DEL").arg(keys)).await
    }

    /// Takes the lock for `owner` for `lease` if nobody holds it.
    pub async fn lock(&self, lock: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(lock)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease.as_millis() as u64),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Renews the lock for another `lease`, if `owner` still holds it.
    pub async fn renew(
        &self,
        lock: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let n = self.script(self.renew.key(lock).arg(owner).arg(lease.as_millis() as u64)).await?;
        Ok(n == 1)
    }

    /// Releases the lock, if `owner` still holds it.
    pub async fn unlock(&self, lock: &str, owner: &str) -> Result<bool, StoreError> {
        Ok(self.script(self.release.key(lock).arg(owner)).await? == 1)
    }

    /// Writes `value` over the session at `key` only if it still starts with `expected` (the
    /// fingerprint of the refresh token that was used); releases the lock for `owner`.
    pub async fn compare_and_set(
        &self,
        key: &str,
        lock: &str,
        expected: &[u8],
        value: &[u8],
        owner: &str,
    ) -> Result<Cas, StoreError> {
        let n = self
            .script(self.compare_and_set.key(key).key(lock).arg(expected).arg(value).arg(owner))
            .await?;
        Ok(match n {
            1 => Cas::Written,
            0 => Cas::Changed,
            _ => Cas::Gone,
        })
    }
}

/// What [`Redis::compare_and_set`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    Written,
    /// Another refresh wrote first.
    Changed,
    /// The session was ended (signed out, or expired).
    Gone,
}

/// A Redis error for the log: its kind and what it says, never the command's arguments.
fn redis_error(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "Redis did not answer in time".into()
    } else if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
        format!("cannot reach Redis ({})", e.category())
    } else {
        // the server's own words (NOAUTH, WRONGPASS, READONLY, ...), never our arguments
        format!(
            "Redis answered an error: {} {}",
            e.code().unwrap_or(e.category()),
            e.detail().unwrap_or("")
        )
    }
}

/// A ticket opened from a cookie, its keys, and the session it last opened (by the stored value).
struct OpenTicket {
    ticket: Ticket,
    key: String,
    lock: String,
    last: Mutex<Option<Decrypted>>,
}

/// A stored value and the session it decrypted to.
type Decrypted = (Box<[u8]>, Arc<Opened>);

impl std::fmt::Debug for OpenTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTicket").field("key", &self.key).finish_non_exhaustive()
    }
}

/// Sessions in Redis, the browser holding a ticket (see the module's documentation).
#[derive(Debug)]
pub struct RedisStore {
    jar: Arc<Jar>,
    redis: Arc<Redis>,
    lifetimes: Lifetimes,
    lease: Duration,
    clock: Clock,
    refreshes: Arc<RefreshSlots>,
    /// Tickets opened, by the cookie's value, each with the session it last decrypted (by the
    /// whole stored value): never instead of reading Redis.
    tickets: Kept<Arc<OpenTicket>>,
}

impl RedisStore {
    pub fn new(
        jar: Arc<Jar>,
        redis: Arc<Redis>,
        cfg: &RedisConfig,
        lifetimes: Lifetimes,
        clock: Clock,
        refreshes: Arc<RefreshSlots>,
    ) -> Self {
        Self {
            jar,
            redis,
            lifetimes,
            lease: cfg.lock_lease,
            clock,
            refreshes,
            tickets: Kept::new(OPENED_SESSIONS),
        }
    }

    /// The request's ticket: `None` without a session cookie.
    fn ticket(&self, request: &HeaderMap) -> Option<Result<Arc<OpenTicket>, String>> {
        let value = match self.jar.cookies.session_value(request)? {
            Ok(v) => v,
            Err(e) => return Some(Err(format!("session cookie {e}"))),
        };
        if let Some(t) = self.tickets.get(value.as_bytes()) {
            return Some(Ok(t));
        }
        let ticket = match Ticket::open(&self.jar, &value) {
            Ok(t) => t,
            Err(why) => return Some(Err(why)),
        };
        let (key, lock) = self.redis.keys(&ticket);
        let open = Arc::new(OpenTicket { ticket, key, lock, last: Mutex::new(None) });
        self.tickets.insert(value.as_bytes(), open.clone());
        Some(Ok(open))
    }

    /// The session a stored value holds: decrypted again only when the value changed.
    fn open(&self, t: &OpenTicket, value: &[u8]) -> Result<Arc<Opened>, String> {
        if let Ok(last) = t.last.lock() {
            if let Some((_, o)) = last.as_ref().filter(|(v, _)| **v == *value) {
                return Ok(o.clone());
            }
        }
        let opened = Arc::new(Opened::new(t.ticket.open_session(&t.key, value)?));
        if let Ok(mut last) = t.last.lock() {
            *last = Some((value.into(), opened.clone()));
        }
        Ok(opened)
    }

    async fn load_now(&self, request: &HeaderMap) -> Option<Result<Loaded, SessionError>> {
        let t = match self.ticket(request)? {
            Ok(t) => t,
            Err(why) => return Some(Err(SessionError::Invalid(why))),
        };
        let now = self.clock.now();
        let at = expires_at(t.ticket.created, now, &self.lifetimes);
        if at <= now {
            return Some(Err(SessionError::Invalid("session reached session.max_lifetime".into())));
        }
        Some(match self.redis.get_and_slide(&t.key, at).await {
            Err(e) => Err(e.into()),
            Ok(None) => Err(SessionError::Invalid(
                "session ended (signed out, idle or expired) in Redis".into(),
            )),
            Ok(Some(value)) => match self.open(&t, &value) {
                // Redis keeps idle time: the entry exists, so it was used within it.
                Ok(opened) => Ok(Loaded { opened, last_seen: now }),
                Err(why) => Err(SessionError::Invalid(why)),
            },
        })
    }

    async fn save_new(
        &self,
        session: &Session,
        ttl: Duration,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, StoreError> {
        let ticket = Ticket::new(session.created)?;
        let (key, _) = self.redis.keys(&ticket);
        let value = ticket.seal_session(&key, session).map_err(StoreError::Unavailable)?;
        let at = expires_at(session.created, self.clock.now(), &self.lifetimes);
        self.redis.set(&key, &value, at).await?;
        let sealed = ticket.seal(&self.jar);
        self.jar
            .cookies
            .set_session(&sealed, ttl, request)
            .ok_or(StoreError::TooLarge(sealed.len()))
    }

    /// The session as stored now, when its refresh token is no longer `old`: another refresh
    /// won. `Ok(None)` when it still has `old`.
    async fn newer(
        &self,
        t: &OpenTicket,
        old: &[u8; FP_LEN],
    ) -> Result<Option<Session>, SessionError> {
        match self.redis.get(&t.key).await? {
            None => Err(SessionError::Invalid("session ended during its refresh".into())),
            Some(v) if v.get(..FP_LEN) == Some(&old[..]) => Ok(None),
            Some(v) => {
                let opened = self.open(t, &v).map_err(SessionError::Invalid)?;
                Ok(Some(Session::clone(&opened.session)))
            }
        }
    }

    /// The refresh across replicas: the lock's owner refreshes, the others wait for its
    /// result (or take the lock over when it lapses without one).
    async fn refresh_across(
        &self,
        t: &OpenTicket,
        session: Session,
        refresher: &dyn Refresher,
    ) -> Result<(Session, Refreshed), SessionError> {
        let old = t.ticket.fingerprint(session.refresh_token.as_deref());
        let owner = super::random_token();
        let deadline = tokio::time::Instant::now() + REFRESH_BUDGET + self.lease * 2;
        loop {
            if self.redis.lock(&t.lock, &owner, self.lease).await? {
                return self.refresh_owned(t, session, refresher, &old, &owner).await;
            }
            // Another replica refreshes: wait for its session.
            tokio::time::sleep(WAIT_POLL).await;
            if let Some(s) = self.newer(t, &old).await? {
                return Ok((s, Refreshed::Shared));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SessionError::Unavailable(
                    "another replica's refresh of this session did not finish in time".into(),
                ));
            }
        }
    }

    async fn refresh_owned(
        &self,
        t: &OpenTicket,
        session: Session,
        refresher: &dyn Refresher,
        old: &[u8; FP_LEN],
        owner: &str,
    ) -> Result<(Session, Refreshed), SessionError> {
        let (key, lock) = (t.key.as_str(), t.lock.as_str());
        // Another replica may have refreshed between this request's read and the lock.
        match self.newer(t, old).await {
            Ok(None) => {}
            other => {
                let _ = self.redis.unlock(lock, owner).await;
                return match other {
                    Ok(Some(s)) => Ok((s, Refreshed::Shared)),
                    Ok(None) => Err(SessionError::Invalid("session unchanged".into())),
                    Err(e) => Err(e),
                };
            }
        }
        let outcome = {
            let refresh = refresher.refresh(session);
            tokio::pin!(refresh);
            let budget = tokio::time::sleep(REFRESH_BUDGET);
            tokio::pin!(budget);
            let mut renew = tokio::time::interval(self.lease / 3);
            renew.tick().await; // the first tick is now
            loop {
                tokio::select! {
                    r = &mut refresh => break Some(r),
                    _ = &mut budget => break None,
                    _ = renew.tick() => {
                        match self.redis.renew(lock, owner, self.lease).await {
                            Ok(true) => {}
                            // the compare-and-set still keeps a newer refresh from being overwritten
                            Ok(false) => tracing::warn!("the refresh lock lapsed during the refresh"),
                            Err(e) => tracing::warn!(error = %e, "the refresh lock could not be renewed"),
                        }
                    }
                }
            }
        };
        match outcome {
            Some(Ok(refreshed)) => {
                let value =
                    t.ticket.seal_session(key, &refreshed).map_err(SessionError::Invalid)?;
                match self.redis.compare_and_set(key, lock, old, &value, owner).await? {
                    Cas::Written => Ok((refreshed, Refreshed::Here)),
                    Cas::Gone => {
                        Err(SessionError::Invalid("session ended during its refresh".into()))
                    }
                    Cas::Changed => match self.newer(t, old).await? {
                        Some(s) => Ok((s, Refreshed::Shared)),
                        None => {
                            Err(SessionError::Invalid("session changed during its refresh".into()))
                        }
                    },
                }
            }
            failed => {
                let _ = self.redis.unlock(lock, owner).await;
                let why = match failed {
                    Some(Err(why)) => why,
                    _ => "the refresh took longer than its budget".to_string(),
                };
                // `invalid_grant` may only mean that another replica redeemed it first.
                match self.newer(t, old).await? {
                    Some(s) => Ok((s, Refreshed::Shared)),
                    None => Err(SessionError::Invalid(why)),
                }
            }
        }
    }
}

impl SessionStore for RedisStore {
    fn present(&self, request: &HeaderMap) -> bool {
        self.jar.cookies.has_session(request)
    }

    fn load<'a>(
        &'a self,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Option<Result<Loaded, SessionError>>> {
        Box::pin(self.load_now(request))
    }

    /// A new session under a new ticket; a refreshed one was written by its refresh (the
    /// ticket stays, no cookie is set).
    fn save<'a>(
        &'a self,
        session: &'a Session,
        why: Save,
        ttl: Duration,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Vec<HeaderValue>, StoreError>> {
        Box::pin(async move {
            match why {
                Save::New => self.save_new(session, ttl, request).await,
                Save::Refreshed => Ok(Vec::new()),
            }
        })
    }

    /// Activity was recorded by the `GETEX` that read the session.
    fn touch<'a>(
        &'a self,
        _session: &'a Session,
        _seen: u64,
        _ttl: Duration,
        _request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Vec<HeaderValue>, StoreError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn clear<'a>(&'a self, request: &'a HeaderMap) -> BoxFuture<'a, Cleared> {
        Box::pin(async move {
            let set_cookie = self.jar.cookies.clear_all(request);
            let ended = match self.ticket(request) {
                Some(Ok(t)) => self.redis.delete(&[&t.key, &t.lock]).await.map(|_| ()),
                // nothing stored under a ticket that does not open
                _ => Ok(()),
            };
            Cleared { set_cookie, ended }
        })
    }

    fn refresh<'a>(
        &'a self,
        session: Session,
        refresher: &'a dyn Refresher,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<(Session, Refreshed), SessionError>> {
        Box::pin(async move {
            let ticket = match self.ticket(request) {
                Some(Ok(t)) => t,
                Some(Err(why)) => return Err(SessionError::Invalid(why)),
                None => return Err(SessionError::Invalid("no session ticket".into())),
            };
            let run = || self.refresh_across(&ticket, session.clone(), refresher);
            self.refreshes.run(&session, run).await
        })
    }

    fn end<'a>(&'a self, _index: &'a SessionIndex) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::Unsupported(
            "end sessions by sid or sub yet (back-channel logout will index them)",
        ))))
    }

    fn strip(&self, headers: &mut HeaderMap) {
        self.jar.cookies.strip_from(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jar_for(client_id: &str) -> Jar {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"{client_id}\"\n\
             [bearer]\naudiences = [\"api\"]\n\
             [session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n\
             store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n"
        );
        let cfg = crate::config::load_str(&text, std::iter::empty()).unwrap().config;
        Jar::new(&cfg.login.unwrap()).unwrap()
    }

    fn session(refresh_token: &str) -> Session {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), json!("alice"));
        Session {
            id: "s1".into(),
            iss: "https://idp.example.com".into(),
            claims,
            created: 1_000,
            seen: 1_000,
            at_exp: Some(2_000),
            refresh_token: Some(refresh_token.into()),
            id_token: Some("header.payload.signature".into()),
            sid: None,
            access_token: None,
        }
    }

    #[test]
    fn a_ticket_opens_only_as_sealed_whole_and_here() {
        let jar = jar_for("web");
        let t = Ticket::new(1_234).unwrap();
        let sealed = t.seal(&jar);
        assert_eq!(Ticket::open(&jar, &sealed).unwrap(), t);
        assert!(sealed.len() < 120, "{}", sealed.len());
        // two tickets never share an id or a key
        let u = Ticket::new(1_234).unwrap();
        assert!(u.id != t.id && u.key != t.key);
        // every byte flipped, and every truncation, opens nothing
        let bytes = sealed.as_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            assert!(Ticket::open(&jar, std::str::from_utf8(&b).unwrap()).is_err(), "flip at {i}");
        }
        for n in 0..sealed.len() {
            assert!(Ticket::open(&jar, &sealed[..n]).is_err(), "truncated to {n}");
        }
        // another app's ticket (the same secret) and a cookie session's value are not tickets
        assert!(Ticket::open(&jar_for("other"), &sealed).is_err());
        let cookie_value = jar.codec.seal(super::super::cookie::SESSION, &t.to_bytes());
        assert!(Ticket::open(&jar, &cookie_value).is_err());
        // sealed for a ticket but not one: a clear error
        let short = jar.codec.seal(TICKET, b"short");
        assert!(Ticket::open(&jar, &short).unwrap_err().contains("length"));
    }

    #[test]
    fn a_stored_session_opens_only_with_its_ticket_under_its_key() {
        let t = Ticket::new(1_000).unwrap();
        let stored = t.seal_session("p:session:{a}", &session("rt-1")).unwrap();
        let back = t.open_session("p:session:{a}", &stored).unwrap();
        assert_eq!(back.refresh_token.as_deref(), Some("rt-1"));
        // nothing of it in clear
        let text = String::from_utf8_lossy(&stored);
        for clear in ["alice", "rt-1", "header.payload", "idp.example.com"] {
            assert!(!text.contains(clear), "{clear}");
        }
        // another ticket's key, another key name (a value copied between entries), tampering
        // and truncation open nothing
        let other = Ticket::new(1_000).unwrap();
        assert!(other.open_session("p:session:{a}", &stored).is_err());
        assert!(t.open_session("p:session:{b}", &stored).is_err());
        for i in FP_LEN..stored.len() {
            let mut v = stored.clone();
            v[i] ^= 1;
            assert!(t.open_session("p:session:{a}", &v).is_err(), "flip at {i}");
        }
        for n in 0..stored.len() {
            assert!(t.open_session("p:session:{a}", &stored[..n]).is_err(), "truncated to {n}");
        }
        // the fingerprint names the refresh token, under the session's own key
        assert_eq!(&stored[..FP_LEN], &t.fingerprint(Some("rt-1")));
        let rotated = t.seal_session("p:session:{a}", &session("rt-2")).unwrap();
        assert_ne!(&rotated[..FP_LEN], &stored[..FP_LEN]);
        assert_ne!(other.fingerprint(Some("rt-1")), t.fingerprint(Some("rt-1")));
    }

    #[test]
    fn a_session_and_its_lock_share_a_hash_tag_under_the_prefix() {
        let text = "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"web\"\n\
             [bearer]\naudiences = [\"api\"]\n\
             [session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n\
             store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_key_prefix = \"app1:\"\n";
        let cfg = crate::config::load_str(text, std::iter::empty()).unwrap().config;
        let crate::config::StoreConfig::Redis(r) = cfg.login.unwrap().session.store else {
            panic!("not redis")
        };
        let redis = Redis::new(&r).unwrap();
        let mut t = Ticket::new(0).unwrap();
        t.id = [0x0f, 0xa0, 0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xed];
        let (key, lock) = redis.keys(&t);
        assert_eq!(key, "app1:session:{0fa000ff0102030405060708090a0bed}");
        assert_eq!(lock, "app1:session:{0fa000ff0102030405060708090a0bed}:lock");
    }

    #[test]
    fn the_entry_expires_at_the_idle_timeout_or_the_lifetime_whichever_is_first() {
        let l = Lifetimes {
            max_lifetime: Duration::from_secs(3_600),
            idle_timeout: Duration::from_secs(600),
        };
        // early on, idle time decides; near the end, the lifetime does
        assert_eq!(expires_at(10_000, 10_000, &l), 10_600);
        assert_eq!(expires_at(10_000, 12_000, &l), 12_600);
        assert_eq!(expires_at(10_000, 13_200, &l), 13_600);
        assert_eq!(expires_at(10_000, 13_500, &l), 13_600);
    }
}
