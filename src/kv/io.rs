//! The calls the table's protocol makes, as one small trait: the table's
//! logic is written once as async fns over it, and runs
//! - on an [`AsyncThread`], whose futures post their calls and wait for
//!   their completions, so that many table operations are in flight on one
//!   thread (`KvTable::get_async` and friends);
//! - on [`Blocking`], a `&mut ClientThread` whose calls are the blocking
//!   ones and whose futures are therefore ready when first polled
//!   ([`ready`]): the synchronous `KvTable::get`, `put`, `del`.
//!
//! The handle's leases are `RefCell`s that a call borrows only while it
//! posts (or, blocking, runs) and when its completion is applied, never
//! across an await.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::post_all;
use crate::client::{AsyncThread, Batch, ClientThread, Lease};
use crate::lease::{AcquireStatus as St, Rc};
use crate::Result;

/// Outcome of a batched READ: the data, or the refusing code and offset.
pub(crate) type BatchRead = std::result::Result<Vec<Vec<u8>>, (Rc, u64)>;

/// The calls of the table's protocol (see the module docs).
pub(crate) trait KvIo {
    /// READ of `len` bytes at `off` of `lease`: the code and the bytes.
    async fn read(
        &self,
        lease: &RefCell<Lease>,
        len: usize,
        off: u64,
        flag: u64,
    ) -> Result<(Rc, Vec<u8>)>;
    /// WRITE of `src` at `off` of `lease`.
    async fn write(&self, lease: &RefCell<Lease>, src: &[u8], off: u64, flag: u64) -> Result<Rc>;
    /// 8-byte CAS: the code and the old value.
    async fn cas(
        &self,
        lease: &RefCell<Lease>,
        off: u64,
        cmp: u64,
        swap: u64,
        flag: u64,
    ) -> Result<(Rc, u64)>;
    /// 8-byte FAA: the code and the old value.
    async fn faa(&self, lease: &RefCell<Lease>, off: u64, add: i64, flag: u64)
        -> Result<(Rc, u64)>;
    /// READs `len` bytes at each of `ats` as one batch (one chain, one
    /// completion); `batch` is the handle's reusable one.
    async fn read_batch(
        &self,
        batch: &RefCell<Batch>,
        lease: &RefCell<Lease>,
        ats: &[u64],
        len: usize,
        flag: u64,
    ) -> Result<BatchRead>;
    /// Up to `n` blocks of `size` bytes (their allocations in flight
    /// together where the thread allows): their buffer offsets.
    async fn alloc_blocks(
        &self,
        node: u16,
        dir: u16,
        size: u64,
        hint: u64,
        n: usize,
    ) -> Result<Vec<u64>>;
    /// Frees `blocks` (buffer offset, bytes); returns how many were not
    /// freed.
    async fn dealloc_blocks(&self, node: u16, dir: u16, hint: u64, blocks: &[(u64, u64)]) -> usize;
    /// A write lease (the resize lock).
    #[allow(clippy::too_many_arguments)]
    async fn get_wlease(
        &self,
        node: u16,
        dir: u16,
        off: u64,
        hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease>;
    /// Gives a lease back.
    async fn relinquish(&self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Rc>;
    /// Extends a lease (one-sided).
    async fn extend(&self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc>;
    /// Waits about `d` (blocking: sleeps; async: lets the thread's other
    /// tasks run meanwhile).
    async fn pause(&self, d: Duration);
}

/// A blocking client thread as [`KvIo`]: every future it returns is ready
/// when first polled.
pub(crate) struct Blocking<'c> {
    ct: RefCell<&'c mut ClientThread>,
}

impl<'c> Blocking<'c> {
    pub(crate) fn new(ct: &'c mut ClientThread) -> Blocking<'c> {
        Blocking {
            ct: RefCell::new(ct),
        }
    }
}

/// The value of a future over [`Blocking`] (ready when first polled).
pub(crate) fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("a kv call over a blocking thread waited"),
    }
}

impl KvIo for Blocking<'_> {
    async fn read(
        &self,
        lease: &RefCell<Lease>,
        len: usize,
        off: u64,
        flag: u64,
    ) -> Result<(Rc, Vec<u8>)> {
        let mut b = vec![0u8; len];
        let rc = self
            .ct
            .borrow_mut()
            .read(&mut lease.borrow_mut(), &mut b, off, flag)?;
        Ok((rc, b))
    }

    async fn write(&self, lease: &RefCell<Lease>, src: &[u8], off: u64, flag: u64) -> Result<Rc> {
        self.ct
            .borrow_mut()
            .write(&mut lease.borrow_mut(), src, off, flag)
    }

    async fn cas(
        &self,
        lease: &RefCell<Lease>,
        off: u64,
        cmp: u64,
        swap: u64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        self.ct
            .borrow_mut()
            .cas(&mut lease.borrow_mut(), off, cmp, swap, flag)
    }

    async fn faa(
        &self,
        lease: &RefCell<Lease>,
        off: u64,
        add: i64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        self.ct
            .borrow_mut()
            .faa(&mut lease.borrow_mut(), off, add, flag)
    }

    async fn read_batch(
        &self,
        batch: &RefCell<Batch>,
        lease: &RefCell<Lease>,
        ats: &[u64],
        len: usize,
        flag: u64,
    ) -> Result<BatchRead> {
        let mut ct = self.ct.borrow_mut();
        let mut b = batch.borrow_mut();
        let l = lease.borrow();
        for &at in ats {
            match ct.prepare_read(&mut b, &l, len, at, flag) {
                Ok(Rc::Ok) => {}
                r => {
                    // Nothing half-prepared stays for the next batch.
                    *b = Batch::new();
                    return Ok(Err((r?, at)));
                }
            }
        }
        match ct.commit(&mut b)? {
            Rc::Ok => Ok(Ok((0..ats.len())
                .map(|i| b.result(i).unwrap_or_default().to_vec())
                .collect())),
            rc => Ok(Err((rc, ats[0]))),
        }
    }

    async fn alloc_blocks(
        &self,
        node: u16,
        dir: u16,
        size: u64,
        hint: u64,
        n: usize,
    ) -> Result<Vec<u64>> {
        let mut ct = self.ct.borrow_mut();
        let mut got = Vec::new();
        if ct.inflight() == 0 {
            let cs = post_all(&mut ct, n, |ct, i| ct.post_alloc(node, dir, size, hint, i))?;
            for c in cs {
                if matches!(c.result, Ok(Rc::Ok))
                    && c.lease
                        .as_ref()
                        .is_some_and(|l| l.status == St::Success as u8)
                {
                    got.push(c.value);
                }
            }
        } else if let Some(off) = ct.alloc(node, dir, size, hint)? {
            got.push(off);
        }
        Ok(got)
    }

    async fn dealloc_blocks(&self, node: u16, dir: u16, hint: u64, blocks: &[(u64, u64)]) -> usize {
        let mut ct = self.ct.borrow_mut();
        let mut leaked = 0;
        if ct.inflight() == 0 {
            match post_all(&mut ct, blocks.len(), |ct, i| {
                let (off, len) = blocks[i as usize];
                ct.post_dealloc(node, dir, off, len, hint, i)
            }) {
                Ok(cs) => {
                    leaked += blocks.len() - cs.len();
                    for c in cs {
                        if !matches!(c.result, Ok(Rc::Ok)) {
                            tracing::debug!(?c.result, "kv: block not freed");
                            leaked += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("kv: frees failed: {e}");
                    leaked += blocks.len();
                }
            }
        } else {
            for &(off, len) in blocks {
                if !matches!(ct.dealloc(node, dir, off, len, hint), Ok(Rc::Ok)) {
                    leaked += 1;
                }
            }
        }
        leaked
    }

    async fn get_wlease(
        &self,
        node: u16,
        dir: u16,
        off: u64,
        hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        self.ct
            .borrow_mut()
            .get_wlease(node, dir, off, hint, size, ns, flag)
    }

    async fn relinquish(&self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Rc> {
        self.ct.borrow_mut().relinquish(lease, hint, flag)
    }

    async fn extend(&self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        self.ct.borrow_mut().extend(lease, ns, flag)
    }

    async fn pause(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Ready once `until` has passed; until then it asks to be polled again
/// (the executor drives the thread's completions in between).
struct Until(Instant);

impl Future for Until {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.0 {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl KvIo for AsyncThread {
    async fn read(
        &self,
        lease: &RefCell<Lease>,
        len: usize,
        off: u64,
        flag: u64,
    ) -> Result<(Rc, Vec<u8>)> {
        let c = self
            .call(|t, tag| t.post_read(&mut lease.borrow_mut(), len, off, flag, tag))
            .await?;
        c.apply(&mut lease.borrow_mut());
        let rc = c.result?;
        Ok((rc, c.data))
    }

    async fn write(&self, lease: &RefCell<Lease>, src: &[u8], off: u64, flag: u64) -> Result<Rc> {
        let c = self
            .call(|t, tag| t.post_write(&mut lease.borrow_mut(), src, off, flag, tag))
            .await?;
        c.apply(&mut lease.borrow_mut());
        c.result
    }

    async fn cas(
        &self,
        lease: &RefCell<Lease>,
        off: u64,
        cmp: u64,
        swap: u64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        let c = self
            .call(|t, tag| t.post_cas(&mut lease.borrow_mut(), off, cmp, swap, flag, tag))
            .await?;
        c.apply(&mut lease.borrow_mut());
        Ok((c.result?, c.value))
    }

    async fn faa(
        &self,
        lease: &RefCell<Lease>,
        off: u64,
        add: i64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        let c = self
            .call(|t, tag| t.post_faa(&mut lease.borrow_mut(), off, add, flag, tag))
            .await?;
        c.apply(&mut lease.borrow_mut());
        Ok((c.result?, c.value))
    }

    async fn read_batch(
        &self,
        _batch: &RefCell<Batch>,
        lease: &RefCell<Lease>,
        ats: &[u64],
        len: usize,
        flag: u64,
    ) -> Result<BatchRead> {
        // A batch of its own: the handle's is shared by its operations.
        let mut b = Batch::new();
        let prepared = self.with(|ct| {
            let l = lease.borrow();
            for &at in ats {
                match ct.prepare_read(&mut b, &l, len, at, flag)? {
                    Rc::Ok => {}
                    rc => return Ok(Err((rc, at))),
                }
            }
            Ok::<_, crate::Error>(Ok(()))
        })?;
        if let Err(e) = prepared {
            return Ok(Err(e));
        }
        let (rc, data) = self.commit(&mut b).await?;
        Ok(match rc {
            Rc::Ok => Ok(data),
            rc => Err((rc, ats[0])),
        })
    }

    async fn alloc_blocks(
        &self,
        node: u16,
        dir: u16,
        size: u64,
        hint: u64,
        n: usize,
    ) -> Result<Vec<u64>> {
        let got = join_all((0..n).map(|_| AsyncThread::alloc(self, node, dir, size, hint))).await;
        let mut out = Vec::with_capacity(n);
        let mut err = None;
        for g in got {
            match g {
                Ok(Some(off)) => out.push(off),
                Ok(None) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        match err {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    async fn dealloc_blocks(&self, node: u16, dir: u16, hint: u64, blocks: &[(u64, u64)]) -> usize {
        let rs = join_all(
            blocks
                .iter()
                .map(|&(off, len)| AsyncThread::dealloc(self, node, dir, off, len, hint)),
        )
        .await;
        rs.into_iter().filter(|r| !matches!(r, Ok(Rc::Ok))).count()
    }

    async fn get_wlease(
        &self,
        node: u16,
        dir: u16,
        off: u64,
        hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        AsyncThread::get_wlease(self, node, dir, off, hint, size, ns, flag).await
    }

    async fn relinquish(&self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Rc> {
        AsyncThread::relinquish(self, lease, hint, flag).await
    }

    async fn extend(&self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        AsyncThread::extend(self, lease, ns, flag).await
    }

    async fn pause(&self, d: Duration) {
        Until(Instant::now() + d).await
    }
}
