//! The fabric conformance suite, written once and run against every backend
//! (two NICs in one process: a memory node and a client). CI runs the soft
//! NIC on both links; with `--features verbs` the same checks exist for the
//! verbs backend, marked `#[ignore]` because they need an RDMA NIC: run them
//! on hardware with `cargo test --features verbs --test fabric_conformance
//! -- --ignored` (or `patronus selftest --fabric verbs`).

mod common;

use std::sync::Arc;

use patronus::fabric::conformance::{self as conf, Pair};
use patronus::fabric::{open_nic, open_nic_with, FabricError, Nic};

fn nics(fabric: &str) -> (Arc<dyn Nic>, Arc<dyn Nic>) {
    let open = || open_nic(fabric, "127.0.0.1:0", 1 << 18).expect("open NIC");
    (open(), open())
}

fn pair(fabric: &str) -> (Pair, Arc<dyn Nic>) {
    let (s, c) = nics(fabric);
    (Pair::new(s, c.clone(), 4 << 20).expect("pair"), c)
}

macro_rules! every_backend {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn shm() {
                ($body)("shm")
            }
            #[test]
            fn tcp() {
                ($body)("tcp")
            }
            #[cfg(feature = "verbs")]
            #[test]
            #[ignore = "needs an RDMA NIC: cargo test --features verbs -- --ignored"]
            fn verbs() {
                ($body)("verbs")
            }
        }
    };
}

every_backend!(rw_byte_exact, |f| {
    let (p, _) = pair(f);
    conf::check_rw_byte_exact(&p).unwrap();
});

/// Soft fabric only (see the check's documentation).
mod reconnect_under_polling {
    use super::*;
    #[test]
    fn shm() {
        let (p, _) = pair("shm");
        conf::check_reconnect_under_polling(&p, 300).unwrap();
    }
    #[test]
    fn tcp() {
        let (p, _) = pair("tcp");
        conf::check_reconnect_under_polling(&p, 300).unwrap();
    }
}

every_backend!(atomics, |f| {
    let (p, _) = pair(f);
    conf::check_atomics(&p).unwrap();
});

every_backend!(cas_contention, |f| {
    let (p, c) = pair(f);
    let q = p.share(&c).unwrap();
    let r = p.share(&c).unwrap();
    conf::check_cas_contention(&[p, q, r], 300).unwrap();
});

/// A soft NIC whose windows die with a reset of their QP
/// (`SoftConfig::windows_survive_reset` off) says so in its caps, the
/// survival probe reports it, and the window checks hold with a re-bind
/// after recovery (old keys stay dead). The default soft NIC keeps them.
mod windows_die_on_reset {
    use super::*;
    fn run(f: &str) {
        let open = |survive| open_nic_with(f, "127.0.0.1:0", 1 << 18, survive).expect("open NIC");
        let (s, c) = (open(false), open(false));
        assert!(!s.caps().windows_survive_reset);
        let p = Pair::new(s.clone(), c.clone(), 4 << 20).expect("pair");
        assert!(
            !conf::probe_window_survival(&p).unwrap(),
            "windows do not survive reset"
        );
        let p = Pair::new(s.clone(), c.clone(), 4 << 20).expect("pair");
        conf::check_windows(&p, &p.share(&c).unwrap()).unwrap();
        let passed = conf::run_all(s, c, 20).unwrap();
        assert!(
            passed[0].contains("do not survive"),
            "the survival report comes first: {passed:?}"
        );
        let (s, c) = (open(true), open(true));
        assert!(s.caps().windows_survive_reset);
        let p = Pair::new(s, c, 4 << 20).expect("pair");
        assert!(
            conf::probe_window_survival(&p).unwrap(),
            "windows survive reset"
        );
    }
    #[test]
    fn shm() {
        run("shm")
    }
    #[test]
    fn tcp() {
        run("tcp")
    }
}

every_backend!(windows, |f| {
    let (p, c) = pair(f);
    let other = p.share(&c).unwrap();
    conf::check_windows(&p, &other).unwrap();
});

every_backend!(send_recv, |f| {
    let (p, _) = pair(f);
    conf::check_send_recv(&p).unwrap();
});

every_backend!(forged_rkeys, |f| {
    let (p, _) = pair(f);
    conf::check_forged_rkeys(&p, 100_000).unwrap();
});

every_backend!(caps, |f| {
    let (p, _) = pair(f);
    conf::check_caps(&p).unwrap();
});

every_backend!(run_all, |f| {
    let (s, c) = nics(f);
    let passed = conf::run_all(s, c, 1000).unwrap();
    assert_eq!(passed.len(), 8, "{passed:?}");
    // First the window-survival report: the soft NIC keeps windows.
    assert!(
        passed[0].starts_with("window_survival: windows survive"),
        "{passed:?}"
    );
});

/// An unknown fabric name is refused, naming the known ones. Without the
/// `verbs` feature, asking for the verbs fabric says how to get it; with it
/// and no device (CI), the error names the device list; with a device, the
/// verbs NIC opens.
#[test]
fn verbs_fabric_fails_clearly_without_a_device() {
    match open_nic("infiniband", "127.0.0.1:0", 1 << 14) {
        Err(FabricError::Invalid(m)) => {
            assert_eq!(m, r#"unknown fabric "infiniband" (shm, tcp, verbs)"#)
        }
        Err(e) => panic!("unknown fabric: {e:?}"),
        Ok(_) => panic!("an unknown fabric opened"),
    }
    let r = open_nic("verbs", "127.0.0.1:0", 1 << 14);
    if !cfg!(feature = "verbs") {
        match r {
            Err(e @ FabricError::Unsupported { .. }) => {
                assert_eq!(e.to_string(), common::VERBS_NOT_BUILT)
            }
            Err(e) => panic!("verbs without the feature: {e:?}"),
            Ok(_) => panic!("the verbs fabric opened in a build without it"),
        }
    } else if common::has_rdma_device() {
        let nic = r.expect("this machine has an RDMA device: the verbs NIC opens");
        assert_eq!(nic.caps().name, "verbs");
    } else {
        match r {
            Err(e @ FabricError::NoDevice(_)) => {
                assert!(common::is_no_device_error(&e.to_string()), "{e}")
            }
            Err(e) => panic!("verbs without a device: {e:?}"),
            Ok(_) => panic!("the verbs fabric opened on a machine without an RDMA device"),
        }
    }
}
