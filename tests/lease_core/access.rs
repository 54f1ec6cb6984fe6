//! One-sided and two-sided access inside and outside leases, recovery, batches, the lease cache, upgrade, conflict detection and exact concurrent atomics.

use super::*;

#[test]
fn lease_read_write_protection_and_recovery() {
    with_cluster(2, 1, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        srv.buffer_write(1024, b"server wrote this").unwrap();
        let mut l = c.get_lease(W, 0, 0, 1024, 64, 0, acquire::NO_GC).unwrap();
        assert!(l.success());
        let mut b = [0u8; 17];
        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
        assert_eq!(&b, b"server wrote this");
        assert_eq!(
            c.write(&mut l, b"client wrote that", 32, 0).unwrap(),
            Rc::Ok
        );
        let mut seen = [0u8; 17];
        srv.buffer_read(1024 + 32, &mut seen).unwrap();
        assert_eq!(&seen, b"client wrote that");
        // Outside the lease: refused by the NIC, then the same lease works.
        let mut big = [0u8; 16];
        assert_eq!(
            c.read(&mut l, &mut big, 56, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
        // Atomics.
        assert_eq!(c.faa(&mut l, 56, 5, 0).unwrap(), (Rc::Ok, 0));
        assert_eq!(c.cas(&mut l, 56, 5, 9, 0).unwrap(), (Rc::Ok, 5));
        // Relinquish revokes at the NIC: a stale copy is refused.
        let mut stale = l.clone();
        assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
        let e = refusal(c.read(&mut l, &mut b, 0, 0));
        assert!(e.contains("relinquished"), "{e}");
        assert_eq!(
            c.read(&mut stale, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)
                .unwrap(),
            Rc::RdmaProtectionErr
        );
    });
}

#[test]
fn read_lease_refuses_writes_and_atomics_at_the_nic() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut l = c.get_lease(R, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        assert!(l.success());
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
        assert_eq!(c.write(&mut l, b"x", 0, 0).unwrap(), Rc::RdmaProtectionErr);
        assert_eq!(c.cas(&mut l, 0, 0, 1, 0).unwrap().0, Rc::RdmaProtectionErr);
        assert_eq!(c.faa(&mut l, 0, 1, 0).unwrap().0, Rc::RdmaProtectionErr);
        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
        c.relinquish(&mut l, 0, 0).unwrap();
    });
}

#[test]
fn admission_checks_offset_plus_size() {
    with_cluster(2, 1, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let total = srv.lease_buffer_size() + (16 << 20) + (4 << 20);
        let l = c
            .get_lease(R, 0, 0, total - 8, 64, 0, acquire::NO_GC)
            .unwrap();
        assert!(!l.success());
        assert_eq!(l.ec(), St::AddressOutOfRangeErr as u8);
        let l = c.get_lease(R, 0, 0, u64::MAX - 4, 64, 0, 0).unwrap();
        assert!(!l.success());
        assert_eq!(
            l.ec(),
            St::AddressOutOfRangeErr as u8,
            "offset + size wraps"
        );
        let mut ok = c
            .get_lease(R, 0, 0, total - 64, 64, 0, acquire::NO_GC)
            .unwrap();
        assert!(ok.success());
        c.relinquish(&mut ok, 0, 0).unwrap();
    });
}

#[test]
fn foreign_relinquish_is_refused_and_harmless() {
    with_cluster(3, 1, |_srv, clients| {
        let mut a = clients[0].register_client_thread().unwrap();
        let mut b = clients[1].register_client_thread().unwrap();
        let mut l = a.get_lease(W, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        let mut forged = l.clone();
        assert_refused(b.relinquish(&mut forged, 0, 0));
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut l, &mut buf, 0, 0).unwrap(), Rc::Ok);
        // The holder's own window is useless to another client (type 2).
        forged.live = true;
        assert_eq!(
            b.read(&mut forged, &mut buf, 0, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        assert_eq!(a.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
    });
}

#[test]
fn conflict_detection_one_holder_at_a_time() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut d = clients[0].register_client_thread().unwrap();
        let f = acquire::NO_GC | acquire::WITH_CONFLICT_DETECT;
        let mut l = c.get_lease(W, 0, 0, 4096, 64, 0, f).unwrap();
        assert!(l.success());
        let m = d.get_lease(W, 0, 0, 4096, 64, 0, f).unwrap();
        assert_eq!(m.ec(), St::LockedErr as u8);
        c.relinquish(&mut l, 0, 0).unwrap();
        let mut m = d.get_lease(W, 0, 0, 4096, 64, 0, f).unwrap();
        assert!(m.success());
        d.relinquish(&mut m, 0, 0).unwrap();
    });
}

#[test]
fn two_sided_access_is_checked_against_the_lease() {
    with_cluster(2, 1, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut l = c.get_lease(W, 0, 0, 8192, 4096, 0, acquire::NO_GC).unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(c.rpc_write(&mut l, &data, 0).unwrap(), Rc::Ok);
        let mut back = vec![0u8; 4096];
        assert_eq!(c.rpc_read(&mut l, &mut back, 0).unwrap(), Rc::Ok);
        assert_eq!(back, data);
        let mut seen = vec![0u8; 4096];
        srv.buffer_read(8192, &mut seen).unwrap();
        assert_eq!(seen, data);
        assert_eq!(
            c.cas(
                &mut l,
                0,
                u64::from_le_bytes(data[..8].try_into().unwrap()),
                7,
                rw::USE_TWO_SIDED
            )
            .unwrap()
            .0,
            Rc::Ok
        );
        // Outside the lease: refused by the server (the original allowed any offset).
        let mut b = [0u8; 16];
        assert_eq!(
            c.rpc_read(&mut l, &mut b, 4090).unwrap(),
            Rc::RdmaProtectionErr
        );
        let mut r = c.get_lease(R, 0, 0, 8192, 64, 0, acquire::NO_GC).unwrap();
        assert_eq!(c.rpc_write(&mut r, b"x", 0).unwrap(), Rc::RdmaProtectionErr);
        c.relinquish(&mut l, 0, 0).unwrap();
        // After relinquish the server refuses the old identity.
        l.live = true;
        assert_refused(c.rpc_read(&mut l, &mut b, 0));
        c.relinquish(&mut r, 0, 0).unwrap();
    });
}

#[test]
fn concurrent_faa_under_leases_sums_exactly() {
    with_cluster(3, 2, |srv, clients| {
        let per = 5_000u64;
        thread::scope(|s| {
            for node in clients {
                for t in 0..2u16 {
                    s.spawn(move || {
                        let mut c = node.register_client_thread().unwrap();
                        let dir = t % 2;
                        let mut l = c
                            .get_lease(W, 0, dir, 1 << 20, 64, 0, acquire::NO_GC)
                            .unwrap();
                        assert!(l.success());
                        for _ in 0..per {
                            assert_eq!(c.faa(&mut l, 0, 1, 0).unwrap().0, Rc::Ok);
                        }
                        c.relinquish(&mut l, 0, 0).unwrap();
                    });
                }
            }
        });
        let mut b = [0u8; 8];
        srv.buffer_read(1 << 20, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 2 * 2 * per);
    });
}

#[test]
fn batches_read_write_cas_in_one_chain() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let (m1, m2) = (0xaabbccdd11223344u64, 0xaabbccdd11223345u64);
        let mut l = c
            .get_lease(W, 0, 0, 32 * 1024, 32, 0, acquire::NO_GC)
            .unwrap();
        assert_eq!(c.write(&mut l, &m1.to_le_bytes(), 0, 0).unwrap(), Rc::Ok);
        assert_eq!(c.write(&mut l, &m2.to_le_bytes(), 24, 0).unwrap(), Rc::Ok);
        for _ in 0..100 {
            let mut b = patronus::client::Batch::new();
            c.prepare_read(&mut b, &l, 8, 0, 0).unwrap();
            c.prepare_read(&mut b, &l, 8, 24, 0).unwrap();
            assert_eq!(c.commit(&mut b).unwrap(), Rc::Ok);
            assert_eq!(b.result(0).unwrap(), m1.to_le_bytes());
            assert_eq!(b.result(1).unwrap(), m2.to_le_bytes());
            c.prepare_write(&mut b, &l, &(m1 + 1).to_le_bytes(), 0, 0)
                .unwrap();
            c.prepare_write(&mut b, &l, &(m2 + 1).to_le_bytes(), 24, 0)
                .unwrap();
            assert_eq!(c.commit(&mut b).unwrap(), Rc::Ok);
            c.prepare_cas(&mut b, &l, 0, m1 + 1, m1, 0).unwrap();
            c.prepare_cas(&mut b, &l, 24, m2 + 1, m2, 0).unwrap();
            assert_eq!(c.commit(&mut b).unwrap(), Rc::Ok);
            assert_eq!(b.result(0).unwrap(), (m1 + 1).to_le_bytes());
            assert_eq!(b.result(1).unwrap(), (m2 + 1).to_le_bytes());
        }
        // Empty commit is OK; the 17th op is refused with NO_MEM.
        let mut b = patronus::client::Batch::new();
        assert_eq!(c.commit(&mut b).unwrap(), Rc::Ok);
        for _ in 0..16 {
            assert_eq!(c.prepare_read(&mut b, &l, 8, 0, 0).unwrap(), Rc::Ok);
        }
        assert_eq!(c.prepare_read(&mut b, &l, 8, 0, 0).unwrap(), Rc::NoMem);
        assert_eq!(c.commit(&mut b).unwrap(), Rc::Ok);
        // One bad op fails the batch (and the QP recovers).
        c.prepare_read(&mut b, &l, 8, 0, 0).unwrap();
        c.prepare_read(&mut b, &l, 8, 30, 0).unwrap();
        assert_eq!(c.commit(&mut b).unwrap(), Rc::RdmaProtectionErr);
        let mut x = [0u8; 8];
        assert_eq!(c.read(&mut l, &mut x, 0, 0).unwrap(), Rc::Ok);
        assert_eq!(u64::from_le_bytes(x), m1);
        c.relinquish(&mut l, 0, 0).unwrap();
    });
}

#[test]
fn lease_cache_is_coherent_with_own_writes_and_dropped_on_relinquish() {
    with_cluster(2, 1, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        srv.buffer_write(0, &[1u8; 256]).unwrap();
        let mut l = c.get_wlease(0, 0, 0, 0, 256, 0, acquire::NO_GC).unwrap();
        let mut b = [0u8; 128];
        assert_eq!(c.read(&mut l, &mut b, 0, rw::WITH_CACHE).unwrap(), Rc::Ok);
        assert_eq!(b, [1u8; 128]);
        // A hit is served locally: a change behind the cache's back is not
        // seen (that is what a cache is) ...
        srv.buffer_write(0, &[2u8; 8]).unwrap();
        let mut h = [0u8; 16];
        assert_eq!(c.read(&mut l, &mut h, 8, rw::WITH_CACHE).unwrap(), Rc::Ok);
        assert_eq!(h, [1u8; 16]);
        // ... but this lease's own writes update every covering entry.
        assert_eq!(
            c.write(&mut l, &[9u8; 4], 10, rw::WITH_CACHE).unwrap(),
            Rc::Ok
        );
        assert_eq!(c.read(&mut l, &mut h, 8, rw::WITH_CACHE).unwrap(), Rc::Ok);
        assert_eq!(h[..2], [1, 1]);
        assert_eq!(h[2..6], [9, 9, 9, 9]);
        // A write without the cache flag still keeps the cache coherent.
        assert_eq!(c.write(&mut l, &[7u8; 2], 20, 0).unwrap(), Rc::Ok);
        assert_eq!(c.read(&mut l, &mut h, 8, rw::WITH_CACHE).unwrap(), Rc::Ok);
        assert_eq!(h[12..14], [7, 7]);
        // Atomics invalidate what they touch.
        assert_eq!(c.faa(&mut l, 0, 1, 0).unwrap().0, Rc::Ok);
        let mut w = [0u8; 8];
        assert_eq!(c.read(&mut l, &mut w, 0, rw::WITH_CACHE).unwrap(), Rc::Ok);
        assert_eq!(u64::from_le_bytes(w), u64::from_le_bytes([2u8; 8]) + 1);
        assert!(l.cache.len() <= patronus::client::CACHE_ENTRIES);
        c.relinquish(&mut l, 0, 0).unwrap();
        assert!(l.cache.is_empty());
    });
}

#[test]
fn upgrade_turns_a_read_lease_into_a_write_lease() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut r = c.get_rlease(0, 0, 512, 0, 64, 50_000_000, 0).unwrap();
        assert!(r.success());
        assert_eq!(c.write(&mut r, b"no", 0, 0).unwrap(), Rc::RdmaProtectionErr);
        let mut w = c.upgrade(&mut r, 0).unwrap();
        assert!(w.success() && w.write);
        assert!(!r.live, "the read lease is given up");
        assert_eq!(c.write(&mut w, b"yes", 0, 0).unwrap(), Rc::Ok);
        let e = refusal(c.upgrade(&mut w, 0));
        assert!(e.contains("already a write lease"), "{e}");
        c.relinquish(&mut w, 0, 0).unwrap();
    });
}

/// One node that is both memory node and client: a lease revoked by the GC
/// and then used without the local check fails at the NIC, and the data QP
/// recovers (its peer QP lives on the same NIC).
/// (This once failed: `server_serve` counted the node as finished on entry,
/// so on a one-node cluster the directory stopped, and destroyed its QPs, as
/// soon as the GC queue was empty. A node with client threads now serves
/// until it calls `finished` itself.)
#[test]
fn single_node_revoked_lease_recovers_in_place() {
    with_one_node("single", false, |p, c| {
        let mut b = [0u8; 8];
        let mut l = c.get_lease(W, 0, 0, 12288, 64, 50_000_000, 0).unwrap();
        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
        expect_expiry(p, c, &mut l);
        let mut l2 = c.get_lease(W, 0, 0, 0, 64, 50_000_000, 0).unwrap();
        assert_eq!(c.read(&mut l2, &mut b, 0, 0).unwrap(), Rc::Ok);
    });
}

#[test]
fn revoked_lease_fault_then_new_lease_two_nodes() {
    with_cluster(2, 1, |_srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut b = [0u8; 8];
        let mut l = c.get_lease(W, 0, 0, 12288, 64, 50_000_000, 0).unwrap();
        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
        expect_expiry(&clients[0], &mut c, &mut l);
        let mut l2 = c.get_lease(W, 0, 0, 0, 64, 50_000_000, 0).unwrap();
        assert_eq!(c.read(&mut l2, &mut b, 0, 0).unwrap(), Rc::Ok);
    });
}
