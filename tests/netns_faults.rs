//! Multi-host fault suite in network namespaces (issue 13): every host is a
//! network namespace made by the test, joined to a bridge in a "switch"
//! namespace by a veth pair, and runs its node as its own process (`ip
//! netns exec NS patronus serve|client ...`), the tcp fabric between them
//! and memcached (the keeper) on the memory node's host. Faults: a link
//! taken down at the switch and brought back, 5 % random packet loss
//! (iptables `statistic` match, DROP) with 1 ms +/- 0.5 ms delay each way (a
//! delaying TCP proxy on a host of its own, reached through DNAT rules; this
//! kernel has no netem qdisc), a memory node SIGKILLed, a client SIGKILLed
//! while it holds leases. Clients run the `fault-loop` workload (acquire /
//! FAA / pattern write + read-verify / relinquish, tolerating errors) and
//! report counts, which the tests check: no call outlives the RPC timeout,
//! no read-back differs from what was written, the FAA word lies between
//! the FAAs that succeeded and those plus the ones whose outcome is unknown,
//! leases of a dead client are revoked within term + epsilon.
//!
//! Needs root with CAP_NET_ADMIN, `ip` (iproute2) and `iptables`; without
//! them each test says why on stderr and passes without testing anything.
//! iptables is Debian 12's default, the nft backend (iptables-nft 1.8.9);
//! only the `statistic` match, DROP and the nat table's DNAT are used, which
//! iptables-legacy has too. The tests hold one lock, so they run one at a
//! time whatever `--test-threads` says; `cargo test --test netns_faults --
//! --test-threads=1` takes about 20 s once built on the 2-core CI machine
//! (18-22 s measured; well within 90 s): every load loop is bounded in
//! rounds and seconds, and every wait has a deadline. Each test leaves no
//! namespace behind, also when it fails: processes are killed, then
//! namespaces deleted, on drop.
//!
//! A memory node whose client died before calling finished waits forever
//! today (issue 13 fixes that elsewhere): those tests kill it at the end.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::netns::{self, values, Net, NsProc};

/// Start-up and final-line waits (generous: a loaded 2-core machine).
const T: Duration = Duration::from_secs(30);
/// The RPC timeout every node of these tests runs with.
const RPC_MS: u64 = 1000;
/// What a call may take beyond the RPC timeout before it counts as a hang:
/// the engine notices an expired deadline on its next progress pass, and
/// a failed data call's QP recovery runs before the call returns.
const OVER_MS: f64 = 500.0;
/// Listening port of every node's tcp NIC (each host is a fresh namespace,
/// so fixed ports are free; the delay proxy needs to know them).
const NIC_PORT: u16 = 7000;

static SERIAL: Mutex<()> = Mutex::new(());

/// The lock that runs these tests one at a time, or None (with the reason
/// on stderr) where namespaces cannot be made.
fn begin(test: &str) -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = netns::unavailable() {
        // Straight to stderr, not through eprintln!'s test capture: the
        // skip shows in every run's log, passing or not.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: network namespace tests {why}"
        );
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A net of hosts with memcached on the memory node's host.
struct Cluster {
    /// Dropped before the net.
    _memcached: NsProc,
    url: String,
    name: String,
    machines: usize,
    net: Net,
}

impl Cluster {
    /// Hosts `hosts` (the first one the memory node's, which also runs
    /// memcached), `machines` patronus nodes in all.
    fn new(tag: &str, hosts: &[&str], machines: usize) -> Cluster {
        let net = Net::new(hosts);
        let (memcached, url) = net.memcached(hosts[0]);
        Cluster {
            _memcached: memcached,
            url,
            name: common::unique(tag),
            machines,
            net,
        }
    }

    fn args(&self, host: &str) -> Vec<String> {
        let h = self.net.host(host);
        [
            "--keeper",
            &self.url,
            "--fabric",
            "tcp",
            "--machines",
            &self.machines.to_string(),
            "--cluster",
            &self.name,
            "--listen",
            &format!("{}:{NIC_PORT}", h.ip),
            "--rpc-timeout-ms",
            &RPC_MS.to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `patronus serve` on `host`.
    fn serve(&self, host: &str) -> NsProc {
        let mut a = vec!["serve".to_string()];
        a.extend(self.args(host));
        self.start(host, "serve", &a)
    }

    /// `patronus client ... fault-loop EXTRA` on `host`.
    fn fault_loop(&self, host: &str, extra: &[&str]) -> NsProc {
        let mut a = vec!["client".to_string()];
        a.extend(self.args(host));
        a.push("fault-loop".into());
        a.extend(extra.iter().map(|s| s.to_string()));
        self.start(host, &format!("client-{host}"), &a)
    }

    /// `patronus client ... WORKLOAD` on `host`.
    fn client(&self, host: &str, workload: &[&str]) -> NsProc {
        let mut a = vec!["client".to_string()];
        a.extend(self.args(host));
        a.extend(workload.iter().map(|s| s.to_string()));
        self.start(host, &format!("client-{host}"), &a)
    }

    fn start(&self, host: &str, name: &str, a: &[String]) -> NsProc {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.net.patronus(host, name, &a)
    }
}

/// The totals line of a fault-loop client (waits for it).
fn totals(c: &mut NsProc, timeout: Duration) -> HashMap<String, f64> {
    c.wait_for("rounds_per_s", timeout);
    let l = c
        .seen
        .iter()
        .find(|l| l.contains("rounds_per_s="))
        .unwrap()
        .clone();
    eprintln!("{}: {l}", c.name);
    values(&l)
}

fn unix_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as f64
}

/// Every call of `t` returned within the RPC timeout (+ `OVER_MS`), and
/// none failed as a protection fault: a cut, lost or delayed link or a dead
/// node is an execution error or a timeout, never RDMA_PROTECTION_ERR (the
/// call-time contract; a call without completion was once reported so).
fn assert_no_hang(who: &str, t: &HashMap<String, f64>) {
    let max = t["max_call_ms"];
    assert!(
        max <= RPC_MS as f64 + OVER_MS,
        "{who}: a call took {max} ms (RPC timeout {RPC_MS} ms)"
    );
    assert_eq!(
        t["err_protection"], 0.0,
        "{who}: a network fault surfaced as a protection fault"
    );
}

/// The FAA word read by a client after both loops ended lies between the
/// FAAs that succeeded and those plus the ones whose outcome is unknown.
fn assert_faa_word(word: f64, ts: &[&HashMap<String, f64>]) {
    let ok: f64 = ts.iter().map(|t| t["faa_ok"]).sum();
    let uncertain: f64 = ts.iter().map(|t| t["faa_uncertain"]).sum();
    assert!(
        ok <= word && word <= ok + uncertain,
        "FAA word {word}: {ok} FAAs succeeded, {uncertain} more are uncertain"
    );
}

/// Normal operation across hosts: a memory node and two client hosts,
/// 1 000 rounds each; no error, every read-back byte-exact, the FAA word
/// exactly the FAAs done, and the memory node ends by itself.
#[test]
fn normal_operation_across_hosts() {
    let Some(_serial) = begin("normal_operation_across_hosts") else {
        return;
    };
    let c = Cluster::new("ns-normal", &["mem", "a", "b"], 3);
    let mut srv = c.serve("mem");
    // The time is a bound, not the measure: idle, 1 000 rounds take about
    // 1.5 s; beside two busy loops each call waits for the scheduler
    // (38-45 rounds/s measured, no errors) and 20 s were too few.
    let run = ["--rounds", "1000", "--seconds", "60", "--peers", "2"];
    let mut a = c.fault_loop("a", &run);
    let mut b = c.fault_loop("b", &run);
    let ta = totals(&mut a, Duration::from_secs(75));
    let tb = totals(&mut b, Duration::from_secs(75));
    for (who, t) in [("a", &ta), ("b", &tb)] {
        assert_eq!(t["rounds"], 1000.0, "{who}");
        assert_eq!(t["rounds_ok"], 1000.0, "{who}: {t:?}");
        assert_eq!(t["errors"], 0.0, "{who}: {t:?}");
        assert_eq!(t["mismatches"], 0.0, "{who}");
        assert_eq!(t["faa_uncertain"], 0.0, "{who}");
        assert_no_hang(who, t);
    }
    let total = ta["faa_ok"] + tb["faa_ok"];
    assert_eq!(total, 2.0 * 1000.0 * 4.0);
    assert_eq!(a.num("faa_word", T), total);
    assert_eq!(b.num("faa_word", T), total);
    eprintln!(
        "normal: {:.0} and {:.0} rounds/s (4 FAA + 256 B write + read, 2 leases per round)",
        ta["rounds_per_s"], tb["rounds_per_s"]
    );
    assert!(a.wait_exit(T).success());
    assert!(b.wait_exit(T).success());
    // Every client finished: the memory node stops by itself.
    assert!(srv.wait_exit(T).success());
}

/// Client host a's link is taken down at the switch while both clients
/// run, then brought back: a's calls fail (errors reported, none outlives
/// the RPC timeout) while b keeps being served; after the restore a's
/// calls succeed again, on the same TCP connections as before the cut:
/// the library neither drops nor replaces a connection that did not
/// break (a failed data call recovers its QP in place; an RPC without
/// reply just times out), and TCP retransmits what waited.
#[test]
fn link_cut_and_restored() {
    let Some(_serial) = begin("link_cut_and_restored") else {
        return;
    };
    let c = Cluster::new("ns-cut", &["mem", "a", "b"], 3);
    let mut srv = c.serve("mem");
    // 2 s terms: a stall of b's calls shorter than the no-hang bound must
    // not expire b's leases under it (the directory serves a and b in
    // turn; see loss_and_delay), so any error of b is a failure to serve.
    let run = [
        "--seconds",
        "40",
        "--stdin-stop",
        "--peers",
        "2",
        "--term-ms",
        "2000",
    ];
    let mut a = c.fault_loop("a", &run);
    let mut b = c.fault_loop("b", &run);
    let warm = |m: &HashMap<String, f64>| m["rounds_ok"] >= 20.0;
    a.wait_progress("20 rounds", T, warm);
    b.wait_progress("20 rounds", T, warm);

    let before = a.last_progress();
    let b_before = b.last_progress();
    let conns = c.net.connections("a", NIC_PORT);
    assert!(!conns.is_empty(), "a has no fabric connection");
    c.net.cut("a");
    let cut_at = Instant::now();
    // Failures reported while the link is down: at least three calls
    // fail, one RPC timeout after another.
    let e0 = before["errors"];
    let during = a.wait_progress("errors during the cut", Duration::from_secs(10), |m| {
        m["errors"] >= e0 + 3.0
    });
    let b_during = b.last_progress();
    c.net.restore("a");
    let cut_ms = cut_at.elapsed().as_secs_f64() * 1e3;
    let restored_at = Instant::now();
    let ok0 = during["rounds_ok"];
    let ok_during_cut = ok0 - before["rounds_ok"];
    // TCP retransmits what waited at its next timer (a backoff of about
    // the cut's length at most); nothing else is needed.
    let after = a.wait_progress("rounds after the restore", Duration::from_secs(10), |m| {
        m["rounds_ok"] >= ok0 + 10.0
    });
    let back_ms = restored_at.elapsed().as_secs_f64() * 1e3;
    // On the very connections of before the cut: none was dropped and
    // none replaced (the soft NIC recovers a QP in place and keeps a TCP
    // stream that did not break).
    assert_eq!(c.net.connections("a", NIC_PORT), conns);
    // And b went on working all along.
    let b_served = b_during["rounds_ok"] - b_before["rounds_ok"];
    a.send("stop");
    b.send("stop");
    let ta = totals(&mut a, T);
    let tb = totals(&mut b, T);
    eprintln!(
        "link cut {cut_ms:.0} ms: a failed {} calls (slowest {:.0} ms; {} rounds ok since its \
         last progress line before the cut), b did {b_served} rounds meanwhile (slowest call \
         {:.0} ms before the cut, {:.0} ms at the restore); a back to 10 rounds {back_ms:.0} ms \
         after the restore",
        during["errors"] - e0,
        during["max_call_ms"],
        ok_during_cut,
        b_before["max_call_ms"],
        b_during["max_call_ms"]
    );
    assert!(b_served >= 20.0, "b was not served while a's link was down");
    assert!(after["rounds_ok"] >= ok0 + 10.0);
    assert!(ta["errors"] >= 3.0, "{ta:?}");
    assert_eq!(tb["errors"], 0.0, "b should see no error: {tb:?}");
    for (who, t) in [("a", &ta), ("b", &tb)] {
        assert_eq!(t["mismatches"], 0.0, "{who}");
        assert_no_hang(who, t);
    }
    let word = a.num("faa_word", T);
    assert_eq!(b.num("faa_word", T), word);
    assert_faa_word(word, &[&ta, &tb]);
    assert!(a.wait_exit(T).success());
    assert!(b.wait_exit(T).success());
    srv.kill();
}

/// Hosts a and b reach the memory node through a proxy host that holds
/// every byte 1 ms +/- 0.5 ms in each direction; a's link also drops 5 %
/// of its fabric packets each way; host c is unimpaired. Data stays byte-exact,
/// the FAA word lies within [succeeded, succeeded + uncertain], no call
/// outlives the RPC timeout, and the impairments are real: a and b never
/// see a call faster than two delayed hops, c does.
#[test]
fn loss_and_delay() {
    if let Ok(routes) = std::env::var(netns::PROXY_ROUTES) {
        // The proxy's process, started by the test below.
        netns::proxy_main(&routes, 1000, 500, Duration::from_secs(60));
        return;
    }
    let Some(_serial) = begin("loss_and_delay") else {
        return;
    };
    let c = Cluster::new("ns-loss", &["mem", "a", "b", "c", "px"], 4);
    let ip = |h: &str| c.net.host(h).ip.clone();
    let (mem, px) = (ip("mem"), ip("px"));
    // Connections a|b -> memory node go to px:7000, memory node -> a to
    // px:7001, memory node -> b to px:7002; the proxy relays them on.
    let mut routes = format!("{px}:{NIC_PORT}>{mem}:{NIC_PORT}");
    let port = NIC_PORT.to_string();
    for (i, h) in ["a", "b"].into_iter().enumerate() {
        let back = NIC_PORT + 1 + i as u16;
        routes += &format!(",{px}:{back}>{}:{NIC_PORT}", ip(h));
        for (from, dst, to) in [
            (h, mem.clone(), format!("{px}:{NIC_PORT}")),
            ("mem", ip(h), format!("{px}:{back}")),
        ] {
            c.net.iptables(
                from,
                &format!(
                    "-t nat -A OUTPUT -p tcp -d {dst} --dport {port} -j DNAT --to-destination {to}"
                ),
            );
        }
    }
    let exe = std::env::current_exe().unwrap();
    let env = format!("{}={routes}", netns::PROXY_ROUTES);
    // This test again, on the proxy host, as the proxy.
    let mut proxy = c.net.spawn(
        "px",
        "proxy",
        "/usr/bin/env",
        &[
            &env,
            exe.to_str().unwrap(),
            "--exact",
            "loss_and_delay",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    assert_eq!(proxy.wait_for("routes", T), "3");
    let mut srv = c.serve("mem");
    let run = ["--seconds", "6", "--peers", "3"];
    let mut procs: Vec<NsProc> = ["a", "b", "c"]
        .into_iter()
        .map(|h| c.fault_loop(h, &run))
        .collect();
    for p in &mut procs {
        let node = p.wait_for("node", T);
        eprintln!("{} is node {node}", p.name);
    }
    // Loss on a's fabric traffic (its NIC's port, either end), once every
    // node runs: under 5 % loss the start-up often fails (a lost SYN is
    // sent again after 1 s, which a keeper connect with the 1 s RPC timeout,
    // a tcp hello or the `connected` barrier does not always survive), and
    // the keeper's own connections are spared for the same reason (the
    // final barrier).
    for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
        c.net.iptables(
            "a",
            &format!(
                "-A {chain} {dir} eth0 -p tcp -m multiport --ports {port} \
                 -m statistic --mode random --probability 0.05 -j DROP"
            ),
        );
    }
    let ts: Vec<HashMap<String, f64>> = procs.iter_mut().map(|p| totals(p, T)).collect();
    let (ta, tb, tc) = (&ts[0], &ts[1], &ts[2]);
    let dropped = c.net.rule_packets("a", "filter", "INPUT", "DROP")
        + c.net.rule_packets("a", "filter", "OUTPUT", "DROP");
    let proxied: Vec<u64> = ["a", "b", "mem"]
        .into_iter()
        .map(|h| c.net.rule_packets(h, "nat", "OUTPUT", "DNAT"))
        .collect();
    eprintln!(
        "a (5 % loss + 1 +/- 0.5 ms each way): {:.1} rounds/s, {} errors, calls {:.2}..{:.0} ms; \
         b (delay only): {:.1} rounds/s, calls {:.2}..{:.0} ms; c (unimpaired): {:.1} rounds/s, \
         calls {:.2}..{:.0} ms; {dropped} packets dropped; connections through the proxy \
         from a, b, mem: {proxied:?}",
        ta["rounds_per_s"],
        ta["errors"],
        ta["min_call_ms"],
        ta["max_call_ms"],
        tb["rounds_per_s"],
        tb["min_call_ms"],
        tb["max_call_ms"],
        tc["rounds_per_s"],
        tc["min_call_ms"],
        tc["max_call_ms"]
    );
    assert!(dropped > 0, "the DROP rules dropped nothing");
    assert!(
        proxied.iter().all(|&n| n > 0),
        "connections through the proxy from a, b, mem: {proxied:?}"
    );
    // Every call is at least one round trip through the proxy: two hops
    // of at least 0.5 ms.
    for (who, t, least) in [("a", ta, 5.0), ("b", tb, 20.0)] {
        assert!(
            t["min_call_ms"] >= 1.0,
            "{who}: a call took {} ms: not delayed",
            t["min_call_ms"]
        );
        assert!(t["rounds_ok"] >= least, "{who} made little progress: {t:?}");
    }
    assert!(tc["min_call_ms"] < 1.0, "c was delayed: {tc:?}");
    // b and c keep being served. Not asserted: that they see no error. The
    // memory node's directory serves everyone in turn, and a's lost packets
    // have held it up for others (c's slowest call was 530 ms once, and a
    // 500 ms lease then expired under it).
    assert!(tc["rounds_ok"] >= 100.0, "c made little progress: {tc:?}");
    for (who, t) in [("a", ta), ("b", tb), ("c", tc)] {
        assert_eq!(t["mismatches"], 0.0, "{who}");
        assert_no_hang(who, t);
    }
    let words: Vec<f64> = procs.iter_mut().map(|p| p.num("faa_word", T)).collect();
    assert!(words.iter().all(|&w| w == words[0]), "{words:?}");
    assert_faa_word(words[0], &[ta, tb, tc]);
    for p in &mut procs {
        assert!(p.wait_exit(T).success(), "{}", p.name);
    }
    proxy.send("");
    drop(proxy);
    srv.kill();
}

/// The memory node is SIGKILLed under two running clients: their calls
/// fail (errors, each within the RPC timeout), they stop when told and
/// exit; nothing hangs.
#[test]
fn memory_node_killed() {
    let Some(_serial) = begin("memory_node_killed") else {
        return;
    };
    let c = Cluster::new("ns-dead", &["mem", "a", "b"], 3);
    let mut srv = c.serve("mem");
    let run = ["--seconds", "30", "--stdin-stop"];
    let mut a = c.fault_loop("a", &run);
    let mut b = c.fault_loop("b", &run);
    let warm = |m: &HashMap<String, f64>| m["rounds_ok"] >= 20.0;
    a.wait_progress("20 rounds", T, warm);
    b.wait_progress("20 rounds", T, warm);
    let (ea, eb) = (a.last_progress()["errors"], b.last_progress()["errors"]);
    srv.kill();
    let killed = Instant::now();
    let pa = a.wait_progress("errors", Duration::from_secs(10), |m| {
        m["errors"] >= ea + 3.0
    });
    let pb = b.wait_progress("errors", Duration::from_secs(10), |m| {
        m["errors"] >= eb + 3.0
    });
    let failing_ms = killed.elapsed().as_secs_f64() * 1e3;
    a.send("stop");
    b.send("stop");
    let ta = totals(&mut a, T);
    let tb = totals(&mut b, T);
    eprintln!(
        "memory node killed: 3 errors each within {failing_ms:.0} ms; slowest call a {:.0} ms, \
         b {:.0} ms",
        ta["max_call_ms"], tb["max_call_ms"]
    );
    for (who, t, p) in [("a", &ta, &pa), ("b", &tb, &pb)] {
        assert!(t["errors"] >= p["errors"], "{who}");
        assert_eq!(t["mismatches"], 0.0, "{who}");
        assert_no_hang(who, t);
    }
    // The clients end on their own (finished() needs only the keeper).
    assert!(a.wait_exit(T).success());
    assert!(b.wait_exit(T).success());
}

/// A client holding 100 leases (kept alive by one-sided extension) is
/// SIGKILLed: the memory node revokes them all within their remaining term
/// (at most 1.5 terms, see below) + epsilon + a polling allowance, while the
/// other client's rounds go on without an error, byte-exact; the memory node
/// then ends by itself, non-zero (a client died before `finished`).
#[test]
fn killed_client_leases_revoked() {
    let Some(_serial) = begin("killed_client_leases_revoked") else {
        return;
    };
    let c = Cluster::new("ns-kill", &["mem", "h", "w"], 3);
    let mut srv = c.serve("mem");
    let term_ms = 200.0;
    let mut h = c.client(
        "h",
        &[
            "hold",
            "--leases",
            "100",
            "--term-ms",
            "200",
            "--idle-s",
            "30",
        ],
    );
    let mut w = c.fault_loop(
        "w",
        &[
            "--seconds",
            "30",
            "--stdin-stop",
            "--peers",
            "1",
            "--watch-live",
            "100",
        ],
    );
    assert_eq!(h.wait_for("held", T), "100");
    let live: f64 = w.num("live_seen", T);
    assert!(live >= 100.0);
    w.wait_progress("20 rounds", T, |m| m["rounds_ok"] >= 20.0);
    let kill_us = unix_us();
    h.kill();
    let revoked_us = w.num("revoked_unix_us", Duration::from_secs(10));
    let last_live_us = w.num("live_last_unix_us", T);
    let gap_ms = w.num("poll_gap_max_ms", T);
    let eps_ms = w.num("epsilon_ns", T) / 1e6;
    let after_ms = (revoked_us - kill_us) / 1e3;
    let ok_at_revoke = w.last_progress()["rounds_ok"];
    w.wait_progress("rounds after the revocation", T, |m| {
        m["rounds_ok"] >= ok_at_revoke + 20.0
    });
    w.send("stop");
    let tw = totals(&mut w, T);
    // The holder extends a lease once less than half a term is left, by
    // one unit, which is the whole term: at the kill every deadline is at
    // most 1.5 terms ahead. The GC revokes at the deadline + epsilon (its
    // tasks run at most 1 ms late); the watcher sees it at its next poll
    // (poll_gap_max_ms apart at most). POLL_MS covers scheduling on 2 busy
    // cores.
    const POLL_MS: f64 = 100.0;
    let bound = 1.5 * term_ms + eps_ms + gap_ms + POLL_MS;
    eprintln!(
        "100 leases revoked {after_ms:.1} ms after SIGKILL (last seen live {:.1} ms after it; \
         term {term_ms} ms, epsilon {eps_ms:.3} ms, watcher poll gap <= {gap_ms:.1} ms, bound \
         {bound:.0} ms); watcher {:.0} rounds/s, {} errors",
        (last_live_us - kill_us) / 1e3,
        tw["rounds_per_s"],
        tw["errors"]
    );
    assert!(after_ms <= bound, "revocation took {after_ms} ms");
    assert_eq!(tw["errors"], 0.0, "{tw:?}");
    assert_eq!(tw["mismatches"], 0.0);
    assert_eq!(tw["watched"], 1.0);
    assert_no_hang("w", &tw);
    assert_eq!(w.num("faa_word", T), tw["faa_ok"]);
    assert!(w.wait_exit(T).success());
    // The killed holder never calls finished(): once its heartbeat through
    // the keeper has stood still for 3 s, the memory node ends by itself,
    // non-zero.
    let st = srv.wait_exit(Duration::from_secs(20));
    assert!(
        !st.success(),
        "the memory node exited 0 although a client died"
    );
}
