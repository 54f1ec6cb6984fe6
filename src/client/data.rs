//! The one-sided data path: READ, WRITE, CAS and FAA on a held lease, with
//! the local expiry check (`now + epsilon < deadline`), auto-extension, the
//! lease cache, and recovery of the data QP after a failed request.

use super::calls::{Completion, DataKind, DataOp, DataRare, Op, Post, PreExtend, Prepared, SMALL};
use super::ClientThread;
use crate::fabric::ConnPsns;
use crate::lease::flags::rw;
use crate::lease::msg::{AdminOp, LeaseKey, MemOp};
use crate::lease::{Lease, Rc};
use crate::{Error, Result};

/// How long a data-path wait polls without giving the core away.
pub(super) const SPIN_FOR: std::time::Duration = std::time::Duration::from_micros(20);

impl ClientThread {
    pub(super) fn expired(&self, lease: &Lease) -> bool {
        !lease.never_expires() && !self.sh.clock.before_deadline(lease.ddl)
    }

    /// Recovery after a failed one-sided request: the same QP is reset and
    /// reconnected in place, so the thread keeps its identity. Where the
    /// fabric also errs the responder's QP (hardware RC) or its windows do
    /// not survive a reset, the directory resets its end too, through an
    /// admin RPC on the (separate) RPC connection that carries fresh PSNs
    /// for both directions (both ends connect with them). Where windows
    /// survive, this thread's other leases stay valid as they are; where
    /// they do not, the directory re-binds them and its reply says how many
    /// got new rkeys: those are fetched and applied (to the calls waiting
    /// on this QP now, and to each lease when it is next used) before
    /// anything is posted again.
    pub(super) fn recover_data_qp(&mut self, node: u16, dir: u16) -> Result<()> {
        let i = self.sh.dir_index(node, dir);
        let qp = self.data[i].clone();
        qp.reset()?;
        // Completions the reset flushes are recognised as stale by the call
        // engine (their sequence numbers were retired); other QPs' stay.
        let caps = self.sh.nic.caps();
        if !caps.peer_errs_with_requester && caps.windows_survive_reset {
            qp.connect(&self.data_remote[i])?;
            return Ok(());
        }
        let psns = ConnPsns::fresh(self.psns[i]);
        // Directly, not through the engine: recovery runs inside its
        // progress.
        let n = self.admin_direct(node, dir, AdminOp::QpReset, psns.encode())?;
        self.psns[i] = Some(psns);
        if n > 0 {
            let keys = self.fetch_lease_keys(node, dir, n as usize)?;
            self.apply_lease_keys(node, dir, keys);
        }
        qp.connect_psns(&self.data_remote[i], psns.requester_end())?;
        Ok(())
    }

    /// The `n` re-keyed leases of the last `QpReset` on (node, dir), page
    /// by page.
    fn fetch_lease_keys(&mut self, node: u16, dir: u16, n: usize) -> Result<Vec<LeaseKey>> {
        let mut keys: Vec<LeaseKey> = Vec::with_capacity(n);
        while keys.len() < n {
            let page = self.lease_keys_direct(node, dir, keys.len() as u64)?;
            if page.from as usize != keys.len() || page.keys.is_empty() {
                return Err(Error::Invalid(format!(
                    "node {node} dir {dir} re-keyed {n} leases, its key page from {} has {} \
                     (after {} received)",
                    page.from,
                    page.keys.len(),
                    keys.len()
                )));
            }
            keys.extend(page.keys);
        }
        keys.truncate(n);
        Ok(keys)
    }

    /// Applies re-keyed leases: calls of this thread waiting for (node,
    /// dir) get the new rkeys in their requests at once; leases get them
    /// when they are next used (`refresh_keys`), looked up by generation
    /// in the latest list (a lease live at that reset is in it; one granted
    /// later never is).
    fn apply_lease_keys(&mut self, node: u16, dir: u16, keys: Vec<LeaseKey>) {
        let map: std::collections::HashMap<u32, u32> = keys
            .iter()
            .flat_map(|k| [(k.old_rkey, k.rkey), (k.old_pr_rkey, k.pr_rkey)])
            .filter(|&(old, new)| old != 0 && new != 0)
            .collect();
        self.calls.rekey(node, dir, &map);
        let i = self.sh.dir_index(node, dir);
        self.rekeys[i] = keys.into_iter().map(|k| (k.generation, k)).collect();
    }

    /// Brings `lease`'s rkeys up to date after a reset of its directory's
    /// QP that re-bound its windows (nothing to do otherwise).
    pub(super) fn refresh_keys(&self, lease: &mut Lease) {
        let (rkey, pr_rkey) = self.lease_keys(lease);
        lease.rkey = rkey;
        lease.pr_rkey = pr_rkey;
    }

    /// `lease`'s current (rkey, pr_rkey): its own, or the ones the last
    /// re-keying reset of its directory's QP gave it.
    pub(super) fn lease_keys(&self, lease: &Lease) -> (u32, u32) {
        let i = self.sh.dir_index(lease.node, lease.dir);
        match self
            .rekeys
            .get(i)
            .filter(|m| !m.is_empty())
            .and_then(|m| m.get(&lease.generation))
        {
            Some(k) if lease.live => (
                if k.rkey != 0 { k.rkey } else { lease.rkey },
                if k.pr_rkey != 0 {
                    k.pr_rkey
                } else {
                    lease.pr_rkey
                },
            ),
            _ => (lease.rkey, lease.pr_rkey),
        }
    }

    /// Generations of the leases the last reset of (node, dir)'s data QP
    /// re-bound that this thread still holds (for tests).
    #[doc(hidden)]
    pub fn rekeyed_generations(&self, node: u16, dir: u16) -> Vec<u64> {
        let i = self.sh.dir_index(node, dir);
        let mut g: Vec<u64> = self
            .rekeys
            .get(i)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        g.sort_unstable();
        g
    }

    /// Forgets a given-back lease's re-keyed entry.
    pub(super) fn forget_keys(&mut self, lease: &Lease) {
        let i = self.sh.dir_index(lease.node, lease.dir);
        if let Some(m) = self.rekeys.get_mut(i) {
            m.remove(&lease.generation);
        }
    }

    /// Whether an access may go ahead (with an auto-extension posted
    /// before it), or what it returns at once. Inlined: without
    /// auto-extension (the common case) its answer is small and known
    /// to the caller, and nothing large is returned through memory.
    #[inline]
    fn check_rw(&self, lease: &Lease, flag: u64) -> Result<Check> {
        if flag & !rw::ALL != 0 || !lease.live {
            return Err(bad_access(lease, flag));
        }
        let expired = flag & rw::NO_LOCAL_EXPIRE_CHECK == 0 && self.expired(lease);
        if flag & rw::WITH_AUTO_EXTEND == 0 || lease.never_expires() {
            return Ok(if expired {
                Check::Stop(Rc::LeaseLocalExpiredErr)
            } else {
                Check::Go(None)
            });
        }
        self.check_auto(lease, expired)
    }

    /// [`ClientThread::check_rw`] for WITH_AUTO_EXTEND on a lease that
    /// expires: extend before the access when its time runs short.
    #[inline(never)]
    fn check_auto(&self, lease: &Lease, expired: bool) -> Result<Check> {
        // Auto-extend acts once the time left falls to a margin of epsilon
        // (the clocks' disagreement) plus the largest of two units, half the
        // time the lease has been held for, four extension round trips as
        // this thread measured them, and 100 us (so a lease that has lived
        // long survives a pause of half its age);
        // it extends by enough to leave at least the margin plus a unit, so
        // every term and epsilon can be kept alive, and a lease that the
        // local check already calls expired is revived when its protection
        // region is still open (the CAS is atomic with the GC's close; the
        // access goes ahead only if the CAS was honoured).
        if expired && lease.closed {
            return Ok(Check::Stop(Rc::LeaseLocalExpiredErr));
        }
        let left = lease.ddl.saturating_sub(self.sh.clock.now());
        let unit = lease.term.unit.max(1);
        let held = lease.ddl.saturating_sub(lease.term.begin);
        let margin = self.sh.clock.epsilon().saturating_add(
            unit.saturating_mul(2)
                .max(held / 2)
                .max(self.ext_rtt_ns.saturating_mul(4) as i64)
                .max(100_000),
        );
        if left > margin {
            return Ok(Check::Go(None));
        }
        let step = lease.auto_step.max(1);
        let want = (unit as u64)
            .saturating_mul(step as u64)
            .max(margin.saturating_add(unit).saturating_sub(left).max(0) as u64);
        match lease.extension(want) {
            Ok((from, to)) => Ok(Check::Go(Some(PreExtend {
                from,
                to,
                raddr: self.sh.peer(lease.node)?.region_addr + lease.pr_word().0,
                rkey: self.lease_keys(lease).1,
                step,
                required: expired,
                posted: std::time::Instant::now(),
            }))),
            Err(why) => {
                // No region, or capped: the access itself reports what
                // happens next, and the thread says once why auto-extend
                // could not act.
                if !self.ext_warned.replace(true) {
                    tracing::warn!(
                        left_ns = left,
                        margin_ns = margin,
                        "auto-extend cannot keep this lease alive: {why}"
                    );
                }
                Ok(if expired {
                    self.auto_extend_lost.set(self.auto_extend_lost.get() + 1);
                    Check::Stop(Rc::LeaseLocalExpiredErr)
                } else {
                    Check::Go(None)
                })
            }
        }
    }

    pub(super) fn remote(&self, lease: &Lease, offset: u64, flag: u64) -> (u64, u32) {
        // The node exists: the lease was granted by it (or a NO_RPC lease
        // was checked against the cluster's shape).
        let Some(p) = self.sh.peers.get(lease.node as usize) else {
            return (0, 0);
        };
        let rkey = if flag & rw::USE_UNIVERSAL_RKEY != 0 {
            p.region_rkey
        } else {
            self.lease_keys(lease).0
        };
        (
            p.region_addr
                .wrapping_add(lease.base.0)
                .wrapping_add(offset),
            rkey,
        )
    }

    /// A one-sided call (built in the caller's return place: inlined).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn data_op(
        &self,
        lease: &Lease,
        kind: DataKind,
        offset: u64,
        total: usize,
        data: Vec<u8>,
        flag: u64,
        pre: Option<PreExtend>,
        staged: bool,
    ) -> Prepared {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        Prepared::Op(Op::Data(DataOp {
            node: lease.node,
            dir: lease.dir,
            kind,
            raddr,
            rkey,
            total,
            done: 0,
            data,
            rare: (pre.is_some() || flag & rw::WITH_CACHE != 0).then(|| {
                Box::new(DataRare {
                    pre,
                    cache: (flag & rw::WITH_CACHE != 0).then_some(offset),
                    units: None,
                })
            }),
            ddl: (flag & rw::NO_LOCAL_EXPIRE_CHECK == 0 && !lease.never_expires())
                .then_some(lease.ddl),
            auto: flag & rw::WITH_AUTO_EXTEND != 0 && !lease.never_expires(),
            staged,
        }))
    }

    /// A READ as a call; `blocking` lets a small uncached one leave its
    /// data in staging for [`ClientThread::run_into`].
    fn prep_read(
        &mut self,
        lease: &mut Lease,
        len: usize,
        offset: u64,
        flag: u64,
        blocking: bool,
    ) -> Result<Prepared> {
        if flag & rw::USE_TWO_SIDED != 0 {
            return self.prep_rpc_read(lease, len, offset);
        }
        self.refresh_keys(lease);
        let pre = match self.check_rw(lease, flag)? {
            Check::Stop(rc) => return Ok(Prepared::Done(Box::new(done(rc)))),
            Check::Go(p) => p,
        };
        if flag & rw::WITH_CACHE != 0 {
            let mut data = vec![0u8; len];
            if lease.cache.lookup(offset, &mut data) {
                let mut c = done(Rc::Ok);
                c.data = data;
                return Ok(Prepared::Done(Box::new(c)));
            }
        }
        let staged = blocking && len <= SMALL && flag & rw::WITH_CACHE == 0;
        let data = if staged {
            Vec::new()
        } else {
            self.read_buf(len)
        };
        Ok(self.data_op(lease, DataKind::Read, offset, len, data, flag, pre, staged))
    }

    fn prep_write(
        &mut self,
        lease: &mut Lease,
        src: &[u8],
        offset: u64,
        flag: u64,
    ) -> Result<Prepared> {
        if flag & rw::USE_TWO_SIDED != 0 {
            return self.prep_rpc_write(lease, src, offset);
        }
        self.refresh_keys(lease);
        let pre = match self.check_rw(lease, flag)? {
            Check::Stop(rc) => return Ok(Prepared::Done(Box::new(done(rc)))),
            Check::Go(p) => p,
        };
        // Cached bytes of the range are stale from now on (a WITH_CACHE
        // write puts them back once it succeeded).
        lease.cache.invalidate(offset, src.len() as u64);
        Ok(self.data_op(
            lease,
            DataKind::Write,
            offset,
            src.len(),
            src.to_vec(),
            flag,
            pre,
            false,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn prep_atomic(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        a0: u64,
        a1: u64,
        cas: bool,
        flag: u64,
    ) -> Result<Prepared> {
        if flag & rw::USE_TWO_SIDED != 0 {
            let op = if cas { MemOp::Cas } else { MemOp::Faa };
            return self.prep_mem(lease, op, offset, 8, a0, a1, vec![]);
        }
        self.refresh_keys(lease);
        let pre = match self.check_rw(lease, flag)? {
            Check::Stop(rc) => return Ok(Prepared::Done(Box::new(done(rc)))),
            Check::Go(p) => p,
        };
        lease.cache.invalidate(offset, 8);
        let kind = if cas {
            DataKind::Cas {
                compare: a0,
                swap: a1,
            }
        } else {
            DataKind::Faa { add: a0 }
        };
        // Atomics never go through the cache.
        Ok(self.data_op(
            lease,
            kind,
            offset,
            8,
            vec![],
            flag & !rw::WITH_CACHE,
            pre,
            false,
        ))
    }

    /// Reads `dst.len()` bytes at `offset` of the leased object.
    pub fn read(
        &mut self,
        lease: &mut Lease,
        dst: &mut [u8],
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        // Small uncached reads go straight from staging to `dst`.
        let p = self.prep_read(lease, dst.len(), offset, flag, true);
        let c = self.run_into(p, dst)?;
        c.apply(lease);
        c.result
    }

    /// Writes `src` at `offset` of the leased object.
    pub fn write(&mut self, lease: &mut Lease, src: &[u8], offset: u64, flag: u64) -> Result<Rc> {
        let p = self.prep_write(lease, src, offset, flag);
        let c = self.run(p)?;
        c.apply(lease);
        c.result
    }

    /// 8-byte compare-and-swap; returns the code and the old value.
    pub fn cas(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        let p = self.prep_atomic(lease, offset, compare, swap, true, flag);
        let c = self.run(p)?;
        c.apply(lease);
        Ok((c.result?, c.value))
    }

    /// 8-byte fetch-and-add; returns the code and the old value.
    pub fn faa(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        add: i64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        let p = self.prep_atomic(lease, offset, add as u64, 0, false, flag);
        let c = self.run(p)?;
        c.apply(lease);
        Ok((c.result?, c.value))
    }

    /// Posts a READ of `len` bytes at `offset`: the completion's `data`
    /// holds them. The lease must stay as it is until the completion is
    /// polled; [`Completion::apply`] brings it up to date afterwards.
    pub fn post_read(
        &mut self,
        lease: &mut Lease,
        len: usize,
        offset: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        if let Some(p) = self.post_read_lean(lease, len, offset, flag, user_data) {
            return Ok(p);
        }
        self.post(user_data, |t| t.prep_read(lease, len, offset, flag, false))
    }

    /// Posts a WRITE of `src` at `offset` (copied at once: `src` is free
    /// after the call).
    pub fn post_write(
        &mut self,
        lease: &mut Lease,
        src: &[u8],
        offset: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_write(lease, src, offset, flag))
    }

    /// Posts an 8-byte CAS: the completion's `value` is the old value.
    pub fn post_cas(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| {
            t.prep_atomic(lease, offset, compare, swap, true, flag)
        })
    }

    /// Posts an 8-byte FAA: the completion's `value` is the old value.
    pub fn post_faa(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        add: i64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| {
            t.prep_atomic(lease, offset, add as u64, 0, false, flag)
        })
    }
}

/// What an access check decided.
enum Check {
    /// Go ahead, after this auto-extension.
    Go(Option<PreExtend>),
    /// Return this code without touching the fabric.
    Stop(Rc),
}

/// A call decided at post time.
pub(super) fn done(rc: Rc) -> Completion {
    Completion::new(0, Ok(rc))
}

/// The error of an access with unknown flag bits or a lease that is not
/// live (out of line: the check is inlined into every access).
#[cold]
#[inline(never)]
fn bad_access(lease: &Lease, flag: u64) -> Error {
    if flag & !rw::ALL != 0 {
        Error::Invalid(format!("unknown RW flag bits {flag:#x}"))
    } else {
        debug_assert!(!lease.live);
        Error::Invalid("the lease was relinquished or never granted".into())
    }
}
