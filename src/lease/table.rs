//! The memory node's lease table: one directory's lease contexts (slots
//! with 64-bit generations and owners), its pool of protection regions, the
//! node-wide conflict locks, and the decisions the directory takes on them:
//! who may touch a lease, what a two-sided access may reach, and, at a
//! deadline, whether the GC re-arms or closes. No I/O happens here: the
//! directory reads protection-region words and feeds them in, then carries
//! out what the table decided (bind, unbind, CAS).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::addr::{BufOff, RegionOff};
use super::pr::{Term, Word, MAX_UNITS};
use super::Rc;

/// One granted lease, as the directory keeps it.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Generation (unique on the node; a slot's next lease gets another).
    pub gen: u64,
    /// The client connection (the directory's peer index) that holds it.
    pub peer: usize,
    /// Write lease?
    pub write: bool,
    /// Region offset of the object.
    pub base: RegionOff,
    /// Object bytes.
    pub size: u64,
    /// Window over the object (handle), if bound.
    pub mw_buf: Option<u32>,
    /// Window over the protection region (handle), if bound.
    pub mw_pr: Option<u32>,
    /// Protection region index, if the lease has one.
    pub pr: Option<u32>,
    /// Conflict lock held (the object's buffer offset).
    pub lock: Option<BufOff>,
    /// No GC task (NO_GC or a zero term).
    pub no_gc: bool,
    /// Grant time and unit.
    pub term: Term,
    /// Units the GC last saw in the protection region.
    pub expect_units: u32,
    /// (hint, buffer offset, size) of memory allocated with the lease.
    pub alloc: Option<(u64, BufOff, u64)>,
}

/// What the GC does with a due task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcStep {
    /// The task is stale: the lease is gone or its slot reused.
    Stale,
    /// The lease was extended: run again at this deadline.
    Rearm(i64),
    /// Close the protection region by CAS from `from` to `to`, then revoke;
    /// if the CAS finds another value, run the task again now.
    Close {
        /// The word the GC saw.
        from: Word,
        /// The closed word.
        to: Word,
    },
    /// Revoke now (no protection region, or already closed).
    Revoke,
}

/// Why a two-sided access or a modification was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No live lease with this slot and generation.
    #[error("no live lease with slot {slot} generation {gen}")]
    NoLease {
        /// Slot named.
        slot: u32,
        /// Generation named.
        gen: u64,
    },
    /// The lease belongs to another client thread.
    #[error("lease slot {slot} belongs to another client thread")]
    NotOwner {
        /// Slot named.
        slot: u32,
    },
    /// The term ran out.
    #[error("the lease expired")]
    Expired,
    /// Outside the lease or beyond its access.
    #[error(
        "offset {offset} + {len} bytes ({op}) is outside the lease of {size} bytes or its access"
    )]
    Outside {
        /// Offset asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Lease bytes.
        size: u64,
        /// What was attempted.
        op: &'static str,
    },
}

impl Denied {
    /// The return code a client sees.
    pub fn rc(self) -> Rc {
        match self {
            Denied::Expired => Rc::LeaseLocalExpiredErr,
            Denied::Outside { .. } => Rc::RdmaProtectionErr,
            Denied::NoLease { .. } | Denied::NotOwner { .. } => Rc::Invalid,
        }
    }
}

/// One directory's lease contexts and protection regions.
#[derive(Debug)]
pub struct LeaseTable {
    slots: Vec<Option<Entry>>,
    free_slots: Vec<u32>,
    free_prs: Vec<u32>,
    /// Live leases per peer.
    held: HashMap<usize, u32>,
}

impl LeaseTable {
    /// A table of `n` lease slots and `n` protection regions.
    pub fn new(n: u32) -> LeaseTable {
        LeaseTable {
            slots: (0..n).map(|_| None).collect(),
            free_slots: (0..n).rev().collect(),
            free_prs: (0..n).rev().collect(),
            held: HashMap::new(),
        }
    }

    /// Live leases `peer` holds.
    pub fn held_by(&self, peer: usize) -> u32 {
        self.held.get(&peer).copied().unwrap_or(0)
    }

    /// Live leases the peers in `peers` hold together.
    pub fn held_by_all(&self, peers: std::ops::Range<usize>) -> u32 {
        peers.map(|p| self.held_by(p)).sum()
    }

    /// Leases currently granted.
    pub fn live(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    /// Takes a free slot, or None when all are granted.
    pub fn take_slot(&mut self) -> Option<u32> {
        self.free_slots.pop()
    }

    /// Takes a free protection region.
    pub fn take_pr(&mut self) -> Option<u32> {
        self.free_prs.pop()
    }

    /// Installs `e` in `slot` (from [`LeaseTable::take_slot`]).
    pub fn install(&mut self, slot: u32, e: Entry) {
        *self.held.entry(e.peer).or_default() += 1;
        self.slots[slot as usize] = Some(e);
    }

    /// Removes the lease in `slot` and frees the slot and its protection
    /// region; returns it so that the caller revokes what it holds.
    pub fn remove(&mut self, slot: u32) -> Option<Entry> {
        let e = self.remove_keeping_pr(slot)?;
        if let Some(pr) = e.pr {
            self.give_pr(pr);
        }
        Some(e)
    }

    /// Removes the lease in `slot` and frees the slot, but not its
    /// protection region: the caller gives that back with
    /// [`LeaseTable::give_pr`] once the region's window is unbound (a region
    /// still reachable by its old holder must not serve a new lease).
    pub fn remove_keeping_pr(&mut self, slot: u32) -> Option<Entry> {
        let e = self.slots.get_mut(slot as usize)?.take()?;
        if let Some(n) = self.held.get_mut(&e.peer) {
            *n = n.saturating_sub(1);
        }
        self.free_slots.push(slot);
        Some(e)
    }

    /// Gives back protection region `pr` (of a lease removed with
    /// [`LeaseTable::remove_keeping_pr`]).
    pub fn give_pr(&mut self, pr: u32) {
        self.free_prs.push(pr);
    }

    /// Slots of every live lease.
    pub fn live_slots(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&s| self.slots[s as usize].is_some())
            .collect()
    }

    /// The protection region of the lease in `slot`, if any.
    pub fn slot_pr(&self, slot: u32) -> Option<u32> {
        self.slots.get(slot as usize)?.as_ref()?.pr
    }

    /// The live lease `(slot, gen)`.
    pub fn get(&self, slot: u32, gen: u64) -> Option<&Entry> {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .filter(|e| e.gen == gen)
    }

    /// The live lease in `slot`, whatever its generation.
    pub fn entry(&self, slot: u32) -> Option<&Entry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The live lease `(slot, gen)` if `peer` holds it.
    pub fn owned(&self, peer: usize, slot: u32, gen: u64) -> Result<&Entry, Denied> {
        let e = self.get(slot, gen).ok_or(Denied::NoLease { slot, gen })?;
        if e.peer != peer {
            return Err(Denied::NotOwner { slot });
        }
        Ok(e)
    }

    /// The GC's step for the due task `(slot, gen)`, given the current word
    /// of the lease's protection region (None when it has none). A re-arm
    /// records the units seen. A word past [`MAX_UNITS`] cannot come from
    /// an honest extension (clients and the directory both cap): the holder
    /// wrote its region with a raw CAS or FAA, and the lease is closed.
    pub fn gc_step(&mut self, slot: u32, gen: u64, word: Option<Word>) -> GcStep {
        let Some(e) = self
            .slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .filter(|e| e.gen == gen)
        else {
            return GcStep::Stale;
        };
        let Some(w) = word else {
            return GcStep::Revoke;
        };
        if w.is_closed() {
            return GcStep::Revoke;
        }
        if w.units != e.expect_units && w.units <= MAX_UNITS {
            e.expect_units = w.units;
            return GcStep::Rearm(e.term.deadline(w.units));
        }
        GcStep::Close {
            from: w,
            to: w.closed(),
        }
    }
}

/// The deadline of `e` given its protection region's current word (None:
/// no region, one unit); a closed lease's deadline has passed.
pub fn deadline(e: &Entry, word: Option<Word>) -> i64 {
    match word {
        Some(w) if w.is_closed() => i64::MIN,
        Some(w) => e.term.deadline(w.units),
        None => e.term.deadline(1),
    }
}

/// What a two-sided access of `len` bytes at `offset` may reach: the
/// region offset, or why not. `write` covers WRITE, CAS and FAA.
pub fn check_access(
    e: &Entry,
    now: i64,
    ddl: i64,
    offset: u64,
    len: u64,
    write: bool,
) -> Result<RegionOff, Denied> {
    if !e.no_gc && ddl <= now {
        return Err(Denied::Expired);
    }
    let inside = offset.checked_add(len).is_some_and(|end| end <= e.size);
    if !inside || (write && !e.write) {
        return Err(Denied::Outside {
            offset,
            len,
            size: e.size,
            op: if write { "write" } else { "read" },
        });
    }
    e.base.checked_add(offset).ok_or(Denied::Outside {
        offset,
        len,
        size: e.size,
        op: "address",
    })
}

/// The node-wide conflict locks (`WITH_CONFLICT_DETECT`): one holder per
/// object offset at a time, across all directories of the node.
#[derive(Debug, Default)]
pub struct ConflictLocks {
    held: Mutex<HashSet<u64>>,
}

impl ConflictLocks {
    /// Takes the lock on `key`; false when someone holds it.
    pub fn try_lock(&self, key: BufOff) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.0)
    }
    /// Releases the lock on `key`.
    pub fn unlock(&self, key: BufOff) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::pr::CLOSED;

    fn entry(gen: u64, peer: usize) -> Entry {
        Entry {
            gen,
            peer,
            write: false,
            base: RegionOff(10_000),
            size: 64,
            pr: Some(0),
            term: Term {
                begin: 1_000,
                unit: 100,
            },
            expect_units: 1,
            ..Default::default()
        }
    }

    fn granted(t: &mut LeaseTable, gen: u64, peer: usize) -> (u32, u32) {
        let s = t.take_slot().unwrap();
        let pr = t.take_pr().unwrap();
        t.install(
            s,
            Entry {
                pr: Some(pr),
                ..entry(gen, peer)
            },
        );
        (s, pr)
    }

    #[test]
    fn slots_and_regions_are_reused_with_new_generations() {
        let mut t = LeaseTable::new(2);
        let (a, _) = granted(&mut t, 1, 0);
        let (b, _) = granted(&mut t, 2, 0);
        assert_eq!(t.live(), 2);
        assert!(t.take_slot().is_none(), "every slot granted");
        assert!(t.remove(a).is_some());
        assert!(t.remove(a).is_none(), "a second remove finds nothing");
        let (c, _) = granted(&mut t, 3, 0);
        assert_eq!(c, a, "the freed slot is reused");
        assert!(t.get(a, 1).is_none(), "the old generation is gone");
        assert!(t.get(c, 3).is_some());
        assert!(t.get(b, 2).is_some());
    }

    #[test]
    fn ownership_is_by_peer_and_generation() {
        let mut t = LeaseTable::new(4);
        let (s, _) = granted(&mut t, 9, 3);
        assert!(t.owned(3, s, 9).is_ok());
        assert_eq!(t.owned(4, s, 9).unwrap_err(), Denied::NotOwner { slot: s });
        assert_eq!(
            t.owned(3, s, 8).unwrap_err(),
            Denied::NoLease { slot: s, gen: 8 }
        );
        assert!(t.owned(3, 99, 9).is_err(), "slot out of range");
        assert_eq!(Denied::NotOwner { slot: 0 }.rc(), Rc::Invalid);
    }

    #[test]
    fn gc_closes_an_unextended_lease_and_rearms_an_extended_one() {
        let mut t = LeaseTable::new(1);
        let (s, _) = granted(&mut t, 5, 0);
        let w = Word::granted(7);
        assert_eq!(
            t.gc_step(s, 5, Some(w)),
            GcStep::Close {
                from: w,
                to: Word {
                    aba: 7,
                    units: CLOSED
                }
            }
        );
        let ext = Word { aba: 7, units: 4 };
        assert_eq!(t.gc_step(s, 5, Some(ext)), GcStep::Rearm(1_400));
        assert!(
            matches!(t.gc_step(s, 5, Some(ext)), GcStep::Close { .. }),
            "once the GC saw 4 units, the deadline after them closes"
        );
        assert_eq!(t.gc_step(s, 5, Some(ext.closed())), GcStep::Revoke);
        assert_eq!(t.gc_step(s, 5, None), GcStep::Revoke);
        assert_eq!(t.gc_step(s, 4, Some(w)), GcStep::Stale, "older generation");
        t.remove(s);
        assert_eq!(t.gc_step(s, 5, Some(w)), GcStep::Stale, "lease gone");
    }

    #[test]
    fn gc_closes_a_lease_whose_word_passed_the_cap() {
        let mut t = LeaseTable::new(1);
        let (s, _) = granted(&mut t, 5, 0);
        for units in [MAX_UNITS + 1, MAX_UNITS * 64, CLOSED - 1] {
            let w = Word { aba: 1, units };
            assert_eq!(
                t.gc_step(s, 5, Some(w)),
                GcStep::Close {
                    from: w,
                    to: w.closed()
                },
                "{units} units: past the cap is a violation, not an extension"
            );
        }
        let at_cap = Word {
            aba: 1,
            units: MAX_UNITS,
        };
        assert!(matches!(t.gc_step(s, 5, Some(at_cap)), GcStep::Rearm(_)));
    }

    #[test]
    fn leases_are_counted_per_peer() {
        let mut t = LeaseTable::new(8);
        let (a, _) = granted(&mut t, 1, 0);
        granted(&mut t, 2, 0);
        granted(&mut t, 3, 1);
        granted(&mut t, 4, 5);
        assert_eq!(t.held_by(0), 2);
        assert_eq!(t.held_by_all(0..4), 3);
        assert_eq!(t.held_by_all(4..8), 1);
        t.remove(a);
        assert_eq!(t.held_by(0), 1);
        t.remove(a);
        assert_eq!(t.held_by(0), 1, "a second remove changes nothing");
    }

    #[test]
    fn two_sided_access_is_bounded_by_the_lease() {
        let e = entry(1, 0);
        let ddl = deadline(&e, Some(Word::granted(0)));
        assert_eq!(ddl, 1_100);
        assert_eq!(
            check_access(&e, 1_050, ddl, 8, 8, false),
            Ok(RegionOff(10_008))
        );
        assert_eq!(
            check_access(&e, 1_100, ddl, 0, 8, false),
            Err(Denied::Expired)
        );
        assert_eq!(
            check_access(&e, 0, ddl, 60, 8, false).unwrap_err().rc(),
            Rc::RdmaProtectionErr
        );
        assert!(check_access(&e, 0, ddl, u64::MAX, 2, false).is_err());
        assert!(
            check_access(&e, 0, ddl, 0, 8, true).is_err(),
            "read lease refuses writes"
        );
        let w = Entry {
            write: true,
            ..e.clone()
        };
        assert!(check_access(&w, 0, ddl, 0, 8, true).is_ok());
        assert_eq!(deadline(&e, Some(Word::granted(0).closed())), i64::MIN);
        let forever = Entry { no_gc: true, ..e };
        assert!(check_access(&forever, i64::MAX, i64::MIN, 0, 8, false).is_ok());
    }

    #[test]
    fn conflict_locks_admit_one_holder() {
        let l = ConflictLocks::default();
        assert!(l.try_lock(BufOff(64)));
        assert!(!l.try_lock(BufOff(64)));
        assert!(l.try_lock(BufOff(128)));
        l.unlock(BufOff(64));
        assert!(l.try_lock(BufOff(64)));
    }
}
