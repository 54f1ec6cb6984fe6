//! The one-sided data path: READ, WRITE, CAS and FAA on a held lease, with
//! the local expiry check (`now + epsilon < deadline`), auto-extension, the
//! lease cache, and recovery of the data QP after a failed request.

use std::time::Instant;

use super::{ClientThread, DATA_BUF};
use crate::fabric::{SendWr, Sge, Wc, WcStatus, WrOp};
use crate::lease::flags::rw;
use crate::lease::msg::{AdminOp, MemOp};
use crate::lease::{Lease, Rc};
use crate::{Error, Result};

/// How long a data-path wait polls without giving the core away.
pub(super) const SPIN_FOR: std::time::Duration = std::time::Duration::from_micros(20);

impl ClientThread {
    fn expired(&self, lease: &Lease) -> bool {
        !lease.never_expires() && !self.sh.clock.before_deadline(lease.ddl)
    }

    /// Recovery after a failed one-sided request: the same QP is reset and
    /// reconnected in place, so the windows bound to it (this thread's other
    /// leases) stay valid and the thread keeps its identity. Where the fabric
    /// also errs the responder's QP (hardware RC), the directory resets its
    /// end first through an admin RPC on the (separate) RPC connection.
    pub(super) fn recover_data_qp(&mut self, node: u16, dir: u16) -> Result<()> {
        let i = self.sh.dir_index(node, dir);
        let qp = self.data[i].clone();
        qp.reset()?;
        let mut wc = [Wc::default(); 8];
        while self.data_cq.poll(&mut wc) > 0 {}
        if self.sh.nic.caps().peer_errs_with_requester {
            self.admin(node, dir, AdminOp::QpReset, 0)?;
        }
        qp.connect(&self.data_remote[i])?;
        Ok(())
    }

    /// Runs one one-sided work request on the data QP to the lease's
    /// directory; a failed completion recovers the QP before returning.
    pub(super) fn one_sided(&mut self, lease: &Lease, op: WrOp) -> Result<Rc> {
        let i = self.sh.dir_index(lease.node, lease.dir);
        let qp = self.data[i].clone();
        qp.post_send(&[SendWr {
            wr_id: 1,
            op,
            signaled: true,
        }])?;
        let mut wc = [Wc::default(); 1];
        let t0 = Instant::now();
        let st = loop {
            if self.data_cq.poll(&mut wc) == 1 {
                break wc[0].status;
            }
            let waited = t0.elapsed();
            if waited > self.sh.cfg.rpc_timeout {
                break WcStatus::RetryExcErr;
            }
            // A round trip is a few hundred ns on shm: poll hot first, give
            // the core away only when the answer is late.
            if waited > SPIN_FOR {
                self.data_cq.wait(std::time::Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        };
        if st == WcStatus::Success {
            return Ok(Rc::Ok);
        }
        self.recover_data_qp(lease.node, lease.dir)?;
        Ok(Rc::RdmaProtectionErr)
    }

    fn check_rw(&mut self, lease: &mut Lease, flag: u64) -> Result<Option<Rc>> {
        if flag & !rw::ALL != 0 {
            return Err(Error::Invalid(format!("unknown RW flag bits {flag:#x}")));
        }
        if !lease.live {
            return Err(Error::Invalid(
                "the lease was relinquished or never granted".into(),
            ));
        }
        if flag & rw::NO_LOCAL_EXPIRE_CHECK == 0 && self.expired(lease) {
            return Ok(Some(Rc::LeaseLocalExpiredErr));
        }
        if flag & rw::WITH_AUTO_EXTEND != 0 && !lease.never_expires() {
            let left = lease.ddl.saturating_sub(self.sh.clock.now());
            let margin = lease.term.unit.saturating_mul(2).max(100_000);
            if left > self.sh.clock.epsilon() + 2_000 && left <= margin {
                let step = lease.auto_step;
                let ns = (lease.term.unit as u64).saturating_mul(step as u64);
                match self.extend(lease, ns, 0) {
                    Ok(Rc::Ok) => lease.auto_step = step.saturating_mul(2).min(1 << 10),
                    // Refused (closed, capped) or failed at the NIC: the
                    // access itself reports what happens next.
                    Ok(_) | Err(Error::Invalid(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
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
            lease.rkey
        };
        (
            p.region_addr
                .wrapping_add(lease.base.0)
                .wrapping_add(offset),
            rkey,
        )
    }

    /// Reads `dst.len()` bytes at `offset` of the leased object.
    pub fn read(
        &mut self,
        lease: &mut Lease,
        dst: &mut [u8],
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        if flag & rw::USE_TWO_SIDED != 0 {
            return self.rpc_read(lease, dst, offset);
        }
        if let Some(rc) = self.check_rw(lease, flag)? {
            return Ok(rc);
        }
        if flag & rw::WITH_CACHE != 0 && lease.cache.lookup(offset, dst) {
            return Ok(Rc::Ok);
        }
        let mut done = 0usize;
        while done < dst.len() {
            let n = (dst.len() - done).min(DATA_BUF);
            let (raddr, rkey) = self.remote(lease, offset + done as u64, flag);
            let rc = self.one_sided(
                lease,
                WrOp::Read {
                    local: Sge {
                        lkey: self.buf.lkey(),
                        offset: 0,
                        len: n as u32,
                    },
                    raddr,
                    rkey,
                },
            )?;
            if rc != Rc::Ok {
                return Ok(rc);
            }
            self.buf.read(0, &mut dst[done..done + n])?;
            done += n;
        }
        if flag & rw::WITH_CACHE != 0 {
            lease.cache.insert(offset, dst);
        }
        Ok(Rc::Ok)
    }

    /// Writes `src` at `offset` of the leased object.
    pub fn write(&mut self, lease: &mut Lease, src: &[u8], offset: u64, flag: u64) -> Result<Rc> {
        if flag & rw::USE_TWO_SIDED != 0 {
            return self.rpc_write(lease, src, offset);
        }
        if let Some(rc) = self.check_rw(lease, flag)? {
            return Ok(rc);
        }
        let mut done = 0usize;
        while done < src.len() {
            let n = (src.len() - done).min(DATA_BUF);
            self.buf.write(0, &src[done..done + n])?;
            let (raddr, rkey) = self.remote(lease, offset + done as u64, flag);
            let rc = self.one_sided(
                lease,
                WrOp::Write {
                    local: Sge {
                        lkey: self.buf.lkey(),
                        offset: 0,
                        len: n as u32,
                    },
                    raddr,
                    rkey,
                },
            )?;
            if rc != Rc::Ok {
                lease.cache.invalidate(offset, src.len() as u64);
                return Ok(rc);
            }
            done += n;
        }
        if flag & rw::WITH_CACHE != 0 {
            lease.cache.write(offset, src);
        } else {
            lease.cache.invalidate(offset, src.len() as u64);
        }
        Ok(Rc::Ok)
    }

    fn atomic(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        a0: u64,
        a1: u64,
        cas: bool,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        if flag & rw::USE_TWO_SIDED != 0 {
            let op = if cas { MemOp::Cas } else { MemOp::Faa };
            return self
                .rpc_mem(lease, op, offset, 8, a0, a1, vec![])
                .map(|(rc, old, _)| (rc, old));
        }
        if let Some(rc) = self.check_rw(lease, flag)? {
            return Ok((rc, 0));
        }
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let local = Sge {
            lkey: self.buf.lkey(),
            offset: 0,
            len: 8,
        };
        let op = if cas {
            WrOp::Cas {
                local,
                raddr,
                rkey,
                compare: a0,
                swap: a1,
            }
        } else {
            WrOp::Faa {
                local,
                raddr,
                rkey,
                add: a0,
            }
        };
        let rc = self.one_sided(lease, op)?;
        lease.cache.invalidate(offset, 8);
        Ok((rc, self.buf.load_u64(0)?))
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
        self.atomic(lease, offset, compare, swap, true, flag)
    }

    /// 8-byte fetch-and-add; returns the code and the old value.
    pub fn faa(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        add: i64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        self.atomic(lease, offset, add as u64, 0, false, flag)
    }
}
