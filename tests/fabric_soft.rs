//! The fabric conformance suite on the soft NIC, both links, in one process
//! (two NICs: a memory node and a client).

use std::sync::Arc;

use patronus::fabric::conformance::{self as conf, Pair};
use patronus::fabric::soft::{LinkKind, SoftConfig, SoftNic};
use patronus::fabric::Nic;

fn nics(link: LinkKind) -> (Arc<dyn Nic>, Arc<dyn Nic>) {
    let cfg = SoftConfig {
        link,
        ..SoftConfig::default()
    };
    let s: Arc<dyn Nic> = Arc::new(SoftNic::open(cfg.clone()).expect("server NIC"));
    let c: Arc<dyn Nic> = Arc::new(SoftNic::open(cfg).expect("client NIC"));
    (s, c)
}

fn pair(link: LinkKind) -> (Pair, Arc<dyn Nic>) {
    let (s, c) = nics(link);
    (Pair::new(s, c.clone(), 4 << 20).expect("pair"), c)
}

macro_rules! both_links {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn shm() {
                ($body)(LinkKind::Shm)
            }
            #[test]
            fn tcp() {
                ($body)(LinkKind::Tcp)
            }
        }
    };
}

both_links!(rw_byte_exact, |l| {
    let (p, _) = pair(l);
    conf::check_rw_byte_exact(&p).unwrap();
});

both_links!(atomics, |l| {
    let (p, _) = pair(l);
    conf::check_atomics(&p).unwrap();
});

both_links!(cas_contention, |l| {
    let (p, c) = pair(l);
    let q = p.share(&c).unwrap();
    let r = p.share(&c).unwrap();
    conf::check_cas_contention(&[p, q, r], 300).unwrap();
});

both_links!(windows, |l| {
    let (p, c) = pair(l);
    let other = p.share(&c).unwrap();
    conf::check_windows(&p, &other).unwrap();
});

both_links!(send_recv, |l| {
    let (p, _) = pair(l);
    conf::check_send_recv(&p).unwrap();
});

both_links!(forged_rkeys, |l| {
    let (p, _) = pair(l);
    conf::check_forged_rkeys(&p, 100_000).unwrap();
});

both_links!(caps, |l| {
    let (p, _) = pair(l);
    conf::check_caps(&p).unwrap();
});

#[test]
fn run_all_on_shm() {
    let (s, c) = nics(LinkKind::Shm);
    let passed = conf::run_all(s, c, 1000).unwrap();
    assert_eq!(passed.len(), 7, "{passed:?}");
}
