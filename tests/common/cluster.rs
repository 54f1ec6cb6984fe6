//! In-process clusters for tests: every node of a [`Config`] started on
//! threads of this process (they join through the in-process keeper), the
//! memory node's directories served on threads of their own, and every
//! node finished and every directory joined even when the test body
//! panics.

use std::thread;

use patronus::node::{Config, Patronus};
use patronus::server::DirStats;

/// Test logs at `PATRONUS_LOG` (default warn), once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATRONUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Starts `cfg.machine_nr` nodes together (each blocks until all joined),
/// sorted by node id.
pub fn start_nodes(cfg: &Config) -> Vec<Patronus> {
    let hs: Vec<_> = (0..cfg.machine_nr)
        .map(|_| {
            let c = cfg.clone();
            thread::spawn(move || Patronus::new(c).expect("node"))
        })
        .collect();
    let mut nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    nodes.sort_by_key(|n| n.get_node_id());
    nodes
}

/// Starts the cluster of `cfg`; node 0 is the memory node and serves
/// `cfg.dir_nr` directories on threads of its own while `f` runs with it
/// and the client nodes (1..). Then every node finishes and the
/// directories end; a panic of `f` is raised again after that.
pub fn with_cluster(cfg: Config, f: impl FnOnce(&Patronus, &[Patronus])) {
    with_cluster_stats(cfg, f);
}

/// As [`with_cluster`], returning the counters of the directories (in the
/// order they registered) as they were when they ended.
pub fn with_cluster_stats(cfg: Config, f: impl FnOnce(&Patronus, &[Patronus])) -> Vec<DirStats> {
    let mut nodes = start_nodes(&cfg);
    let server = nodes.remove(0);
    thread::scope(|s| {
        let servers: Vec<_> = (0..cfg.dir_nr)
            .map(|_| {
                let mut d = server.register_server_thread().unwrap();
                s.spawn(move || d.server_serve(0).map(|_| d.stats()))
            })
            .collect();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&server, &nodes)));
        server.finished(0).unwrap();
        for n in &nodes {
            n.finished(0).unwrap();
        }
        let stats = servers
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
        stats
    })
}
