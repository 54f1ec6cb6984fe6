//! The set-up every check shares: one side of a connection, and a memory
//! node connected to a client with the one-sided operations on it.

use std::sync::Arc;

use super::{drain, fail, wait_wc, WC_TIMEOUT};
use crate::fabric::{
    Access, ConnPsns, Cq, FabricError, Mr, MwInfo, Nic, Pd, Qp, QpCap, QpState, Result, SendWr,
    Sge, Wc, WcOpcode, WcStatus, WrOp,
};

/// One side of a connection: NIC, PD, CQ, QP, and a local buffer.
pub struct Side {
    /// The NIC.
    pub nic: Arc<dyn Nic>,
    /// Protection domain.
    pub pd: Pd,
    /// Send and receive CQ.
    pub cq: Arc<dyn Cq>,
    /// The QP.
    pub qp: Arc<dyn Qp>,
    /// A registered local buffer.
    pub buf: Arc<Mr>,
}

impl Side {
    /// Creates a side with a `buf_len`-byte local buffer.
    pub fn new(nic: Arc<dyn Nic>, pd: Pd, buf_len: usize) -> Result<Side> {
        let cq = nic.create_cq(1024)?;
        let qp = nic.create_qp(
            pd,
            &cq,
            &cq,
            QpCap {
                max_send_wr: 512,
                max_recv_wr: 128,
            },
        )?;
        let buf = nic.alloc_mr(pd, buf_len, Access::ALL)?;
        Ok(Side {
            nic,
            pd,
            cq,
            qp,
            buf,
        })
    }

    /// Polls one completion, failing after [`WC_TIMEOUT`].
    pub fn wait(&self) -> Result<Wc> {
        wait_wc(&*self.cq, WC_TIMEOUT)
    }

    /// Posts one work request and waits for its completion.
    pub fn run(&self, op: WrOp) -> Result<Wc> {
        self.qp.post_send(&[SendWr {
            wr_id: 1,
            op,
            signaled: true,
        }])?;
        self.wait()
    }

    /// Reset + reconnect (recovery of the same QP). On hardware a remote
    /// access error also moves the responder's QP to error, so the peer is
    /// reset and reconnected too when it is not ready to send.
    pub fn recover(&self, remote: &Side) -> Result<()> {
        self.qp.reset()?;
        drain(&*self.cq);
        // Both ends are reset (as the lease layer's recovery does) when the
        // remote end erred too, or when its windows die with a reset
        // anyway; they then connect with fresh PSNs chosen here.
        if remote.qp.state() != QpState::Rts || !remote.nic.caps().windows_survive_reset {
            remote.qp.reset()?;
            drain(&*remote.cq);
            let psns = ConnPsns::fresh(None);
            remote
                .qp
                .connect_psns(&self.qp.endpoint(), psns.responder_end())?;
            return self
                .qp
                .connect_psns(&remote.qp.endpoint(), psns.requester_end());
        }
        self.qp.connect(&remote.qp.endpoint())
    }

    /// An SGE over `[off, off+len)` of the local buffer.
    pub fn sge(&self, off: u64, len: u32) -> Sge {
        Sge {
            lkey: self.buf.lkey(),
            offset: off,
            len,
        }
    }
}

/// A memory node with an exposed region and a client connected to it.
pub struct Pair {
    /// The memory node's side (its QP is connected to the client's).
    pub server: Side,
    /// The client's side.
    pub client: Side,
    /// The exposed region on the server (ALL access, incl. MW_BIND).
    pub region: Arc<Mr>,
}

impl Pair {
    /// Builds and connects a pair.
    pub fn new(server: Arc<dyn Nic>, client: Arc<dyn Nic>, region_len: usize) -> Result<Pair> {
        let spd = server.alloc_pd()?;
        let cpd = client.alloc_pd()?;
        let region = server.alloc_mr(spd, region_len, Access::ALL)?;
        let s = Side::new(server, spd, 64 << 10)?;
        let c = Side::new(client, cpd, (2 << 20) + 4096)?;
        s.qp.connect(&c.qp.endpoint())?;
        c.qp.connect(&s.qp.endpoint())?;
        Ok(Pair {
            server: s,
            client: c,
            region,
        })
    }

    /// Another client QP (on `client`) connected to the same memory node,
    /// PD and region: a second connection to the same memory.
    pub fn share(&self, client: &Arc<dyn Nic>) -> Result<Pair> {
        let s = Side::new(self.server.nic.clone(), self.server.pd, 64 << 10)?;
        let c = Side::new(client.clone(), client.alloc_pd()?, (2 << 20) + 4096)?;
        s.qp.connect(&c.qp.endpoint())?;
        c.qp.connect(&s.qp.endpoint())?;
        Ok(Pair {
            server: s,
            client: c,
            region: self.region.clone(),
        })
    }

    /// Binds a fresh window over `[off, off+len)` of the region towards the
    /// client; returns (window, rkey).
    pub fn bind(&self, off: u64, len: u64, access: Access) -> Result<(MwInfo, u32)> {
        let mw = self.server.nic.alloc_mw(self.server.pd)?;
        let rkey = self.rebind(mw, off, len, access)?;
        Ok((mw, rkey))
    }

    /// Rebinds an existing window; returns the new rkey.
    pub fn rebind(&self, mw: MwInfo, off: u64, len: u64, access: Access) -> Result<u32> {
        let wc = self.server.run(WrOp::Bind {
            mw: mw.handle,
            lkey: self.region.lkey(),
            offset: off,
            len,
            access,
        })?;
        if wc.status != WcStatus::Success || wc.opcode != WcOpcode::BindMw {
            return fail(format!("bind completed with {wc:?}"));
        }
        Ok(self.server.nic.mw_rkey(mw.handle))
    }

    /// Invalidates a window.
    pub fn unbind(&self, mw: MwInfo) -> Result<()> {
        let wc = self.server.run(WrOp::Invalidate { mw: mw.handle })?;
        if wc.status != WcStatus::Success {
            return fail(format!("invalidate completed with {wc:?}"));
        }
        Ok(())
    }

    /// Client READ of `len` bytes at region offset `roff` into local `loff`.
    pub fn read(&self, rkey: u32, roff: u64, loff: u64, len: u32) -> Result<WcStatus> {
        Ok(self
            .client
            .run(WrOp::Read {
                local: self.client.sge(loff, len),
                raddr: self.region.addr() + roff,
                rkey,
            })?
            .status)
    }

    /// Client WRITE.
    pub fn write(&self, rkey: u32, roff: u64, loff: u64, len: u32) -> Result<WcStatus> {
        Ok(self
            .client
            .run(WrOp::Write {
                local: self.client.sge(loff, len),
                raddr: self.region.addr() + roff,
                rkey,
            })?
            .status)
    }

    /// Client CAS; returns (status, old value).
    pub fn cas(&self, rkey: u32, roff: u64, compare: u64, swap: u64) -> Result<(WcStatus, u64)> {
        let st = self
            .client
            .run(WrOp::Cas {
                local: self.client.sge(0, 8),
                raddr: self.region.addr() + roff,
                rkey,
                compare,
                swap,
            })?
            .status;
        Ok((
            st,
            self.client
                .buf
                .load_u64(0)
                .map_err(|e| FabricError::Invalid(e.to_string()))?,
        ))
    }

    /// Client FAA; returns (status, old value).
    pub fn faa(&self, rkey: u32, roff: u64, add: u64) -> Result<(WcStatus, u64)> {
        let st = self
            .client
            .run(WrOp::Faa {
                local: self.client.sge(0, 8),
                raddr: self.region.addr() + roff,
                rkey,
                add,
            })?
            .status;
        Ok((st, self.client.buf.load_u64(0)?))
    }

    /// Expects `st` to be a remote access error, then recovers the client QP.
    pub fn expect_denied(&self, st: WcStatus, what: &str) -> Result<()> {
        if st != WcStatus::RemAccessErr {
            return fail(format!("{what}: expected RemAccessErr, got {st:?}"));
        }
        self.client.recover(&self.server)
    }
}
