//! The cluster-level mesh of QPs: for every peer node, each local client
//! thread slot gets an RPC QP and a data QP towards every directory, each
//! local directory gets the matching QPs towards every client thread slot,
//! and each pair of nodes one QP for clock reads. Endpoints are exchanged
//! through the keeper and connected here; the node then hands each client
//! thread and directory its share.

use std::sync::Arc;
use std::time::Duration;

use crate::client::ClientSlot;
use crate::cluster::Run;
use crate::config::Config;
use crate::fabric::msg::Messenger;
use crate::fabric::{Cq, Nic, Pd, Qp, QpCap, QpEndpoint};
use crate::server::DirSlot;
use crate::{Error, Result};

/// The connected QPs of one node.
pub(super) struct Mesh {
    pub clients: Vec<ClientSlot>,
    pub dirs: Vec<DirSlot>,
    /// Clock-read QP and its remote endpoint towards every peer.
    pub time_qps: Vec<Option<(Arc<dyn Qp>, QpEndpoint)>>,
    pub time_cq: Arc<dyn Cq>,
}

/// Creates, publishes and connects the node's QPs.
pub(super) fn build(
    cfg: &Config,
    node_id: u16,
    nic: &Arc<dyn Nic>,
    pd: Pd,
    run: &Run,
    t: Duration,
) -> Result<Mesh> {
    let (m, dn, tn) = (cfg.machine_nr, cfg.dir_nr, cfg.client_threads);
    let cap = QpCap {
        max_send_wr: 512,
        max_recv_wr: 64,
    };
    // Create QPs: client side [slot][(node, dir)] and dir side [dir][(node, thread)].
    let mut cslots = Vec::new();
    let mut my_eps: Vec<Vec<QpEndpoint>> = vec![Vec::new(); m as usize];
    let mut cside = Vec::new();
    for _t in 0..tn {
        let rcq = nic.create_cq(1024)?;
        let dcq = nic.create_cq(1024)?;
        // Receive slots per directory: the RPCs a thread keeps outstanding
        // there; send slots: as many.
        let per = crate::client::RPC_PER_DIR as u32;
        let mut msgr = Messenger::new(nic, pd, rcq.clone(), (m * dn) as usize, per, 2 * per)?;
        let mut data = Vec::new();
        let mut rpcs = Vec::new();
        for _ in 0..m * dn {
            let r = nic.create_qp(pd, &rcq, &rcq, cap)?;
            msgr.add_qp(r.clone())?;
            rpcs.push(r);
            data.push(nic.create_qp(pd, &dcq, &dcq, cap)?);
        }
        cside.push((rpcs, data.clone()));
        cslots.push((msgr, data, dcq));
    }
    let mut dslots = Vec::new();
    let mut dside = Vec::new();
    for _d in 0..dn {
        let rcq = nic.create_cq(4096)?;
        let bcq = nic.create_cq(1024)?;
        // 8 send slots per peer at most (a stalled peer holds only its own):
        // enough for 32 stalled peers before others wait for slots.
        let sends = (m as u32 * tn as u32 * 8).clamp(64, 256);
        let mut msgr = Messenger::new(nic, pd, rcq.clone(), (m * tn) as usize, 8, sends)?;
        let mut data = Vec::new();
        let mut rpcs = Vec::new();
        for _ in 0..m * tn {
            let r = nic.create_qp(pd, &rcq, &rcq, cap)?;
            msgr.add_qp(r.clone())?;
            rpcs.push(r);
            data.push(nic.create_qp(pd, &bcq, &bcq, cap)?);
        }
        dside.push((rpcs, data.clone()));
        dslots.push((msgr, data, bcq));
    }
    // One QP per peer for clock reads (the pair is symmetric; only the
    // side whose peer is the time parent reads through it).
    let time_cq = nic.create_cq(64)?;
    let mut tqs: Vec<Option<Arc<dyn Qp>>> = Vec::new();
    let mut tq_remote: Vec<Option<QpEndpoint>> = vec![None; m as usize];
    for n in 0..m {
        tqs.push(if n == node_id {
            None
        } else {
            Some(nic.create_qp(pd, &time_cq, &time_cq, QpCap::default())?)
        });
    }
    // Endpoints for peer n, in a fixed order both sides compute:
    // client side: for t, for d of n: rpc, data; then dir side: for d, for t of n: rpc, data.
    for (n, eps) in my_eps.iter_mut().enumerate() {
        for (rpcs, data) in &cside {
            for d in 0..dn as usize {
                let i = n * dn as usize + d;
                eps.push(rpcs[i].endpoint());
                eps.push(data[i].endpoint());
            }
        }
        for (rpcs, data) in &dside {
            for t in 0..tn as usize {
                let i = n * tn as usize + t;
                eps.push(rpcs[i].endpoint());
                eps.push(data[i].endpoint());
            }
        }
        if let Some(q) = &tqs[n] {
            eps.push(q.endpoint());
        }
        let blob = QpEndpoint::encode_list(eps);
        run.put(&format!("ep/{node_id}/{n}"), &blob)?;
    }
    // Read every peer's endpoints for us and connect.
    let mut cremote: Vec<Vec<QpEndpoint>> = vec![vec![]; tn as usize];
    let mut dremote: Vec<Vec<QpEndpoint>> = vec![vec![]; dn as usize];
    for n in 0..m {
        let blob = run.get_wait(&format!("ep/{n}/{node_id}"), t)?;
        let eps = QpEndpoint::decode_list(&blob)?;
        let mesh = 2 * (tn as usize * dn as usize) * 2;
        let expect = mesh + usize::from(n != node_id);
        if eps.len() != expect {
            return Err(Error::Invalid(format!(
                "node {n} published {} endpoints, expected {expect}: is the cluster shape the same everywhere?",
                eps.len()
            )));
        }
        if let Some(q) = &tqs[n as usize] {
            q.connect(&eps[mesh])?;
            tq_remote[n as usize] = Some(eps[mesh].clone());
        }
        let (peer_client, peer_dir) = eps[..mesh].split_at(mesh / 2);
        // Our client slot t, peer's dir d <-> peer's dir side entry (d, t).
        for (ti, (rpcs, data)) in cside.iter().enumerate() {
            for d in 0..dn as usize {
                let i = n as usize * dn as usize + d;
                let j = (d * tn as usize + ti) * 2;
                rpcs[i].connect(&peer_dir[j])?;
                data[i].connect(&peer_dir[j + 1])?;
                cremote[ti].push(peer_dir[j + 1].clone());
            }
        }
        // Our dir d, peer's client slot t <-> peer's client side entry (t, d).
        for (di, (rpcs, data)) in dside.iter().enumerate() {
            for ti in 0..tn as usize {
                let i = n as usize * tn as usize + ti;
                let j = (ti * dn as usize + di) * 2;
                rpcs[i].connect(&peer_client[j])?;
                data[i].connect(&peer_client[j + 1])?;
                dremote[di].push(peer_client[j + 1].clone());
            }
        }
    }
    let clients = cslots
        .into_iter()
        .zip(cremote)
        .map(|((msgr, data, data_cq), data_remote)| ClientSlot {
            msgr,
            data,
            data_remote,
            data_cq,
            buf: None,
            stage: None,
            rpc_id: 0,
        })
        .collect();
    let dirs = dslots
        .into_iter()
        .zip(dremote)
        .map(|((msgr, data, bind_cq), data_remote)| DirSlot {
            msgr,
            data,
            data_remote,
            bind_cq,
        })
        .collect();
    let time_qps = tqs
        .into_iter()
        .zip(tq_remote)
        .map(|(q, r)| q.zip(r))
        .collect();
    Ok(Mesh {
        clients,
        dirs,
        time_qps,
        time_cq,
    })
}
