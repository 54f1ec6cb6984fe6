//! The soft NIC's key table: MRs and MWs, looked up in O(1) by rkey.
//!
//! rkey = index << tag_bits | key tag, where the index takes the bits the
//! table's capacity needs and the tag the rest (at most 20 bits): 18 bits
//! with the default 16 384 keys. Every bind and invalidate bumps the tag, so
//! a window's old rkey matches again only after 2^tag_bits / 2 bind +
//! invalidate cycles of that window (131 072 by default; with type-2
//! windows, and only on the connection it was bound to). Entries are read by the
//! responder without locks through a per-entry sequence lock; writers (bind,
//! invalidate, register) take the entry exclusively by making its sequence odd.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::fabric::{Access, FabricError, Result};

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyKind {
    /// Unused slot.
    Free = 0,
    /// A memory region (PD-wide).
    Mr = 1,
    /// A memory window (bound to one QP while valid).
    Mw = 2,
}

/// A consistent snapshot of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySnapshot {
    /// Kind of object.
    pub kind: KeyKind,
    /// Current key tag (the low `tag_bits` of the rkey).
    pub tag: u32,
    /// True while the key grants access (MR registered / MW bound).
    pub valid: bool,
    /// Access rights.
    pub access: Access,
    /// Protection domain.
    pub pd: u32,
    /// QP the window is bound to (0 for MRs: any QP of the PD).
    pub bound_qpn: u32,
    /// First byte (virtual address).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

struct Entry {
    seq: AtomicU32,
    /// tag (20) | kind (2) << 20 | valid (1) << 22 | access (8) << 24 | pd (32) << 32
    meta: AtomicU64,
    bound_qpn: AtomicU32,
    addr: AtomicU64,
    len: AtomicU64,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            seq: AtomicU32::new(0),
            meta: AtomicU64::new(0),
            bound_qpn: AtomicU32::new(0),
            addr: AtomicU64::new(0),
            len: AtomicU64::new(0),
        }
    }
}

/// Widest key tag the entry's meta word holds.
const MAX_TAG_BITS: u32 = 20;

fn pack_meta(s: &KeySnapshot) -> u64 {
    (s.tag & ((1 << MAX_TAG_BITS) - 1)) as u64
        | (s.kind as u64) << 20
        | (s.valid as u64) << 22
        | ((s.access.0 & 0xff) as u64) << 24
        | (s.pd as u64) << 32
}

fn unpack(meta: u64, bound_qpn: u32, addr: u64, len: u64) -> KeySnapshot {
    KeySnapshot {
        tag: (meta & ((1 << MAX_TAG_BITS) - 1)) as u32,
        kind: match (meta >> 20) & 3 {
            1 => KeyKind::Mr,
            2 => KeyKind::Mw,
            _ => KeyKind::Free,
        },
        valid: (meta >> 22) & 1 == 1,
        access: Access(((meta >> 24) & 0xff) as u32),
        pd: (meta >> 32) as u32,
        bound_qpn,
        addr,
        len,
    }
}

/// Why a remote access was refused (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// Index outside the table or slot free.
    UnknownKey,
    /// Tag differs: a stale or forged rkey.
    StaleTag,
    /// Window unbound or MR deregistered.
    NotValid,
    /// Different protection domain.
    WrongPd,
    /// Window bound to another QP.
    WrongQp,
    /// Access rights missing.
    NoAccess,
    /// Range outside the window/region (or overflowing).
    OutOfBounds,
}

/// The key table.
pub struct KeyTable {
    entries: Box<[Entry]>,
    free: Mutex<Vec<u32>>,
    /// Bits of the key tag in an rkey (the rest is the index).
    tag_bits: u32,
}

impl KeyTable {
    /// A table with `capacity` slots (index 0 is never used, so rkey 0 is
    /// always invalid).
    pub fn new(capacity: u32) -> KeyTable {
        let capacity = capacity.clamp(2, 1 << 24);
        let entries: Vec<Entry> = (0..capacity).map(|_| Entry::new()).collect();
        // Pop from the end: low indices first.
        let free: Vec<u32> = (1..capacity).rev().collect();
        let index_bits = 32 - (capacity - 1).leading_zeros();
        KeyTable {
            entries: entries.into_boxed_slice(),
            free: Mutex::new(free),
            tag_bits: (32 - index_bits).min(MAX_TAG_BITS),
        }
    }

    /// Bits of the key tag: a window's rkey recurs after 2^tag_bits / 2
    /// bind + invalidate cycles of that window.
    pub fn tag_bits(&self) -> u32 {
        self.tag_bits
    }

    /// The rkey of slot `idx` with tag `tag`.
    #[inline]
    fn key(&self, idx: u32, tag: u32) -> u32 {
        idx << self.tag_bits | tag
    }

    /// (index, tag) of an rkey.
    #[inline]
    pub fn split(&self, key: u32) -> (u32, u32) {
        (key >> self.tag_bits, key & ((1 << self.tag_bits) - 1))
    }

    /// The tag after `tag` (wrapping within `tag_bits`).
    #[inline]
    fn next(&self, tag: u32) -> u32 {
        tag.wrapping_add(1) & ((1 << self.tag_bits) - 1)
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.entries.len() - 1 - self.free.lock().len()
    }

    /// Reads an entry consistently.
    #[inline]
    pub fn snapshot(&self, index: u32) -> Option<KeySnapshot> {
        let e = self.entries.get(index as usize)?;
        loop {
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let meta = e.meta.load(Ordering::Relaxed);
            let q = e.bound_qpn.load(Ordering::Relaxed);
            let addr = e.addr.load(Ordering::Relaxed);
            let len = e.len.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) == s1 {
                return Some(unpack(meta, q, addr, len));
            }
        }
    }

    /// Runs `f` on the entry with exclusive access and stores its result.
    fn update<R>(
        &self,
        index: u32,
        f: impl FnOnce(KeySnapshot) -> Result<(KeySnapshot, R)>,
    ) -> Result<R> {
        let e = self
            .entries
            .get(index as usize)
            .ok_or_else(|| FabricError::Invalid(format!("key index {index} out of range")))?;
        // Take the entry: even -> odd.
        let mut s = e.seq.load(Ordering::Relaxed);
        loop {
            if s & 1 == 1 {
                std::hint::spin_loop();
                s = e.seq.load(Ordering::Relaxed);
                continue;
            }
            match e
                .seq
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(v) => s = v,
            }
        }
        fence(Ordering::Release);
        let cur = unpack(
            e.meta.load(Ordering::Relaxed),
            e.bound_qpn.load(Ordering::Relaxed),
            e.addr.load(Ordering::Relaxed),
            e.len.load(Ordering::Relaxed),
        );
        let res = f(cur);
        if let Ok((new, _)) = &res {
            e.meta.store(pack_meta(new), Ordering::Relaxed);
            e.bound_qpn.store(new.bound_qpn, Ordering::Relaxed);
            e.addr.store(new.addr, Ordering::Relaxed);
            e.len.store(new.len, Ordering::Relaxed);
        }
        e.seq.store(s + 2, Ordering::Release);
        res.map(|(_, r)| r)
    }

    fn alloc_index(&self) -> Result<u32> {
        self.free.lock().pop().ok_or_else(|| {
            FabricError::Exhausted(format!(
                "key table full ({} MRs and MWs)",
                self.entries.len() - 1
            ))
        })
    }

    /// Registers an MR; returns its key (lkey = rkey in the soft NIC).
    pub fn add_mr(&self, pd: u32, addr: u64, len: u64, access: Access) -> Result<u32> {
        let idx = self.alloc_index()?;
        self.update(idx, |cur| {
            let s = KeySnapshot {
                kind: KeyKind::Mr,
                tag: self.next(cur.tag),
                valid: true,
                access,
                pd,
                bound_qpn: 0,
                addr,
                len,
            };
            Ok((s, self.key(idx, s.tag)))
        })
    }

    /// Gives an MR new access and a new key (rereg); old keys stop working.
    pub fn rereg_mr(&self, key: u32, access: Access) -> Result<u32> {
        let (idx, tag) = self.split(key);
        self.update(idx, |cur| {
            if cur.kind != KeyKind::Mr || !cur.valid || cur.tag != tag {
                return Err(FabricError::Invalid(format!(
                    "rereg: {key:#x} is not a live MR"
                )));
            }
            let s = KeySnapshot {
                tag: self.next(cur.tag),
                access,
                ..cur
            };
            Ok((s, self.key(idx, s.tag)))
        })
    }

    /// Deregisters an MR or frees a window: the key stops working at once and
    /// the slot is reused later (with a different tag).
    pub fn remove(&self, key: u32) -> Result<()> {
        let (idx, tag) = self.split(key);
        self.update(idx, |cur| {
            if cur.kind == KeyKind::Free || cur.tag != tag {
                return Err(FabricError::Invalid(format!(
                    "key {key:#x} is not registered (stale or already removed)"
                )));
            }
            let s = KeySnapshot {
                kind: KeyKind::Free,
                tag: self.next(cur.tag),
                valid: false,
                bound_qpn: 0,
                ..cur
            };
            Ok((s, ()))
        })?;
        self.free.lock().push(idx);
        Ok(())
    }

    /// Allocates an unbound window; returns (handle = index, rkey).
    pub fn add_mw(&self, pd: u32) -> Result<(u32, u32)> {
        let idx = self.alloc_index()?;
        let rkey = self.update(idx, |cur| {
            let s = KeySnapshot {
                kind: KeyKind::Mw,
                tag: self.next(cur.tag),
                valid: false,
                access: Access::NONE,
                pd,
                bound_qpn: 0,
                addr: 0,
                len: 0,
            };
            Ok((s, self.key(idx, s.tag)))
        })?;
        Ok((idx, rkey))
    }

    /// Current rkey of a window handle (0 when the handle is not a window).
    pub fn mw_rkey(&self, handle: u32) -> u32 {
        match self.snapshot(handle) {
            Some(s) if s.kind == KeyKind::Mw => self.key(handle, s.tag),
            _ => 0,
        }
    }

    /// Binds window `handle` over `[addr, addr+len)` inside MR `lkey`,
    /// reachable only through local QP `qpn` in `pd`. Returns the new rkey.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_mw(
        &self,
        handle: u32,
        pd: u32,
        qpn: u32,
        lkey: u32,
        addr: u64,
        len: u64,
        access: Access,
    ) -> Result<u32> {
        let (li, lt) = self.split(lkey);
        let mr = self
            .snapshot(li)
            .filter(|m| m.kind == KeyKind::Mr && m.valid && m.tag == lt)
            .ok_or_else(|| {
                FabricError::Invalid(format!("bind: lkey {lkey:#x} is not a live MR"))
            })?;
        if mr.pd != pd {
            return Err(FabricError::Invalid(format!(
                "bind: MR {lkey:#x} is in PD {}, window in PD {pd}",
                mr.pd
            )));
        }
        if !mr.access.contains(Access::MW_BIND) {
            return Err(FabricError::Invalid(format!(
                "bind: MR {lkey:#x} lacks MW_BIND access"
            )));
        }
        let remote = Access(
            access.0 & (Access::REMOTE_READ.0 | Access::REMOTE_WRITE.0 | Access::REMOTE_ATOMIC.0),
        );
        // As verbs (IBTA C10-73/C10-74, rxe_check_bind_mw): the MR needs
        // MW_BIND, and a window that grants remote writes or atomics needs
        // an MR with local write. The MR's own remote rights do not limit
        // the window, so a memory node registers its region without any
        // remote right: its MR key then opens nothing remotely, and only
        // windows (bound to one connection) reach the memory.
        let writes = Access(Access::REMOTE_WRITE.0 | Access::REMOTE_ATOMIC.0);
        if remote.0 & writes.0 != 0 && !mr.access.contains(Access::LOCAL_WRITE) {
            return Err(FabricError::Invalid(format!(
                "bind: a writable window ({:#x}) needs an MR with local write (MR access {:#x})",
                access.0, mr.access.0
            )));
        }
        let end = addr
            .checked_add(len)
            .ok_or_else(|| FabricError::Invalid("bind: window range overflows".into()))?;
        if addr < mr.addr || end > mr.addr + mr.len {
            return Err(FabricError::Invalid(format!(
                "bind: window [{addr:#x}, +{len}) outside MR [{:#x}, +{})",
                mr.addr, mr.len
            )));
        }
        self.update(handle, |cur| {
            if cur.kind != KeyKind::Mw {
                return Err(FabricError::Invalid(format!(
                    "bind: handle {handle} is not a window"
                )));
            }
            if cur.pd != pd {
                return Err(FabricError::Invalid(format!(
                    "bind: window {handle} is in PD {}, QP in PD {pd}",
                    cur.pd
                )));
            }
            let s = KeySnapshot {
                tag: self.next(cur.tag),
                valid: true,
                access: remote,
                bound_qpn: qpn,
                addr,
                len,
                ..cur
            };
            Ok((s, self.key(handle, s.tag)))
        })
    }

    /// Invalidates window `handle`; returns the new (unusable) rkey.
    pub fn invalidate_mw(&self, handle: u32) -> Result<u32> {
        self.update(handle, |cur| {
            if cur.kind != KeyKind::Mw {
                return Err(FabricError::Invalid(format!(
                    "invalidate: handle {handle} is not a window"
                )));
            }
            let s = KeySnapshot {
                tag: self.next(cur.tag),
                valid: false,
                access: Access::NONE,
                bound_qpn: 0,
                addr: 0,
                len: 0,
                ..cur
            };
            Ok((s, self.key(handle, s.tag)))
        })
    }

    /// Invalidates every window bound to local QP `qpn` (each takes a
    /// tag step, as [`KeyTable::invalidate_mw`]); returns how many. What a
    /// device whose windows do not survive a reset of their QP does
    /// (`SoftConfig::windows_survive_reset` off). O(table size).
    pub fn invalidate_bound_to(&self, qpn: u32) -> usize {
        let mut n = 0;
        for idx in 1..self.entries.len() as u32 {
            let bound = self
                .snapshot(idx)
                .is_some_and(|s| s.kind == KeyKind::Mw && s.valid && s.bound_qpn == qpn);
            // Re-checked under the entry's lock: a concurrent bind/unbind
            // decides first.
            if bound
                && self
                    .update(idx, |cur| {
                        if cur.kind != KeyKind::Mw || !cur.valid || cur.bound_qpn != qpn {
                            return Err(FabricError::Invalid(String::new()));
                        }
                        let s = KeySnapshot {
                            tag: self.next(cur.tag),
                            valid: false,
                            access: Access::NONE,
                            bound_qpn: 0,
                            addr: 0,
                            len: 0,
                            ..cur
                        };
                        Ok((s, ()))
                    })
                    .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// The responder's check: may a request arriving on local QP `qpn` of PD
    /// `pd` access `[addr, addr+len)` with `need` rights through `rkey`?
    /// Returns the address to touch.
    #[inline]
    pub fn check(
        &self,
        rkey: u32,
        pd: u32,
        qpn: u32,
        addr: u64,
        len: u64,
        need: Access,
    ) -> std::result::Result<u64, Denied> {
        let (idx, tag) = self.split(rkey);
        let s = self.snapshot(idx).ok_or(Denied::UnknownKey)?;
        if s.kind == KeyKind::Free {
            return Err(Denied::UnknownKey);
        }
        if s.tag != tag {
            return Err(Denied::StaleTag);
        }
        if !s.valid {
            return Err(Denied::NotValid);
        }
        if s.pd != pd {
            return Err(Denied::WrongPd);
        }
        if s.kind == KeyKind::Mw && s.bound_qpn != qpn {
            return Err(Denied::WrongQp);
        }
        if !s.access.contains(need) {
            return Err(Denied::NoAccess);
        }
        let end = addr.checked_add(len).ok_or(Denied::OutOfBounds)?;
        let wend = s.addr.checked_add(s.len).ok_or(Denied::OutOfBounds)?;
        if addr < s.addr || end > wend {
            return Err(Denied::OutOfBounds);
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reset does on a NIC whose windows die with it: exactly the
    /// windows bound to that QP become invalid with a new tag; a window
    /// bound again afterwards gets a key never seen before.
    #[test]
    fn invalidate_bound_to_kills_only_that_qps_windows() {
        let t = KeyTable::new(64);
        let lkey = t.add_mr(1, 0x1000, 0x1000, Access::ALL).unwrap();
        let (a, _) = t.add_mw(1).unwrap();
        let (b, _) = t.add_mw(1).unwrap();
        let (idle, i0) = t.add_mw(1).unwrap();
        let ra = t
            .bind_mw(a, 1, 7, lkey, 0x1000, 64, Access::WRITE_WINDOW)
            .unwrap();
        let rb = t
            .bind_mw(b, 1, 8, lkey, 0x1000, 64, Access::WRITE_WINDOW)
            .unwrap();
        assert_eq!(t.invalidate_bound_to(7), 1);
        assert!(t.check(ra, 1, 7, 0x1000, 8, Access::REMOTE_READ).is_err());
        assert_eq!(
            t.check(rb, 1, 8, 0x1000, 8, Access::REMOTE_READ),
            Ok(0x1000)
        );
        assert_eq!(t.mw_rkey(idle), i0, "an unbound window is untouched");
        assert_ne!(t.mw_rkey(a), ra, "the invalidation took a tag step");
        let again = t
            .bind_mw(a, 1, 7, lkey, 0x1000, 64, Access::WRITE_WINDOW)
            .unwrap();
        assert!(again != ra && again != t.key(a, 0));
        assert_eq!(
            t.check(again, 1, 7, 0x1000, 8, Access::REMOTE_READ),
            Ok(0x1000)
        );
        assert!(t.check(ra, 1, 7, 0x1000, 8, Access::REMOTE_READ).is_err());
        assert_eq!(t.invalidate_bound_to(9), 0);
    }

    #[test]
    fn window_lifecycle_and_stale_keys() {
        let t = KeyTable::new(64);
        let lkey = t.add_mr(1, 0x1000, 0x1000, Access::ALL).unwrap();
        let (h, r0) = t.add_mw(1).unwrap();
        assert_eq!(
            t.check(r0, 1, 7, 0x1000, 8, Access::REMOTE_READ),
            Err(Denied::NotValid)
        );
        let r1 = t
            .bind_mw(h, 1, 7, lkey, 0x1100, 64, Access::READ_WINDOW)
            .unwrap();
        assert_ne!(r1, r0);
        assert_eq!(t.mw_rkey(h), r1);
        assert_eq!(
            t.check(r1, 1, 7, 0x1100, 64, Access::REMOTE_READ),
            Ok(0x1100)
        );
        assert_eq!(
            t.check(r1, 1, 8, 0x1100, 8, Access::REMOTE_READ),
            Err(Denied::WrongQp)
        );
        assert_eq!(
            t.check(r1, 2, 7, 0x1100, 8, Access::REMOTE_READ),
            Err(Denied::WrongPd)
        );
        assert_eq!(
            t.check(r1, 1, 7, 0x1100, 65, Access::REMOTE_READ),
            Err(Denied::OutOfBounds)
        );
        assert_eq!(
            t.check(r1, 1, 7, 0x10ff, 1, Access::REMOTE_READ),
            Err(Denied::OutOfBounds)
        );
        assert_eq!(
            t.check(r1, 1, 7, u64::MAX, 2, Access::REMOTE_READ),
            Err(Denied::OutOfBounds)
        );
        assert_eq!(
            t.check(r1, 1, 7, 0x1100, 8, Access::REMOTE_WRITE),
            Err(Denied::NoAccess)
        );
        assert_eq!(
            t.check(r1, 1, 7, 0x1100, 8, Access::REMOTE_ATOMIC),
            Err(Denied::NoAccess)
        );
        assert_eq!(
            t.check(r0, 1, 7, 0x1100, 8, Access::REMOTE_READ),
            Err(Denied::StaleTag)
        );
        let r2 = t.invalidate_mw(h).unwrap();
        assert_eq!(
            t.check(r1, 1, 7, 0x1100, 8, Access::REMOTE_READ),
            Err(Denied::StaleTag)
        );
        assert_eq!(
            t.check(r2, 1, 7, 0x1100, 8, Access::REMOTE_READ),
            Err(Denied::NotValid)
        );
        // 1000 bind/unbind cycles: no old rkey works again (checked against
        // the 200 most recent; the 10 000-cycle test below checks them all).
        let mut old = vec![r0, r1, r2];
        for _ in 0..1000 {
            let r = t
                .bind_mw(h, 1, 7, lkey, 0x1000, 0x1000, Access::WRITE_WINDOW)
                .unwrap();
            for o in old.iter().rev().take(200) {
                assert!(t.check(*o, 1, 7, 0x1000, 8, Access::REMOTE_READ).is_err());
            }
            assert!(t.check(r, 1, 7, 0x1000, 8, Access::REMOTE_WRITE).is_ok());
            let u = t.invalidate_mw(h).unwrap();
            assert!(t.check(r, 1, 7, 0x1000, 8, Access::REMOTE_READ).is_err());
            old.push(r);
            old.push(u);
        }
    }

    /// The key-tag guarantee at the default table size (16 384 keys, 18-bit
    /// tags): one window bound and invalidated 10 000 times never gets an
    /// earlier rkey back, and no earlier rkey is ever accepted again. (With
    /// 8-bit tags, as before, a key recurred after 128 cycles.)
    #[test]
    fn a_window_cycled_10_000_times_never_accepts_an_earlier_rkey() {
        let t = KeyTable::new(16_384);
        assert_eq!(t.tag_bits(), 18);
        let lkey = t.add_mr(1, 0x1000, 0x1000, Access::ALL).unwrap();
        let (h, r0) = t.add_mw(1).unwrap();
        let mut seen = std::collections::HashSet::from([r0]);
        let mut old = vec![r0];
        for i in 0..10_000 {
            let r = t
                .bind_mw(h, 1, 7, lkey, 0x1000, 0x1000, Access::WRITE_WINDOW)
                .unwrap();
            assert!(seen.insert(r), "cycle {i}: rkey {r:#x} came back");
            assert_eq!(
                t.check(r, 1, 7, 0x1000, 8, Access::REMOTE_WRITE),
                Ok(0x1000)
            );
            // A spread of the older keys, every cycle (all of them below).
            for o in old.iter().step_by(97).chain(old.iter().rev().take(8)) {
                assert_eq!(
                    t.check(*o, 1, 7, 0x1000, 8, Access::REMOTE_READ),
                    Err(Denied::StaleTag),
                    "cycle {i}: old rkey {o:#x} accepted"
                );
            }
            let u = t.invalidate_mw(h).unwrap();
            assert!(seen.insert(u), "cycle {i}: rkey {u:#x} came back");
            old.push(r);
            old.push(u);
        }
        let r = t
            .bind_mw(h, 1, 7, lkey, 0x1000, 0x1000, Access::WRITE_WINDOW)
            .unwrap();
        for o in &old {
            assert!(t.check(*o, 1, 7, 0x1000, 8, Access::REMOTE_READ).is_err());
        }
        assert!(t.check(r, 1, 7, 0x1000, 8, Access::REMOTE_READ).is_ok());
    }

    #[test]
    fn tag_bits_follow_the_capacity() {
        assert_eq!(KeyTable::new(16).tag_bits(), 20);
        assert_eq!(KeyTable::new(1 << 14).tag_bits(), 18);
        assert_eq!(KeyTable::new((1 << 14) + 1).tag_bits(), 17);
        assert_eq!(KeyTable::new(1 << 24).tag_bits(), 8);
    }

    #[test]
    fn bind_validates_against_the_mr() {
        let t = KeyTable::new(16);
        let lkey = t.add_mr(1, 0x1000, 0x100, Access::ALL).unwrap();
        let nobind = t.add_mr(1, 0x1000, 0x100, Access::REMOTE_READ).unwrap();
        let (h, _) = t.add_mw(1).unwrap();
        assert!(t
            .bind_mw(h, 1, 1, lkey, 0x1000, 0x101, Access::READ_WINDOW)
            .is_err());
        assert!(t
            .bind_mw(h, 1, 1, lkey, u64::MAX, 2, Access::READ_WINDOW)
            .is_err());
        assert!(t
            .bind_mw(h, 2, 1, lkey, 0x1000, 1, Access::READ_WINDOW)
            .is_err());
        assert!(t
            .bind_mw(h, 1, 1, nobind, 0x1000, 1, Access::READ_WINDOW)
            .is_err());
        assert!(t
            .bind_mw(h, 1, 1, lkey ^ 1, 0x1000, 1, Access::READ_WINDOW)
            .is_err());
        assert!(t
            .bind_mw(t.split(lkey).0, 1, 1, lkey, 0x1000, 1, Access::READ_WINDOW)
            .is_err());
        t.remove(lkey).unwrap();
        assert!(t.check(lkey, 1, 1, 0x1000, 1, Access::REMOTE_READ).is_err());
        assert!(t.remove(lkey).is_err());
    }

    #[test]
    fn windows_over_an_mr_without_remote_rights() {
        let t = KeyTable::new(16);
        let local = Access(Access::LOCAL_WRITE.0 | Access::MW_BIND.0);
        let mr = t.add_mr(1, 0x1000, 0x100, local).unwrap();
        // The MR's own key opens nothing remotely.
        assert!(t.check(mr, 1, 1, 0x1000, 8, Access::REMOTE_READ).is_err());
        let (h, _) = t.add_mw(1).unwrap();
        let rkey = t
            .bind_mw(h, 1, 7, mr, 0x1000, 0x40, Access::WRITE_WINDOW)
            .unwrap();
        assert!(t.check(rkey, 1, 7, 0x1000, 8, Access::REMOTE_WRITE).is_ok());
        assert!(t
            .check(rkey, 1, 8, 0x1000, 8, Access::REMOTE_WRITE)
            .is_err());
        // A writable window needs local write on the MR (C10-74).
        let ro = t.add_mr(1, 0x1000, 0x100, Access::MW_BIND).unwrap();
        let (h2, _) = t.add_mw(1).unwrap();
        assert!(t
            .bind_mw(h2, 1, 7, ro, 0x1000, 8, Access::WRITE_WINDOW)
            .is_err());
        assert!(t
            .bind_mw(h2, 1, 7, ro, 0x1000, 8, Access::READ_WINDOW)
            .is_ok());
    }

    #[test]
    fn table_exhaustion_is_an_error() {
        let t = KeyTable::new(4);
        t.add_mw(1).unwrap();
        t.add_mw(1).unwrap();
        t.add_mw(1).unwrap();
        assert!(matches!(t.add_mw(1), Err(FabricError::Exhausted(_))));
    }
}
