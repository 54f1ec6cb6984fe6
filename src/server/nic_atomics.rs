//! Protection-region updates through the NIC: a directory's loopback QP.
//!
//! Clients extend a lease by one-sided CAS on its protection region's word,
//! and the directory closes the region (GC, relinquish) and extends it
//! (two-sided) by CAS on the same word. The decision is atomic only if both
//! CASes are atomic with each other. The soft NIC runs RDMA atomics as CPU
//! atomics, so the directory's CPU CAS is enough; a NIC whose atomics are
//! atomic only among themselves (`IBV_ATOMIC_HCA`, every mlx5) would let a
//! CPU CAS and a client's RDMA CAS interleave. There the directory changes
//! the word with RDMA CAS too, sent to itself: a QP connected to a second
//! QP of the same NIC, through a window over this directory's protection
//! regions bound to that second QP (so the key opens nothing on any other
//! connection). `Config::pr_atomics_through_nic` forces this path on a NIC
//! that does not need it (tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fabric::{Access, Cq, Mr, Qp, QpCap, SendWr, Sge, Wc, WcStatus, WrOp};
use crate::lease::RegionOff;
use crate::{Error, Result};

use super::DirShared;

/// A directory's loopback path for protection-region CAS.
pub(crate) struct NicAtomics {
    /// Initiator: posts the CAS.
    qa: Arc<dyn Qp>,
    /// Responder: the window is bound to it.
    _qb: Arc<dyn Qp>,
    cq: Arc<dyn Cq>,
    /// 8 bytes: where the old value lands.
    buf: Arc<Mr>,
    /// The window's rkey and the region's address.
    rkey: u32,
    region_addr: u64,
    timeout: Duration,
    /// CASes done through the NIC.
    pub done: AtomicU64,
}

impl NicAtomics {
    /// Opens the path for directory `dir`: its protection regions are
    /// `[first, first + len)` of the node's region.
    pub fn open(sh: &DirShared, first: RegionOff, len: u64) -> Result<NicAtomics> {
        let nic = &sh.nic;
        let cq = nic.create_cq(16)?;
        let bcq = nic.create_cq(16)?;
        let cap = QpCap {
            max_send_wr: 8,
            max_recv_wr: 1,
        };
        let qa = nic.create_qp(sh.pd, &cq, &cq, cap)?;
        let qb = nic.create_qp(sh.pd, &bcq, &bcq, cap)?;
        qa.connect(&qb.endpoint())?;
        qb.connect(&qa.endpoint())?;
        let buf = nic.alloc_mr(sh.pd, 8, Access::LOCAL_WRITE)?;
        let mw = nic.alloc_mw(sh.pd)?.handle;
        let timeout = sh.cfg.rpc_timeout;
        post_wait(
            &qb,
            &bcq,
            WrOp::Bind {
                mw,
                lkey: sh.region.lkey(),
                offset: first.0,
                len,
                access: Access(Access::REMOTE_READ.0 | Access::REMOTE_ATOMIC.0),
            },
            timeout,
        )
        .map_err(|e| Error::Invalid(format!("binding the loopback window: {e}")))?;
        Ok(NicAtomics {
            qa,
            _qb: qb,
            cq,
            buf,
            rkey: nic.mw_rkey(mw),
            region_addr: sh.region.addr(),
            timeout,
            done: AtomicU64::new(0),
        })
    }

    /// RDMA CAS of the word at region offset `at` from `from` to `to`;
    /// returns the value found.
    pub fn cas(&self, at: u64, from: u64, to: u64) -> Result<u64> {
        post_wait(
            &self.qa,
            &self.cq,
            WrOp::Cas {
                local: Sge {
                    lkey: self.buf.lkey(),
                    offset: 0,
                    len: 8,
                },
                raddr: self.region_addr + at,
                rkey: self.rkey,
                compare: from,
                swap: to,
            },
            self.timeout,
        )?;
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(self.buf.load_u64(0)?)
    }
}

/// Posts `op` signalled on `qp` and waits for its completion on `cq`.
fn post_wait(qp: &Arc<dyn Qp>, cq: &Arc<dyn Cq>, op: WrOp, timeout: Duration) -> Result<()> {
    qp.post_send(&[SendWr {
        wr_id: 1,
        op,
        signaled: true,
    }])?;
    let mut wc = [Wc::default(); 1];
    let t0 = Instant::now();
    let mut spins = 0u32;
    loop {
        if cq.poll(&mut wc) == 1 {
            if wc[0].status != WcStatus::Success {
                return Err(Error::Invalid(format!(
                    "loopback {:?} completed with {:?}",
                    op, wc[0].status
                )));
            }
            return Ok(());
        }
        if t0.elapsed() > timeout {
            return Err(Error::Timeout(format!(
                "loopback {op:?}: no completion within {timeout:?}"
            )));
        }
        // The responder is a NIC thread of this process: on two cores it
        // needs the core more than this loop does.
        spins += 1;
        if spins < 200 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
