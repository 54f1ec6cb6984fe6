//! The CLI: `patronus demo`, `info`, and a quick `bench fabric --json` run
//! whose every line must carry the fields the benchmark contract names.

mod common;

use std::process::Command;

fn patronus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patronus"))
}

/// Runs `patronus ARGS` (a `--json` benchmark), which must succeed; returns
/// its output and the records, one JSON object per line.
fn json_records(args: &[&str]) -> (String, Vec<serde_json::Value>) {
    records_of(patronus().args(args).output().unwrap())
}

/// The JSON lines of a successful run's stdout (and the text).
fn records_of(out: std::process::Output) -> (String, Vec<serde_json::Value>) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let recs = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (text, recs)
}

/// Runs `patronus args` to its end, output captured: its pid and output.
fn run_with_pid(args: &[&str]) -> (u32, std::process::Output) {
    let child = patronus()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

#[test]
fn demo_succeeds_on_the_embedded_default() {
    let out = patronus()
        .arg("demo")
        .env_remove("PATRONUS_FABRIC")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.contains("summary: all steps behaved as expected"), "{s}");
    assert!(s.contains("revoked"), "{s}");
    assert!(s.contains("refused"), "{s}");
}

/// `info --json`: one JSON object with the version, ABI version, fabrics,
/// RDMA devices and the space of /dev/shm.
#[test]
fn info_json_names_every_fact() {
    let out = patronus().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["abi_version"], patronus::ffi::error::PATRONUS_ABI_VERSION);
    let mut fabrics = vec!["shm", "tcp"];
    if cfg!(feature = "verbs") {
        fabrics.push("verbs");
    }
    assert_eq!(v["fabrics"], serde_json::json!(fabrics), "{v}");
    let devs = v["rdma_devices"].as_array().expect("rdma_devices list");
    assert_eq!(devs.is_empty(), !common::has_rdma_device(), "{v}");
    assert_eq!(v["shm"]["path"], "/dev/shm");
    let free = v["shm"]["free_bytes"].as_u64().expect("free_bytes");
    let total = v["shm"]["total_bytes"].as_u64().expect("total_bytes");
    assert!(total > 0 && free <= total, "{v}");
    // The text form says the same.
    let out = patronus().arg("info").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let abi = format!(
        "ABI version: {}",
        patronus::ffi::error::PATRONUS_ABI_VERSION
    );
    for l in [abi.as_str(), "RDMA devices: ", "shared memory: /dev/shm "] {
        assert!(s.contains(l), "{l:?} missing: {s}");
    }
}

/// `serve` / `client` with several machines and no keeper stop at once,
/// naming `--keeper` (not a wait for a key that never appears).
#[test]
fn several_machines_without_a_keeper_fail_at_once() {
    for args in [
        &["serve", "--machines", "2"][..],
        &["client", "--machines", "3", "multi"][..],
    ] {
        let t0 = std::time::Instant::now();
        let out = patronus()
            .args(args)
            .env_remove("PATRONUS_KEEPER")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("--keeper"), "{args:?}: {err}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(2), "{args:?}");
    }
}

/// An unreachable memcached (a closed loopback port) is one error line,
/// not the connection pool's log of every attempt; log lines written to a
/// pipe carry no colour escapes.
#[test]
fn unreachable_keeper_is_one_line_and_logs_are_plain_off_a_terminal() {
    let t0 = std::time::Instant::now();
    let out = patronus()
        .args([
            "serve",
            "--machines",
            "2",
            "--keeper",
            "memcached://127.0.0.1:1",
        ])
        .env_remove("PATRONUS_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("memcached://127.0.0.1:1"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(15));
    let out = patronus()
        .arg("demo")
        .env("PATRONUS_LOG", "info")
        .env_remove("PATRONUS_FABRIC")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO"), "no log lines: {err}");
    assert!(
        !err.contains('\x1b'),
        "colour escapes off a terminal: {err:?}"
    );
}

/// Bad benchmark arguments are usage errors with a message saying what is
/// wanted; a repeated `--size` or `--op` is measured once.
#[test]
fn bench_arguments_are_validated() {
    for (args, want) in [
        (&["fabric", "--ops", "0"][..], "at least 1"),
        (&["fabric", "--ops", "-5"][..], "at least 1"),
        (&["fabric", "--seconds", "0"][..], "more than 0"),
        (&["fabric", "--seconds", "-1.5"][..], "more than 0"),
        (&["fabric", "--seconds", "nan"][..], "more than 0"),
        (&["fabric", "--size", "0"][..], "1 to 4096"),
        (&["fabric", "--size", "-8"][..], "1 to 4096"),
        (&["fabric", "--size", "4097"][..], "1 to 4096"),
        (&["fabric", "--ops", "many"][..], "not a whole number"),
        (&["lease", "--ops", "0"][..], "at least 1"),
        (&["lease", "--seconds", "0"][..], "more than 0"),
    ] {
        let out = patronus().arg("bench").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
    let (text, recs) = json_records(&[
        "bench", "fabric", "--quick", "--json", "--fabric", "shm", "--op", "read", "--op", "read",
        "--size", "64", "--size", "64",
    ]);
    assert_eq!(recs.len(), 4, "{text}");
}

/// Every SVG in `dir` is non-empty, parses as XML with an `svg` root and
/// has text (axis labels) and drawn shapes.
fn check_svgs(dir: &std::path::Path, names: &[&str]) {
    for n in names {
        let p = dir.join(n);
        let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!s.is_empty(), "{n} empty");
        let doc = roxmltree::Document::parse(&s).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg", "{n}");
        let count = |tag: &str| {
            doc.descendants()
                .filter(|d| d.tag_name().name() == tag)
                .count()
        };
        assert!(count("text") > 3, "{n}: no labels");
        assert!(
            count("polyline") + count("rect") + count("circle") > 3,
            "{n}: no shapes"
        );
    }
}

/// `--plot DIR` writes the charts of both benchmarks.
#[test]
fn bench_plot_writes_svg_charts() {
    let dir = std::env::temp_dir().join(format!("patronus-plot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    json_records(&[
        "bench", "fabric", "--quick", "--json", "--fabric", "shm", "--op", "read", "--size", "8",
        "--size", "64", "--plot", d,
    ]);
    check_svgs(&dir, &["fabric-latency-shm.svg"]);
    json_records(&["bench", "lease", "--quick", "--json", "--plot", d]);
    check_svgs(&dir, &["lease-shm.svg"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn info_and_bad_subcommands() {
    let out = patronus().arg("info").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let fabrics = if cfg!(feature = "verbs") {
        "fabrics: shm, tcp, verbs"
    } else {
        "fabrics: shm, tcp"
    };
    assert!(s.lines().any(|l| l == fabrics), "{s}");
    let out = patronus().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand 'no-such-command'"),
        "{err}"
    );
}

/// `PATRONUS_FABRIC=verbs patronus demo` and `patronus selftest --fabric
/// verbs`: on a machine without an RDMA NIC (CI), exit status 1 at once with
/// the start-up error as the last line, naming what ibv_get_device_list
/// returned and errno (or, in a build without the feature, how to get it);
/// on one with a NIC (and the feature), the run passes on it.
#[test]
fn verbs_without_a_device_fails_at_start_up() {
    let device = cfg!(feature = "verbs") && common::has_rdma_device();
    for args in [&["demo"][..], &["selftest", "--fabric", "verbs"][..]] {
        let t0 = std::time::Instant::now();
        let out = patronus()
            .args(args)
            .env("PATRONUS_FABRIC", "verbs")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let s = String::from_utf8_lossy(&out.stdout);
        if device {
            assert!(out.status.success(), "{args:?}: {s}\n{err}");
            if args[0] == "demo" {
                assert!(s.contains("(verbs fabric, in-process keeper)"), "{s}");
                assert!(s.contains("summary: all steps behaved as expected"), "{s}");
            } else {
                assert_eq!(s.lines().last(), Some("8 passed, 0 failed"), "{s}");
            }
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{args:?}: {s}\n{err}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{args:?} took {:?}",
            t0.elapsed()
        );
        let last = err.lines().last().unwrap_or_default();
        let msg = last
            .strip_prefix("patronus: ")
            .unwrap_or_else(|| panic!("{args:?}: the last line is not the error: {err}"));
        if cfg!(feature = "verbs") {
            assert!(common::is_no_device_error(msg), "{args:?}: {err}");
        } else {
            assert_eq!(msg, common::VERBS_NOT_BUILT, "{args:?}");
        }
        // Nothing ran: the demo printed its banner only, the selftest nothing.
        let expect_out = if args[0] == "demo" {
            "Patronus-rs demo: a memory node and a client in this process \
             (verbs fabric, in-process keeper)\n"
        } else {
            ""
        };
        assert_eq!(s, expect_out, "{args:?}");
    }
}

#[test]
fn bench_fabric_quick_json() {
    let (_, recs) = json_records(&["bench", "fabric", "--quick", "--json"]);
    assert!(!recs.is_empty(), "no records");
    for r in &recs {
        for k in [
            "scenario", "fabric", "op", "size", "mops", "baseline", "ops",
        ] {
            assert!(r.get(k).is_some(), "missing {k} in {r}");
        }
        // Latencies only where latency was measured: rate rows carry none
        // (no `p50_ns: 0`).
        let timed = ["latency", "floor"].contains(&r["scenario"].as_str().unwrap());
        for k in ["p50_ns", "p99_ns"] {
            assert_eq!(r.get(k).is_some(), timed, "{k} in {r}");
        }
    }
    for fab in ["shm", "tcp"] {
        for size in [8u64, 64, 4096] {
            let floor = recs
                .iter()
                .find(|r| r["fabric"] == fab && r["size"] == size && r["scenario"] == "floor")
                .unwrap_or_else(|| panic!("no {fab} floor at {size}"));
            assert_eq!(floor["baseline"], true);
            assert!(floor["p50_ns"].as_u64().unwrap() > 0);
            for op in ["read", "write"] {
                let lat = recs
                    .iter()
                    .find(|r| {
                        r["fabric"] == fab
                            && r["size"] == size
                            && r["op"] == op
                            && r["scenario"] == "latency"
                    })
                    .unwrap_or_else(|| panic!("no {fab} {op} {size}"));
                assert!(lat["p50_ns"].as_u64().unwrap() > 0);
                assert!(lat["p50_vs_floor"].as_f64().unwrap() > 0.0);
                let pipe = recs
                    .iter()
                    .find(|r| {
                        r["fabric"] == fab
                            && r["size"] == size
                            && r["op"] == op
                            && r["scenario"] == "pipelined"
                    })
                    .unwrap();
                assert!(pipe["mops"].as_f64().unwrap() > 0.0);
            }
        }
    }
}

/// `--op` / `--size` select scenarios; each latency record names the floor
/// rounds it was interleaved with (`floor_p50_ns`, its ratio's
/// denominator); a selection with nothing to measure is an error.
#[test]
fn bench_fabric_filters_and_paired_floors() {
    let (text, recs) = json_records(&[
        "bench", "fabric", "--quick", "--json", "--fabric", "shm", "--op", "read", "--size", "100",
    ]);
    let kinds: Vec<(&str, &str)> = recs
        .iter()
        .map(|r| (r["scenario"].as_str().unwrap(), r["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("floor", "rr"),
            ("floor-pipe", "rr"),
            ("latency", "read"),
            ("pipelined", "read")
        ],
        "{text}"
    );
    assert!(recs
        .iter()
        .all(|r| r["size"] == 100 && r["fabric"] == "shm"));
    let lat = &recs[2];
    let paired = lat["floor_p50_ns"].as_u64().unwrap();
    assert!(paired > 0);
    let ratio = lat["p50_ns"].as_u64().unwrap() as f64 / paired as f64;
    assert!((ratio - lat["p50_vs_floor"].as_f64().unwrap()).abs() < 1e-9);

    let out = patronus()
        .args(["bench", "fabric", "--quick", "--op", "cas", "--size", "64"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no scenario selected"), "{err}");
}

#[test]
fn bench_lease_quick_json_has_every_group_with_its_baseline() {
    let (text, recs) = json_records(&["bench", "lease", "--quick", "--json"]);
    // Its own keys: groups and variants with ratios to the group's
    // baseline, never fabric's scenario/op/..._vs_floor.
    for r in &recs {
        for k in [
            "group", "fabric", "variant", "size", "p50_ns", "baseline", "ops",
        ] {
            assert!(r.get(k).is_some(), "missing {k} in {r}");
        }
        for k in ["scenario", "op", "p50_vs_floor", "mops_vs_floor"] {
            assert!(r.get(k).is_none(), "fabric's key {k} in {r}");
        }
        if r["baseline"] == false && r["variant"] != "next-read" {
            assert!(
                r.get("p50_vs_baseline").is_some() || r.get("mops_vs_baseline").is_some(),
                "no ratio in {r}"
            );
        }
    }
    let groups: [(&str, &[&str]); 5] = [
        (
            "basic",
            &["rpc-only", "no-bind", "1-bind", "2-bind", "2-bind+gc"],
        ),
        (
            "cycle16",
            &[
                "unprotected",
                "mw-lease",
                "two-sided",
                "mr-rereg",
                "qp-flag",
            ],
        ),
        ("extend", &["re-acquire", "one-sided", "rpc"]),
        ("recovery", &["read", "fault+recover", "next-read"]),
        ("overhead", &["unprotected", "leased"]),
    ];
    for (g, variants) in groups {
        let in_group: Vec<_> = recs.iter().filter(|r| r["group"] == g).collect();
        assert_eq!(
            in_group.iter().filter(|r| r["baseline"] == true).count(),
            1,
            "group {g} needs exactly one baseline"
        );
        for v in variants {
            let r = in_group
                .iter()
                .find(|r| r["variant"] == *v)
                .unwrap_or_else(|| panic!("no {g}/{v} in {text}"));
            assert!(r["ops"].as_u64().unwrap() > 0, "{g}/{v} measured nothing");
            assert!(r["p50_ns"].as_u64().unwrap() > 0, "{g}/{v}");
        }
    }
    // The overhead ratio is a rate ratio, present and finite.
    let leased = recs
        .iter()
        .find(|r| r["group"] == "overhead" && r["variant"] == "leased")
        .unwrap();
    let x = leased["mops_vs_baseline"].as_f64().unwrap();
    assert!(x.is_finite() && x > 0.0);
}

/// A tiny `bench ycsb --json` (2 000 records, 0.2 s per cell): a row per
/// workload and protection mode with nonzero throughput, per operation
/// type rows with latencies, the ratio to `unprotected`, and the
/// bootstrap and mortgage shapes per mode.
#[test]
fn bench_ycsb_tiny_json_has_every_workload_and_mode() {
    let (text, recs) = json_records(&[
        "bench",
        "ycsb",
        "--json",
        "--records",
        "2000",
        "--seconds",
        "0.2",
        "--rounds",
        "1",
        "--inflight",
        "8",
    ]);
    let modes = ["unprotected", "lease", "mr", "rpc"];
    let find = |wl: &str, mode: &str, op: &str| {
        recs.iter()
            .find(|r| r["workload"] == wl && r["mode"] == mode && r["op"] == op)
            .unwrap_or_else(|| panic!("no {wl} {mode} {op} row in\n{text}"))
    };
    for (wl, ops) in [
        ("ycsb-a", &["read", "update"][..]),
        ("ycsb-b", &["read", "update"][..]),
        ("ycsb-c", &["read"][..]),
        ("ycsb-d", &["read", "insert"][..]),
        ("ycsb-f", &["read", "rmw"][..]),
    ] {
        for m in modes {
            let all = find(wl, m, "all");
            assert_eq!(all["dist"], "zipfian");
            assert!(all["ops"].as_u64().unwrap() > 0, "{wl} {m}: no ops\n{text}");
            assert!(all["mops"].as_f64().unwrap() > 0.0, "{wl} {m}\n{text}");
            let vs = all["vs_unprotected"].as_f64().unwrap();
            assert!(vs > 0.0, "{wl} {m}: ratio {vs}");
            if m == "unprotected" {
                assert!((vs - 1.0).abs() < 1e-9);
            }
            for op in ops {
                let r = find(wl, m, op);
                assert!(r["ops"].as_u64().unwrap() > 0, "{wl} {m} {op}\n{text}");
                let (p50, p99) = (r["p50_ns"].as_u64().unwrap(), r["p99_ns"].as_u64().unwrap());
                assert!(p50 > 0 && p99 >= p50, "{wl} {m} {op}: {p50} {p99}");
            }
            if wl != "ycsb-d" {
                // Every key read exists (D may read a key whose insert
                // another thread has not finished: none here, one thread).
                assert_eq!(all["misses"], 0, "{wl} {m}\n{text}");
            }
        }
    }
    for shape in ["bootstrap", "mortgage"] {
        for m in modes {
            let r = find(shape, m, "handle");
            assert!(r["ops"].as_u64().unwrap() > 0, "{shape} {m}\n{text}");
        }
    }
}

#[test]
fn bench_ycsb_arguments_are_validated() {
    for args in [
        &["bench", "ycsb", "--records", "0"][..],
        &["bench", "ycsb", "--workload", "e"][..],
        &["bench", "ycsb", "--threads", "0"][..],
        &["bench", "ycsb", "--dist", "pareto"][..],
    ] {
        let out = patronus().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} must be refused");
    }
}

/// `bench ycsb --processes 2`: a memory node (`patronus serve`) and two
/// client processes (`patronus client ... ycsb`) through a memcached the
/// run starts; each client process loads half of the records, and rank 0
/// reports rows merged over both (every row says 2 processes). A read of
/// a record the other process loaded must find it: no misses outside D.
#[test]
fn bench_ycsb_across_processes_merges_both_clients() {
    let (text, recs) = json_records(&[
        "bench",
        "ycsb",
        "--json",
        "--processes",
        "2",
        "--records",
        "4000",
        "--seconds",
        "0.3",
        "--rounds",
        "1",
        "--threads",
        "2",
        "--inflight",
        "8",
        "--workload",
        "c",
        "--workload",
        "a",
        "--no-handles",
    ]);
    for wl in ["ycsb-a", "ycsb-c"] {
        for m in ["unprotected", "lease", "mr", "rpc"] {
            let all = recs
                .iter()
                .find(|r| r["workload"] == wl && r["mode"] == m && r["op"] == "all")
                .unwrap_or_else(|| panic!("no {wl} {m} row in\n{text}"));
            assert_eq!(all["processes"], 2, "{wl} {m}\n{text}");
            assert!(all["ops"].as_u64().unwrap() > 0, "{wl} {m}\n{text}");
            assert_eq!(all["misses"], 0, "{wl} {m}\n{text}");
        }
    }
    assert!(recs.iter().all(|r| r["processes"] == 2), "{text}");
}

/// Live `__inflight-node` processes (memory nodes of `bench inflight
/// --layout process`) started by the bench process `pid` (its cluster
/// names carry its pid).
fn inflight_nodes_of(pid: u32) -> Vec<u32> {
    let tag = format!("bench-inflight-{pid}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("__inflight-node") && c.contains(&tag)
            })
        })
        .collect()
}

/// `bench inflight --layout both`: the same scenarios in-process and with
/// the memory node in a child process (through a private memcached), each
/// layout's rows against its own 1-in-flight rate; the child is gone when
/// the bench returns.
#[test]
fn bench_inflight_process_layout_runs_beside_inproc_and_reaps_its_node() {
    let (pid, out) = run_with_pid(&[
        "bench",
        "inflight",
        "--layout",
        "both",
        "--only",
        "read",
        "--only",
        "cycle-0bind",
        "--only",
        "floor",
        "--depth",
        "1",
        "--depth",
        "4",
        "--seconds",
        "0.05",
        "--json",
    ]);
    let (text, recs) = records_of(out);
    for layout in ["inproc", "process"] {
        for scenario in ["read", "cycle-0bind", "floor"] {
            for depth in [1, 4] {
                let r = recs
                    .iter()
                    .find(|r| {
                        r["layout"] == layout && r["scenario"] == scenario && r["inflight"] == depth
                    })
                    .unwrap_or_else(|| panic!("no {layout} {scenario} @{depth} row:\n{text}"));
                assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
                assert!(r["vs_one"].as_f64().unwrap() > 0.0, "{r}");
            }
        }
    }
    assert_eq!(inflight_nodes_of(pid), Vec::<u32>::new());
}

/// A process layout that cannot form its cluster (an unreachable keeper)
/// fails in bounded time, and its memory node process does not outlive it.
#[test]
fn bench_inflight_process_layout_failure_is_bounded_and_reaps_its_node() {
    let t0 = std::time::Instant::now();
    let (pid, out) = run_with_pid(&[
        "bench",
        "inflight",
        "--layout",
        "process",
        "--keeper",
        "memcached://127.0.0.1:1",
        "--only",
        "read",
        "--depth",
        "1",
        "--seconds",
        "0.05",
    ]);
    assert!(!out.status.success());
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(inflight_nodes_of(pid), Vec::<u32>::new());
}

/// The memory node process of the process layout stops by itself when
/// the bench process is killed (it exits once its stdin closes).
#[test]
fn bench_inflight_memory_node_process_dies_with_its_parent() {
    let mut child = patronus()
        .args([
            "bench",
            "inflight",
            "--layout",
            "process",
            "--only",
            "read",
            "--depth",
            "1",
            "--seconds",
            "30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = std::time::Instant::now();
    while inflight_nodes_of(pid).is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no memory node process appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let t1 = std::time::Instant::now();
    while !inflight_nodes_of(pid).is_empty() {
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(10),
            "the memory node outlived its parent by 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
