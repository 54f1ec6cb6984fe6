//! Hostile initiators: at least 100 000 malformed ring entries (shm) and
//! frames (tcp) thrown at a soft NIC. The responder must survive, answer
//! what it can with errors, touch no memory it must not (the exposed region
//! is unchanged), and keep serving a legitimate client on another QP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use patronus::fabric::conformance::{checksum, Pair};
use patronus::fabric::soft::wire::{FrameKind, Prefix, ReqHeader, ReqOp, MAX_RDMA_LEN};
use patronus::fabric::soft::{LinkKind, NicAddr, SoftConfig, SoftNic};
use patronus::fabric::{Access, Nic, QpCap, QpEndpoint, WcStatus};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// The (made-up) client QP number the attacker's channels come from.
const ATTACKER_QPN: u32 = 4242;

struct Victim {
    pair: Pair,
    server: Arc<dyn Nic>,
    addr: NicAddr,
    /// The client's NIC: the attacker speaks as it (authenticated hellos
    /// need its key), through the QP on the memory node connected to
    /// `ATTACKER_QPN` of it.
    cnic: Arc<SoftNic>,
    sum: u64,
    target_qpn: u32,
    _target: Arc<dyn patronus::fabric::Qp>,
}

fn victim(link: LinkKind) -> Victim {
    let cfg = SoftConfig {
        link,
        ..SoftConfig::default()
    };
    let snic = SoftNic::open(cfg.clone()).unwrap();
    let addr = NicAddr::decode(&snic.address()).unwrap();
    let server: Arc<dyn Nic> = Arc::new(snic);
    let cnic = Arc::new(SoftNic::open(cfg).unwrap());
    let client: Arc<dyn Nic> = cnic.clone();
    let pair = Pair::new(server.clone(), client, 1 << 20).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut data = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut data);
    pair.region.write(0, &data).unwrap();
    let sum = checksum(&pair.region).unwrap();
    // The attacker's QP on the memory node, in the same PD as the region,
    // so key checks (not just the PD) are what stop it.
    let cq = server.create_cq(16).unwrap();
    let target = server
        .create_qp(pair.server.pd, &cq, &cq, QpCap::default())
        .unwrap();
    target
        .connect(&QpEndpoint {
            nic: pair.client.qp.endpoint().nic,
            qpn: ATTACKER_QPN,
        })
        .ok();
    let target_qpn = target.qpn();
    Victim {
        pair,
        server,
        addr,
        cnic,
        sum,
        target_qpn,
        _target: target,
    }
}

impl Victim {
    /// The legitimate client still works and the region is intact.
    fn assert_healthy(&self) {
        let p = &self.pair;
        for i in 0..100u64 {
            assert_eq!(
                p.read(p.region.rkey(), i * 64, 0, 64).unwrap(),
                WcStatus::Success,
                "legitimate read {i} after the attack"
            );
        }
        assert_eq!(
            checksum(&p.region).unwrap(),
            self.sum,
            "exposed memory changed"
        );
        let _ = &self.server;
    }
}

/// Random request bytes: half fully random, half valid-looking headers with
/// random fields (opcodes, lengths, addresses near and inside the region,
/// rkeys near the region's).
fn hostile_req(rng: &mut StdRng, region: u64, rkey: u32) -> [u8; 64] {
    let mut b = [0u8; 64];
    if rng.next_u64() % 2 == 0 {
        rng.fill_bytes(&mut b);
        return b;
    }
    let op = [
        ReqOp::Read,
        ReqOp::Write,
        ReqOp::Cas,
        ReqOp::Faa,
        ReqOp::Send,
    ][(rng.next_u64() % 5) as usize];
    let h = ReqHeader {
        op,
        epoch: rng.next_u64() as u8,
        len: match rng.next_u64() % 4 {
            0 => 8,
            1 => rng.next_u64() as u32,
            2 => (rng.next_u64() % 8192) as u32,
            _ => MAX_RDMA_LEN,
        },
        seq: rng.next_u64(),
        raddr: match rng.next_u64() % 3 {
            0 => region + (rng.next_u64() % (2 << 20)),
            1 => region.wrapping_sub(rng.next_u64() % 4096),
            _ => rng.next_u64(),
        },
        rkey: match rng.next_u64() % 3 {
            0 => rkey ^ (1 + (rng.next_u64() % 255) as u32),
            1 => (rng.next_u64() % 64) as u32,
            _ => rng.next_u64() as u32,
        },
        lblock: rng.next_u64() as u32 % 4,
        loff: rng.next_u64(),
        arg0: 0,
        arg1: 0,
    };
    h.encode(&mut b);
    b
}

#[test]
fn shm_malformed_ring_entries() {
    let v = victim(LinkKind::Shm);
    let mut rng = StdRng::seed_from_u64(0xfeed_beef);
    let mut o = v
        .cnic
        .connect_raw_shm(&v.addr.encode(), ATTACKER_QPN, v.target_qpn, 1)
        .unwrap();
    let total = 120_000u64;
    let mut sent = 0u64;
    let mut answered = 0u64;
    let t0 = std::time::Instant::now();
    while sent < total {
        let free = o.req.free().unwrap() as u64;
        for _ in 0..free.min(total - sent).min(256) {
            let b = hostile_req(&mut rng, v.pair.region.addr(), v.pair.region.rkey());
            o.req.write_with(|s| s.copy_from_slice(&b[..s.len()]));
            sent += 1;
        }
        o.req.publish();
        o.kick();
        loop {
            let n = o.resp.available().unwrap();
            if n == 0 {
                break;
            }
            for _ in 0..n {
                let mut r = [0u8; 32];
                o.resp.pop_into(&mut r);
                answered += 1;
            }
        }
        o.resp.release();
        // Let the responder run (matters under valgrind, which runs one
        // thread at a time).
        std::thread::yield_now();
        assert!(t0.elapsed().as_secs() < 240, "attack loop took too long");
    }
    assert!(o.alive(), "a malformed entry must not kill the channel");
    assert!(
        answered >= 90_000,
        "the responder answered only {answered} of {total}"
    );
    v.assert_healthy();
    // A corrupt ring index kills only that channel: claim to have consumed
    // responses that were never produced, then let the responder fill up.
    let (_, resp_ring, _) = patronus::fabric::soft::shm::layouts();
    patronus::fabric::soft::ring::flag(&o.seg, resp_ring.off)
        .store(u32::MAX, std::sync::atomic::Ordering::Release);
    let mut legit = ReqHeader {
        op: ReqOp::Read,
        epoch: 77,
        len: 8,
        seq: 1,
        raddr: v.pair.region.addr(),
        rkey: 0x4242,
        lblock: 0,
        loff: 0,
        arg0: 0,
        arg1: 0,
    };
    let mut hb = [0u8; 64];
    let t0 = std::time::Instant::now();
    while o.alive() {
        assert!(
            t0.elapsed().as_secs() < 10,
            "corrupt index was not detected"
        );
        if o.req.free().unwrap_or(0) > 0 {
            // A new epoch each time, so every (refused) request is answered.
            legit.epoch = legit.epoch.wrapping_add(1);
            legit.encode(&mut hb);
            o.req.write_with(|s| s.copy_from_slice(&hb[..s.len()]));
            o.kick();
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    v.assert_healthy();
}

/// An authenticated raw channel to the attacker's QP; every one is a newer
/// connection (`epoch`) than the last, so it replaces it.
fn tcp_connect(v: &Victim, epoch: u64) -> TcpStream {
    let s = v
        .cnic
        .connect_raw_tcp(&v.addr.encode(), ATTACKER_QPN, v.target_qpn, epoch)
        .unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[test]
fn tcp_malformed_frames() {
    let v = victim(LinkKind::Tcp);
    let addr = v.addr.tcp.clone().unwrap();
    let mut rng = StdRng::seed_from_u64(0xabad_cafe);
    // 1. Well-framed requests with hostile headers: answered, never fatal.
    let mut s = tcp_connect(&v, 1);
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let reader = {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0usize;
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        })
    };
    let mut frames = 0u64;
    let mut out = Vec::with_capacity(1 << 20);
    while frames < 100_000 {
        out.clear();
        for _ in 0..500 {
            let mut h = hostile_req(&mut rng, v.pair.region.addr(), v.pair.region.rkey());
            // Keep the frame consistent: header-declared WRITE/SEND lengths
            // must match the payload, so send none and zero the length.
            if h[0] == ReqOp::Write as u8 || h[0] == ReqOp::Send as u8 {
                h[4..8].copy_from_slice(&0u32.to_le_bytes());
            }
            out.extend_from_slice(&Prefix::encode(FrameKind::Req, 0));
            out.extend_from_slice(&h);
            frames += 1;
        }
        s.write_all(&out).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answered = reader.join().unwrap();
    // Every frame whose epoch differs from the last failed one is answered
    // (48-byte response frames): the connection survived all of them.
    assert!(
        answered >= 90_000 * 48,
        "only {answered} response bytes to 100 000 hostile frames"
    );
    v.assert_healthy();
    // 2. Garbage streams, oversize announcements, truncated frames: each
    //    closes its own connection only.
    for i in 0..1_000u64 {
        let mut s = tcp_connect(&v, i + 2);
        let mut junk = vec![0u8; (rng.next_u64() % 512) as usize + 16];
        rng.fill_bytes(&mut junk);
        match i % 4 {
            0 => {}
            1 => junk[..16].copy_from_slice(&{
                let mut p = Prefix::encode(FrameKind::Req, 0);
                p[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                p
            }),
            2 => junk[..16].copy_from_slice(&Prefix::encode(FrameKind::Resp, 4)),
            _ => junk.truncate(20),
        }
        let _ = s.write_all(&junk);
        if i % 4 != 3 {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut b = [0u8; 4096];
            // The NIC answers or closes; it never hangs the connection forever
            // for a bad prefix (garbage may also look like a partial frame).
            if i % 4 == 1 || i % 4 == 2 {
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            }
        }
    }
    v.assert_healthy();
    // 3. Hello garbage on fresh connections.
    for _ in 0..200 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut junk = [0u8; 16];
        rng.fill_bytes(&mut junk);
        let _ = s.write_all(&junk);
    }
    v.assert_healthy();
    let _ = Access::NONE;
}
