//! The sessions a store opened, kept by their sealed value (a cookie's; a Redis store's, with
//! the ticket that opens it).

use std::sync::Arc;

pub(super) use crate::auth::kept::Kept;

use super::store::Opened;

/// The most opened sessions a cookie store keeps (each a few KiB: the sealed value, the session
/// and its identity).
pub const OPENED_SESSIONS: usize = 1024;

/// Sessions opened from their sealed cookie value, so that the next request with the very same
/// value skips the decryption, the JSON and the claims' mapping (a cookie session then costs
/// about what a cached bearer token does). Opening is a function of the value and the store's
/// secrets alone, and the store (with this cache) is made anew with each pipeline, so a changed
/// secret or identity mapping never meets an entry of the old one; lifetimes and idle time are
/// checked on every request as before. Bounded as every [`Kept`] map is.
///
/// The Redis store keeps its opened tickets the same way ([`Kept`] of another value).
pub(super) type OpenedSessions = Kept<Arc<Opened>>;
