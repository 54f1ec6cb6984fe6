//! Batches of one-sided operations on leases of one directory, posted as
//! one chain and completed by one signalled completion (`commit`).

use super::calls::{DataKind, DataOp, Op, Post, Prepared};
use super::data::done;
use super::{ClientThread, DATA_BUF};
use crate::fabric::{Sge, WrOp};
use crate::lease::{Lease, Rc};
use crate::{Error, Result};

/// Most operations in one batch (the original's limit).
pub const BATCH_MAX: usize = 16;

#[derive(Clone, Debug)]
enum BatchOp {
    Read { len: usize },
    Write,
    Atomic,
}

/// A batch of one-sided operations on leases of one directory, posted as one
/// chain and completed by one signalled completion (`commit`).
#[derive(Debug, Default)]
pub struct Batch {
    target: Option<(u16, u16)>,
    wrs: Vec<WrOp>,
    kinds: Vec<(BatchOp, u64)>,
    used: u64,
    /// The staging image: write payloads at their offsets.
    image: Vec<u8>,
    results: Vec<Vec<u8>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Operations prepared.
    pub fn len(&self) -> usize {
        self.wrs.len()
    }
    /// True when nothing is prepared.
    pub fn is_empty(&self) -> bool {
        self.wrs.is_empty()
    }
    /// Result bytes of operation `i` of the last commit (READ data, or the
    /// old value of a CAS/FAA as 8 little-endian bytes).
    pub fn result(&self, i: usize) -> Option<&[u8]> {
        self.results.get(i).map(Vec::as_slice)
    }
}

impl ClientThread {
    fn prepare(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        op: WrOp,
        kind: BatchOp,
        bytes: u64,
    ) -> Result<Rc> {
        if !lease.live {
            return Err(Error::Invalid(
                "the lease was relinquished or never granted".into(),
            ));
        }
        if b.wrs.len() >= BATCH_MAX {
            return Ok(Rc::NoMem);
        }
        match b.target {
            Some(t) if t != (lease.node, lease.dir) => {
                return Err(Error::Invalid(format!(
                    "a batch targets one directory: node {} dir {} vs node {} dir {}",
                    t.0, t.1, lease.node, lease.dir
                )))
            }
            _ => b.target = Some((lease.node, lease.dir)),
        }
        if b.used + bytes.next_multiple_of(8) > DATA_BUF as u64 {
            return Ok(Rc::NoMem);
        }
        b.kinds.push((kind, b.used));
        b.used += bytes.next_multiple_of(8);
        b.wrs.push(op);
        Ok(Rc::Ok)
    }

    /// A local range of the batch's staging area (placed at commit).
    fn local(&self, off: u64, len: u64) -> Sge {
        Sge {
            lkey: 0,
            offset: off,
            len: len as u32,
        }
    }

    /// Adds a READ of `len` bytes at `offset` (no expiry check, as the original).
    pub fn prepare_read(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        len: usize,
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Read {
            local: self.local(b.used, len as u64),
            raddr,
            rkey,
        };
        self.prepare(b, lease, op, BatchOp::Read { len }, len as u64)
    }

    /// Adds a WRITE of `src` at `offset`.
    pub fn prepare_write(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        src: &[u8],
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        if b.used + (src.len() as u64).next_multiple_of(8) <= DATA_BUF as u64
            && b.wrs.len() < BATCH_MAX
        {
            let at = b.used as usize;
            b.image.resize(at + src.len(), 0);
            b.image[at..].copy_from_slice(src);
        }
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Write {
            local: self.local(b.used, src.len() as u64),
            raddr,
            rkey,
        };
        self.prepare(b, lease, op, BatchOp::Write, src.len() as u64)
    }

    /// Adds an 8-byte CAS.
    pub fn prepare_cas(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        flag: u64,
    ) -> Result<Rc> {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Cas {
            local: self.local(b.used, 8),
            raddr,
            rkey,
            compare,
            swap,
        };
        self.prepare(b, lease, op, BatchOp::Atomic, 8)
    }

    /// Adds an 8-byte FAA.
    pub fn prepare_faa(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        offset: u64,
        add: i64,
        flag: u64,
    ) -> Result<Rc> {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Faa {
            local: self.local(b.used, 8),
            raddr,
            rkey,
            add: add as u64,
        };
        self.prepare(b, lease, op, BatchOp::Atomic, 8)
    }

    /// The batch's chain as a call; the batch is emptied.
    fn prep_commit(&mut self, b: &mut Batch) -> Result<Prepared> {
        b.results.clear();
        let Some((node, dir)) = b.target.take() else {
            return Ok(Prepared::Done(Box::new(done(Rc::Ok))));
        };
        let kinds = std::mem::take(&mut b.kinds);
        let wrs = std::mem::take(&mut b.wrs);
        let image = std::mem::take(&mut b.image);
        let used = std::mem::take(&mut b.used);
        let outs = kinds
            .into_iter()
            .map(|(k, off)| {
                let len = match k {
                    BatchOp::Read { len } => len,
                    BatchOp::Atomic => 8,
                    BatchOp::Write => 0,
                };
                (len, off)
            })
            .collect();
        Ok(Prepared::Op(Op::Data(DataOp {
            node,
            dir,
            kind: DataKind::Batch {
                wrs: wrs.into_boxed_slice(),
                outs,
            },
            raddr: 0,
            rkey: 0,
            total: used as usize,
            done: 0,
            data: image,
            rare: None,
            ddl: None,
            auto: false,
            staged: false,
        })))
    }

    /// Posts the batch as one chain (only the last request signalled) and
    /// waits. An empty batch is OK. The batch is cleared either way; results
    /// are available through [`Batch::result`] on success.
    pub fn commit(&mut self, b: &mut Batch) -> Result<Rc> {
        let p = self.prep_commit(b);
        let c = self.run(p)?;
        b.results = c.batch;
        c.result
    }

    /// Posts the batch as one chain; the completion's `batch` holds the
    /// results. The batch is empty afterwards (ready for the next one).
    pub fn post_commit(&mut self, b: &mut Batch, user_data: u64) -> Result<Post> {
        self.post(user_data, |t| t.prep_commit(b))
    }
}
