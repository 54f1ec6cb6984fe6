//! Connection hijack across processes (issue 11), through the keeper: a
//! real memcached, a memory node (`patronus serve`), and a victim client
//! process (this test binary re-run as a child, `victim_process`) that holds
//! a lease and writes and reads back patterns through its window,
//! byte-exact, the whole time. The attacker is the test process: it reads
//! the victim's QP numbers, the memory node's NIC address (with its `;pk=`
//! public key), the victim's public key and the memory node's region
//! address from memcached, and the victim's window rkey from what the victim
//! prints (a co-located peer that reads everything of the host). It then
//! speaks as the victim's QP to the memory node's tcp listener (a tcp node,
//! and an shm node's tcp listener): with its own NIC's key, with the
//! victim's public key and no secret, and with the bytes of the victim's
//! real hello replayed verbatim (on the shm node also on its Unix socket).
//!
//! The replay needs a real hello on the wire. It is captured the way an
//! on-path observer would see it: before the victim starts, the test points
//! the memory node's endpoint for the victim's data QP (in the keeper) at a
//! relay it runs, which forwards every byte (and, for shm, every fd) both
//! ways and keeps a copy of the hello and its answer; the victim's channel
//! works through the relay throughout.
//!
//! Asserted: every attempt is refused (a refusal message or a closed
//! connection, never the OK that attaches a channel) and no READ with the
//! victim's rkey sent after it is answered; the victim's run completes with
//! every round byte-exact and no error, and its data QP connected once (the
//! relay saw one connection: its channel was never lost or replaced).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{unique, Memcached, Proc};
use patronus::cluster::{Keeper, MemcachedKeeper};
use patronus::fabric::soft::auth::{self, kind, refuse, Hello, HelloLink, HELLO_LEN, MSG_LEN};
use patronus::fabric::soft::shm;
use patronus::fabric::soft::wire::{FrameKind, Prefix, ReqHeader, ReqOp, REQ_LEN};
use patronus::fabric::soft::{LinkKind, NicAddr, SoftConfig, SoftNic};
use patronus::fabric::QpEndpoint;
use patronus::lease::NodeMemory;
use rand::RngCore;

const T: Duration = Duration::from_secs(30);
/// Epoch far above any the victim's QP uses: were a forged hello accepted,
/// it would replace the victim's channel.
const BIG_EPOCH: u64 = 1 << 40;
/// The victim's object: one 4 KiB window at this offset of the lease buffer.
const OBJ_SIZE: u64 = 4096;
/// Endpoint list index of the memory node's data QP towards the victim's
/// client thread (one thread, one directory: client rpc, client data, dir
/// rpc, dir data, clock; see `node::mesh`), and of the victim's data QP.
const DIR_DATA: usize = 3;
const CLIENT_DATA: usize = 1;

/// The victim (a child process): joins the cluster, takes a write lease on
/// a 4 KiB object, says `rkey=`, `base=` and `node=`, then writes a fresh
/// pattern and reads it back every round until the keeper says the
/// attacks are done (at most 60 s): `rounds=` (all), `during=` (those after
/// the keeper said the attacks started) and `bad=` at the end; any error
/// or mismatch fails the process.
#[test]
#[ignore = "the victim process of the other tests (they start it)"]
fn victim_process() {
    use patronus::lease::flags::acquire;
    use patronus::lease::Rc;
    use patronus::node::{Config, Patronus};
    let Ok(keeper) = std::env::var("HIJACK_KEEPER") else {
        return;
    };
    let cfg = Config {
        machine_nr: 2,
        client_threads: 1,
        fabric: std::env::var("HIJACK_FABRIC").unwrap(),
        keeper: Some(keeper),
        cluster: std::env::var("HIJACK_CLUSTER").unwrap(),
        ..Config::default()
    };
    let p = Patronus::new(cfg).unwrap();
    p.keeper_barrier("roles").unwrap();
    let me = p.get_node_id();
    let s = 1 - me;
    let mut c = p.register_client_thread().unwrap();
    let mut l = c
        .get_lease(true, s, 0, 0, OBJ_SIZE, 0, acquire::NO_GC)
        .unwrap();
    assert!(l.success(), "lease refused: {}", l.ec());
    println!(
        "victim node={me} server={s} rkey={} base={}",
        l.rkey, l.base.0
    );
    let t0 = Instant::now();
    let mut rounds = 0u64;
    let mut started_at = None;
    let mut back = vec![0u8; OBJ_SIZE as usize];
    loop {
        let pat: Vec<u8> = (0..OBJ_SIZE)
            .map(|i| (i as u8).wrapping_mul(7) ^ (rounds as u8).wrapping_add(0x5b))
            .collect();
        assert_eq!(
            c.write(&mut l, &pat, 0, 0).unwrap(),
            Rc::Ok,
            "write {rounds}"
        );
        back.fill(0);
        assert_eq!(
            c.read(&mut l, &mut back, 0, 0).unwrap(),
            Rc::Ok,
            "read {rounds}"
        );
        assert!(back == pat, "round {rounds}: read back differs");
        rounds += 1;
        if rounds == 1 {
            println!("ready=1");
        }
        if rounds % 16 == 0 {
            if started_at.is_none() && p.try_get("attacks-start").unwrap().is_some() {
                started_at = Some(rounds);
            }
            if started_at.is_some() && p.try_get("attacks-done").unwrap().is_some() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "never told to stop");
        }
    }
    c.relinquish(&mut l, 0, 0).unwrap();
    let during = rounds - started_at.unwrap_or(rounds);
    println!("rounds={rounds} during={during} bad=0");
    p.finished(0).unwrap();
    println!("done=1");
}

/// What the attacker learnt from the keeper and the victim.
struct Target {
    /// The memory node's NIC address (listeners and public key).
    node: NicAddr,
    node_bytes: Vec<u8>,
    /// The memory node's data QP serving the victim, and the victim's QP.
    dst: u32,
    src: u32,
    /// The victim NIC's public key.
    victim_pk: [u8; 32],
    /// Address and rkey of the victim's window.
    raddr: u64,
    rkey: u32,
}

/// A READ and a WRITE (64 B of 0xee) of the victim's window, as tcp
/// request frames.
fn attack_frames(t: &Target) -> Vec<u8> {
    let mut f = Vec::new();
    for (op, len, seq) in [(ReqOp::Read, 0u32, 1u64), (ReqOp::Write, 64, 2)] {
        let h = ReqHeader {
            op,
            epoch: 0,
            len: 64,
            seq,
            raddr: t.raddr,
            rkey: t.rkey,
            lblock: 0,
            loff: 0,
            arg0: 0,
            arg1: 0,
        };
        let mut hb = [0u8; REQ_LEN];
        h.encode(&mut hb);
        f.extend_from_slice(&Prefix::encode(FrameKind::Req, len));
        f.extend_from_slice(&hb);
        f.extend(std::iter::repeat_n(0xee, len as usize));
    }
    f
}

/// Sends a READ and a WRITE of the victim's window on `s` and checks
/// nothing is answered for a second (EOF or a reset also count as
/// refused). A WRITE that landed would also fail the victim's next
/// read-back.
fn assert_unserved(mut s: TcpStream, t: &Target) {
    let _ = s.write_all(&attack_frames(t));
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the attacker's READ/WRITE was answered ({n} bytes)"),
    }
}

/// Reads one hello message: (kind, word); None on EOF or error.
fn recv_msg(s: &mut impl Read) -> Option<(u8, u32)> {
    let mut m = [0u8; MSG_LEN];
    s.read_exact(&mut m).ok()?;
    auth::parse_msg(&m).ok().map(|(k, w, _)| (k, w))
}

fn tcp_connect(t: &Target) -> TcpStream {
    let s = TcpStream::connect(t.node.tcp.as_ref().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Attack 1: the attacker's own NIC (its own key pair) names the victim's
/// QPs, at a low and a very high epoch. The hello may be held back, never
/// served.
fn own_key(t: &Target) -> usize {
    let nic = SoftNic::open(SoftConfig {
        link: LinkKind::Tcp,
        ..SoftConfig::default()
    })
    .unwrap();
    let mut n = 0;
    for epoch in [1, BIG_EPOCH] {
        n += 1;
        match nic.connect_raw_tcp(&t.node_bytes, t.src, t.dst, epoch) {
            Err(_) => {}
            Ok(s) => assert_unserved(s, t),
        }
    }
    n
}

/// Attack 2: a hello with the victim's public key (no secret to answer
/// the challenge with): refused with BAD_MAC.
fn no_secret(t: &Target) -> usize {
    for _ in 0..2 {
        let mut s = tcp_connect(t);
        let h = Hello {
            dst: t.dst,
            src: t.src,
            link: HelloLink::Tcp,
            epoch: BIG_EPOCH,
            nonce: auth::nonce(),
            pk: t.victim_pk,
        };
        s.write_all(&h.encode()).unwrap();
        assert_eq!(recv_msg(&mut s).map(|m| m.0), Some(kind::CHAL));
        let mut mac = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut mac);
        s.write_all(&auth::msg(kind::AUTH, 0, &mac)).unwrap();
        assert_eq!(recv_msg(&mut s), Some((kind::REFUSE, refuse::BAD_MAC)));
        assert_unserved(s, t);
    }
    2
}

/// Attack 3 (tcp node): the victim's captured hello and answer, replayed
/// verbatim: the fresh challenge makes the answer wrong.
fn replay_tcp(t: &Target, cap: &[u8]) -> usize {
    for _ in 0..2 {
        let mut s = tcp_connect(t);
        s.write_all(cap).unwrap();
        assert_eq!(recv_msg(&mut s).map(|m| m.0), Some(kind::CHAL));
        assert_eq!(
            recv_msg(&mut s),
            Some((kind::REFUSE, refuse::BAD_MAC)),
            "replayed hello"
        );
        assert_unserved(s, t);
    }
    2
}

/// Attack 3 (shm node, tcp listener): the victim's captured shm hello and
/// answer sent verbatim to the tcp listener. Whatever comes back, it is
/// never the OK that attaches a channel.
fn replay_shm_over_tcp(t: &Target, hello: &[u8], answer: &[u8]) -> usize {
    for _ in 0..2 {
        let mut s = tcp_connect(t);
        s.write_all(hello).unwrap();
        let first = recv_msg(&mut s);
        assert_ne!(first.map(|m| m.0), Some(kind::OK));
        if first.map(|m| m.0) == Some(kind::CHAL) {
            s.write_all(answer).unwrap();
            let r = recv_msg(&mut s);
            assert!(
                r.is_none() || r.map(|m| m.0) == Some(kind::REFUSE),
                "replayed shm hello over tcp got {r:?}"
            );
        }
        assert_unserved(s, t);
    }
    2
}

/// Attack 3 (shm node, Unix socket): the captured shm hello, then the
/// captured answer with the victim's own segment fd: refused with BAD_MAC.
fn replay_shm(t: &Target, hello: &[u8], answer: &[u8], seg: &OwnedFd) -> usize {
    for _ in 0..2 {
        let s = unix_connect(t.node.shm.as_ref().unwrap());
        shm::send_with_fd(&s, hello, None).unwrap();
        assert_eq!(unix_recv(&s).map(|m| m.0), Some(kind::CHAL));
        shm::send_with_fd(&s, answer, Some(seg.as_raw_fd())).unwrap();
        assert_eq!(
            unix_recv(&s),
            Some((kind::REFUSE, refuse::BAD_MAC)),
            "replayed shm hello"
        );
    }
    2
}

fn unix_connect(name: &str) -> UnixStream {
    let sa = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let s = UnixStream::connect_addr(&sa).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn unix_recv(s: &UnixStream) -> Option<(u8, u32)> {
    let mut m = [0u8; MSG_LEN];
    shm::recv_with_fd(s, &mut m).ok()?;
    auth::parse_msg(&m).ok().map(|(k, w, _)| (k, w))
}

/// The victim's first hello and answer, as seen on the wire.
type TcpCapture = Arc<Mutex<Option<Vec<u8>>>>;

/// A transparent tcp relay to `target` on a free loopback port (up to 16
/// connections, counted in `conns`, each relayed both ways until either
/// side closes); the first connection's hello and answer are copied into
/// the capture.
fn tcp_relay(target: String, conns: Arc<AtomicUsize>) -> (String, TcpCapture) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cap: TcpCapture = Arc::new(Mutex::new(None));
    let c = cap.clone();
    std::thread::spawn(move || {
        for i in 0..16 {
            let Ok((mut from, _)) = l.accept() else {
                return;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let Ok(mut to) = TcpStream::connect(&target) else {
                return;
            };
            let _ = from.set_nodelay(true);
            let _ = to.set_nodelay(true);
            let (mut back_from, mut back_to) = (to.try_clone().unwrap(), from.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(std::net::Shutdown::Both);
            });
            let c = c.clone();
            std::thread::spawn(move || {
                if i == 0 {
                    // Hello, then (after the challenge went back) the answer.
                    let mut b = vec![0u8; HELLO_LEN + MSG_LEN];
                    let ok = from.read_exact(&mut b[..HELLO_LEN]).is_ok()
                        && to.write_all(&b[..HELLO_LEN]).is_ok()
                        && from.read_exact(&mut b[HELLO_LEN..]).is_ok()
                        && to.write_all(&b[HELLO_LEN..]).is_ok();
                    if ok {
                        *c.lock().unwrap() = Some(b);
                    }
                }
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, cap)
}

/// The victim's first shm hello, its answer and the segment fd it carried.
type ShmCapture = Arc<Mutex<Option<(Vec<u8>, Vec<u8>, OwnedFd)>>>;

/// Forwards what arrives on `from` to `to` (with any fd attached), until
/// either side fails; then shuts both down.
fn unix_pump(from: UnixStream, to: UnixStream) {
    let mut b = vec![0u8; 4096];
    while let Ok((n, fd)) = shm::recv_some_with_fd(&from, &mut b) {
        if shm::send_with_fd(&to, &b[..n], fd.as_ref().map(|f| f.as_raw_fd())).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// As `tcp_relay`, for an shm NIC's abstract Unix socket, passing fds on.
fn unix_relay(target: String, conns: Arc<AtomicUsize>) -> (String, ShmCapture) {
    let name = unique("patronus-hijack-proc-relay");
    let sa = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let l = UnixListener::bind_addr(&sa).unwrap();
    let cap: ShmCapture = Arc::new(Mutex::new(None));
    let c = cap.clone();
    std::thread::spawn(move || {
        for i in 0..16 {
            let Ok((from, _)) = l.accept() else {
                return;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let to_sa = SocketAddr::from_abstract_name(target.as_bytes()).unwrap();
            let Ok(to) = UnixStream::connect_addr(&to_sa) else {
                return;
            };
            let (back_from, back_to) = (to.try_clone().unwrap(), from.try_clone().unwrap());
            std::thread::spawn(move || unix_pump(back_from, back_to));
            let c = c.clone();
            std::thread::spawn(move || {
                if i == 0 {
                    let mut hello = vec![0u8; HELLO_LEN];
                    let mut answer = vec![0u8; MSG_LEN];
                    if shm::recv_with_fd(&from, &mut hello).is_err()
                        || shm::send_with_fd(&to, &hello, None).is_err()
                    {
                        return;
                    }
                    let Ok(Some(seg)) = shm::recv_with_fd(&from, &mut answer) else {
                        return;
                    };
                    if shm::send_with_fd(&to, &answer, Some(seg.as_raw_fd())).is_err() {
                        return;
                    }
                    *c.lock().unwrap() = Some((hello, answer, seg));
                }
                unix_pump(from, to);
            });
        }
    });
    (name, cap)
}

/// Waits for the keeper's `key`.
fn keeper_wait(k: &MemcachedKeeper, key: &str) -> Vec<u8> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = k.try_get(key).unwrap() {
            return v;
        }
        assert!(t0.elapsed() < T, "no {key} in the keeper within {T:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hijack_through_the_keeper(fabric: &str) {
    let mc = Memcached::start();
    let cl = unique(&format!("hijack-{fabric}"));
    let args = [
        "serve",
        "--keeper",
        &mc.url,
        "--fabric",
        fabric,
        "--machines",
        "2",
        "--threads",
        "1",
        "--cluster",
        &cl,
    ];
    let mut srv = Proc::start("serve", &args);
    let k = MemcachedKeeper::connect(&mc.url, Duration::from_secs(2)).unwrap();
    // The memory node joined first: node 0 of run 0. Its endpoints for the
    // victim (node 1): point the data QP's at the relay (the on-path spot
    // the capture needs) before the victim reads them.
    let run = format!("patronus/{cl}/0");
    let ep_key = format!("{run}/ep/0/1");
    let mut eps = QpEndpoint::decode_list(&keeper_wait(&k, &ep_key)).unwrap();
    let real = NicAddr::decode(&eps[DIR_DATA].nic).unwrap();
    let mut relayed = real.clone();
    // Connections the victim's data QP made (through the relay): one, unless
    // its channel was lost and re-made.
    let conns = Arc::new(AtomicUsize::new(0));
    let (tcp_cap, shm_cap) = if fabric == "tcp" {
        let (a, c) = tcp_relay(real.tcp.clone().unwrap(), conns.clone());
        relayed.tcp = Some(a);
        (Some(c), None)
    } else {
        let (a, c) = unix_relay(real.shm.clone().unwrap(), conns.clone());
        relayed.shm = Some(a);
        (None, Some(c))
    };
    eps[DIR_DATA].nic = relayed.encode();
    k.put(&ep_key, &QpEndpoint::encode_list(&eps)).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["victim_process", "--exact", "--ignored", "--nocapture"])
        .env("HIJACK_KEEPER", &mc.url)
        .env("HIJACK_FABRIC", fabric)
        .env("HIJACK_CLUSTER", &cl);
    let mut victim = Proc::spawn("victim", cmd);
    assert_eq!(victim.wait_for("node", T), "1");
    let rkey: u32 = victim.wait_for("rkey", T).parse().unwrap();
    let base: u64 = victim.wait_for("base", T).parse().unwrap();
    victim.wait_for("ready", T);

    // What the keeper tells everyone (the real records, not the relay).
    let victim_eps = QpEndpoint::decode_list(&keeper_wait(&k, &format!("{run}/ep/1/0"))).unwrap();
    let info = keeper_wait(&k, &format!("{run}/info/0"));
    let mem = NodeMemory::decode(&String::from_utf8_lossy(&info)).unwrap();
    let t = Target {
        node_bytes: real.encode(),
        node: real,
        dst: eps[DIR_DATA].qpn,
        src: victim_eps[CLIENT_DATA].qpn,
        victim_pk: NicAddr::decode(&victim_eps[CLIENT_DATA].nic)
            .unwrap()
            .pk
            .unwrap(),
        raddr: mem.region_addr + base,
        rkey,
    };
    k.put(&format!("{run}/user/attacks-start"), b"1").unwrap();
    // Let the victim see it before the first attempt (it checks every 16
    // rounds).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        std::thread::yield_now();
    }
    let mut tried = own_key(&t) + no_secret(&t);
    if let Some(c) = tcp_cap {
        let cap = c
            .lock()
            .unwrap()
            .clone()
            .expect("the victim's hello was captured");
        assert_eq!(
            Hello::decode(cap[..HELLO_LEN].try_into().unwrap())
                .unwrap()
                .dst,
            t.dst
        );
        tried += replay_tcp(&t, &cap);
    }
    if let Some(c) = shm_cap {
        let g = c.lock().unwrap();
        let (hello, answer, seg) = g.as_ref().expect("the victim's shm hello was captured");
        let h = Hello::decode(hello[..].try_into().unwrap()).unwrap();
        assert_eq!((h.dst, h.src), (t.dst, t.src));
        tried += replay_shm_over_tcp(&t, hello, answer);
        tried += replay_shm(&t, hello, answer, seg);
    }
    k.put(&format!("{run}/user/attacks-done"), b"1").unwrap();
    let rounds: u64 = victim.wait_for("rounds", T).parse().unwrap();
    let during: u64 = victim.wait_for("during", T).parse().unwrap();
    assert_eq!(victim.wait_for("bad", T), "0");
    assert!(victim.wait_exit(T).success(), "the victim failed");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the victim's data channel was made more than once"
    );
    assert!(srv.wait_exit(T).success(), "the memory node failed");
    eprintln!(
        "{fabric} memory node: {tried} hijack attempts by another process, all refused; the victim ran {rounds} byte-exact write+read rounds of {OBJ_SIZE} B, {during} of them during the attacks"
    );
    assert!(
        during > 16,
        "the victim ran only {during} rounds during the attacks"
    );
}

#[test]
fn hijack_from_another_process_of_a_tcp_node_is_refused() {
    hijack_through_the_keeper("tcp");
}

#[test]
fn hijack_from_another_process_through_an_shm_nodes_tcp_listener_is_refused() {
    hijack_through_the_keeper("shm");
}
