//! The sessions a store opened, kept by their sealed value (a cookie's; a Redis store's, with
//! the ticket that opens it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::store::Opened;

/// The most opened sessions a cookie store keeps (each a few KiB: the sealed value, the session
/// and its identity).
pub const OPENED_SESSIONS: usize = 1024;

/// Sessions opened from their sealed cookie value, so that the next request with the very same
/// value skips the decryption, the JSON and the claims' mapping (a cookie session then costs
/// about what a cached bearer token does). Opening is a function of the value and the store's
/// secrets alone, and the store (with this cache) is made anew with each pipeline, so a changed
/// secret or identity mapping never meets an entry of the old one; lifetimes and idle time are
/// checked on every request as before. Keyed by the whole value, compared in full on a hit, and
/// hashed with foldhash under a per-process seed; when full, an arbitrary eighth is dropped.
///
/// The Redis store keeps its opened tickets the same way ([`Kept`] of another value).
pub(super) type OpenedSessions = Kept<Arc<Opened>>;

/// A bounded map from a sealed value to what opening it gave (a pure function of the value and
/// the store's secrets).
#[derive(Debug)]
pub(super) struct Kept<V> {
    map: RwLock<HashMap<Box<[u8]>, V, foldhash::fast::RandomState>>,
    capacity: usize,
}

impl<V: Clone> Kept<V> {
    pub(super) fn new(capacity: usize) -> Self {
        Self { map: RwLock::new(HashMap::default()), capacity }
    }

    pub(super) fn get(&self, sealed: &[u8]) -> Option<V> {
        self.map.read().ok()?.get(sealed).cloned()
    }

    pub(super) fn insert(&self, sealed: &[u8], opened: V) {
        let Ok(mut map) = self.map.write() else { return };
        if map.len() >= self.capacity {
            let drop_n = (self.capacity / 8).max(1);
            let doomed: Vec<Box<[u8]>> = map.keys().take(drop_n).cloned().collect();
            for k in doomed {
                map.remove(&k);
            }
        }
        map.insert(sealed.into(), opened);
    }

    pub(super) fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::session::Session;

    #[test]
    fn opened_sessions_are_bounded() {
        let cache = OpenedSessions::new(16);
        let s = |i: u64| {
            Arc::new(Opened::new(Session {
                id: format!("s{i}"),
                iss: "i".into(),
                claims: Default::default(),
                created: i,
                seen: i,
                at_exp: None,
                refresh_token: None,
                id_token: None,
                sid: None,
                access_token: None,
            }))
        };
        // up to the bound, everything is kept
        for i in 0..16 {
            cache.insert(format!("sealed-{i}").as_bytes(), s(i));
            assert_eq!(cache.len(), i as usize + 1);
        }
        // at the bound, an eighth goes before the next one comes in
        cache.insert(b"sealed-16", s(16));
        assert_eq!(cache.len(), 16 - 2 + 1);
        for i in 17..50 {
            cache.insert(format!("sealed-{i}").as_bytes(), s(i));
            assert!((14..=16).contains(&cache.len()), "{}", cache.len());
        }
        // only the very same value hits
        cache.insert(b"sealed-x", s(99));
        assert_eq!(cache.get(b"sealed-x").unwrap().session.id, "s99");
        assert!(cache.get(b"sealed-").is_none() && cache.get(b"sealed-xx").is_none());
    }
}
