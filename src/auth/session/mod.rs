//! Browser sessions: what a signed-in browser is ([`Session`]) and the one place that decides
//! whether it still holds ([`Sessions`]: `max_lifetime`, `idle_timeout`, refreshed once when
//! its access token expired, activity recorded, the identity it gives). Where sessions are kept
//! is the store's business ([`store::SessionStore`]); sealed cookies ([`cookie::CookieStore`])
//! are the first store.

pub mod cookie;
pub mod flight;
mod opened;
pub mod redis;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::identity::{Identity, IdentityMapper};
pub use cookie::{random_token, CookieStore, Jar};
pub use flight::RefreshSlots;
pub use store::{
    Cleared, Loaded, Opened, Refreshed, Refresher, Save, SessionError, SessionIndex, SessionStore,
    StoreError,
};

/// A signed-in browser. Sealed into the session cookie; tokens only as far as needed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// Random; names the session for the one-refresh-at-a-time rule.
    pub id: String,
    pub iss: String,
    /// The ID token's claims merged with UserInfo's (protocol claims left out).
    pub claims: Map<String, Value>,
    /// When the user signed in (for `max_lifetime`).
    pub created: u64,
    /// Last activity (for `idle_timeout`), updated at most once a minute.
    pub seen: u64,
    /// When the access token expires (then the session is refreshed, if it can be).
    pub at_exp: Option<u64>,
    pub refresh_token: Option<String>,
    /// For RP-initiated logout (`id_token_hint`).
    pub id_token: Option<String>,
    /// The provider's session (the ID token's `sid`), for back-channel logout's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Only kept when `identity.pass_token` passes it on.
    pub access_token: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("iss", &self.iss)
            .field("sub", &self.claims.get("sub"))
            .field("created", &self.created)
            .field("at_exp", &self.at_exp)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// How long sessions last.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// From sign-in, however active (`session.max_lifetime`).
    pub max_lifetime: Duration,
    /// Without a request (`session.idle_timeout`).
    pub idle_timeout: Duration,
}

/// Activity is recorded (a new activity cookie) at most once in this part of
/// `session.idle_timeout`, and at least once a minute: an active session is never taken for an
/// idle one by more than a tenth of the timeout.
const ACTIVITY_PARTS: u64 = 10;
const ACTIVITY_MAX_INTERVAL: u64 = 60;

/// A session that held: the session, its identity, the `Set-Cookie` values it needs (after a
/// refresh, or recorded activity), and whether it was refreshed.
#[derive(Debug)]
pub struct Checked {
    pub session: Arc<Session>,
    pub identity: Arc<Identity>,
    pub set_cookie: Vec<HeaderValue>,
    pub refreshed: Refreshed,
}

/// Sessions, their rules and their store. Shared by authentication (checking every request's)
/// and the login (opening one at the callback, ending it at sign-out).
#[derive(Debug)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    refresher: Arc<dyn Refresher>,
    mapper: IdentityMapper,
    lifetimes: Lifetimes,
    clock: Clock,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn SessionStore>,
        refresher: Arc<dyn Refresher>,
        mapper: IdentityMapper,
        lifetimes: Lifetimes,
        clock: Clock,
    ) -> Self {
        Self { store, refresher, mapper, lifetimes, clock }
    }

    /// Whether the request carries a session at all (no I/O, nothing opened).
    pub fn present(&self, request: &HeaderMap) -> bool {
        self.store.present(request)
    }

    /// How often activity is recorded: a tenth of the idle timeout, at most a minute.
    pub fn activity_interval(&self) -> u64 {
        (self.lifetimes.idle_timeout.as_secs() / ACTIVITY_PARTS).clamp(1, ACTIVITY_MAX_INTERVAL)
    }

    /// What is left of a session's `max_lifetime`.
    pub fn time_left(&self, s: &Session) -> Duration {
        let end = s.created + self.lifetimes.max_lifetime.as_secs();
        Duration::from_secs(end.saturating_sub(self.clock.now()))
    }

    /// The session a request carries, checked: `max_lifetime` and `idle_timeout` (the last
    /// activity the store knows of), refreshed when its access token expired, activity recorded.
    /// `None` without a session; `Err(why)` when it does not hold (logged at debug by callers).
    pub async fn check(&self, request: &HeaderMap) -> Option<Result<Checked, SessionError>> {
        let loaded = match self.load(request).await? {
            Ok(l) => l,
            Err(why) => return Some(Err(why)),
        };
        Some(self.check_loaded(loaded, request).await)
    }

    /// The session a request carries, as stored (nothing changed yet: decide on CSRF between
    /// this and [`Sessions::check_loaded`]). `None` without a session.
    pub async fn load(&self, request: &HeaderMap) -> Option<Result<Loaded, SessionError>> {
        self.store.load(request).await
    }

    /// [`Sessions::check`] of a session [`Sessions::load`] gave.
    pub async fn check_loaded(
        &self,
        loaded: Loaded,
        request: &HeaderMap,
    ) -> Result<Checked, SessionError> {
        let Loaded { opened, last_seen } = loaded;
        let t = self.clock.now();
        let s = &opened.session;
        if t >= s.created + self.lifetimes.max_lifetime.as_secs() {
            return Err(SessionError::Invalid("session reached session.max_lifetime".into()));
        }
        if t >= last_seen + self.lifetimes.idle_timeout.as_secs() {
            return Err(SessionError::Invalid(
                "session idle longer than session.idle_timeout".into(),
            ));
        }
        let map = |s: &Session| {
            self.mapper
                .identity(&s.iss, s.claims.clone())
                .map_err(|e| format!("session identity: {e}"))
        };
        if s.at_exp.is_some_and(|exp| exp <= t) && s.refresh_token.is_some() {
            let (mut s, refreshed) =
                self.store.refresh(Session::clone(s), &*self.refresher, request).await?;
            let identity = Arc::new(map(&s)?);
            s.seen = t;
            let ttl = self.time_left(&s);
            let set_cookie =
                self.store.save(&s, Save::Refreshed, ttl, request).await.unwrap_or_default();
            return Ok(Checked { session: Arc::new(s), identity, set_cookie, refreshed });
        }
        // The session as opened: its identity mapped once for all the requests that carry it.
        let identity = opened.identity_with(map)?;
        let set_cookie = if t.saturating_sub(last_seen) >= self.activity_interval() {
            self.store.touch(s, t, self.time_left(s), request).await.unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Checked { session: s.clone(), identity, set_cookie, refreshed: Refreshed::No })
    }

    /// Stores a session just signed in: the `Set-Cookie` values that carry it.
    pub async fn open(
        &self,
        s: &Session,
        request: &HeaderMap,
    ) -> Result<Vec<HeaderValue>, StoreError> {
        self.store.save(s, Save::New, self.time_left(s), request).await
    }

    /// The session a request carries as stored, unchecked (sign-out revokes its tokens even
    /// when it has expired here).
    pub async fn peek(&self, request: &HeaderMap) -> Option<Session> {
        self.store
            .load(request)
            .await
            .and_then(Result::ok)
            .map(|l| Session::clone(&l.opened.session))
    }

    /// Ends the request's session: the `Set-Cookie` values clearing every cookie of ours.
    pub async fn clear(&self, request: &HeaderMap) -> Cleared {
        self.store.clear(request).await
    }

    /// Ends every session `index` names (back-channel logout).
    pub async fn end(&self, index: &SessionIndex) -> Result<u64, StoreError> {
        self.store.end(index).await
    }

    /// Removes every cookie of ours from a request before it is forwarded.
    pub fn strip(&self, headers: &mut HeaderMap) {
        self.store.strip(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refreshes by counting and giving the access token another hour; `fail` refuses.
    #[derive(Debug, Default)]
    struct CountingRefresher {
        calls: AtomicUsize,
        fail: bool,
    }

    impl Refresher for CountingRefresher {
        fn refresh(
            &self,
            mut s: Session,
        ) -> futures_util::future::BoxFuture<'_, Result<Session, String>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                // the provider takes a while: every request of the moment waits for this one
                tokio::time::sleep(Duration::from_millis(200)).await;
                if self.fail {
                    return Err("refresh failed: the provider answered invalid_grant".into());
                }
                s.at_exp = Some(crate::clock::Clock::tokio().now() + 3600);
                s.refresh_token = Some("rotated".into());
                Ok(s)
            })
        }
    }

    /// Sessions in sealed cookies (no provider is asked) on paused tokio time.
    fn paused_sessions_with(session: &str, refresher: Arc<CountingRefresher>) -> Sessions {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:4180\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
             [oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"web\"\n\
             [bearer]\naudiences = [\"api\"]\n\
             [session]\nsecret = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n{session}\n"
        );
        let cfg = crate::config::load_str(&text, std::iter::empty()).unwrap().config;
        let login = cfg.login.unwrap();
        let jar = Arc::new(Jar::new(&login).unwrap());
        let lifetimes = Lifetimes {
            max_lifetime: login.session.max_lifetime,
            idle_timeout: login.session.idle_timeout,
        };
        Sessions::new(
            Arc::new(CookieStore::new(jar, Arc::default())),
            refresher,
            IdentityMapper::for_sessions(cfg.identity),
            lifetimes,
            Clock::tokio(),
        )
    }

    fn paused_sessions(session: &str) -> Sessions {
        paused_sessions_with(session, Arc::default())
    }

    /// A browser's cookie jar: what `Set-Cookie` values leave in it, as a request's headers.
    #[derive(Default)]
    struct Browser(std::collections::BTreeMap<String, String>);

    impl Browser {
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
    fn signed_in(sessions: &Sessions) -> Browser {
        signed_in_until(sessions, None)
    }

    /// A signed-in browser's jar whose access token expires at `at_exp` (with a refresh token).
    fn signed_in_until(sessions: &Sessions, at_exp: Option<u64>) -> Browser {
        let t = sessions.clock.now();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let s = Session {
            id: random_token(),
            iss: "https://idp.example.com".into(),
            claims,
            created: t,
            seen: t,
            at_exp,
            refresh_token: at_exp.map(|_| "first".to_string()),
            id_token: None,
            sid: None,
            access_token: None,
        };
        let mut jar = Browser::default();
        // (the cookie store answers at once)
        let set = futures_util::FutureExt::now_or_never(sessions.open(&s, &HeaderMap::new()));
        jar.take(set.unwrap().unwrap());
        jar
    }

    /// One request of the browser: whether its session held, and the cookies it got.
    async fn visit(sessions: &Sessions, jar: &mut Browser) -> Result<Refreshed, String> {
        let h = jar.headers();
        let checked =
            sessions.check(&h).await.ok_or("no session cookie")?.map_err(|e| e.to_string())?;
        jar.take(checked.set_cookie);
        Ok(checked.refreshed)
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_session_outlives_the_idle_timeout_and_an_idle_one_does_not() {
        let sessions = paused_sessions("idle_timeout = \"1m\"\nmax_lifetime = \"1h\"");
        let mut jar = signed_in(&sessions);
        let session_cookie = jar.0["_portcullis"].clone();
        // a request every 11 s for five minutes: never idle
        for i in 0..30 {
            tokio::time::advance(Duration::from_secs(11)).await;
            visit(&sessions, &mut jar).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        }
        // activity went into its own cookie; the session (and its tokens) was never resealed
        assert_eq!(jar.0["_portcullis"], session_cookie);
        assert!(jar.0.contains_key("_portcullis_seen"), "{:?}", jar.0.keys());
        // then a minute without a request: signed out
        tokio::time::advance(Duration::from_secs(60)).await;
        let err = visit(&sessions, &mut jar).await.unwrap_err();
        assert!(err.contains("idle_timeout"), "{err}");
        // a fresher activity cookie of another session does not keep this one alive
        let mut other = signed_in(&sessions);
        let mut third = signed_in(&sessions);
        tokio::time::advance(Duration::from_secs(50)).await;
        visit(&sessions, &mut third).await.unwrap();
        other.0.insert("_portcullis_seen".into(), third.0["_portcullis_seen"].clone());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(visit(&sessions, &mut other).await.unwrap_err().contains("idle_timeout"));
        assert!(visit(&sessions, &mut third).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sessions_cookie_is_opened_and_mapped_once_and_still_checked_every_time() {
        let sessions = paused_sessions("idle_timeout = \"1m\"\nmax_lifetime = \"5m\"");
        let jar = signed_in(&sessions);
        let h = jar.headers();
        let first = sessions.load(&h).await.unwrap().unwrap();
        let again = sessions.load(&h).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first.opened, &again.opened), "opened twice");
        let a = sessions.check_loaded(first, &h).await.unwrap();
        let b = sessions.check_loaded(again, &h).await.unwrap();
        assert!(Arc::ptr_eq(&a.identity, &b.identity), "mapped twice");
        assert_eq!(a.identity.subject, "alice");
        // a cookie that does not open is never kept
        let mut forged = jar.headers();
        let value = jar.0["_portcullis"].clone();
        let flipped = if value.ends_with('A') { "B" } else { "A" };
        let tampered = format!("_portcullis={}{flipped}", &value[..value.len() - 1]);
        forged.insert(header::COOKIE, HeaderValue::from_str(&tampered).unwrap());
        assert!(sessions.load(&forged).await.unwrap().is_err());
        assert!(sessions.load(&forged).await.unwrap().is_err());
        // lifetimes hold on the kept one: idle past the timeout, then over max_lifetime
        tokio::time::advance(Duration::from_secs(61)).await;
        let err = sessions.check(&h).await.unwrap().unwrap_err().to_string();
        assert!(err.contains("idle_timeout"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn max_lifetime_ends_even_an_active_session() {
        let sessions = paused_sessions("idle_timeout = \"1m\"\nmax_lifetime = \"5m\"");
        let mut jar = signed_in(&sessions);
        for _ in 0..29 {
            tokio::time::advance(Duration::from_secs(10)).await;
            visit(&sessions, &mut jar).await.unwrap();
        }
        // 290 s in: still fine; at 300 s: over
        tokio::time::advance(Duration::from_secs(10)).await;
        let err = visit(&sessions, &mut jar).await.unwrap_err();
        assert!(err.contains("max_lifetime"), "{err}");
    }

    #[test]
    fn activity_is_recorded_often_enough_for_the_idle_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        for (idle, every) in [("1m", 6), ("5m", 30), ("10m", 60), ("12h", 60)] {
            let sessions = paused_sessions(&format!("idle_timeout = \"{idle}\""));
            assert_eq!(sessions.activity_interval(), every, "{idle}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_access_token_is_refreshed_once_for_every_request_of_the_moment() {
        let refresher = Arc::new(CountingRefresher::default());
        let sessions = paused_sessions_with("idle_timeout = \"1h\"", refresher.clone());
        let t = sessions.clock.now();
        let jar = signed_in_until(&sessions, Some(t + 10));
        let before = jar.0["_portcullis"].clone();
        tokio::time::advance(Duration::from_secs(11)).await;
        // three tabs at once with the same cookie: one refresh, all signed in
        let (mut a, mut b, mut c) =
            (Browser(jar.0.clone()), Browser(jar.0.clone()), Browser(jar.0.clone()));
        let (ra, rb, rc) = tokio::join!(
            visit(&sessions, &mut a),
            visit(&sessions, &mut b),
            visit(&sessions, &mut c)
        );
        let mut got = [ra.unwrap(), rb.unwrap(), rc.unwrap()];
        got.sort_by_key(|r| *r as u8);
        assert_eq!(got, [Refreshed::Here, Refreshed::Shared, Refreshed::Shared]);
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        // the refreshed session is a new cookie, with the new tokens
        assert_ne!(a.0["_portcullis"], before);
        for tab in [&a, &b, &c] {
            let s = sessions.peek(&tab.headers()).await.unwrap();
            assert_eq!(s.refresh_token.as_deref(), Some("rotated"));
        }
        // and the next request needs no refresh
        assert_eq!(visit(&sessions, &mut a).await.unwrap(), Refreshed::No);
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        // a tab arriving with the old cookie within the grace gets the same outcome
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut late = Browser(jar.0.clone());
        assert_eq!(visit(&sessions, &mut late).await.unwrap(), Refreshed::Shared);
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_ends_the_session_and_ending_by_index_is_refused_for_cookies() {
        let refresher = Arc::new(CountingRefresher { fail: true, ..Default::default() });
        let sessions = paused_sessions_with("", refresher.clone());
        let t = sessions.clock.now();
        let mut jar = signed_in_until(&sessions, Some(t + 10));
        tokio::time::advance(Duration::from_secs(11)).await;
        let err = visit(&sessions, &mut jar).await.unwrap_err();
        assert!(err.contains("invalid_grant"), "{err}");
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        // the store clears every cookie of ours
        let cleared = sessions.clear(&jar.headers()).await;
        assert_eq!(cleared.ended, Ok(()));
        let cleared = cleared.set_cookie;
        assert!(cleared.iter().all(|v| v.to_str().unwrap().contains("Max-Age=0")), "{cleared:?}");
        assert!(cleared.iter().any(|v| v.to_str().unwrap().starts_with("_portcullis=")));
        let end = sessions.end(&SessionIndex::Sub("alice".into())).await;
        assert!(matches!(end, Err(StoreError::Unsupported(_))), "{end:?}");
    }

    #[tokio::test]
    async fn no_cookie_is_no_session_and_a_foreign_one_is_an_error() {
        let sessions = paused_sessions("");
        assert!(sessions.check(&HeaderMap::new()).await.is_none());
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("_portcullis=forged"));
        assert!(sessions.present(&h));
        let err = sessions.check(&h).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, SessionError::Invalid(why) if why.contains("session cookie")),
            "{err}"
        );
        assert!(sessions.peek(&h).await.is_none());
    }
}
