//! Splitting a subtable under the resize lock (extendible hashing; see
//! the module docs of `kv` for the protocol).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::io::{ready, Blocking, KvIo};
use super::layout::{self, hdr, slot, sub, Hashes, SLOTS_PER_GROUP};
use super::{Access, KvTable};
use crate::client::{ClientThread, Lease};
use crate::lease::flags::{acquire, rw};
use crate::lease::{AcquireStatus, Rc};
use crate::{Error, Result};

/// Where [`KvTable::split_and_die`] stops.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitPhase {
    /// After freezing the subtable and filling the new ones.
    Frozen,
    /// After the directory names the new subtables.
    Published,
}

/// Why a split stopped: its resize lock ran out of its term (a write
/// through the lock refused, or its extension; see
/// [`KvTable::split_or_retry`]), or anything else.
enum SplitErr {
    LockLost(Error),
    Other(Error),
}
use SplitErr::{LockLost, Other};

impl From<Error> for SplitErr {
    fn from(e: Error) -> Self {
        Other(e)
    }
}

impl SplitErr {
    fn into_error(self) -> Error {
        match self {
            LockLost(e) | Other(e) => e,
        }
    }
}

/// What a step of a split returns: a lost lock told apart from the rest.
type SplitResult<T> = std::result::Result<T, SplitErr>;

impl KvTable {
    /// Takes the resize lock: a write lease with conflict detection on the
    /// header's lock word, term `lock_ns`. Waits while another client
    /// holds it (until `patience`); dropping the returned lease without
    /// relinquishing it keeps the lock until the term ends.
    pub fn lock_resize(&mut self, ct: &mut ClientThread) -> Result<Lease> {
        ready(self.lock_resize_in(&Blocking::new(ct)))
    }

    async fn lock_resize_in(&self, io: &impl KvIo) -> Result<Lease> {
        let until = Instant::now() + self.params.patience;
        loop {
            if let Some(l) = self.try_lock_resize_in(io).await? {
                return Ok(l);
            }
            if Instant::now() >= until {
                return Err(Error::Timeout(format!(
                    "kv table at node {} offset {:#x}: the resize lock stayed taken for {:?}",
                    self.node, self.params.base, self.params.patience
                )));
            }
            io.pause(Duration::from_micros(100)).await;
        }
    }

    /// One attempt at the resize lock (None: someone holds it).
    pub fn try_lock_resize(&mut self, ct: &mut ClientThread) -> Result<Option<Lease>> {
        ready(self.try_lock_resize_in(&Blocking::new(ct)))
    }

    async fn try_lock_resize_in(&self, io: &impl KvIo) -> Result<Option<Lease>> {
        if self.access != Access::ReadWrite {
            return Err(Error::Invalid(
                "kv resize needs a read-write handle".to_string(),
            ));
        }
        let l = io
            .get_wlease(
                self.node,
                self.dir,
                self.params.base,
                0,
                self.geo.total(),
                self.lock_term(),
                acquire::WITH_CONFLICT_DETECT,
            )
            .await?;
        if l.success() {
            return Ok(Some(l));
        }
        if l.status == AcquireStatus::LockedErr as u8 {
            return Ok(None);
        }
        Err(Error::Refused {
            rc: Rc::Invalid,
            ctx: format!(
                "kv resize lock at node {} offset {:#x}: acquire status {}",
                self.node, self.params.base, l.status
            ),
        })
    }

    /// Gives the resize lock back.
    pub fn unlock_resize(&mut self, ct: &mut ClientThread, lock: Lease) -> Result<()> {
        ready(self.unlock_resize_in(&Blocking::new(ct), lock))
    }

    async fn unlock_resize_in(&self, io: &impl KvIo, mut lock: Lease) -> Result<()> {
        match io.relinquish(&mut lock, 0, 0).await? {
            Rc::Ok => Ok(()),
            rc => Err(Error::Refused {
                rc,
                ctx: "relinquishing the kv resize lock".into(),
            }),
        }
    }

    /// Splits the subtable `key` hashes to now (a resize by hand). A lock
    /// that runs out of its term in the middle (a holder descheduled on a
    /// loaded host) is taken again and the split finished, until
    /// `KvParams::patience` has passed.
    pub fn split_subtable_of(&mut self, ct: &mut ClientThread, key: &[u8]) -> Result<()> {
        let until = Instant::now() + self.params.patience;
        loop {
            match self.split_subtable_once(ct, key) {
                Err(LockLost(e)) => {
                    if Instant::now() >= until {
                        return Err(e);
                    }
                }
                Err(Other(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    /// One attempt of [`KvTable::split_subtable_of`]: a lost lock is an
    /// error (test hook: what a late holder is told).
    #[doc(hidden)]
    pub fn try_split_subtable_of(&mut self, ct: &mut ClientThread, key: &[u8]) -> Result<()> {
        self.split_subtable_once(ct, key)
            .map_err(SplitErr::into_error)
    }

    fn split_subtable_once(
        &mut self,
        ct: &mut ClientThread,
        key: &[u8],
    ) -> std::result::Result<(), SplitErr> {
        let h = Hashes::of(key);
        let io = Blocking::new(ct);
        ready(self.load_directory(&io))?;
        let s = ready(self.subtable_of(&io, &h))?;
        ready(self.split_once(&io, s))
    }

    /// Test hook: a client that dies in the middle of a split. Takes the
    /// lock, records the split of `key`'s subtable, and stops after
    /// `phase` without unlocking (the lock lease is dropped
    /// unrelinquished): [`SplitPhase::Frozen`] leaves the subtable frozen,
    /// [`SplitPhase::Published`] leaves the directory pointing at the new
    /// subtables with the split still recorded as pending. Returns the
    /// lock lease's deadline (the memory node's clock, ns): the lock is
    /// held until then.
    #[doc(hidden)]
    pub fn split_and_die(
        &mut self,
        ct: &mut ClientThread,
        key: &[u8],
        phase: SplitPhase,
    ) -> Result<i64> {
        let h = Hashes::of(key);
        let io = Blocking::new(ct);
        ready(self.load_directory(&io))?;
        let s = ready(self.subtable_of(&io, &h))?;
        let lock = RefCell::new(ready(self.lock_resize_in(&io))?);
        let (a, b) = ready(self.plan_split(&io, s, &lock))
            .map_err(SplitErr::into_error)?
            .ok_or_else(|| {
                Error::Invalid(format!("kv split_and_die: subtable {s} is already retired"))
            })?;
        ready(self.run_split(&io, s, a, b, &lock, Some(phase))).map_err(SplitErr::into_error)?;
        let ddl = lock.borrow().ddl;
        drop(lock);
        ready(self.load_directory(&io))?;
        Ok(ddl)
    }

    /// Splits subtable `s` unless someone already did (takes the lock,
    /// finishes a pending split first, then splits `s` if it is still
    /// live), for an operation that needs the split and retries: a resize
    /// lock that ran out of its term in the middle (its holder descheduled
    /// past `lock_ns` on a loaded host) is not an error of the operation.
    /// What the split did stays recorded in the header; the operation
    /// looks again and whoever holds the lock next (this handle, usually)
    /// finishes it.
    pub(super) async fn split_or_retry(&self, io: &impl KvIo, s: u64) -> Result<()> {
        match self.split_once(io, s).await {
            Ok(()) => Ok(()),
            Err(LockLost(e)) => {
                tracing::debug!(s, "kv: the resize lock ran out during a split: {e}");
                Ok(())
            }
            Err(Other(e)) => Err(e),
        }
    }

    async fn split_once(&self, io: &impl KvIo, s: u64) -> SplitResult<()> {
        let lock = RefCell::new(self.lock_resize_in(io).await?);
        let r = self.split_locked(io, s, &lock).await;
        {
            let mut st = self.st.borrow_mut();
            match &r {
                Err(LockLost(_)) => {
                    st.stats.locks_lost += 1;
                    st.lock_backoff = (st.lock_backoff + 1).min(super::LOCK_BACKOFF_MAX);
                }
                Ok(()) => st.lock_backoff = 0,
                Err(Other(_)) => {}
            }
        }
        // A lost lock is gone: nothing to unlock.
        let u = match &r {
            Err(LockLost(_)) => Ok(()),
            _ => self.unlock_resize_in(io, lock.into_inner()).await,
        };
        // Read the directory again (the split may have published).
        self.load_directory(io).await?;
        r?;
        Ok(u?)
    }

    async fn split_locked(&self, io: &impl KvIo, s: u64, lock: &RefCell<Lease>) -> SplitResult<()> {
        self.finish_pending(io, lock).await?;
        if let Some((a, b)) = self.plan_split(io, s, lock).await? {
            self.run_split(io, s, a, b, lock, None).await?;
        }
        Ok(())
    }

    /// Completes the split the header records, if any.
    async fn finish_pending(&self, io: &impl KvIo, lock: &RefCell<Lease>) -> SplitResult<()> {
        let b = self.t_read(io, hdr::PENDING_S, 24).await?;
        let w: Vec<u64> = layout::words(&b).collect();
        if w[0] != 0 {
            self.run_split(io, w[0] - 1, w[1], w[2], lock, None).await?;
        }
        Ok(())
    }

    /// Records a split of `s` into two new subtables (None when `s` is
    /// retired already).
    async fn plan_split(
        &self,
        io: &impl KvIo,
        s: u64,
        lock: &RefCell<Lease>,
    ) -> SplitResult<Option<(u64, u64)>> {
        let sh = self.t_word(io, self.geo.sub_header(s)).await?;
        if sh & sub::VALID == 0 || sh & sub::RETIRED != 0 {
            return Ok(None);
        }
        let l = sub::depth(sh);
        let g = self.t_word(io, hdr::GLOBAL_DEPTH).await? as u32;
        if l >= self.geo.max_depth || (l == g && g >= self.geo.max_depth) {
            return Err(Other(Error::NoMem(format!(
                "kv table at node {} offset {:#x} is full: subtable {s} has local depth {l}, \
                 the most the directory allows (max depth {})",
                self.node, self.params.base, self.geo.max_depth
            ))));
        }
        let next = self.t_word(io, hdr::NEXT_SUBTABLE).await?;
        if next + 2 > self.geo.max_subtables {
            return Err(Other(Error::NoMem(format!(
                "kv table at node {} offset {:#x}: no room for two more subtables ({next} of {})",
                self.node, self.params.base, self.geo.max_subtables
            ))));
        }
        self.l_write(io, lock, hdr::NEXT_SUBTABLE, &(next + 2).to_le_bytes())
            .await?;
        self.l_write(
            io,
            lock,
            hdr::PENDING_A,
            &layout::bytes_of(&[next, next + 1]),
        )
        .await?;
        self.l_write(io, lock, hdr::PENDING_S, &(s + 1).to_le_bytes())
            .await?;
        Ok(Some((next, next + 1)))
    }

    /// The resize lock's term: `lock_ns`, doubled for each split in a row
    /// that lost it.
    fn lock_term(&self) -> u64 {
        let k = self.st.borrow().lock_backoff.min(super::LOCK_BACKOFF_MAX);
        self.params.lock_ns.max(1).saturating_mul(1 << k)
    }

    /// Keeps the lock alive between phases; an error when it was lost
    /// (noted for [`KvTable::split_or_retry`]).
    async fn keep_lock(&self, io: &impl KvIo, lock: &RefCell<Lease>) -> SplitResult<()> {
        let mut l = lock.borrow().clone();
        let r = io.extend(&mut l, self.lock_term(), 0).await;
        *lock.borrow_mut() = l;
        match r {
            Ok(Rc::Ok) => Ok(()),
            r => Err(LockLost(Error::Refused {
                rc: r.as_ref().map_or(Rc::Invalid, |rc| *rc),
                ctx: format!(
                    "kv resize lock at node {} offset {:#x} could not be extended ({r:?}): the \
                     split stops; the next holder finishes it",
                    self.node, self.params.base
                ),
            })),
        }
    }

    /// CASes every slot of `s` to frozen; returns the frozen words.
    async fn freeze(&self, io: &impl KvIo, s: u64, lock: &RefCell<Lease>) -> SplitResult<Vec<u64>> {
        self.keep_lock(io, lock).await?;
        let base = self.geo.subtable(s);
        let b = self.t_read(io, base, self.geo.sub_bytes() as usize).await?;
        let mut ws: Vec<u64> = layout::words(&b).collect();
        for (i, w) in ws.iter_mut().enumerate() {
            let at = base + 8 * i as u64;
            while *w & slot::FROZEN == 0 {
                let old = self.l_cas(io, lock, at, *w, *w | slot::FROZEN).await?;
                if old == *w {
                    *w |= slot::FROZEN;
                } else {
                    *w = old;
                }
            }
        }
        Ok(ws)
    }

    /// Freezes `s`, fills `a` and `b` from it, points the directory at
    /// them and retires `s` (stopping after `die_after`, for tests). Every
    /// step can be redone, except that once the directory names `a` or `b`
    /// they are live (clients update them and free the blocks `s` still
    /// points at), so a redo then only finishes the directory.
    async fn run_split(
        &self,
        io: &impl KvIo,
        s: u64,
        a: u64,
        b: u64,
        lock: &RefCell<Lease>,
        die_after: Option<SplitPhase>,
    ) -> SplitResult<()> {
        let sh = self.t_word(io, self.geo.sub_header(s)).await?;
        let (l, suffix) = (sub::depth(sh), sub::suffix(sh));
        let g = self.t_word(io, hdr::GLOBAL_DEPTH).await? as u32;
        let d = self.t_read(io, self.geo.dir(), 8usize << g).await?;
        let published = layout::words(&d).any(|e| e == a + 1 || e == b + 1);
        if !published {
            self.fill_halves(io, s, a, b, l, suffix, lock).await?;
            if die_after == Some(SplitPhase::Frozen) {
                return Ok(());
            }
        }
        self.publish_split(io, s, a, b, l, lock).await?;
        if die_after == Some(SplitPhase::Published) {
            return Ok(());
        }
        self.l_write(
            io,
            lock,
            self.geo.sub_header(s),
            &(sh | sub::RETIRED).to_le_bytes(),
        )
        .await?;
        self.l_write(io, lock, hdr::PENDING_S, &0u64.to_le_bytes())
            .await?;
        self.st.borrow_mut().stats.splits += 1;
        tracing::debug!(s, a, b, depth = l + 1, "kv: split");
        Ok(())
    }

    /// Freezes `s` and writes its entries into `a` (hash bit l = 0) and `b`
    /// with their headers.
    #[allow(clippy::too_many_arguments)]
    async fn fill_halves(
        &self,
        io: &impl KvIo,
        s: u64,
        a: u64,
        b: u64,
        l: u32,
        suffix: u64,
        lock: &RefCell<Lease>,
    ) -> SplitResult<()> {
        let ws = self.freeze(io, s, lock).await?;
        self.keep_lock(io, lock).await?;
        let n = ws.len();
        let (mut wa, mut wb) = (vec![0u64; n], vec![0u64; n]);
        let mut read = 0;
        for (i, &w) in ws.iter().enumerate() {
            if slot::is_empty(w) {
                continue;
            }
            // Reading every block of a subtable one by one is the split's
            // longest phase: the lock is extended along the way.
            read += 1;
            if read % 16 == 0 {
                self.keep_lock(io, lock).await?;
            }
            let blk = self.kv_read(io, slot::off(w), slot::len(w)).await?;
            let Some((key, _)) = layout::decode_block(&blk) else {
                return Err(Other(Error::Invalid(format!(
                    "kv split of subtable {s}: slot {i} points at a block that does not check \
                     ({:#x})",
                    slot::off(w)
                ))));
            };
            let h = Hashes::of(key);
            let live = w & !slot::FROZEN;
            // Same group and slot position: the canonical order of
            // duplicates is kept.
            if (h.h1 >> l) & 1 == 0 {
                wa[i] = live;
            } else {
                wb[i] = live;
            }
        }
        debug_assert_eq!(n as u64, self.geo.groups * SLOTS_PER_GROUP);
        if let Some(f) = self.st.borrow_mut().stall.as_mut() {
            f();
        }
        self.l_write(io, lock, self.geo.subtable(a), &layout::bytes_of(&wa))
            .await?;
        self.l_write(io, lock, self.geo.subtable(b), &layout::bytes_of(&wb))
            .await?;
        let heads = [
            sub::pack(l + 1, suffix),
            sub::pack(l + 1, suffix | (1 << l)),
        ];
        self.l_write(io, lock, self.geo.sub_header(a), &heads[0].to_le_bytes())
            .await?;
        self.l_write(io, lock, self.geo.sub_header(b), &heads[1].to_le_bytes())
            .await?;
        Ok(())
    }

    /// Points the directory's entries of `s` at `a` and `b`.
    #[allow(clippy::too_many_arguments)]
    async fn publish_split(
        &self,
        io: &impl KvIo,
        s: u64,
        a: u64,
        b: u64,
        l: u32,
        lock: &RefCell<Lease>,
    ) -> SplitResult<()> {
        self.keep_lock(io, lock).await?;
        // The directory. Doubling writes the new upper half first (entries
        // of `s` there hold keys with bit l = 1: `b`), then the depth, then
        // the lower half; readers read the depth again after the entries,
        // so none pairs the old depth with the new lower half.
        let g = self.t_word(io, hdr::GLOBAL_DEPTH).await? as u32;
        let d = self.t_read(io, self.geo.dir(), 8usize << g).await?;
        let mut e: Vec<u64> = layout::words(&d).collect();
        let g2 = if l >= g { g + 1 } else { g };
        if g2 > g {
            let upper: Vec<u64> = e
                .iter()
                .map(|&x| if x == s + 1 { b + 1 } else { x })
                .collect();
            self.l_write(
                io,
                lock,
                self.geo.dir_entry(1 << g),
                &layout::bytes_of(&upper),
            )
            .await?;
            self.l_write(io, lock, hdr::GLOBAL_DEPTH, &(g2 as u64).to_le_bytes())
                .await?;
        }
        for (i, x) in e.iter_mut().enumerate() {
            if *x == s + 1 {
                *x = if (i >> l) & 1 == 0 { a + 1 } else { b + 1 };
            }
        }
        self.l_write(io, lock, self.geo.dir(), &layout::bytes_of(&e))
            .await?;
        Ok(())
    }

    /// The flags of a split's writes: the handle's, but always through
    /// the lock's window (never the universal rkey), and never extended
    /// by themselves (the lock's term is what fences a late holder).
    fn lock_flag(&self) -> u64 {
        self.flag & !(rw::USE_UNIVERSAL_RKEY | rw::WITH_AUTO_EXTEND)
    }

    /// A split's WRITE into the table, through the resize lock's lease: a
    /// holder descheduled past its term is refused (locally, or by the
    /// memory node once the lease is revoked) instead of overwriting what
    /// the next holder and the writers after it wrote. Any failure counts
    /// as a lost lock (in `rpc` mode the memory node's "no live lease"
    /// comes back as an error, not a code); a retry that finds the fabric
    /// broken fails at taking the lock again.
    async fn l_write(
        &self,
        io: &impl KvIo,
        lock: &RefCell<Lease>,
        off: u64,
        src: &[u8],
    ) -> SplitResult<()> {
        match io.write(lock, src, off, self.lock_flag()).await {
            Ok(Rc::Ok) => Ok(()),
            Ok(rc) => Err(LockLost(self.refused(
                rc,
                "split write through the resize lock",
                off,
            ))),
            Err(e) => Err(LockLost(e)),
        }
    }

    /// A split's CAS on a table word through the resize lock's lease (see
    /// [`KvTable::l_write`]); returns the old value.
    async fn l_cas(
        &self,
        io: &impl KvIo,
        lock: &RefCell<Lease>,
        off: u64,
        cmp: u64,
        swap: u64,
    ) -> SplitResult<u64> {
        match io.cas(lock, off, cmp, swap, self.lock_flag()).await {
            Ok((Rc::Ok, old)) => Ok(old),
            Ok((rc, _)) => Err(LockLost(self.refused(
                rc,
                "split CAS through the resize lock",
                off,
            ))),
            Err(e) => Err(LockLost(e)),
        }
    }
}
