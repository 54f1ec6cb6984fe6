//! Bounded resources on the soft NIC's tcp link against a hostile peer:
//! announced frame lengths allocate nothing, buffered bytes have a NIC-wide
//! ceiling, a channel that holds an unfinished frame without progress is
//! closed after the stall timeout (a slow sender that keeps sending is not),
//! a flooding QP pair gets its share of the responder and no more, and
//! connections past the channel cap are closed while the NIC stays up.
//!
//! The tests share the process's memory and cores, so they run one at a
//! time (the `SERIAL` lock). Every loop is bounded in count and time.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patronus::fabric::conformance::Pair;
use patronus::fabric::soft::wire::{
    FrameKind, Prefix, ReqHeader, ReqOp, RespHeader, FRAME_PREFIX, REQ_LEN, RESP_LEN,
};
use patronus::fabric::soft::{LinkKind, NicAddr, SoftConfig, SoftNic};
use patronus::fabric::{Nic, Qp, QpCap, WcStatus};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resident set size of this process, bytes.
fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

struct Node {
    soft: Arc<SoftNic>,
    nic: Arc<dyn Nic>,
    tcp: String,
}

fn node(cfg: SoftConfig) -> Node {
    let soft = Arc::new(SoftNic::open(cfg).unwrap());
    let tcp = NicAddr::decode(&soft.address()).unwrap().tcp.unwrap();
    let nic: Arc<dyn Nic> = soft.clone();
    Node { soft, nic, tcp }
}

fn tcp_cfg() -> SoftConfig {
    SoftConfig {
        link: LinkKind::Tcp,
        ..SoftConfig::default()
    }
}

/// A QP on `n` for an attacker's hello to name (one per connection).
fn spare_qp(n: &Node, pair: &Pair) -> Arc<dyn Qp> {
    let cq = n.nic.create_cq(16).unwrap();
    n.nic
        .create_qp(pair.server.pd, &cq, &cq, QpCap::default())
        .unwrap()
}

/// A raw tcp channel from `from`'s NIC towards QP `qpn` of `to`, its
/// authenticated hello accepted (a QP not connected yet takes it
/// provisionally): a peer with its own key, speaking raw frames.
fn raw_channel(from: &Node, to: &Node, qpn: u32) -> TcpStream {
    let s = from
        .soft
        .connect_raw_tcp(&to.soft.address(), 7, qpn, 1)
        .expect("hello accepted");
    s.set_nodelay(true).unwrap();
    s
}

/// The prefix and header of a request frame announcing `len` payload bytes.
fn req_frame(op: ReqOp, len: u32, seq: u64) -> Vec<u8> {
    frame_of(op, 0, len, len, seq)
}

/// The prefix (announcing `payload` bytes) and header (`op`, `epoch`,
/// `len`, `seq`, rkey 0) of a request frame.
fn frame_of(op: ReqOp, epoch: u8, payload: u32, len: u32, seq: u64) -> Vec<u8> {
    let mut b = Prefix::encode(FrameKind::Req, payload).to_vec();
    let h = ReqHeader {
        op,
        epoch,
        len,
        seq,
        raddr: 0,
        rkey: 0,
        lblock: 0,
        loff: 0,
        arg0: 0,
        arg1: 0,
    };
    let mut hb = [0u8; REQ_LEN];
    h.encode(&mut hb);
    b.extend_from_slice(&hb);
    b
}

/// A WRITE frame's prefix and header announcing `len` payload bytes.
fn announce(len: u32) -> Vec<u8> {
    req_frame(ReqOp::Write, len, 1)
}

/// p50 of `n` synchronous 64 B READs of the honest pair, microseconds.
fn read_p50(p: &Pair, n: usize) -> f64 {
    let rkey = p.region.rkey();
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..n {
        let t = Instant::now();
        assert_eq!(
            p.read(rkey, (i as u64 % 1024) * 64, 0, 64).unwrap(),
            WcStatus::Success
        );
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if Instant::now() > deadline {
            break;
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat[lat.len() / 2]
}

/// Synchronous 64 B READs per second of the honest pair over `d`.
fn read_rate(p: &Pair, d: Duration) -> f64 {
    let rkey = p.region.rkey();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < d && n < 10_000_000 {
        assert_eq!(
            p.read(rkey, (n % 1024) * 64, 0, 64).unwrap(),
            WcStatus::Success
        );
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// 48 connections each announce a 16 MiB frame and send 4 KiB of it: the
/// node's memory must not follow the announced lengths, and the honest
/// pair's latency must not suffer.
#[test]
fn announced_frames_allocate_nothing() {
    let _g = serial();
    let s = node(tcp_cfg());
    let c = node(tcp_cfg());
    let p = Pair::new(s.nic.clone(), c.nic.clone(), 1 << 20).unwrap();
    let before_p50 = read_p50(&p, 3000);
    let qps: Vec<_> = (0..48).map(|_| spare_qp(&s, &p)).collect();
    let rss0 = rss();
    let mut socks = Vec::new();
    for q in &qps {
        let mut k = raw_channel(&c, &s, q.qpn());
        k.write_all(&announce(16 << 20)).unwrap();
        k.write_all(&[0xa5; 4096]).unwrap();
        socks.push(k);
    }
    wait_for("the attackers' channels", Duration::from_secs(10), || {
        s.soft.inbound_channels() > qps.len()
    });
    let during_p50 = read_p50(&p, 3000);
    let grown = rss().saturating_sub(rss0);
    let (buffered, _) = s.soft.tcp_usage();
    eprintln!(
        "48 x 16 MiB announced: RSS +{:.1} MiB, NIC buffers {:.1} MiB, honest READ p50 {before_p50:.1} us before, {during_p50:.1} us during",
        grown as f64 / (1 << 20) as f64,
        buffered as f64 / (1 << 20) as f64
    );
    assert!(
        grown < 64 << 20,
        "RSS grew by {grown} bytes for frames that were only announced"
    );
    assert!(
        during_p50 <= 3.0 * before_p50 + 50.0,
        "honest READ p50 {during_p50:.1} us during, {before_p50:.1} us before"
    );
    drop(socks);
}

/// 40 connections push 2 MiB each of announced 16 MiB frames at a NIC whose
/// buffer budget is 16 MiB: the NIC stops reading them (their bytes wait in
/// the kernel and the senders) instead of growing past its budget, and the
/// honest pair keeps working.
#[test]
fn buffered_bytes_stop_at_the_budget() {
    let _g = serial();
    let budget = 16 << 20;
    let s = node(SoftConfig {
        tcp_buffer_total: budget,
        // This test is about the budget: its stalled senders must not be
        // closed by the stall timeout while it measures.
        tcp_stall_timeout: Duration::from_secs(120),
        ..tcp_cfg()
    });
    let c = node(tcp_cfg());
    let p = Pair::new(s.nic.clone(), c.nic.clone(), 1 << 20).unwrap();
    let qps: Vec<_> = (0..40).map(|_| spare_qp(&s, &p)).collect();
    let rss0 = rss();
    let mut socks = Vec::new();
    for q in &qps {
        let mut k = raw_channel(&c, &s, q.qpn());
        k.write_all(&announce(16 << 20)).unwrap();
        k.set_nonblocking(true).unwrap();
        socks.push((k, 0usize));
    }
    let chunk = vec![0x5au8; 64 << 10];
    let t = Instant::now();
    let mut pushed = 0usize;
    // Push until every sender has 2 MiB out or the kernel stops taking
    // bytes for 500 ms (back-pressure reached the senders).
    let mut last_progress = Instant::now();
    while t.elapsed() < Duration::from_secs(20)
        && last_progress.elapsed() < Duration::from_millis(500)
    {
        let mut progress = false;
        for (k, sent) in socks.iter_mut() {
            if *sent >= 2 << 20 {
                continue;
            }
            match k.write(&chunk) {
                Ok(n) => {
                    *sent += n;
                    pushed += n;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("attacker write: {e}"),
            }
        }
        if progress {
            last_progress = Instant::now();
        }
        if socks.iter().all(|(_, s)| *s >= 2 << 20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the NIC take what it will.
    std::thread::sleep(Duration::from_millis(300));
    let rate = read_rate(&p, Duration::from_millis(300));
    let (buffered, _) = s.soft.tcp_usage();
    let grown = rss().saturating_sub(rss0);
    eprintln!(
        "40 senders pushed {:.1} MiB: NIC buffers {:.1} MiB (budget {} MiB), RSS +{:.1} MiB, honest {rate:.0} READ/s",
        pushed as f64 / (1 << 20) as f64,
        buffered as f64 / (1 << 20) as f64,
        budget >> 20,
        grown as f64 / (1 << 20) as f64
    );
    assert!(
        pushed > budget + (8 << 20),
        "the attack pushed only {pushed} bytes"
    );
    // One channel may overshoot by its last doubling.
    assert!(
        buffered <= budget + (4 << 20),
        "NIC buffers {buffered} bytes past a budget of {budget}"
    );
    assert!(
        grown < budget + (32 << 20),
        "RSS grew by {grown} bytes with a buffer budget of {budget}"
    );
    assert!(rate > 100.0, "honest pair starved: {rate:.0} READ/s");
    // Closed channels give their bytes back. (Reset, not closed: a closing
    // socket with unsent bytes waits on the NIC's zero window, and the NIC
    // rightly keeps such a channel, unread, while its budget is spent.)
    for (k, _) in &socks {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an open socket with a valid linger struct.
        let rc = unsafe {
            libc::setsockopt(
                k.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER");
    }
    drop(socks);
    wait_for(
        "the NIC's buffers to be released",
        Duration::from_secs(10),
        || s.soft.tcp_usage().0 < 1 << 20,
    );
}

/// The honest pair reads 64 B at a rotating offset, byte-exact against
/// `data` (what the region holds).
fn honest_read(p: &Pair, data: &[u8], i: u64) {
    let off = (i % 1024) * 64;
    p.client.buf.fill(0, 64, 0).unwrap();
    assert_eq!(
        p.read(p.region.rkey(), off, 0, 64).unwrap(),
        WcStatus::Success
    );
    let mut got = [0u8; 64];
    p.client.buf.read(0, &mut got).unwrap();
    assert_eq!(&got[..], &data[off as usize..off as usize + 64], "read {i}");
}

/// An honest pair over `s` with a known pattern in its region.
fn honest_pair(s: &Node, c: &Node) -> (Pair, Vec<u8>) {
    let p = Pair::new(s.nic.clone(), c.nic.clone(), 1 << 16).unwrap();
    let data: Vec<u8> = (0..1usize << 16)
        .map(|i| (i as u8) ^ ((i >> 8) as u8).wrapping_mul(31))
        .collect();
    p.region.write(0, &data).unwrap();
    (p, data)
}

/// Whether the NIC closed `k` (EOF or reset); false if nothing came yet.
fn closed_by_peer(k: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match k.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("the stalled channel got {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("stalled channel read: {e}"),
    }
}

/// A channel announces a 16 MiB frame, sends 1 MiB of it and stops: once
/// the stall timeout passed (not before), the NIC closes it and its buffer
/// bytes leave the NIC's total; an honest pair on the same NIC reads
/// byte-exact before, during and after.
#[test]
fn an_unfinished_frame_is_closed_after_the_stall_timeout() {
    let _g = serial();
    let stall = Duration::from_secs(1);
    let s = node(SoftConfig {
        tcp_stall_timeout: stall,
        ..tcp_cfg()
    });
    let c = node(tcp_cfg());
    let (p, data) = honest_pair(&s, &c);
    for i in 0..2000 {
        honest_read(&p, &data, i);
    }
    let before = s.soft.tcp_usage().0;
    let q = spare_qp(&s, &p);
    let mut k = raw_channel(&c, &s, q.qpn());
    k.write_all(&announce(16 << 20)).unwrap();
    k.write_all(&vec![0xa5; 1 << 20]).unwrap();
    // Every byte reaches the NIC after this: its stall clock starts later.
    let t0 = Instant::now();
    let mut i = 0u64;
    wait_for(
        "the NIC to buffer the 1 MiB",
        Duration::from_secs(10),
        || {
            honest_read(&p, &data, i);
            i += 1;
            s.soft.tcp_usage().0 >= before + (1 << 20)
        },
    );
    // The NIC holds the bytes: from here on nothing more arrives.
    let held = s.soft.tcp_usage().0;
    k.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let mut closed_at = None;
    while t0.elapsed() < stall + Duration::from_secs(3) {
        honest_read(&p, &data, i);
        i += 1;
        if closed_at.is_none() && closed_by_peer(&mut k) {
            closed_at = Some(t0.elapsed());
        }
        if closed_at.is_some() && s.soft.tcp_usage().0 <= before {
            break;
        }
    }
    let after = s.soft.tcp_usage().0;
    eprintln!(
        "1 MiB of an announced 16 MiB frame, then silence: NIC buffers {before} B before, {held} B held, {after} B after; closed after {closed_at:?} (stall timeout {stall:?})"
    );
    let closed_at = closed_at.expect("the NIC never closed the stalled channel");
    assert!(
        closed_at >= stall,
        "closed after {closed_at:?}, before the stall timeout {stall:?}"
    );
    assert!(
        after <= before,
        "NIC buffers {after} B after the close, {before} B before"
    );
    assert_eq!(s.soft.tcp_stalled_closed(), 1);
    assert_eq!(s.soft.inbound_channels(), 1, "the honest channel only");
    for j in 0..2000 {
        honest_read(&p, &data, i + j);
    }
}

/// A sender drips a 4 MiB WRITE frame in steady pieces over 2.5x the stall
/// timeout: it keeps making progress, so the NIC serves it (the response
/// comes back) instead of closing it; an honest pair reads byte-exact
/// meanwhile.
#[test]
fn a_slow_sender_that_keeps_sending_is_served() {
    let _g = serial();
    let stall = Duration::from_secs(1);
    let s = node(SoftConfig {
        tcp_stall_timeout: stall,
        ..tcp_cfg()
    });
    let c = node(tcp_cfg());
    let (p, data) = honest_pair(&s, &c);
    let q = spare_qp(&s, &p);
    let mut k = raw_channel(&c, &s, q.qpn());
    let len = 4usize << 20;
    k.write_all(&req_frame(ReqOp::Write, len as u32, 42))
        .unwrap();
    let pieces = 50;
    let payload = vec![0x3c; len];
    let every = stall.mul_f64(2.5) / pieces as u32;
    let t0 = Instant::now();
    let mut i = 0u64;
    for (n, piece) in payload.chunks(len.div_ceil(pieces)).enumerate() {
        k.write_all(piece)
            .expect("the NIC closed the slow sender's channel");
        // Paced by the clock, with honest reads in between.
        while t0.elapsed() < every * (n as u32 + 1) {
            honest_read(&p, &data, i);
            i += 1;
        }
    }
    let took = t0.elapsed();
    // Served: the response to seq 42 comes back (the spare QP is not
    // connected, so it carries an error status; what matters is that the
    // channel was served, not closed).
    k.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = [0u8; FRAME_PREFIX + RESP_LEN];
    if let Err(e) = k.read_exact(&mut r) {
        panic!(
            "the slow sender's channel was closed instead of served ({e}; {} closed as stalled)",
            s.soft.tcp_stalled_closed()
        );
    }
    let pfx = Prefix::decode(r[..FRAME_PREFIX].try_into().unwrap()).unwrap();
    assert_eq!(pfx.kind, FrameKind::Resp);
    let h = RespHeader::decode(r[FRAME_PREFIX..].try_into().unwrap());
    assert_eq!(h.seq, 42);
    eprintln!("a 4 MiB frame dripped over {took:?} (stall timeout {stall:?}) was served");
    assert!(took > stall * 2, "the drip took only {took:?}");
    assert_eq!(s.soft.tcp_stalled_closed(), 0);
    honest_read(&p, &data, i);
}

/// A 64 B READ request of `epoch` under rkey 0 (which no window has: the
/// responder refuses it).
fn bad_read_frame(epoch: u8, seq: u64) -> Vec<u8> {
    frame_of(ReqOp::Read, epoch, 0, 64, seq)
}

/// Reads one response frame's header (None at EOF or on error).
fn read_resp(k: &mut TcpStream) -> Option<RespHeader> {
    let mut r = [0u8; FRAME_PREFIX + RESP_LEN];
    k.read_exact(&mut r).ok()?;
    let pfx = Prefix::decode(r[..FRAME_PREFIX].try_into().unwrap()).ok()?;
    assert_eq!(pfx.kind, FrameKind::Resp);
    Some(RespHeader::decode(r[FRAME_PREFIX..].try_into().unwrap()))
}

/// After a refusal the rest of the refused epoch is skipped: as many
/// frames as a send queue can hold are an honest requester's flushed tail
/// and the channel is served on (a frame of the next epoch gets its
/// answer); past twice the deepest soft send queue the channel is a
/// flooder's and the NIC closes it, and refuses its peer new channels for a
/// while (other peers connect).
#[test]
fn a_channel_flooding_a_refused_epoch_is_closed_and_an_honest_tail_is_not() {
    let _g = serial();
    let s = node(tcp_cfg());
    let c = node(tcp_cfg());
    let (honest, data) = honest_pair(&s, &c);
    let depth = patronus::fabric::soft::shm::REQ_SLOTS as u64;
    // An honest tail: the refused frame, then a full send queue's worth in
    // the same epoch, then the next epoch.
    let target = spare_qp(&s, &honest);
    let mut k = raw_channel(&c, &s, target.qpn());
    k.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    for i in 0..=depth {
        b.extend(bad_read_frame(0, i));
    }
    b.extend(bad_read_frame(1, depth + 1));
    k.write_all(&b).unwrap();
    let first = read_resp(&mut k).expect("the refusal");
    assert_eq!((first.seq, first.epoch), (0, 0));
    assert_ne!(first.status, WcStatus::Success as u8, "{first:?}");
    let next = read_resp(&mut k).expect("the next epoch's frame is served");
    assert_eq!((next.seq, next.epoch), (depth + 1, 1));
    assert_eq!(s.soft.tcp_flood_closed(), 0);
    // A flood: more than twice the deepest send queue into one epoch.
    let target2 = spare_qp(&s, &honest);
    let mut f = raw_channel(&c, &s, target2.qpn());
    f.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    for i in 0..2 * depth + 2 {
        b.extend(bad_read_frame(0, i));
    }
    // The NIC may close while this is still being written.
    let _ = f.write_all(&b);
    let first = read_resp(&mut f).expect("the refusal");
    assert_eq!(first.seq, 0);
    wait_for(
        "the flooding channel to be closed",
        Duration::from_secs(10),
        || s.soft.tcp_flood_closed() == 1,
    );
    assert!(
        read_resp(&mut f).is_none(),
        "the closed channel still answers"
    );
    // Its peer is refused new channels for a while (the first ban is
    // 100 ms); another peer is not, and the ban ends.
    let target3 = spare_qp(&s, &honest);
    assert!(
        c.soft
            .connect_raw_tcp(&s.soft.address(), 8, target3.qpn(), 1)
            .is_err(),
        "a banned peer got a new channel"
    );
    let d = node(tcp_cfg());
    let other = d
        .soft
        .connect_raw_tcp(&s.soft.address(), 8, target3.qpn(), 1)
        .expect("another peer connects");
    drop(other);
    let target4 = spare_qp(&s, &honest);
    wait_for("the ban to end", Duration::from_secs(5), || {
        c.soft
            .connect_raw_tcp(&s.soft.address(), 9, target4.qpn(), 1)
            .is_ok()
    });
    // The honest channel and the honest pair are served on.
    let _ = f.write_all(&bad_read_frame(1, 0));
    k.write_all(&bad_read_frame(2, depth + 2)).unwrap();
    let again = read_resp(&mut k).expect("the honest channel is still served");
    assert_eq!((again.seq, again.epoch), (depth + 2, 2));
    assert_eq!(s.soft.tcp_flood_closed(), 1);
    honest_read(&honest, &data, 7);
}

/// A QP pair's worth of SENDs (4 KiB, garbage payload) written to the NIC
/// as fast as it reads them, without waiting for answers (the target QP
/// refuses the first and so skips the rest of the epoch: nothing is sent
/// back), against the same NIC as an honest pair of synchronous 64 B READs:
/// the honest pair keeps at least half its rate. Alone and flooded windows
/// alternate (the machine's load drifts) and the medians are compared. The
/// NIC closes a channel that sends more frames into a refused epoch than a
/// send queue can hold, and its peer gets no new channel for 100 ms,
/// doubling with each further flood; the flooder, a determined one,
/// reconnects at once whenever it can (a fresh authenticated hello each
/// time) and floods again. Without the close, a loopback flood of about
/// 5 GB/s left the honest pair 0.13-0.37 of its rate on this 2-core host
/// (skipping costs the NIC little, but the kernel's copies of the flood
/// take the cores). With the close and no ban, reconnections pushed
/// 0.35-1.8 GB/s (the pair kept 0.17 in one run of four, 0.6-0.85 in the
/// others); with a ban answered by a refusal, the flood fell to 0-40 MB/s
/// but 10 000 refused reconnections a second took the pair to 0.36 on an
/// idle host; with the banned peer's hellos held to their deadline, the
/// flooder gets its first 8 MiB in and then next to nothing (medians 0
/// MB/s) and the pair keeps 0.96-1.05.
#[test]
fn a_flooding_peer_gets_its_share() {
    let _g = serial();
    let s = node(tcp_cfg());
    let c = node(tcp_cfg());
    let honest = Pair::new(s.nic.clone(), c.nic.clone(), 1 << 20).unwrap();
    let target = spare_qp(&s, &honest);
    let mut frames = Vec::new();
    for i in 0..256u64 {
        frames.extend_from_slice(&req_frame(ReqOp::Send, 4096, i));
        frames.extend_from_slice(&[0xee; 4096]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let on = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let (from, to, qpn) = (c.soft.clone(), s.soft.address(), target.qpn());
    let th = {
        let (stop, on, sent, reconnects) =
            (stop.clone(), on.clone(), sent.clone(), reconnects.clone());
        std::thread::spawn(move || {
            // The flooder is a remote peer in spirit: lowest CPU priority
            // (Linux: per thread), so that what is measured is the NIC's
            // share of its own thread, not this machine's cores.
            // SAFETY: plain syscalls on this thread's own id.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            }
            let t = Instant::now();
            let mut epoch = 1u64;
            let connect = |epoch: u64| {
                let k = from.connect_raw_tcp(&to, 7, qpn, epoch).ok()?;
                k.set_nodelay(true).ok()?;
                k.set_write_timeout(Some(Duration::from_millis(50))).ok()?;
                Some(k)
            };
            let mut k = connect(epoch);
            let mut at = 0usize;
            // A channel that takes no byte for 20 ms is given up (a closed
            // one can look like a full one) and a new one made.
            let mut progress = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
                if !on.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let Some(ks) = k.as_mut() else {
                    epoch += 1;
                    k = connect(epoch);
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    at = 0;
                    progress = Instant::now();
                    continue;
                };
                match ks.write(&frames[at..]) {
                    Ok(0) => k = None,
                    Ok(n) => {
                        at = (at + n) % frames.len();
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        progress = Instant::now();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if progress.elapsed() > Duration::from_millis(20) {
                            k = None;
                        }
                    }
                    // Closed by the NIC: reconnect and go on.
                    Err(_) => k = None,
                }
            }
        })
    };
    let win = Duration::from_millis(250);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    // Paired windows, alone then flooded; a second round of 7 only when
    // the first's median falls short (this shared 2-core host drifts).
    let round = |first: bool| {
        let (mut alone, mut during, mut flood_rates) = (Vec::new(), Vec::new(), Vec::new());
        for w in 0..7 {
            on.store(false, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
            alone.push(read_rate(&honest, win));
            on.store(true, Ordering::Relaxed);
            if first && w == 0 {
                // The flood gets going before anything is measured (later
                // windows find the flooder banned or flooding again).
                let b0 = sent.load(Ordering::Relaxed);
                wait_for("the flood to start", Duration::from_secs(10), || {
                    sent.load(Ordering::Relaxed) > b0 + (4 << 20)
                });
            }
            let (b1, t1) = (sent.load(Ordering::Relaxed), Instant::now());
            during.push(read_rate(&honest, win));
            flood_rates
                .push((sent.load(Ordering::Relaxed) - b1) as f64 / t1.elapsed().as_secs_f64());
        }
        (med(&mut alone), med(&mut during), med(&mut flood_rates))
    };
    let mut r = round(true);
    if r.1 < 0.5 * r.0 {
        r = round(false);
    }
    stop.store(true, Ordering::Relaxed);
    th.join().unwrap();
    let (before, under, fr) = r;
    let closed = s.soft.tcp_flood_closed();
    eprintln!(
        "honest 64 B READ: {before:.0}/s alone, {under:.0}/s during a flood of {:.1} MB/s of 4 KiB SENDs (medians of 7 windows of {win:?}); {closed} flooding channels closed, {} reconnects",
        fr / 1e6,
        reconnects.load(Ordering::Relaxed)
    );
    assert!(closed > 0, "the flooding channel was never closed");
    assert!(
        under >= 0.5 * before,
        "honest pair fell from {before:.0} to {under:.0} ops/s under the flood"
    );
}

/// Raises this process's open-file limit to at least `n`.
fn raise_nofile(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < n {
            r.rlim_cur = n.min(r.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
    }
    assert!(r.rlim_cur >= n, "open-file limit {} below {n}", r.rlim_cur);
}

/// The channel cap: with 16 channels allowed and all in use, 2000 more
/// connections are each closed right after accept; the NIC stays up, its
/// channels keep working, and once a slot frees an honest connect works.
#[test]
fn connections_past_the_cap_are_closed() {
    let _g = serial();
    raise_nofile(6000);
    let cap = 16;
    let s = node(SoftConfig {
        max_tcp_channels: cap,
        ..tcp_cfg()
    });
    let c = node(tcp_cfg());
    let p = Pair::new(s.nic.clone(), c.nic.clone(), 1 << 20).unwrap();
    let qps: Vec<_> = (0..cap - 1).map(|_| spare_qp(&s, &p)).collect();
    let squat: Vec<_> = qps.iter().map(|q| raw_channel(&c, &s, q.qpn())).collect();
    wait_for("the cap to fill", Duration::from_secs(10), || {
        s.soft.inbound_channels() == cap
    });
    let t = Instant::now();
    let mut socks = Vec::new();
    for i in 0..2000 {
        match TcpStream::connect(&s.tcp) {
            Ok(k) => socks.push(k),
            Err(e) => panic!("connect {i} to the NIC: {e}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "2000 connects too slow"
        );
    }
    let mut closed = 0;
    for k in &mut socks {
        k.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        match k.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => closed += 1,
            Ok(_) => panic!("a connection past the cap got bytes"),
            Err(e) => panic!("a connection past the cap stayed open: {e}"),
        }
    }
    let (_, refused) = s.soft.tcp_usage();
    eprintln!(
        "2000 connections past a cap of {cap}: {closed} closed, {refused} refused, in {:?}",
        t.elapsed()
    );
    assert_eq!(closed, 2000);
    assert!(refused >= 2000, "refused counter {refused}");
    assert_eq!(s.soft.inbound_channels(), cap, "channels changed");
    // The NIC is up: the existing pair works.
    assert!(read_rate(&p, Duration::from_millis(100)) > 10.0);
    drop(socks);
    drop(squat);
    wait_for(
        "the squatters' channels to close",
        Duration::from_secs(10),
        || s.soft.inbound_channels() < cap,
    );
    let q = p.share(&c.nic).unwrap();
    assert_eq!(
        q.read(q.region.rkey(), 0, 0, 64).unwrap(),
        WcStatus::Success
    );
}
