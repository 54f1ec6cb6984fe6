//! Server-side allocators for allocation leases (`WITH_ALLOCATION`,
//! `ONLY_ALLOCATION`, `alloc`/`dealloc`). Addresses are server-buffer
//! offsets. Unlike the original, a free is validated (the block must be a
//! live allocation of this allocator), so a bad or repeated dealloc is an
//! error, not memory corruption or an abort.

use std::collections::{HashSet, VecDeque};

/// What a directory allocates with, selected by the request's hint.
pub trait Allocator: Send {
    /// `size` bytes, or None when exhausted (or `size` is impossible).
    fn alloc(&mut self, size: u64) -> Option<u64>;
    /// Frees a block returned by `alloc`; false when `addr` is not a live
    /// block of this allocator.
    fn free(&mut self, addr: u64, size: u64) -> bool;
}

struct Class {
    size: u64,
    start: u64,
    end: u64,
    free: VecDeque<u64>,
}

/// Splits `[base, base+len)` into per-class pools by ratio; `alloc` takes
/// a block of the smallest class that fits (FIFO free lists).
pub struct SlabAllocator {
    classes: Vec<Class>,
    live: HashSet<u64>,
}

impl SlabAllocator {
    /// A slab over `[base, base+len)` with `(block size, ratio)` classes.
    /// Blocks are aligned to their size's power-of-two alignment up to
    /// 4 KiB.
    pub fn new(base: u64, len: u64, classes: &[(u64, u32)]) -> SlabAllocator {
        let mut cs: Vec<(u64, u32)> = classes
            .iter()
            .copied()
            .filter(|&(s, r)| s > 0 && r > 0)
            .collect();
        cs.sort();
        let total: u64 = cs.iter().map(|&(_, r)| r as u64).sum::<u64>().max(1);
        let mut at = base;
        let end = base.saturating_add(len);
        let mut out = Vec::new();
        for (size, ratio) in cs {
            let align = size.next_power_of_two().min(4096);
            let share = len / total * ratio as u64;
            let start = at.next_multiple_of(align);
            let stop = start.saturating_add(share).min(end);
            let mut free = VecDeque::new();
            let mut b = start;
            while b.saturating_add(size) <= stop {
                free.push_back(b);
                b += size;
            }
            out.push(Class {
                size,
                start,
                end: stop,
                free,
            });
            at = stop;
        }
        SlabAllocator {
            classes: out,
            live: HashSet::new(),
        }
    }

    /// Free blocks per class, as (block size, free blocks).
    pub fn free_blocks(&self) -> Vec<(u64, usize)> {
        self.classes
            .iter()
            .map(|c| (c.size, c.free.len()))
            .collect()
    }
}

impl Allocator for SlabAllocator {
    fn alloc(&mut self, size: u64) -> Option<u64> {
        if size == 0 {
            return None;
        }
        let c = self.classes.iter_mut().find(|c| c.size >= size)?;
        let b = c.free.pop_front()?;
        self.live.insert(b);
        Some(b)
    }

    fn free(&mut self, addr: u64, size: u64) -> bool {
        let Some(c) = self
            .classes
            .iter_mut()
            .find(|c| addr >= c.start && addr < c.end)
        else {
            return false;
        };
        if size > c.size || !self.live.remove(&addr) {
            return false;
        }
        c.free.push_back(addr);
        true
    }
}

/// A slab allocator that refills itself with `block` bytes from a backing
/// allocator when empty (the original's RefillableSlabAllocator; old
/// blocks stay usable for frees).
pub struct RefillableSlab {
    backing: Box<dyn Allocator>,
    block: u64,
    classes: Vec<(u64, u32)>,
    slabs: Vec<SlabAllocator>,
}

impl RefillableSlab {
    /// Refills `block` bytes at a time from `backing`.
    pub fn new(backing: Box<dyn Allocator>, block: u64, classes: &[(u64, u32)]) -> RefillableSlab {
        RefillableSlab {
            backing,
            block,
            classes: classes.to_vec(),
            slabs: Vec::new(),
        }
    }
}

impl Allocator for RefillableSlab {
    fn alloc(&mut self, size: u64) -> Option<u64> {
        if let Some(a) = self.slabs.last_mut().and_then(|s| s.alloc(size)) {
            return Some(a);
        }
        let base = self.backing.alloc(self.block)?;
        let mut s = SlabAllocator::new(base, self.block, &self.classes);
        let a = s.alloc(size);
        self.slabs.push(s);
        a
    }

    fn free(&mut self, addr: u64, size: u64) -> bool {
        self.slabs.iter_mut().any(|s| s.free(addr, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_fitting_class_fifo_and_exhaustion() {
        let mut a = SlabAllocator::new(4096, 8192, &[(64, 1), (1024, 1)]);
        assert_eq!(a.free_blocks(), vec![(64, 64), (1024, 4)]);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(64).unwrap();
        assert_eq!(y, x + 64);
        let big = a.alloc(1000).unwrap();
        assert!(big >= 4096 + 4096);
        assert_eq!(big % 1024, 0);
        assert_eq!(a.alloc(1025), None, "larger than every class");
        assert_eq!(a.alloc(0), None);
        for _ in 0..3 {
            a.alloc(1024).unwrap();
        }
        // The 1 KiB class is empty.
        assert_eq!(a.alloc(1024), None);
        // FIFO: a freed block comes back after the others.
        assert!(a.free(x, 64));
        let mut last = 0;
        while let Some(b) = a.alloc(64) {
            last = b;
        }
        assert_eq!(last, x);
    }

    #[test]
    fn frees_are_validated() {
        let mut a = SlabAllocator::new(0, 4096, &[(64, 1)]);
        let x = a.alloc(64).unwrap();
        assert!(!a.free(x + 1, 64), "not a block start");
        assert!(!a.free(1 << 40, 64), "outside the slab");
        assert!(!a.free(x, 65), "size larger than the block");
        assert!(a.free(x, 64));
        assert!(!a.free(x, 64), "double free");
    }

    #[test]
    fn refillable_takes_blocks_from_its_backing_allocator() {
        let backing = SlabAllocator::new(0, 1 << 20, &[(64 << 10, 1)]);
        let mut r = RefillableSlab::new(Box::new(backing), 64 << 10, &[(1024, 1)]);
        let mut got = HashSet::new();
        for _ in 0..200 {
            assert!(got.insert(r.alloc(1000).unwrap()));
        }
        // 64 blocks per refill: 4 refills so far; 16 refills exhaust 1 MiB.
        while r.alloc(1000).is_some() {}
        let any = *got.iter().next().unwrap();
        assert!(r.free(any, 1000));
        assert!(!r.free(any, 1000));
    }
}
