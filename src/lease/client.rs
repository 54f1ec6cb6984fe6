//! The client's view of a lease: what the directory granted, the term and
//! units held, and the decisions a client makes without I/O (is it live,
//! what word does an extension CAS from and to, what deadline results).

use super::addr::{BufOff, Layout, RegionOff};
use super::cache::LeaseCache;
use super::flags::acquire;
use super::msg::AcquireResp;
use super::pr::{self, Refusal, Term, Word};
use super::AcquireStatus as St;

/// A lease held by a client thread.
#[derive(Clone, Debug)]
pub struct Lease {
    /// AcquireRequestStatus value (0: granted).
    pub status: u8,
    /// Memory node.
    pub node: u16,
    /// Directory.
    pub dir: u16,
    /// The object's region offset on the memory node.
    pub base: RegionOff,
    /// Object bytes.
    pub size: u64,
    /// rkey of the object's window (or MR).
    pub rkey: u32,
    /// rkey of the protection-region window (0: none).
    pub pr_rkey: u32,
    /// Region offset of the protection region.
    pub pr_off: RegionOff,
    /// Server time at grant and the unit.
    pub term: Term,
    /// PR aba at grant.
    pub aba: u32,
    /// Units granted so far.
    pub units: u32,
    /// Deadline (i64::MAX: never).
    pub ddl: i64,
    /// Server slot.
    pub slot: u32,
    /// Generation (never reused by the memory node).
    pub generation: u64,
    /// Write lease?
    pub write: bool,
    /// Auto-extend step (units of the next automatic extension).
    pub auto_step: u32,
    /// Still held (false after relinquish).
    pub live: bool,
    /// Auto-extend found the protection region closed (the GC revoked the
    /// lease): it stops trying.
    pub closed: bool,
    /// `WITH_CACHE` entries.
    pub cache: LeaseCache,
}

impl Lease {
    /// A lease that was not granted, with status `status`.
    pub fn failed(status: u8, node: u16, dir: u16) -> Lease {
        Lease {
            status,
            node,
            dir,
            base: RegionOff(0),
            size: 0,
            rkey: 0,
            pr_rkey: 0,
            pr_off: RegionOff(0),
            term: Term { begin: 0, unit: 0 },
            aba: 0,
            units: 0,
            ddl: 0,
            slot: u32::MAX,
            generation: 0,
            write: false,
            auto_step: 1,
            closed: false,
            live: false,
            cache: LeaseCache::default(),
        }
    }

    /// A NO_RPC lease: no server contact, no window, never expires (the
    /// original's client-only lease).
    pub fn local(node: u16, dir: u16, base: RegionOff, size: u64, write: bool) -> Lease {
        let mut l = Lease::failed(St::Success as u8, node, dir);
        l.base = base;
        l.size = size;
        l.ddl = i64::MAX;
        l.write = write;
        l.live = true;
        l
    }

    /// The lease a directory's reply grants (`a.status` must be 0).
    pub fn granted(
        node: u16,
        dir: u16,
        size: u64,
        write: bool,
        flag: u64,
        ns: u64,
        a: &AcquireResp,
    ) -> Lease {
        let no_gc = flag & acquire::NO_GC != 0 || ns == 0;
        let term = Term {
            begin: a.begin_term,
            unit: a.ns_per_unit,
        };
        Lease {
            status: St::Success as u8,
            node,
            dir,
            base: RegionOff(a.base),
            size,
            rkey: a.rkey,
            pr_rkey: a.pr_rkey,
            pr_off: RegionOff(a.pr_off),
            term,
            aba: a.aba,
            units: 1,
            ddl: if no_gc { i64::MAX } else { term.deadline(1) },
            slot: a.slot,
            generation: a.generation,
            write,
            auto_step: 1,
            // ONLY_ALLOCATION hands back an address, not a lease.
            closed: false,
            live: flag & acquire::ONLY_ALLOCATION == 0,
            cache: LeaseCache::default(),
        }
    }

    /// Granted and not relinquished.
    pub fn success(&self) -> bool {
        self.status == St::Success as u8 && self.live
    }

    /// Why it was not granted (AcquireRequestStatus value).
    pub fn ec(&self) -> u8 {
        self.status
    }

    /// True for leases without a deadline (NO_GC, ns 0, NO_RPC).
    pub fn never_expires(&self) -> bool {
        self.ddl == i64::MAX
    }

    /// True when the memory node keeps a context for this lease (a
    /// relinquish must reach it).
    pub fn has_server_context(&self) -> bool {
        self.slot != u32::MAX
    }

    /// The object's buffer offset on its node, given that node's layout.
    pub fn buf_off(&self, node_layout: &Layout) -> BufOff {
        node_layout.buf(self.base).unwrap_or_default()
    }

    /// The word a one-sided extension by `ns` CASes from and to, or why it
    /// cannot be tried.
    pub fn extension(&self, ns: u64) -> Result<(Word, Word), Refusal> {
        if !self.live || self.pr_rkey == 0 {
            return Err(Refusal::NoTerm);
        }
        let more = self.term.units_for(ns).ok_or(Refusal::NoTerm)?;
        let cur = Word {
            aba: self.aba,
            units: self.units,
        };
        Ok((cur, cur.extended(more)?))
    }

    /// Records `units` as held (after an honoured extension).
    pub fn set_units(&mut self, units: u32) {
        self.units = units;
        self.ddl = self.term.deadline(units);
    }

    /// The region offset of the PR's extension word.
    pub fn pr_word(&self) -> RegionOff {
        RegionOff(self.pr_off.0 + pr::WORD)
    }

    /// Marks the lease given back.
    pub fn release(&mut self) {
        self.live = false;
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp() -> AcquireResp {
        AcquireResp {
            status: 0,
            rkey: 11,
            pr_rkey: 12,
            base: 8192,
            pr_off: 4096,
            begin_term: 1_000,
            ns_per_unit: 100,
            slot: 3,
            generation: 77,
            aba: 5,
        }
    }

    #[test]
    fn grant_sets_term_and_deadline() {
        let l = Lease::granted(1, 0, 64, true, 0, 100, &resp());
        assert!(l.success());
        assert_eq!(l.ddl, 1_100);
        assert_eq!(l.pr_word(), RegionOff(4096 + pr::WORD));
        let forever = Lease::granted(1, 0, 64, true, acquire::NO_GC, 100, &resp());
        assert!(forever.never_expires());
        let alloc = Lease::granted(1, 0, 64, true, acquire::ONLY_ALLOCATION, 0, &resp());
        assert!(!alloc.success(), "ONLY_ALLOCATION grants no lease");
    }

    #[test]
    fn extension_words_and_new_deadline() {
        let mut l = Lease::granted(1, 0, 64, true, 0, 100, &resp());
        let (from, to) = l.extension(250).unwrap();
        assert_eq!(from, Word { aba: 5, units: 1 });
        assert_eq!(to, Word { aba: 5, units: 4 });
        l.set_units(to.units);
        assert_eq!(l.ddl, 1_400);
        l.release();
        assert_eq!(l.extension(1), Err(Refusal::NoTerm));
        let mut nopr = Lease::granted(1, 0, 64, true, 0, 100, &resp());
        nopr.pr_rkey = 0;
        assert_eq!(nopr.extension(1), Err(Refusal::NoTerm));
    }

    #[test]
    fn buffer_offset_uses_the_given_layout() {
        let l = Lease::granted(1, 0, 64, true, 0, 100, &resp());
        let a = Layout::new(1, 10, 1 << 20, 0, 0);
        assert_eq!(l.buf_off(&a), BufOff(8192 - a.internal));
        let wide = Layout::new(4, 4096, 1 << 20, 0, 0);
        assert_eq!(l.buf_off(&wide), BufOff(0), "below the buffer: no offset");
    }
}
