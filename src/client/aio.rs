//! Async calls on one client thread: the Rust form of the original's
//! coroutines. [`AsyncThread`] wraps a [`ClientThread`]; each async method
//! posts its call when first polled and resolves when the call's completion
//! arrives, so ordinary combinators (`futures::future::join_all`,
//! `select`, `FuturesUnordered`) keep many calls in flight on one thread.
//! [`AsyncThread::block_on`] is the thread's executor: it polls the future
//! and, whenever it waits, drives the thread's completion queues and wakes
//! the tasks whose calls completed. No other thread, no tokio.
//!
//! ```no_run
//! # fn demo(t: patronus::client::ClientThread, mut a: patronus::client::Lease,
//! #         mut b: patronus::client::Lease) -> patronus::Result<()> {
//! use futures::future::join;
//! let t = patronus::client::AsyncThread::new(t);
//! let (x, y) = t.block_on(join(t.read(&mut a, 64, 0, 0), t.faa(&mut b, 0, 1, 0)));
//! let (_rc, bytes) = x?;
//! let (_rc, old) = y?;
//! # let _ = (bytes, old); Ok(()) }
//! ```

use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{Batch, ClientThread, Completion, Lease, Post};
use crate::lease::Rc;
use crate::Result;

enum Slot {
    Waiting(Waker),
    Done(Completion),
    /// Its future was dropped before the call completed (e.g. the losing
    /// side of a `select`): the completion is dropped when it arrives.
    Abandoned,
}

/// A client thread whose calls are futures (see the module docs).
pub struct AsyncThread {
    /// None only while a crate-internal owner (the C posted kv forms) has
    /// taken the thread back between its polls.
    t: RefCell<Option<ClientThread>>,
    calls: RefCell<FxHashMap<u64, Slot>>,
    /// The completions of one progress round (reused: nothing allocated
    /// per round).
    got: RefCell<Vec<Completion>>,
    /// Tasks whose post met the thread's limit: woken by the next
    /// completion.
    blocked: RefCell<Vec<Waker>>,
    next: Cell<u64>,
}

/// A posted (or to be posted) call.
pub(crate) struct CallFuture<'a, F> {
    at: &'a AsyncThread,
    post: Option<F>,
    tag: u64,
}

impl<F> Unpin for CallFuture<'_, F> {}

impl<F> Drop for CallFuture<'_, F> {
    fn drop(&mut self) {
        if self.post.is_none() && self.tag != 0 {
            let mut calls = self.at.calls.borrow_mut();
            if let Some(Slot::Waiting(_)) = calls.remove(&self.tag) {
                calls.insert(self.tag, Slot::Abandoned);
            }
        }
    }
}

impl<F> Future for CallFuture<'_, F>
where
    F: FnOnce(&mut ClientThread, u64) -> Result<Post>,
{
    type Output = Result<Completion>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let at = self.at;
        if let Some(post) = self.post.take() {
            let tag = at.next.get() + 1;
            at.next.set(tag);
            let posted = {
                let mut t = at.t.borrow_mut();
                let Some(t) = t.as_mut() else {
                    return Poll::Ready(Err(crate::Error::Invalid(
                        "async call: no client thread attached".into(),
                    )));
                };
                // The closure is needed again if the thread is full.
                let r = post_once(t, tag, post);
                match r {
                    Ok(None) => None,
                    Ok(Some(back)) => Some(back),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            };
            match posted {
                None => {
                    self.tag = tag;
                    at.calls
                        .borrow_mut()
                        .insert(tag, Slot::Waiting(cx.waker().clone()));
                    return Poll::Pending;
                }
                Some(back) => {
                    // At the limit: try again after the next completion.
                    self.post = Some(back);
                    at.blocked.borrow_mut().push(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let mut calls = at.calls.borrow_mut();
        match calls.remove(&self.tag) {
            Some(Slot::Done(c)) => {
                self.tag = 0;
                Poll::Ready(Ok(c))
            }
            Some(Slot::Waiting(_) | Slot::Abandoned) | None => {
                calls.insert(self.tag, Slot::Waiting(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// Posts with `post` unless the thread is at its limit, in which case the
/// closure comes back unused (a post that returns Retry prepared nothing,
/// but the closure was consumed: so the limit is checked first).
fn post_once<F>(t: &mut ClientThread, tag: u64, post: F) -> Result<Option<F>>
where
    F: FnOnce(&mut ClientThread, u64) -> Result<Post>,
{
    if t.inflight() >= t.max_inflight() {
        return Ok(Some(post));
    }
    match post(t, tag)? {
        Post::Posted => Ok(None),
        // Not reached (checked above); a Retry would lose nothing anyway.
        Post::Retry => Err(crate::Error::Invalid(
            "the thread's call limit was reached between check and post".into(),
        )),
    }
}

impl AsyncThread {
    /// Wraps a registered client thread.
    pub fn new(t: ClientThread) -> AsyncThread {
        AsyncThread {
            t: RefCell::new(Some(t)),
            calls: RefCell::new(FxHashMap::default()),
            got: RefCell::new(Vec::with_capacity(64)),
            blocked: RefCell::new(Vec::new()),
            next: Cell::new(0),
        }
    }

    /// An executor without its thread (see [`AsyncThread::attach`]); its
    /// calls' tags start above `first_tag`, so that they can share the
    /// thread with calls posted under other tags.
    pub(crate) fn detached(first_tag: u64) -> AsyncThread {
        AsyncThread {
            t: RefCell::new(None),
            calls: RefCell::new(FxHashMap::default()),
            got: RefCell::new(Vec::with_capacity(64)),
            blocked: RefCell::new(Vec::new()),
            next: Cell::new(first_tag),
        }
    }

    /// Gives the executor its thread (for as long as its futures are
    /// polled); the calls in flight stay known across detach and attach.
    pub(crate) fn attach(&self, t: ClientThread) {
        *self.t.borrow_mut() = Some(t);
    }

    /// Takes the thread back out (None when it was not attached).
    pub(crate) fn detach(&self) -> Option<ClientThread> {
        self.t.borrow_mut().take()
    }

    /// The client thread back (calls still in flight complete and are
    /// dropped at its next poll).
    pub fn into_inner(self) -> ClientThread {
        self.t
            .into_inner()
            .expect("an AsyncThread made by new() keeps its thread")
    }

    /// Blocking access to the client thread between awaits (e.g. for a
    /// call without an async form). Panics if a call is being posted.
    pub fn with<R>(&self, f: impl FnOnce(&mut ClientThread) -> R) -> R {
        f(self
            .t
            .borrow_mut()
            .as_mut()
            .expect("an AsyncThread made by new() keeps its thread"))
    }

    /// A future that posts its call with `post(thread, tag)` when first
    /// polled (again later when the thread was at its limit) and resolves
    /// with the call's completion.
    pub(crate) fn call<F>(&self, post: F) -> CallFuture<'_, F>
    where
        F: FnOnce(&mut ClientThread, u64) -> Result<Post>,
    {
        CallFuture {
            at: self,
            post: Some(post),
            tag: 0,
        }
    }

    /// Polls the thread's completions once and wakes the tasks they
    /// belong to; returns how many arrived.
    pub fn progress(&self) -> Result<usize> {
        self.progress_with(|_| {})
    }

    /// As [`AsyncThread::progress`]; completions of calls not posted
    /// through this executor go to `stray`.
    pub(crate) fn progress_with(&self, mut stray: impl FnMut(Completion)) -> Result<usize> {
        let mut got = std::mem::take(&mut *self.got.borrow_mut());
        let n = match self.t.borrow_mut().as_mut() {
            Some(t) => t.poll_into(&mut got, 64)?,
            None => return Ok(0),
        };
        for c in got.drain(..) {
            if let Some(c) = self.accept(c) {
                stray(c);
            }
        }
        *self.got.borrow_mut() = got;
        if n > 0 {
            let blocked = std::mem::take(&mut *self.blocked.borrow_mut());
            for w in blocked {
                w.wake();
            }
        }
        Ok(n)
    }

    /// Hands a completion polled elsewhere to the task whose call it
    /// completes; gives it back when it is none of this executor's calls.
    pub(crate) fn accept(&self, c: Completion) -> Option<Completion> {
        let tag = c.user_data;
        let waker = {
            let mut calls = self.calls.borrow_mut();
            match calls.get_mut(&tag) {
                Some(slot @ Slot::Waiting(_)) => match std::mem::replace(slot, Slot::Done(c)) {
                    Slot::Waiting(w) => w,
                    _ => return None,
                },
                Some(Slot::Abandoned) => {
                    calls.remove(&tag);
                    return None;
                }
                Some(Slot::Done(_)) => return None,
                // Not posted through this wrapper (a post_* on the inner
                // thread, or another executor's).
                None => return Some(c),
            }
        };
        waker.wake();
        None
    }

    /// Runs `fut` to completion on this thread: polls it, and whenever it
    /// waits, drives the completion queues (spinning briefly, then giving
    /// the core away a little at a time).
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut idle: Option<Instant> = None;
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            match self.progress() {
                Ok(n) if n > 0 => idle = None,
                Ok(_) => {
                    let t0 = *idle.get_or_insert_with(Instant::now);
                    if t0.elapsed() > Duration::from_micros(50) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Err(e) => {
                    // A broken thread: the futures see it as their calls
                    // never completing; surface it loudly.
                    tracing::error!("client thread progress failed: {e}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Async [`ClientThread::get_rlease`] (granted or not: check
    /// `success()`).
    #[allow(clippy::too_many_arguments)]
    pub async fn get_rlease(
        &self,
        node: u16,
        dir: u16,
        offset: u64,
        alloc_hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        let c = self
            .call(|t, tag| t.post_get_rlease(node, dir, offset, alloc_hint, size, ns, flag, tag))
            .await?;
        c.into_lease()
    }

    /// Async [`ClientThread::get_wlease`].
    #[allow(clippy::too_many_arguments)]
    pub async fn get_wlease(
        &self,
        node: u16,
        dir: u16,
        offset: u64,
        alloc_hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        let c = self
            .call(|t, tag| t.post_get_wlease(node, dir, offset, alloc_hint, size, ns, flag, tag))
            .await?;
        c.into_lease()
    }

    /// Async [`ClientThread::relinquish`].
    pub async fn relinquish(&self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Rc> {
        self.call(|t, tag| t.post_relinquish(lease, hint, flag, tag))
            .await?
            .result
    }

    /// Async one-sided [`ClientThread::extend`].
    pub async fn extend(&self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        let c = self
            .call(|t, tag| t.post_extend(lease, ns, flag, tag))
            .await?;
        c.apply(lease);
        c.result
    }

    /// Async [`ClientThread::rpc_extend`].
    pub async fn rpc_extend(&self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        let c = self
            .call(|t, tag| t.post_rpc_extend(lease, ns, flag, tag))
            .await?;
        c.apply(lease);
        c.result
    }

    /// Async read: the code and the bytes (empty unless Ok).
    pub async fn read(
        &self,
        lease: &mut Lease,
        len: usize,
        offset: u64,
        flag: u64,
    ) -> Result<(Rc, Vec<u8>)> {
        let c = self
            .call(|t, tag| t.post_read(lease, len, offset, flag, tag))
            .await?;
        c.apply(lease);
        let rc = c.result?;
        Ok((rc, c.data))
    }

    /// Async write.
    pub async fn write(&self, lease: &mut Lease, src: &[u8], offset: u64, flag: u64) -> Result<Rc> {
        let c = self
            .call(|t, tag| t.post_write(lease, src, offset, flag, tag))
            .await?;
        c.apply(lease);
        c.result
    }

    /// Async 8-byte CAS: the code and the old value.
    pub async fn cas(
        &self,
        lease: &mut Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        let c = self
            .call(|t, tag| t.post_cas(lease, offset, compare, swap, flag, tag))
            .await?;
        c.apply(lease);
        Ok((c.result?, c.value))
    }

    /// Async 8-byte FAA: the code and the old value.
    pub async fn faa(
        &self,
        lease: &mut Lease,
        offset: u64,
        add: i64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        let c = self
            .call(|t, tag| t.post_faa(lease, offset, add, flag, tag))
            .await?;
        c.apply(lease);
        Ok((c.result?, c.value))
    }

    /// Async [`ClientThread::alloc`]: the block's buffer offset, or None
    /// when the allocator has nothing.
    pub async fn alloc(&self, node: u16, dir: u16, size: u64, hint: u64) -> Result<Option<u64>> {
        let c = self
            .call(|t, tag| t.post_alloc(node, dir, size, hint, tag))
            .await?;
        let value = c.value;
        let l = c.into_lease()?;
        if l.status != crate::lease::AcquireStatus::Success as u8 {
            return Ok(None);
        }
        Ok(Some(value))
    }

    /// Async [`ClientThread::dealloc`].
    pub async fn dealloc(
        &self,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        hint: u64,
    ) -> Result<Rc> {
        self.call(|t, tag| t.post_dealloc(node, dir, offset, size, hint, tag))
            .await?
            .result
    }

    /// Async batch commit: the code and per operation its result.
    pub async fn commit(&self, b: &mut Batch) -> Result<(Rc, Vec<Vec<u8>>)> {
        let c = self.call(|t, tag| t.post_commit(b, tag)).await?;
        Ok((c.result?, c.batch))
    }
}
