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

mod client;
mod ticket;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::{HeaderMap, HeaderValue};

pub use client::{Cas, Redis};
use ticket::FP_LEN;
pub use ticket::{expires_at, Ticket, TICKET};

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

/// How often a waiting replica looks for the refreshed session.
const WAIT_POLL: Duration = Duration::from_millis(25);

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
        // its Debug shows neither the id nor the key
        let shown = format!("{t:?}");
        assert!(
            shown.contains("1234") && !shown.contains("key") && !shown.contains("id:"),
            "{shown}"
        );
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
