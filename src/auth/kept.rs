//! What checking a credential gave, kept by the credential's bytes: verified bearer tokens (their
//! identity) and sealed session values (the session they open to).

use std::collections::HashMap;
use std::sync::RwLock;

/// A bounded map from a credential's bytes to what checking them gave (a pure function of the
/// bytes and of what the owner keeps alongside, such as a key's generation).
///
/// Keyed by the whole value, compared in full on a hit (so only the very same bytes can ever
/// hit), and hashed with foldhash under a per-process seed (so clients cannot aim values at one
/// bucket; and only values that checked out are ever inserted). When full, an arbitrary eighth
/// goes (after the stale entries, for an owner that says which are): the map's order is
/// unrelated to age or use, so no client can pin entries. A capacity of 0 keeps nothing.
#[derive(Debug)]
pub(crate) struct Kept<V> {
    map: RwLock<HashMap<Box<[u8]>, V, foldhash::fast::RandomState>>,
    capacity: usize,
}

impl<V: Clone> Kept<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { map: RwLock::new(HashMap::default()), capacity }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        if self.capacity == 0 {
            return None;
        }
        self.map.read().ok()?.get(key).cloned()
    }

    pub(crate) fn insert(&self, key: &[u8], value: V) {
        self.insert_dropping_first(key, value, |_| false)
    }

    /// Inserts `value`; when the map is full, the entries `stale` names go first, then (if it is
    /// still full) an arbitrary eighth.
    pub(crate) fn insert_dropping_first(&self, key: &[u8], value: V, stale: impl Fn(&V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut map) = self.map.write() else { return };
        if map.len() >= self.capacity {
            map.retain(|_, v| !stale(v));
            if map.len() >= self.capacity {
                let mut drop_n = (self.capacity / 8).max(1);
                map.retain(|_, _| {
                    let keep = drop_n == 0;
                    drop_n = drop_n.saturating_sub(1);
                    keep
                });
            }
        }
        map.insert(key.into(), value);
    }

    pub(crate) fn remove(&self, key: &[u8]) {
        if let Ok(mut map) = self.map.write() {
            map.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_values_are_bounded_and_only_the_very_same_bytes_hit() {
        let kept = Kept::new(16);
        // up to the bound, everything is kept
        for i in 0..16u32 {
            kept.insert(format!("sealed-{i}").as_bytes(), i);
            assert_eq!(kept.len(), i as usize + 1);
        }
        // at the bound, an eighth goes before the next one comes in
        kept.insert(b"sealed-16", 16);
        assert_eq!(kept.len(), 16 - 2 + 1);
        for i in 17..50 {
            kept.insert(format!("sealed-{i}").as_bytes(), i);
            assert!((14..=16).contains(&kept.len()), "{}", kept.len());
        }
        // only the very same value hits
        kept.insert(b"sealed-x", 99);
        assert_eq!(kept.get(b"sealed-x"), Some(99));
        assert_eq!(kept.get(b"sealed-"), None);
        assert_eq!(kept.get(b"sealed-xx"), None);
        assert_eq!(kept.get(b"Sealed-x"), None);
        kept.remove(b"sealed-x");
        assert_eq!(kept.get(b"sealed-x"), None);
    }

    #[test]
    fn when_full_the_stale_entries_go_first() {
        let kept = Kept::new(16);
        for i in 0..16u32 {
            kept.insert(format!("k{i}").as_bytes(), i);
        }
        // the odd ones are stale: all eight go, nothing else
        kept.insert_dropping_first(b"new", 100, |v| v % 2 == 1);
        assert_eq!(kept.len(), 9);
        for i in 0..16u32 {
            assert_eq!(kept.get(format!("k{i}").as_bytes()).is_some(), i % 2 == 0, "k{i}");
        }
        assert_eq!(kept.get(b"new"), Some(100));
    }

    #[test]
    fn a_capacity_of_zero_keeps_nothing() {
        let kept = Kept::new(0);
        kept.insert(b"a", 1);
        assert_eq!((kept.get(b"a"), kept.len()), (None, 0));
    }
}
