//! Quick in-process sanity check of soft-fabric latency and rate
//! (the real benchmark is `patronus bench fabric`).
use std::sync::Arc;
use std::time::Instant;

use patronus::fabric::conformance::Pair;
use patronus::fabric::soft::{LinkKind, SoftConfig, SoftNic};
use patronus::fabric::{Nic, SendWr, WrOp};

fn main() {
    for link in [LinkKind::Shm, LinkKind::Tcp] {
        let cfg = SoftConfig {
            link,
            ..SoftConfig::default()
        };
        let s: Arc<dyn Nic> = Arc::new(SoftNic::open(cfg.clone()).unwrap());
        let c: Arc<dyn Nic> = Arc::new(SoftNic::open(cfg).unwrap());
        let p = Pair::new(s, c, 1 << 20).unwrap();
        let rkey = p.region.rkey();
        let n = 200_000;
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            p.client
                .qp
                .post_send(&[SendWr {
                    wr_id: 1,
                    op: WrOp::Read {
                        local: p.client.sge(0, 64),
                        raddr: p.region.addr(),
                        rkey,
                    },
                    signaled: true,
                }])
                .unwrap();
            let mut wc = [patronus::fabric::Wc::default(); 1];
            while p.client.cq.poll(&mut wc) == 0 {}
            lat.push(t.elapsed().as_nanos() as u64);
        }
        lat.sort();
        println!(
            "{link:?} 64B READ p50 {} ns p99 {} ns",
            lat[n / 2],
            lat[n * 99 / 100]
        );
        let total = 2_000_000u64;
        let depth = 256u64;
        let t = Instant::now();
        let mut posted = 0u64;
        let mut done = 0u64;
        let mut wc = [patronus::fabric::Wc::default(); 64];
        let batch = 32;
        while done < total {
            while posted < total && posted - done < depth {
                let wrs: Vec<SendWr> = (0..batch)
                    .map(|i| SendWr {
                        wr_id: i,
                        op: WrOp::Read {
                            local: p.client.sge(64 * (i % 32), 64),
                            raddr: p.region.addr(),
                            rkey,
                        },
                        signaled: i == batch - 1,
                    })
                    .collect();
                p.client.qp.post_send(&wrs).unwrap();
                posted += batch;
            }
            let k = p.client.cq.poll(&mut wc);
            done += k as u64 * batch;
        }
        let el = t.elapsed();
        println!(
            "{link:?} 64B READ pipelined {:.2} Mops",
            total as f64 / el.as_secs_f64() / 1e6
        );
    }
}
