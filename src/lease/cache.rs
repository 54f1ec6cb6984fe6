//! A lease's client-side cache (`RWFlag::WITH_CACHE`): a few byte ranges of
//! the leased object, most recently used first, coherent with the holder's
//! own writes and atomics.

/// Entries of a lease's cache.
pub const CACHE_ENTRIES: usize = 3;

/// Cached ranges `(offset, bytes)` of one lease, most recently used first.
#[derive(Clone, Debug, Default)]
pub struct LeaseCache {
    entries: Vec<(u64, Vec<u8>)>,
}

impl LeaseCache {
    /// Fills `dst` from an entry covering `[offset, offset + dst.len())`;
    /// false on a miss.
    pub fn lookup(&mut self, offset: u64, dst: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(dst.len() as u64) else {
            return false;
        };
        let Some(i) = self
            .entries
            .iter()
            .position(|(o, b)| *o <= offset && end <= o + b.len() as u64)
        else {
            return false;
        };
        let e = self.entries.remove(i);
        let at = (offset - e.0) as usize;
        dst.copy_from_slice(&e.1[at..at + dst.len()]);
        self.entries.insert(0, e);
        true
    }

    /// Write-through: every entry overlapping the written range takes the
    /// new bytes (the original left covering entries stale), then the range
    /// itself becomes the most recent entry.
    pub fn write(&mut self, offset: u64, src: &[u8]) {
        let end = offset.saturating_add(src.len() as u64);
        for (o, b) in self.entries.iter_mut() {
            let (lo, hi) = (offset.max(*o), end.min(*o + b.len() as u64));
            if lo < hi {
                b[(lo - *o) as usize..(hi - *o) as usize]
                    .copy_from_slice(&src[(lo - offset) as usize..(hi - offset) as usize]);
            }
        }
        self.insert(offset, src);
    }

    /// Records bytes just read at `offset`.
    pub fn insert(&mut self, offset: u64, src: &[u8]) {
        let end = offset.saturating_add(src.len() as u64);
        if let Some(i) = self
            .entries
            .iter()
            .position(|(o, b)| *o <= offset && end <= o + b.len() as u64)
        {
            let e = self.entries.remove(i);
            self.entries.insert(0, e);
            return;
        }
        if self.entries.len() >= CACHE_ENTRIES {
            self.entries.pop();
        }
        self.entries.insert(0, (offset, src.to_vec()));
    }

    /// Drops entries overlapping `[offset, offset + len)` (after atomics,
    /// whose result the cache does not know in advance, and failed writes).
    pub fn invalidate(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        self.entries
            .retain(|(o, b)| end <= *o || *o + b.len() as u64 <= offset);
    }

    /// Drops everything (relinquish).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_and_lru_eviction() {
        let mut c = LeaseCache::default();
        let mut b = [0u8; 2];
        assert!(!c.lookup(0, &mut b));
        c.insert(0, &[1, 2, 3, 4]);
        assert!(c.lookup(1, &mut b));
        assert_eq!(b, [2, 3]);
        assert!(!c.lookup(3, &mut b), "past the entry's end");
        c.insert(100, &[9; 4]);
        c.insert(200, &[8; 4]);
        assert!(c.lookup(0, &mut b), "touch entry 0 so 100 is the oldest");
        c.insert(300, &[7; 4]);
        assert_eq!(c.len(), CACHE_ENTRIES);
        assert!(!c.lookup(100, &mut b), "the least recently used entry went");
        assert!(c.lookup(0, &mut b) && c.lookup(200, &mut b) && c.lookup(300, &mut b));
    }

    #[test]
    fn writes_update_every_overlapping_entry() {
        let mut c = LeaseCache::default();
        c.insert(0, &[0; 8]);
        c.insert(4, &[0; 8]);
        c.write(6, &[5, 5]);
        let mut b = [0u8; 8];
        assert!(c.lookup(0, &mut b));
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 5, 5]);
        assert!(c.lookup(4, &mut b));
        assert_eq!(b, [0, 0, 5, 5, 0, 0, 0, 0]);
    }

    #[test]
    fn invalidate_drops_overlaps_only() {
        let mut c = LeaseCache::default();
        c.insert(0, &[1; 8]);
        c.insert(16, &[2; 8]);
        c.invalidate(7, 1);
        let mut b = [0u8; 1];
        assert!(!c.lookup(0, &mut b));
        assert!(c.lookup(16, &mut b));
        c.invalidate(u64::MAX - 1, u64::MAX);
        assert!(c.lookup(16, &mut b));
        c.clear();
        assert!(c.is_empty());
    }
}
