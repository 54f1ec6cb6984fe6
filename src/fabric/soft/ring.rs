//! Single-producer single-consumer rings of fixed-size slots in shared memory.
//!
//! Each slot ends with an 8-byte stamp: the producer fills the payload and
//! then stores stamp = sequence number + 1 (Release); the consumer polls the
//! stamp of the next slot (Acquire). A new entry therefore costs the consumer
//! one cache line, not a tail index plus a slot. The consumer's head index is
//! published in the control area for the producer's free-space check.
//!
//! The peer on the other side of a ring is not trusted: each side keeps its
//! own index authoritative in private memory; a hostile producer can only
//! write stamps that do not match (nothing is consumed) or payloads that the
//! decoder rejects; a consumer head that would put more than `slots` entries
//! in flight is reported as corruption. Slot bytes are copied out before they
//! are decoded, so a peer rewriting a slot concurrently cannot change what
//! was validated.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::fabric::mem::MemBlock;

/// Bytes of a ring's control area (head and tail on separate cache lines).
pub const CTRL: usize = 128;

/// The peer corrupted a ring index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

/// Layout of one ring inside a block.
#[derive(Clone, Copy, Debug)]
pub struct RingLayout {
    /// Offset of the control area in the block.
    pub off: usize,
    /// Number of slots (power of two).
    pub slots: u32,
    /// Slot size in bytes (multiple of 8).
    pub slot: usize,
}

impl RingLayout {
    /// Bytes the ring occupies.
    pub fn bytes(&self) -> usize {
        CTRL + self.slots as usize * self.slot
    }
}

#[derive(Clone)]
struct Ring {
    block: Arc<MemBlock>,
    l: RingLayout,
}

/// A lock-free look at a ring's next slot, for a poller that only wants to
/// know whether the consumer has work (the consumer publishes its head into
/// an atomic the peeker reads).
#[derive(Clone)]
pub struct Peeker {
    r: Ring,
}

impl Peeker {
    /// True when slot `head` (the consumer's current head) is stamped.
    #[inline]
    pub fn ready(&self, head: u64) -> bool {
        self.r.stamp(head).load(Ordering::Acquire) == head + 1
    }
}

impl Ring {
    fn new(block: Arc<MemBlock>, l: RingLayout) -> Ring {
        assert!(l.slots.is_power_of_two() && l.slot % 8 == 0 && l.slot >= 16);
        assert!(l.off % 64 == 0 && l.off + l.bytes() <= block.len());
        Ring { block, l }
    }
    #[inline]
    fn head(&self) -> &AtomicU64 {
        // SAFETY: off is 64-aligned and inside the block (checked in new);
        // the block outlives self through the Arc.
        unsafe { &*(self.block.as_ptr().add(self.l.off) as *const AtomicU64) }
    }
    #[inline]
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as for head, 64 bytes further.
        unsafe { &*(self.block.as_ptr().add(self.l.off + 64) as *const AtomicU64) }
    }
    #[inline]
    fn stamp(&self, idx: u64) -> &AtomicU64 {
        // SAFETY: the stamp is the last 8 bytes of a slot inside the ring;
        // slot sizes are multiples of 8 and the ring is 64-aligned.
        unsafe { &*(self.slot_ptr(idx).add(self.l.slot - 8) as *const AtomicU64) }
    }
    /// Payload bytes of a slot.
    #[inline]
    fn payload(&self) -> usize {
        self.l.slot - 8
    }
    #[inline]
    fn slot_ptr(&self, idx: u64) -> *mut u8 {
        let i = (idx & (self.l.slots as u64 - 1)) as usize;
        // SAFETY: i < slots, so the slot lies inside the ring (checked in new).
        unsafe { self.block.as_ptr().add(self.l.off + CTRL + i * self.l.slot) }
    }
}

/// The producing end.
pub struct Producer {
    r: Ring,
    tail: u64,
    head_seen: u64,
}

impl Producer {
    /// Attaches to a ring; `fresh` zeroes the indices (the creator does so).
    pub fn new(block: Arc<MemBlock>, l: RingLayout, fresh: bool) -> Producer {
        let r = Ring::new(block, l);
        if fresh {
            r.head().store(0, Ordering::Relaxed);
            r.tail().store(0, Ordering::Release);
        }
        let tail = r.tail().load(Ordering::Acquire);
        Producer {
            head_seen: tail,
            r,
            tail,
        }
    }

    /// Free slots, refreshing the consumer's index.
    #[inline]
    pub fn free(&mut self) -> Result<u32, Corrupt> {
        let n = self.r.l.slots as u64;
        if self.tail - self.head_seen < n {
            return Ok((n - (self.tail - self.head_seen)) as u32);
        }
        let h = self.r.head().load(Ordering::Acquire);
        if h > self.tail || self.tail - h > n || h < self.head_seen {
            return Err(Corrupt);
        }
        self.head_seen = h;
        Ok((n - (self.tail - h)) as u32)
    }

    /// Writes and publishes one slot. Call [`Producer::free`] first.
    /// `fill` gets the slot's payload bytes (`slot - 8` long).
    #[inline]
    pub fn write_with(&mut self, fill: impl FnOnce(&mut [u8])) {
        let p = self.r.slot_ptr(self.tail);
        // SAFETY: the slot is owned by the producer until its stamp says
        // otherwise; a hostile consumer writing here only corrupts its own
        // view. The payload excludes the stamp.
        let s = unsafe { std::slice::from_raw_parts_mut(p, self.r.payload()) };
        fill(s);
        self.stamp_next();
    }

    /// Writes and publishes one slot from the first `N` bytes of `b`
    /// (`N` at most the payload size): a fixed-size copy the compiler
    /// inlines, for the per-request hot paths.
    #[inline]
    pub fn write_prefix<const N: usize, const M: usize>(&mut self, b: &[u8; M]) {
        assert!(
            N <= M && N <= self.r.payload(),
            "{N} bytes exceed a ring slot"
        );
        let p = self.r.slot_ptr(self.tail);
        // SAFETY: N bytes fit the slot's payload (checked above); the slot
        // is the producer's until its stamp is published.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), p, N) };
        self.stamp_next();
    }

    /// Stamps the slot just filled: the consumer may take it now.
    #[inline]
    fn stamp_next(&mut self) {
        self.r
            .stamp(self.tail)
            .store(self.tail + 1, Ordering::Release);
        self.tail += 1;
    }

    /// Publishes the producer index (diagnostics; consumers use stamps).
    #[inline]
    pub fn publish(&mut self) {
        self.r.tail().store(self.tail, Ordering::Relaxed);
    }

    /// Slots written so far (the producer index).
    #[inline]
    pub fn written(&self) -> u64 {
        self.tail
    }

    /// Slots written and not yet consumed, as last seen.
    pub fn in_flight(&self) -> u64 {
        self.tail - self.head_seen
    }
}

/// The consuming end.
pub struct Consumer {
    r: Ring,
    head: u64,
    tail_seen: u64,
    unpublished: u32,
}

impl Consumer {
    /// Attaches to a ring (indices as the creator left them).
    pub fn new(block: Arc<MemBlock>, l: RingLayout) -> Consumer {
        let r = Ring::new(block, l);
        let head = r.head().load(Ordering::Acquire);
        Consumer {
            head,
            tail_seen: head,
            r,
            unpublished: 0,
        }
    }

    /// The next index to consume.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// A lock-free view of this ring's stamps.
    pub fn peeker(&self) -> Peeker {
        Peeker { r: self.r.clone() }
    }

    /// True when at least one entry is available (one stamp load).
    #[inline]
    pub fn ready(&self) -> bool {
        self.tail_seen > self.head
            || self.r.stamp(self.head).load(Ordering::Acquire) == self.head + 1
    }

    /// Entries available (consecutive stamped slots, up to a quarter ring).
    #[inline]
    pub fn available(&mut self) -> Result<u64, Corrupt> {
        if self.tail_seen > self.head {
            return Ok(self.tail_seen - self.head);
        }
        let max = (self.r.l.slots as u64 / 4).max(1);
        let mut n = 0;
        while n < max && self.r.stamp(self.head + n).load(Ordering::Acquire) == self.head + n + 1 {
            n += 1;
        }
        self.tail_seen = self.head + n;
        Ok(n)
    }

    /// Copies the next slot into `out` (len must equal the slot size or be
    /// shorter: the prefix is copied) and consumes it. Call `available` first.
    #[inline]
    pub fn pop_into(&mut self, out: &mut [u8]) {
        debug_assert!(self.head < self.tail_seen);
        let n = out.len().min(self.r.payload());
        let p = self.r.slot_ptr(self.head);
        // SAFETY: the slot is inside the ring; bytes are copied out before use.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), n) };
        self.consume();
    }

    /// Copies the first `N` bytes of the next slot (`N` at most the payload
    /// size; the rest of `out` is left as is) and consumes it: the
    /// fixed-size form of [`Consumer::pop_into`].
    #[inline]
    pub fn pop_prefix<const N: usize, const M: usize>(&mut self, out: &mut [u8; M]) {
        assert!(
            N <= M && N <= self.r.payload(),
            "{N} bytes exceed a ring slot"
        );
        debug_assert!(self.head < self.tail_seen);
        let p = self.r.slot_ptr(self.head);
        // SAFETY: the slot is inside the ring and holds at least N payload
        // bytes; `out` holds M >= N. Bytes are copied out before use.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), N) };
        self.consume();
    }

    /// Moves past the current slot, returning slots to the producer a
    /// quarter ring at a time.
    #[inline]
    fn consume(&mut self) {
        self.head += 1;
        self.unpublished += 1;
        if self.unpublished >= self.r.l.slots / 4 {
            self.release();
        }
    }

    /// Reads `len` bytes at `at` of the current (not yet consumed) slot.
    #[inline]
    pub fn peek_into(&self, at: usize, out: &mut [u8]) -> bool {
        if self.head >= self.tail_seen || at + out.len() > self.r.payload() {
            return false;
        }
        let p = self.r.slot_ptr(self.head);
        // SAFETY: at + len <= slot size, inside the ring.
        unsafe { std::ptr::copy_nonoverlapping(p.add(at), out.as_mut_ptr(), out.len()) };
        true
    }

    /// Returns consumed slots to the producer.
    #[inline]
    pub fn release(&mut self) {
        if self.unpublished > 0 {
            self.r.head().store(self.head, Ordering::Release);
            self.unpublished = 0;
        }
    }
}

/// A 32-bit flag word at `off` in a block (sleep flags, closed flags).
pub fn flag(block: &MemBlock, off: usize) -> &AtomicU32 {
    assert!(off % 4 == 0 && off + 4 <= block.len());
    // SAFETY: aligned, in bounds; lives as long as the borrowed block.
    unsafe { &*(block.as_ptr().add(off) as *const AtomicU32) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spsc_across_threads_in_order() {
        let b = Arc::new(MemBlock::new(1 << 16, "ring").unwrap());
        let l = RingLayout {
            off: 0,
            slots: 64,
            slot: 64,
        };
        let mut p = Producer::new(b.clone(), l, true);
        let mut c = Consumer::new(b, l);
        let n = 100_000u64;
        let t = std::thread::spawn(move || {
            let mut next = 0u64;
            let mut buf = [0u8; 64];
            while next < n {
                let a = c.available().unwrap();
                for _ in 0..a {
                    c.pop_into(&mut buf);
                    assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), next);
                    next += 1;
                }
                c.release();
            }
        });
        let mut i = 0u64;
        while i < n {
            let f = p.free().unwrap();
            for _ in 0..f.min((n - i) as u32) {
                p.write_with(|s| s[..8].copy_from_slice(&i.to_le_bytes()));
                i += 1;
            }
            p.publish();
        }
        t.join().unwrap();
    }

    #[test]
    fn corrupt_indices_are_detected() {
        let b = Arc::new(MemBlock::new(1 << 16, "ring").unwrap());
        let l = RingLayout {
            off: 0,
            slots: 8,
            slot: 64,
        };
        let mut p = Producer::new(b.clone(), l, true);
        let mut c = Consumer::new(b.clone(), l);
        // A hostile producer claims 1000 entries, or stamps slots out of
        // order: nothing becomes available.
        flag(&b, 64).store(1000, Ordering::Release);
        flag(&b, CTRL + 64 - 8).store(7, Ordering::Release);
        flag(&b, CTRL + 2 * 64 - 8).store(2, Ordering::Release);
        assert_eq!(c.available(), Ok(0));
        flag(&b, CTRL + 2 * 64 - 8).store(0, Ordering::Release);
        // A hostile consumer claims to be ahead of the tail.
        for _ in 0..8 {
            p.write_with(|_| {});
        }
        p.publish();
        assert_eq!(p.free(), Ok(0));
        flag(&b, 0).store(9, Ordering::Release);
        assert_eq!(p.free(), Err(Corrupt));
    }
}
