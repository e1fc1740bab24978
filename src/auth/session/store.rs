//! The session store seam: where sessions live between requests. [`super::Sessions`] decides
//! (lifetime, idle timeout, when to refresh, the identity); a store only keeps. Sealed cookies
//! ([`super::cookie::CookieStore`], the session is in the browser) are the first store; a
//! server-side one (Redis: the cookie holds a ticket, the session is on the server) is the next,
//! and needs what this trait already has: an index to end sessions by (back-channel logout), a
//! lock around a refresh across replicas, and its own say on whether a ticket changes when the
//! session does.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::{HeaderMap, HeaderValue};

use super::Session;
use crate::identity::Identity;

/// A session as a store hands it back, with its last recorded activity.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub opened: Arc<Opened>,
    /// The last activity the store knows of (at least [`Session::seen`]), for `idle_timeout`.
    pub last_seen: u64,
}

/// A session opened from what the store keeps, and the identity its claims map to, computed
/// once: a store may hand the same `Opened` to many requests (the cookie store keeps those it
/// opened). Lifetimes and idle time are still checked on every request.
#[derive(Debug)]
pub struct Opened {
    pub session: Arc<Session>,
    identity: OnceLock<Result<Arc<Identity>, String>>,
}

impl Opened {
    pub fn new(session: Session) -> Self {
        Self { session: Arc::new(session), identity: OnceLock::new() }
    }

    /// The identity of the session's claims: `map`ped the first time only.
    pub fn identity_with(
        &self,
        map: impl FnOnce(&Session) -> Result<Identity, String>,
    ) -> Result<Arc<Identity>, String> {
        self.identity.get_or_init(|| map(&self.session).map(Arc::new)).clone()
    }
}

/// Why a session is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// A login just completed: a new session, under a new ticket (never one the browser
    /// brought, so a planted ticket cannot be signed in).
    New,
    /// A refresh changed the session's tokens or claims. The store decides whether the ticket
    /// changes: a sealed cookie always does (the session is the cookie); a server-side store
    /// keeps it, so tabs still holding it stay signed in.
    Refreshed,
}

/// What sessions can be found by, to end them all (OpenID Connect Back-Channel Logout names a
/// provider's session, `sid`, or a user, `sub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionIndex {
    Sid(String),
    Sub(String),
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

/// A store that could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The session does not fit (sealed cookies: more than their chunks hold).
    #[error("the session is too large for its store ({0} bytes)")]
    TooLarge(usize),
    /// The store cannot do this at all (sealed cookies cannot be found from the server).
    #[error("this session store cannot {0}")]
    Unsupported(&'static str),
    /// The store is unreachable or failed; the request gets a 503, never a pass.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// Why a request's session gave no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// It does not open, has expired or was ended, or its refresh failed: the browser signs in
    /// again (the reason is logged at debug).
    #[error("{0}")]
    Invalid(String),
    /// The store could not say (Redis unreachable or too slow): `503`, never a pass and never
    /// a sign-in that would fail the same way.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

impl From<String> for SessionError {
    fn from(why: String) -> Self {
        SessionError::Invalid(why)
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => SessionError::Unavailable(why),
            other => SessionError::Invalid(other.to_string()),
        }
    }
}

/// A session ended at the request's asking (sign-out, or a session that no longer holds).
#[derive(Debug)]
pub struct Cleared {
    /// `Set-Cookie` values removing every cookie of ours the request carries: sent whatever
    /// the store said.
    pub set_cookie: Vec<HeaderValue>,
    /// Whether the store ended it (a server-side store deletes it; a cookie store has
    /// nothing to delete).
    pub ended: Result<(), StoreError>,
}

/// Brings a session's tokens and claims up to date at the provider (the login's refresh
/// grant). Handed to the store, which decides who runs it.
pub trait Refresher: Send + Sync + fmt::Debug {
    fn refresh(&self, session: Session) -> BoxFuture<'_, Result<Session, String>>;
}

/// Where sessions live. Every method is given the request's headers, where the ticket (or the
/// sealed session) is.
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// Whether the request carries a session of this store at all; no I/O.
    fn present(&self, request: &HeaderMap) -> bool;

    /// The session the request carries: `None` without one, `Err` when it does not open (the
    /// browser signs in again) or the store cannot say (`503`).
    fn load<'a>(
        &'a self,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Option<Result<Loaded, SessionError>>>;

    /// Stores `session` for `ttl` (what is left of its `max_lifetime`): the `Set-Cookie` values
    /// that carry it (or its ticket) to the browser.
    fn save<'a>(
        &'a self,
        session: &'a Session,
        why: Save,
        ttl: Duration,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Vec<HeaderValue>, StoreError>>;

    /// Records activity at `seen` without touching the session's tokens: the `Set-Cookie`
    /// values, if the store needs any.
    fn touch<'a>(
        &'a self,
        session: &'a Session,
        seen: u64,
        ttl: Duration,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Vec<HeaderValue>, StoreError>>;

    /// Ends the request's session: removed from the store, and the `Set-Cookie` values
    /// clearing every cookie of ours the request carries.
    fn clear<'a>(&'a self, request: &'a HeaderMap) -> BoxFuture<'a, Cleared>;

    /// Refreshes `session` with `refresher`, one refresh per session at a time (in this
    /// process for cookies; across replicas for a shared store), the outcome handed to the
    /// requests that wait for it and to those that still bring the old session shortly after.
    fn refresh<'a>(
        &'a self,
        session: Session,
        refresher: &'a dyn Refresher,
        request: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<(Session, Refreshed), SessionError>>;

    /// Ends every session `index` names: how many were ended.
    fn end<'a>(&'a self, index: &'a SessionIndex) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Removes every cookie the app could take for one of the store's (in any spelling) from a
    /// request before it is forwarded.
    fn strip(&self, headers: &mut HeaderMap);
}
