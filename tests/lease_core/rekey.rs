//! Re-binding on QP recovery where windows do not survive a reset of their
//! QP (the soft NIC with `soft_windows_die_on_reset`): the directory
//! re-binds the holder's live leases with new rkeys during the admin
//! QpReset and the client applies them before it posts anything again.

use super::*;

const N: usize = 200;

fn die_on_reset(c: &mut Config) {
    c.soft_windows_die_on_reset = true;
}

fn pattern(i: usize) -> [u8; 64] {
    let mut p = [0u8; 64];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (i * 7 + k) as u8;
    }
    p
}

/// A copy of `l` that still names `rkey` (its generation is unknown to the
/// client, so no re-keyed entry replaces the key).
fn forged(l: &Lease, rkey: u32) -> Lease {
    let mut f = l.clone();
    f.rkey = rkey;
    f.generation = u64::MAX - l.generation;
    f
}

#[test]
fn leases_are_rebound_with_new_rkeys_when_windows_die_on_reset() {
    with_cluster_cfg(2, 1, die_on_reset, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        // Relinquished before the fault: never re-bound.
        let mut gone = c
            .get_lease(W, 0, 0, 64 * N as u64, 64, 0, acquire::NO_GC)
            .unwrap();
        assert!(gone.success());
        let gone_copy = gone.clone();
        assert_eq!(c.relinquish(&mut gone, 0, 0).unwrap(), Rc::Ok);
        // N leases: write leases with a term (a protection-region window
        // too), NO_GC write leases, and read leases.
        let mut leases = Vec::new();
        for i in 0..N {
            srv.buffer_write(64 * i as u64, &pattern(i)).unwrap();
            let (write, ns, flag) = match i % 3 {
                0 => (W, 10_000_000_000, 0),
                1 => (W, 0, acquire::NO_GC),
                _ => (R, 0, acquire::NO_GC),
            };
            let l = c
                .get_lease(write, 0, 0, 64 * i as u64, 64, ns, flag)
                .unwrap();
            assert!(l.success(), "lease {i}: {}", l.ec());
            leases.push(l);
        }
        let old: Vec<(u32, u32)> = leases.iter().map(|l| (l.rkey, l.pr_rkey)).collect();
        // A protection fault: the QP is recovered, the windows died with
        // the reset and are bound again.
        let mut big = [0u8; 16];
        assert_eq!(
            c.read(&mut leases[1], &mut big, 56, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        let g = c.rekeyed_generations(0, 0);
        let mut want: Vec<u64> = leases.iter().map(|l| l.generation).collect();
        want.sort_unstable();
        assert_eq!(
            g, want,
            "every live lease re-keyed, the relinquished one not"
        );
        assert!(!g.contains(&gone_copy.generation));
        // Every lease reads byte-exact with a new rkey; write leases write.
        for (i, l) in leases.iter_mut().enumerate() {
            let mut b = [0u8; 64];
            assert_eq!(c.read(l, &mut b, 0, 0).unwrap(), Rc::Ok, "lease {i}");
            assert_eq!(b, pattern(i), "lease {i}");
            assert_ne!(l.rkey, old[i].0, "lease {i} kept its rkey");
            if l.pr_rkey != 0 {
                assert_ne!(l.pr_rkey, old[i].1, "lease {i} kept its region key");
            }
            if l.write {
                let v = pattern(i + 1000);
                assert_eq!(c.write(l, &v, 0, 0).unwrap(), Rc::Ok, "lease {i}");
                let mut seen = [0u8; 64];
                srv.buffer_read(64 * i as u64, &mut seen).unwrap();
                assert_eq!(seen, v, "lease {i}");
            }
        }
        // The protection-region windows work too: one-sided extension.
        assert_eq!(c.extend(&mut leases[0], 1_000_000_000, 0).unwrap(), Rc::Ok);
        // Read leases still refuse writes (same access as before).
        assert_eq!(
            c.write(&mut leases[2], b"no", 0, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        // Old rkeys are refused (each refusal recovers and re-keys again).
        for i in (0..N).step_by(25) {
            let mut f = forged(&leases[i], old[i].0);
            let mut b = [0u8; 8];
            assert_eq!(
                c.read(&mut f, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)
                    .unwrap(),
                Rc::RdmaProtectionErr,
                "old rkey of lease {i}"
            );
        }
        // The relinquished lease's key stays refused, after all those
        // re-keys; the live leases still work.
        let mut stale = gone_copy.clone();
        let mut b = [0u8; 8];
        assert_eq!(
            c.read(&mut stale, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)
                .unwrap(),
            Rc::RdmaProtectionErr
        );
        assert!(!c.rekeyed_generations(0, 0).contains(&gone_copy.generation));
        for (i, l) in leases.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            assert_eq!(c.read(l, &mut b, 0, 0).unwrap(), Rc::Ok, "lease {i}");
        }
        // Nothing leaks: every lease goes back, the table empties.
        assert_eq!(c.admin(0, 0, AdminOp::Stats, 0).unwrap(), N as i64);
        for l in leases.iter_mut() {
            assert_eq!(c.relinquish(l, 0, 0).unwrap(), Rc::Ok);
        }
        assert_eq!(c.admin(0, 0, AdminOp::Stats, 0).unwrap(), 0);
        assert!(c.rekeyed_generations(0, 0).is_empty());
    });
}

/// A lease whose term runs out around a recovery is re-bound while live
/// but not resurrected: the GC revokes it at its deadline as usual.
#[test]
fn a_lease_expiring_across_a_rekey_is_not_resurrected() {
    with_cluster_cfg(2, 1, die_on_reset, |_srv, clients| {
        let node = &clients[0];
        let mut c = node.register_client_thread().unwrap();
        let mut keep = c.get_lease(W, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        let mut short = c.get_lease(W, 0, 0, 4096, 64, 300_000_000, 0).unwrap();
        let ddl = short.ddl;
        let mut big = [0u8; 16];
        assert_eq!(
            c.read(&mut keep, &mut big, 56, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        let mut b = [0u8; 8];
        if node.now() < ddl - 50_000_000 {
            // Still live at the reset: re-bound, and usable until its end.
            assert!(c.rekeyed_generations(0, 0).contains(&short.generation));
            assert_eq!(c.read(&mut short, &mut b, 0, 0).unwrap(), Rc::Ok);
        }
        wait_past(node, ddl);
        wait_until("the GC revoked the short lease", || {
            c.admin(0, 0, AdminOp::Stats, 0).unwrap() == 1
        });
        assert_eq!(
            c.read(&mut short, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)
                .unwrap(),
            Rc::RdmaProtectionErr
        );
        // Another fault and recovery: the revoked lease is not re-bound.
        assert_eq!(
            c.read(&mut keep, &mut big, 56, 0).unwrap(),
            Rc::RdmaProtectionErr
        );
        assert_eq!(c.rekeyed_generations(0, 0), vec![keep.generation]);
        assert_eq!(
            c.read(&mut short, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)
                .unwrap(),
            Rc::RdmaProtectionErr
        );
        assert_eq!(c.read(&mut keep, &mut b, 0, 0).unwrap(), Rc::Ok);
    });
}

/// Posted READs (the engine's lean lane) in flight when a refused one
/// resets their QP, where windows die on reset: the READs the reset
/// flushed are posted again with their leases' new rkeys and complete
/// byte-exact, the refused one alone fails, each completes exactly once,
/// and posted READs made after the reset use the new keys.
#[test]
fn posted_reads_in_flight_across_a_rekey_complete_byte_exact() {
    with_cluster_cfg(2, 1, die_on_reset, |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let n = 32;
        let bad = 16;
        let mut leases = Vec::new();
        for i in 0..n {
            srv.buffer_write(64 * i as u64, &pattern(i)).unwrap();
            let l = c
                .get_lease(R, 0, 0, 64 * i as u64, 64, 0, acquire::NO_GC)
                .unwrap();
            assert!(l.success(), "lease {i}: {}", l.ec());
            leases.push(l);
        }
        let wait_all = |c: &mut ClientThread, want: usize| {
            let mut got = std::collections::HashMap::new();
            let t0 = Instant::now();
            while got.len() < want && t0.elapsed() < Duration::from_secs(10) {
                for x in c.wait(64, Duration::from_secs(1)).unwrap() {
                    let tag = x.user_data;
                    assert!(got.insert(tag, x).is_none(), "call {tag} completed twice");
                }
            }
            assert_eq!(got.len(), want, "completions");
            assert_eq!(c.inflight(), 0);
            got
        };
        // 16 READs, then one past its lease's end (refused), then 15 more:
        // the refused one heads the second chain, the rest are flushed.
        for (i, l) in leases.iter_mut().enumerate() {
            let (len, off) = if i == bad { (16, 56) } else { (64, 0) };
            assert_eq!(c.post_read(l, len, off, 0, i as u64).unwrap(), Post::Posted);
        }
        let got = wait_all(&mut c, n);
        for i in 0..n {
            let x = &got[&(i as u64)];
            if i == bad {
                assert_eq!(x.rc(), Rc::RdmaProtectionErr, "the READ past the end");
                continue;
            }
            assert_eq!(x.rc(), Rc::Ok, "READ {i}");
            assert_eq!(x.data, pattern(i), "READ {i}");
        }
        assert_eq!(
            c.rekeyed_generations(0, 0).len(),
            n,
            "every live lease re-keyed"
        );
        // After the reset: posted READs on the new keys.
        for (i, l) in leases.iter_mut().enumerate() {
            assert_eq!(
                c.post_read(l, 64, 0, 0, 1000 + i as u64).unwrap(),
                Post::Posted
            );
        }
        let got = wait_all(&mut c, n);
        for i in 0..n {
            let x = &got[&(1000 + i as u64)];
            assert_eq!(x.rc(), Rc::Ok, "READ {i} after the reset");
            assert_eq!(x.data, pattern(i), "READ {i} after the reset");
        }
        for l in leases.iter_mut() {
            assert_eq!(c.relinquish(l, 0, 0).unwrap(), Rc::Ok);
        }
        assert_eq!(c.admin(0, 0, AdminOp::Stats, 0).unwrap(), 0);
    });
}
