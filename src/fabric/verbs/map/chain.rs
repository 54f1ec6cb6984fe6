//! `ibv_send_wr` / `ibv_recv_wr` chains built from contract work requests,
//! every local range checked against its MR before anything is posted.

use rdma_sys::{
    ibv_mr, ibv_mw, ibv_mw_bind_info, ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge,
    ibv_wr_opcode,
};

use super::window::KeyOp;
use super::window_access_to_ibv;
use crate::fabric::{inc_rkey, Access, FabricError, RecvWr, Result, SendWr, WrOp};

/// What a registered local key resolves to when a request is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMr {
    /// Virtual address of the MR's first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The `ibv_mr` (for binds).
    pub mr: *mut ibv_mr,
}

/// What a window handle resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMw {
    /// The `ibv_mw`.
    pub mw: *mut ibv_mw,
    /// Its current rkey (before this bind).
    pub rkey: u32,
}

/// Resolves keys and handles while a chain is built.
pub trait Resolve {
    /// A local MR by lkey.
    fn mr(&self, lkey: u32) -> Option<LocalMr>;
    /// A window by handle.
    fn mw(&self, handle: u32) -> Option<LocalMw>;
}

/// A chain of send work requests ready for `ibv_post_send`. The `ibv_sge`s
/// live in a boxed slice whose heap address is stable, and the WRs point
/// into it; [`SendChain::link`] sets the `next` pointers once the vector
/// stops moving.
pub struct SendChain {
    /// The work requests, in posting order.
    pub wrs: Vec<ibv_send_wr>,
    /// One scatter/gather entry per WR (unused for binds).
    pub sges: Box<[ibv_sge]>,
    /// Every bind or invalidate of the chain, so the NIC can record it
    /// before posting and publish its key when it completes.
    pub new_rkeys: Vec<Keyed>,
}

/// A bind or invalidate inside a [`SendChain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keyed {
    /// Index of the WR in the chain.
    pub index: usize,
    /// Window handle.
    pub handle: u32,
    /// What it does to the window's key.
    pub op: KeyOp,
}

fn sge_of(r: &dyn Resolve, s: &crate::fabric::Sge, what: &str) -> Result<ibv_sge> {
    let m = r
        .mr(s.lkey)
        .ok_or_else(|| FabricError::Invalid(format!("{what}: unknown lkey {:#x}", s.lkey)))?;
    let end = s
        .offset
        .checked_add(s.len as u64)
        .ok_or_else(|| FabricError::Invalid(format!("{what}: offset + length overflows")))?;
    if end > m.len {
        return Err(FabricError::Invalid(format!(
            "{what}: [{}, {end}) is outside the {}-byte local MR",
            s.offset, m.len
        )));
    }
    Ok(ibv_sge {
        addr: m.addr + s.offset,
        length: s.len,
        lkey: s.lkey,
    })
}

fn zeroed_wr() -> ibv_send_wr {
    // SAFETY: ibv_send_wr is a plain C struct of integers, raw pointers and
    // unions of those; all-zero is a valid (empty) value for every field.
    unsafe { std::mem::zeroed() }
}

/// Builds the `ibv_send_wr` chain for `wrs`. Every local range is checked
/// against its MR; atomics must be 8 bytes and 8-aligned remotely.
pub fn build_send_chain(r: &dyn Resolve, wrs: &[SendWr]) -> Result<SendChain> {
    let mut sges = vec![
        ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0
        };
        wrs.len()
    ]
    .into_boxed_slice();
    let mut out = Vec::with_capacity(wrs.len());
    // Only binds and invalidates add entries: plain requests allocate nothing.
    let mut new_rkeys = Vec::new();
    for (i, w) in wrs.iter().enumerate() {
        let mut v = zeroed_wr();
        v.wr_id = w.wr_id;
        v.send_flags = if w.signaled {
            ibv_send_flags::IBV_SEND_SIGNALED.0
        } else {
            0
        };
        match w.op {
            WrOp::Read { local, raddr, rkey } | WrOp::Write { local, raddr, rkey } => {
                let read = matches!(w.op, WrOp::Read { .. });
                sges[i] = sge_of(r, &local, if read { "READ" } else { "WRITE" })?;
                v.num_sge = 1;
                v.opcode = if read {
                    ibv_wr_opcode::IBV_WR_RDMA_READ
                } else {
                    ibv_wr_opcode::IBV_WR_RDMA_WRITE
                };
                v.wr.rdma = rdma_sys::rdma_t {
                    remote_addr: raddr,
                    rkey,
                };
            }
            WrOp::Cas {
                local, raddr, rkey, ..
            }
            | WrOp::Faa {
                local, raddr, rkey, ..
            } => {
                let (what, opcode, compare_add, swap) = match w.op {
                    WrOp::Cas { compare, swap, .. } => (
                        "CAS",
                        ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP,
                        compare,
                        swap,
                    ),
                    WrOp::Faa { add, .. } => {
                        ("FAA", ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD, add, 0)
                    }
                    _ => unreachable!("matched CAS or FAA above"),
                };
                atomic_checks(&local, raddr, what)?;
                sges[i] = sge_of(r, &local, what)?;
                v.num_sge = 1;
                v.opcode = opcode;
                v.wr.atomic = rdma_sys::atomic_t {
                    remote_addr: raddr,
                    compare_add,
                    swap,
                    rkey,
                };
            }
            WrOp::Send { local } => {
                sges[i] = sge_of(r, &local, "SEND")?;
                v.num_sge = 1;
                v.opcode = ibv_wr_opcode::IBV_WR_SEND;
            }
            WrOp::Bind {
                mw,
                lkey,
                offset,
                len,
                access,
            } => {
                let bind_info = bind_info(r, lkey, offset, len, access)?;
                let win = r
                    .mw(mw)
                    .ok_or_else(|| FabricError::Invalid(format!("BIND: unknown window {mw}")))?;
                let new = inc_rkey(win.rkey);
                v.opcode = ibv_wr_opcode::IBV_WR_BIND_MW;
                v.bind_mw_tso_union.bind_mw = rdma_sys::bind_mw_t {
                    mw: win.mw,
                    rkey: new,
                    bind_info,
                };
                new_rkeys.push(Keyed {
                    index: i,
                    handle: mw,
                    op: KeyOp::Bind { new },
                });
            }
            WrOp::Invalidate { mw } => {
                let win = r.mw(mw).ok_or_else(|| {
                    FabricError::Invalid(format!("INVALIDATE: unknown window {mw}"))
                })?;
                v.opcode = ibv_wr_opcode::IBV_WR_LOCAL_INV;
                v.imm_data_invalidated_rkey_union.invalidated_rkey = win.rkey;
                // LOCAL_INV leaves the window's key as it is; the next bind
                // moves its tag on.
                new_rkeys.push(Keyed {
                    index: i,
                    handle: mw,
                    op: KeyOp::Invalidate { next: win.rkey },
                });
            }
        }
        out.push(v);
    }
    Ok(SendChain {
        wrs: out,
        sges,
        new_rkeys,
    })
}

/// The bind description of `[offset, offset+len)` of local MR `lkey` with
/// window rights `access`: a non-empty range inside the MR, or an error.
pub fn bind_info(
    r: &dyn Resolve,
    lkey: u32,
    offset: u64,
    len: u64,
    access: Access,
) -> Result<ibv_mw_bind_info> {
    let m = r
        .mr(lkey)
        .ok_or_else(|| FabricError::Invalid(format!("BIND: unknown lkey {lkey:#x}")))?;
    let end = offset
        .checked_add(len)
        .ok_or_else(|| FabricError::Invalid("BIND: offset + length overflows".into()))?;
    if end > m.len || len == 0 {
        return Err(FabricError::Invalid(format!(
            "BIND: [{offset}, {end}) is not a non-empty range of the {}-byte MR",
            m.len
        )));
    }
    Ok(ibv_mw_bind_info {
        mr: m.mr,
        addr: m.addr + offset,
        length: len,
        mw_access_flags: window_access_to_ibv(access),
    })
}

fn atomic_checks(local: &crate::fabric::Sge, raddr: u64, what: &str) -> Result<()> {
    if local.len != 8 {
        return Err(FabricError::Invalid(format!(
            "{what}: the local buffer must be 8 bytes, not {}",
            local.len
        )));
    }
    if raddr % 8 != 0 {
        return Err(FabricError::Invalid(format!(
            "{what}: remote address {raddr:#x} is not 8-byte aligned"
        )));
    }
    Ok(())
}

impl SendChain {
    /// Points every WR at its sge and links `next`; returns the head.
    /// Call after the chain stopped moving (it is never resized later).
    pub fn link(&mut self) -> *mut ibv_send_wr {
        link_chain(&mut self.wrs, self.sges.as_mut_ptr(), |w, sge, next| {
            if w.num_sge == 1 {
                w.sg_list = sge;
            }
            w.next = next;
        })
    }
}

/// Gives request `i` of `wrs` the address of sge `i` and of request `i + 1`
/// (null for the last) through `set`; returns the head (null when empty).
/// Raw pointer arithmetic stays inside the slices.
fn link_chain<W>(
    wrs: &mut [W],
    sges: *mut ibv_sge,
    mut set: impl FnMut(&mut W, *mut ibv_sge, *mut W),
) -> *mut W {
    let n = wrs.len();
    let base = wrs.as_mut_ptr();
    for (i, w) in wrs.iter_mut().enumerate() {
        let next = if i + 1 < n {
            base.wrapping_add(i + 1)
        } else {
            std::ptr::null_mut()
        };
        set(w, sges.wrapping_add(i), next);
    }
    if n == 0 {
        std::ptr::null_mut()
    } else {
        base
    }
}

/// A chain of receive work requests.
pub struct RecvChain {
    /// The work requests.
    pub wrs: Vec<ibv_recv_wr>,
    /// Their sges.
    pub sges: Box<[ibv_sge]>,
}

/// Builds the `ibv_recv_wr` chain for `wrs`.
pub fn build_recv_chain(r: &dyn Resolve, wrs: &[RecvWr]) -> Result<RecvChain> {
    let mut sges = Vec::with_capacity(wrs.len());
    let mut out = Vec::with_capacity(wrs.len());
    for w in wrs {
        sges.push(sge_of(r, &w.local, "RECV")?);
        out.push(ibv_recv_wr {
            wr_id: w.wr_id,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 1,
        });
    }
    Ok(RecvChain {
        wrs: out,
        sges: sges.into_boxed_slice(),
    })
}

impl RecvChain {
    /// Links the chain; returns its head (null when empty).
    pub fn link(&mut self) -> *mut ibv_recv_wr {
        link_chain(&mut self.wrs, self.sges.as_mut_ptr(), |w, sge, next| {
            w.sg_list = sge;
            w.next = next;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::Sge;
    use rdma_sys::ibv_access_flags;
    use std::collections::HashMap;

    struct Fake {
        mrs: HashMap<u32, LocalMr>,
        mws: HashMap<u32, LocalMw>,
    }
    impl Resolve for Fake {
        fn mr(&self, lkey: u32) -> Option<LocalMr> {
            self.mrs.get(&lkey).copied()
        }
        fn mw(&self, h: u32) -> Option<LocalMw> {
            self.mws.get(&h).copied()
        }
    }
    fn fake() -> Fake {
        let mut mrs = HashMap::new();
        mrs.insert(
            0x11,
            LocalMr {
                addr: 0x1000_0000,
                len: 1 << 20,
                mr: 0x5000 as *mut ibv_mr,
            },
        );
        let mut mws = HashMap::new();
        mws.insert(
            3,
            LocalMw {
                mw: 0x6000 as *mut ibv_mw,
                rkey: 0x0000_12ff,
            },
        );
        Fake { mrs, mws }
    }
    fn sge(off: u64, len: u32) -> Sge {
        Sge {
            lkey: 0x11,
            offset: off,
            len,
        }
    }

    #[test]
    fn read_write_and_atomics_build_correct_wrs() {
        let f = fake();
        let wrs = [
            SendWr {
                wr_id: 1,
                op: WrOp::Read {
                    local: sge(64, 100),
                    raddr: 0xdead_0000,
                    rkey: 0x77,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 2,
                op: WrOp::Write {
                    local: sge(0, 8),
                    raddr: 0xdead_0008,
                    rkey: 0x78,
                },
                signaled: false,
            },
            SendWr {
                wr_id: 3,
                op: WrOp::Cas {
                    local: sge(8, 8),
                    raddr: 0xdead_0010,
                    rkey: 0x79,
                    compare: 5,
                    swap: 6,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 4,
                op: WrOp::Faa {
                    local: sge(16, 8),
                    raddr: 0xdead_0018,
                    rkey: 0x7a,
                    add: 9,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 5,
                op: WrOp::Send { local: sge(32, 24) },
                signaled: true,
            },
        ];
        let mut c = build_send_chain(&f, &wrs).unwrap();
        let head = c.link();
        assert_eq!(head, c.wrs.as_mut_ptr());
        let w = &c.wrs;
        assert_eq!(w[0].opcode, ibv_wr_opcode::IBV_WR_RDMA_READ);
        assert_eq!(w[0].send_flags, ibv_send_flags::IBV_SEND_SIGNALED.0);
        assert_eq!(w[1].send_flags, 0);
        // SAFETY (test): reading the union member that was written.
        unsafe {
            assert_eq!(w[0].wr.rdma.remote_addr, 0xdead_0000);
            assert_eq!(w[0].wr.rdma.rkey, 0x77);
            assert_eq!(w[2].wr.atomic.compare_add, 5);
            assert_eq!(w[2].wr.atomic.swap, 6);
            assert_eq!(w[3].wr.atomic.compare_add, 9);
            assert_eq!(w[3].wr.atomic.rkey, 0x7a);
        }
        assert_eq!(w[1].opcode, ibv_wr_opcode::IBV_WR_RDMA_WRITE);
        assert_eq!(w[2].opcode, ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP);
        assert_eq!(w[3].opcode, ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD);
        assert_eq!(w[4].opcode, ibv_wr_opcode::IBV_WR_SEND);
        assert_eq!(c.sges[0].addr, 0x1000_0000 + 64);
        assert_eq!(c.sges[0].length, 100);
        assert_eq!(c.sges[0].lkey, 0x11);
        let (wbase, sbase) = (c.wrs.as_mut_ptr(), c.sges.as_mut_ptr());
        for i in 0..5 {
            assert_eq!(c.wrs[i].num_sge, 1);
            assert_eq!(c.wrs[i].sg_list, sbase.wrapping_add(i));
            let next = if i < 4 {
                wbase.wrapping_add(i + 1)
            } else {
                std::ptr::null_mut()
            };
            assert_eq!(c.wrs[i].next, next);
        }
        assert!(c.new_rkeys.is_empty());
    }

    #[test]
    fn bind_and_invalidate_carry_a_fresh_key_tag() {
        let f = fake();
        let wrs = [
            SendWr {
                wr_id: 9,
                op: WrOp::Bind {
                    mw: 3,
                    lkey: 0x11,
                    offset: 4096,
                    len: 64,
                    access: Access::READ_WINDOW,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 10,
                op: WrOp::Invalidate { mw: 3 },
                signaled: true,
            },
        ];
        let mut c = build_send_chain(&f, &wrs).unwrap();
        c.link();
        assert_eq!(c.wrs[0].opcode, ibv_wr_opcode::IBV_WR_BIND_MW);
        assert_eq!(c.wrs[0].num_sge, 0);
        assert!(c.wrs[0].sg_list.is_null());
        // SAFETY (test): reading the union members that were written.
        unsafe {
            let b = c.wrs[0].bind_mw_tso_union.bind_mw;
            assert_eq!(b.mw, 0x6000 as *mut ibv_mw);
            // The tag wraps inside the low byte; the index is untouched.
            assert_eq!(b.rkey, 0x0000_1200);
            assert_eq!(b.bind_info.mr, 0x5000 as *mut ibv_mr);
            assert_eq!(b.bind_info.addr, 0x1000_0000 + 4096);
            assert_eq!(b.bind_info.length, 64);
            assert_eq!(
                b.bind_info.mw_access_flags,
                ibv_access_flags::IBV_ACCESS_REMOTE_READ.0
            );
            assert_eq!(
                c.wrs[1].imm_data_invalidated_rkey_union.invalidated_rkey,
                0x0000_12ff
            );
        }
        assert_eq!(c.wrs[1].opcode, ibv_wr_opcode::IBV_WR_LOCAL_INV);
        assert_eq!(
            c.new_rkeys,
            vec![
                Keyed {
                    index: 0,
                    handle: 3,
                    op: KeyOp::Bind { new: 0x1200 }
                },
                Keyed {
                    index: 1,
                    handle: 3,
                    op: KeyOp::Invalidate { next: 0x12ff }
                }
            ]
        );
    }

    #[test]
    fn malformed_requests_are_refused_before_posting() {
        let f = fake();
        let bad = [
            WrOp::Read {
                local: Sge {
                    lkey: 0x99,
                    offset: 0,
                    len: 8,
                },
                raddr: 0,
                rkey: 1,
            },
            WrOp::Read {
                local: sge((1 << 20) - 4, 8),
                raddr: 0,
                rkey: 1,
            },
            WrOp::Write {
                local: sge(u64::MAX - 2, 8),
                raddr: 0,
                rkey: 1,
            },
            WrOp::Cas {
                local: sge(0, 16),
                raddr: 0,
                rkey: 1,
                compare: 0,
                swap: 0,
            },
            WrOp::Faa {
                local: sge(0, 8),
                raddr: 4,
                rkey: 1,
                add: 1,
            },
            WrOp::Bind {
                mw: 3,
                lkey: 0x11,
                offset: u64::MAX,
                len: 2,
                access: Access::READ_WINDOW,
            },
            WrOp::Bind {
                mw: 3,
                lkey: 0x11,
                offset: 0,
                len: 0,
                access: Access::READ_WINDOW,
            },
            WrOp::Bind {
                mw: 4,
                lkey: 0x11,
                offset: 0,
                len: 8,
                access: Access::READ_WINDOW,
            },
            WrOp::Invalidate { mw: 77 },
        ];
        for op in bad {
            let r = build_send_chain(
                &f,
                &[SendWr {
                    wr_id: 0,
                    op,
                    signaled: true,
                }],
            );
            assert!(r.is_err(), "{op:?} accepted");
        }
        assert!(build_recv_chain(
            &f,
            &[RecvWr {
                wr_id: 1,
                local: Sge {
                    lkey: 0x12,
                    offset: 0,
                    len: 4
                }
            }]
        )
        .is_err());
    }

    #[test]
    fn recv_chain_links() {
        let f = fake();
        let mut c = build_recv_chain(
            &f,
            &[
                RecvWr {
                    wr_id: 1,
                    local: sge(0, 4096),
                },
                RecvWr {
                    wr_id: 2,
                    local: sge(4096, 4096),
                },
            ],
        )
        .unwrap();
        let head = c.link();
        assert_eq!(head, c.wrs.as_mut_ptr());
        let second = c.wrs.as_mut_ptr().wrapping_add(1);
        assert_eq!(c.wrs[0].next, second);
        assert!(c.wrs[1].next.is_null());
        assert_eq!(c.sges[1].addr, 0x1000_0000 + 4096);
        assert!(build_recv_chain(&f, &[]).unwrap().link().is_null());
    }
}
