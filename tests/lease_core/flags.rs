//! Acquire and relinquish flags, allocation leases, and the magic-MW retry.

use super::*;

#[test]
fn acquire_flags_mr_universal_norpc_nobind() {
    with_cluster(2, 1, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        srv.buffer_write(2048, &0xaabbccdd11223344u64.to_le_bytes())
            .unwrap();
        let mut b = [0u8; 8];
        // USE_MR: an MR over the object instead of a window (baseline).
        let mut m = c
            .get_lease(R, 0, 0, 2048, 32, 0, acquire::NO_GC | acquire::USE_MR)
            .unwrap();
        assert!(m.success());
        assert_eq!(c.read(&mut m, &mut b, 0, 0).unwrap(), Rc::Ok);
        assert_eq!(u64::from_le_bytes(b), 0xaabbccdd11223344);
        let mut stale = m.clone();
        c.relinquish(&mut m, 0, modify::USE_MR).unwrap();
        assert_eq!(
            c.read(&mut stale, &mut b, 0, 0).unwrap(),
            Rc::RdmaProtectionErr,
            "deregistered MR must be refused"
        );
        // USE_UNIVERSAL_RKEY bypasses the window: 32 bytes through a 1-byte lease.
        let mut one = c.get_lease(R, 0, 0, 2048, 1, 0, acquire::NO_GC).unwrap();
        let mut b32 = [0u8; 32];
        assert_eq!(
            c.read(&mut one, &mut b32, 0, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        assert_eq!(
            c.read(&mut one, &mut b32, 0, rw::USE_UNIVERSAL_RKEY)
                .unwrap(),
            Rc::Ok
        );
        assert_eq!(&b32[..8], &0xaabbccdd11223344u64.to_le_bytes());
        c.relinquish(&mut one, 0, 0).unwrap();
        // NO_RPC: a purely local lease, usable with the universal key only.
        let mut n = c.get_lease(R, 0, 0, 2048, 8, 0, acquire::NO_RPC).unwrap();
        assert!(n.success());
        assert_eq!(
            c.read(&mut n, &mut b, 0, rw::USE_UNIVERSAL_RKEY).unwrap(),
            Rc::Ok
        );
        assert_eq!(c.read(&mut n, &mut b, 0, 0).unwrap(), Rc::RdmaProtectionErr);
        c.relinquish(&mut n, 0, modify::NO_RPC).unwrap();
        // NO_BIND_PR: no one-sided extension possible; rpc_extend refused
        // (the original crashed the memory node here).
        let mut p = c
            .get_lease(R, 0, 0, 2048, 8, 50_000_000, acquire::NO_BIND_PR)
            .unwrap();
        assert!(p.success());
        assert_eq!(p.pr_rkey, 0);
        assert_refused(c.extend(&mut p, 1_000_000, 0));
        assert_refused(c.rpc_extend(&mut p, 1_000_000, 0));
        assert_eq!(c.read(&mut p, &mut b, 0, 0).unwrap(), Rc::Ok);
        c.relinquish(&mut p, 0, 0).unwrap();
        // NO_BIND_ANY: the RPC only; the lease grants no access.
        let mut q = c
            .get_lease(R, 0, 0, 2048, 8, 0, acquire::NO_GC | acquire::NO_BIND_ANY)
            .unwrap();
        assert!(q.success());
        assert_eq!(c.read(&mut q, &mut b, 0, 0).unwrap(), Rc::RdmaProtectionErr);
        c.relinquish(&mut q, 0, 0).unwrap();
        // Unknown flag bits are refused before anything is sent.
        let e = refusal(c.get_lease(R, 0, 0, 2048, 8, 0, 1 << 20));
        assert!(e.contains("flag bits 0x100000"), "{e}");
        let e = refusal(c.read(&mut q, &mut b, 0, 1 << 40));
        assert!(e.contains("flag bits 0x10000000000"), "{e}");
    });
}

#[test]
fn relinquish_flags_keep_or_drop_windows() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut b = [0u8; 8];
        // SERVER_DO_NOTHING: the server ignores it, the window stays.
        let mut l = c.get_lease(R, 0, 0, 0, 8, 0, acquire::NO_GC).unwrap();
        let mut keep = l.clone();
        c.relinquish(&mut l, 0, modify::SERVER_DO_NOTHING).unwrap();
        assert_eq!(c.read(&mut keep, &mut b, 0, 0).unwrap(), Rc::Ok);
        c.relinquish(&mut keep, 0, 0).unwrap();
        // A relinquished handle is refused locally.
        let e = refusal(c.read(&mut l, &mut b, 0, 0));
        assert!(e.contains("relinquished"), "{e}");
        // A relinquish that arrives twice (late duplicate) is harmless.
        let mut d = c.get_lease(R, 0, 0, 0, 8, 0, acquire::NO_GC).unwrap();
        let mut dup = d.clone();
        assert_eq!(c.relinquish(&mut d, 0, 0).unwrap(), Rc::Ok);
        assert_eq!(c.relinquish(&mut dup, 0, 0).unwrap(), Rc::Ok);
        // The memory node is still serving.
        let mut e = c.get_lease(R, 0, 0, 0, 8, 0, acquire::NO_GC).unwrap();
        assert_eq!(c.read(&mut e, &mut b, 0, 0).unwrap(), Rc::Ok);
        c.relinquish(&mut e, 0, 0).unwrap();
    });
}

#[test]
fn allocation_alloc_dealloc_with_and_only_allocation() {
    with_cluster(2, 1, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let lease_bytes = srv.lease_buffer_size();
        // alloc: distinct blocks inside the alloc buffer, never overlapping.
        let mut got = std::collections::HashSet::new();
        for _ in 0..100 {
            let off = c.alloc(0, 0, 48, 0).unwrap().expect("a block");
            assert!(off >= lease_bytes, "allocations come from the alloc buffer");
            assert_eq!(off % 64, 0);
            assert!(got.insert(off));
        }
        // Unknown hint: nothing.
        assert_eq!(c.alloc(0, 0, 48, 77).unwrap(), None);
        // Larger than every class: nothing, and no crash.
        assert_eq!(c.alloc(0, 0, 1 << 40, 0).unwrap(), None);
        // dealloc is validated: a live block frees once, garbage never.
        let one = *got.iter().next().unwrap();
        assert_eq!(c.dealloc(0, 0, one, 48, 0).unwrap(), Rc::Ok);
        assert_refused(c.dealloc(0, 0, one, 48, 0));
        assert_refused(c.dealloc(0, 0, one + 1, 48, 0));
        assert_refused(c.dealloc(0, 0, 12345, 48, 9));
        // WITH_ALLOCATION: a lease over fresh memory, usable at once.
        let mut l = c
            .get_wlease(0, 0, 0, 0, 64, 50_000_000, acquire::WITH_ALLOCATION)
            .unwrap();
        assert!(l.success());
        let (node, off) = c.get_gaddr(&l);
        assert_eq!(node, 0);
        assert!(off >= lease_bytes && !got.contains(&off));
        assert_eq!(c.write(&mut l, b"allocated", 0, 0).unwrap(), Rc::Ok);
        let mut b = [0u8; 9];
        srv.buffer_read(off, &mut b).unwrap();
        assert_eq!(&b, b"allocated");
        // Outside the allocated block is outside the lease.
        assert_eq!(c.write(&mut l, b"x", 64, 0).unwrap(), Rc::RdmaProtectionErr);
        // WITH_DEALLOCATION frees the block: it can be freed no more.
        assert_eq!(
            c.relinquish(&mut l, 0, modify::WITH_DEALLOCATION).unwrap(),
            Rc::Ok
        );
        assert_refused(c.dealloc(0, 0, off, 64, 0));
        // API rules: a gaddr with an allocation flag, a hint without one.
        let e = refusal(c.get_wlease(0, 0, 4096, 0, 64, 0, acquire::WITH_ALLOCATION));
        assert!(e.contains("offset 0x1000 with an allocation flag"), "{e}");
        let e = refusal(c.get_wlease(0, 0, 0, 3, 64, 0, 0));
        assert!(e.contains("alloc_hint 3 without"), "{e}");
        // WITH_ALLOCATION excludes conflict detection.
        let l = c
            .get_wlease(
                0,
                0,
                0,
                0,
                64,
                0,
                acquire::WITH_ALLOCATION | acquire::WITH_CONFLICT_DETECT,
            )
            .unwrap();
        assert!(!l.success());
        assert_eq!(l.ec(), St::Reserved as u8);
        // ONLY_DEALLOCATION belongs to dealloc, not relinquish.
        let mut l = c.get_wlease(0, 0, 0, 0, 64, 10_000_000, 0).unwrap();
        let e = refusal(c.relinquish(&mut l, 0, modify::ONLY_DEALLOCATION));
        assert!(e.contains("ONLY_DEALLOCATION"), "{e}");
        assert!(l.success(), "a refused relinquish leaves the lease held");
    });
}

/// The original's "magic MW" quirk as an opt-in fault: every bind at index
/// 682 mod 1 024 of a connection fails its acquire with MagicMwErr, and the
/// client retries without the caller noticing.
#[test]
fn magic_mw_fault_is_retried_transparently() {
    with_one_node("magic", true, |_p, c| {
        let mut b = [0u8; 8];
        for i in 0..1200u64 {
            // No GC: what is tested is the bind fault, not expiry (a loaded
            // machine can deschedule this thread for a whole short term).
            let mut l = c.get_lease(W, 0, 0, 4096, 64, 0, acquire::NO_GC).unwrap();
            assert!(l.success(), "acquire {i}: status {}", l.ec());
            assert_eq!(c.write(&mut l, &i.to_le_bytes(), 0, 0).unwrap(), Rc::Ok);
            assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
            assert_eq!(u64::from_le_bytes(b), i);
            assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
        }
        // 2 binds per lease (buffer + protection region): 2 400 binds on
        // one connection pass index 682 and 1 706.
        assert!(c.magic_retries() >= 2, "{} retries", c.magic_retries());
    });
}

/// NO_RELINQUISH_UNBIND_ANY skips the unbind at relinquish, but the window
/// never returns to the pool bound: a later pass invalidates it first (a
/// bound window cannot be bound again on hardware), so the old handle is
/// refused soon after, and the pool keeps working over many cycles.
#[test]
fn windows_left_bound_are_invalidated_by_a_later_pass() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut b = [0u8; 8];
        let mut l = c.get_lease(R, 0, 0, 0, 8, 0, acquire::NO_GC).unwrap();
        let mut keep = l.clone();
        assert_eq!(
            c.relinquish(&mut l, 0, modify::NO_RELINQUISH_UNBIND_ANY)
                .unwrap(),
            Rc::Ok
        );
        wait_until("the window left bound to be invalidated", || {
            c.admin(0, 0, AdminOp::Stats, 0).unwrap();
            c.read(&mut keep, &mut b, 0, 0).unwrap() == Rc::RdmaProtectionErr
        });
        for i in 0..200u64 {
            let mut l = c
                .get_lease(W, 0, 0, 64 * (i % 8), 8, 0, acquire::NO_GC)
                .unwrap();
            assert!(l.success(), "cycle {i}: {}", l.ec());
            assert_eq!(c.write(&mut l, &i.to_le_bytes(), 0, 0).unwrap(), Rc::Ok);
            assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
            assert_eq!(u64::from_le_bytes(b), i);
            let flag = if i % 2 == 0 {
                modify::NO_RELINQUISH_UNBIND_ANY
            } else {
                0
            };
            assert_eq!(c.relinquish(&mut l, 0, flag).unwrap(), Rc::Ok);
        }
        assert_eq!(live_leases(&mut c), 0);
    });
}
