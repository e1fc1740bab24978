//! What checking a credential gave, kept by the credential's bytes: verified bearer tokens (their
//! identity) and sealed session values (the session they open to).

use std::hash::BuildHasher;
use std::sync::RwLock;

use hashbrown::HashTable;

/// A bounded map from a credential's bytes to what checking them gave (a pure function of the
/// bytes and of what the owner keeps alongside, such as a key's generation).
///
/// Keyed by the whole value and compared in full on a hit, so only the very same bytes can ever
/// hit. Hashed with foldhash under a per-process seed over the value's length and its last
/// [`HASHED_TAIL`] bytes only: a few dozen instructions instead of a few hundred for an 800-byte
/// token. A value's tail is what nobody can choose without the keys (a JWS's signature, a sealed
/// value's authentication tag) and only values that checked out are ever inserted, so no client
/// can crowd entries into one bucket; a value that shares a tail with a kept one costs one more
/// comparison. When full, an arbitrary eighth goes (after the stale entries, for an owner that
/// says which are): the table's order is unrelated to age or use, so no client can pin entries.
/// A capacity of 0 keeps nothing.
pub(crate) struct Kept<V> {
    table: RwLock<HashTable<(Box<[u8]>, V)>>,
    hasher: foldhash::fast::RandomState,
    capacity: usize,
}

/// How many of a value's last bytes are hashed (with its length).
pub(crate) const HASHED_TAIL: usize = 32;

impl<V> std::fmt::Debug for Kept<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.table.read().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("Kept").field("len", &len).field("capacity", &self.capacity).finish()
    }
}

impl<V: Clone> Kept<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { table: RwLock::default(), hasher: Default::default(), capacity }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one((key.len(), &key[key.len().saturating_sub(HASHED_TAIL)..]))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        if self.capacity == 0 {
            return None;
        }
        let table = self.table.read().ok()?;
        table.find(self.hash(key), |(k, _)| **k == *key).map(|(_, v)| v.clone())
    }

    pub(crate) fn insert(&self, key: &[u8], value: V) {
        self.insert_dropping_first(key, value, |_| false)
    }

    /// Inserts `value` (in place of what `key` had); when the map is full, the entries `stale`
    /// names go first, then (if it is still full) an arbitrary eighth.
    pub(crate) fn insert_dropping_first(&self, key: &[u8], value: V, stale: impl Fn(&V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        let hash = self.hash(key);
        let Ok(mut table) = self.table.write() else { return };
        if let Some((_, v)) = table.find_mut(hash, |(k, _)| **k == *key) {
            *v = value;
            return;
        }
        if table.len() >= self.capacity {
            table.retain(|(_, v)| !stale(v));
            if table.len() >= self.capacity {
                let mut drop_n = (self.capacity / 8).max(1);
                table.retain(|_| {
                    let keep = drop_n == 0;
                    drop_n = drop_n.saturating_sub(1);
                    keep
                });
            }
        }
        table.insert_unique(hash, (key.into(), value), |(k, _)| self.hash(k));
    }

    pub(crate) fn remove(&self, key: &[u8]) {
        let hash = self.hash(key);
        let Ok(mut table) = self.table.write() else { return };
        if let Ok(entry) = table.find_entry(hash, |(k, _)| **k == *key) {
            entry.remove();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.read().map(|t| t.len()).unwrap_or(0)
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
    fn values_that_share_a_tail_are_kept_apart() {
        let kept = Kept::new(64);
        let tail = "t".repeat(HASHED_TAIL);
        for i in 0..40u32 {
            kept.insert(format!("{i:02}{tail}").as_bytes(), i);
        }
        assert_eq!(kept.len(), 40);
        for i in 0..40u32 {
            assert_eq!(kept.get(format!("{i:02}{tail}").as_bytes()), Some(i));
        }
        assert_eq!(kept.get(format!("40{tail}").as_bytes()), None);
        // the same bytes again replace what they had
        kept.insert(format!("07{tail}").as_bytes(), 700);
        assert_eq!((kept.get(format!("07{tail}").as_bytes()), kept.len()), (Some(700), 40));
        // shorter and longer than the tail, and empty
        for key in [&b""[..], b"x", &[b'y'; 100]] {
            kept.insert(key, 1);
            assert_eq!(kept.get(key), Some(1));
        }
    }

    #[test]
    fn a_capacity_of_zero_keeps_nothing() {
        let kept = Kept::new(0);
        kept.insert(b"a", 1);
        assert_eq!((kept.get(b"a"), kept.len()), (None, 0));
    }
}
