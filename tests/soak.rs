//! `patronus bench soak`: a short clean run through memcached with client
//! processes passes (every outcome expected, RSS and fds flat, the memory
//! node drained to 0 live leases), and each check it makes catches the
//! fault injected for it (a leak, an fd leak, a protection fault). The
//! two-minute run is `scripts/test.sh`'s soak phase; `PATRONUS_SOAK_SECONDS`
//! lengthens the clean run here.

mod common;

use std::process::Command;

fn soak(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patronus"))
        .args(["bench", "soak", "--json"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "summary")
        .unwrap_or_else(|| {
            panic!(
                "no summary line:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(
        out.status.success(),
        summary["pass"] == true,
        "exit status and verdict disagree: {summary}"
    );
    (out.status.success(), summary, text)
}

#[test]
fn a_soak_through_memcached_with_client_processes_passes() {
    let mc = common::Memcached::start();
    let secs: u64 = std::env::var("PATRONUS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let interval = (secs as f64 / 6.0).max(1.0).to_string();
    let (ok, s, text) = soak(&[
        "--seconds",
        &secs.to_string(),
        "--interval-s",
        &interval,
        "--processes",
        "2",
        "--threads",
        "2",
        "--keeper",
        &mc.url,
    ]);
    assert!(ok, "{s}\n{text}");
    assert_eq!(s["unexpected"], 0, "{s}");
    // Every kind of work happened, in every process.
    for k in ["acquires", "expiries", "extensions"] {
        assert!(s[k].as_u64().unwrap() > 0, "no {k}: {s}");
    }
    let procs: Vec<&str> = s["rss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(procs, ["client-0", "client-1", "memory"], "{s}");
    assert_eq!(s["final_live_leases"], serde_json::json!([0]), "{s}");
    assert_eq!(s["final_gc_queued"], serde_json::json!([0]), "{s}");
}

/// Each injected fault fails the run with the check that names it; the
/// runs are in-process (no memcached) and short, side by side.
#[test]
fn every_soak_check_catches_its_injected_fault() {
    let cases = [
        ("leak", "private RSS grew"),
        ("fd", "open fds grew"),
        ("error", "unexpected outcomes"),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|&(what, _)| {
            std::thread::spawn(move || {
                soak(&[
                    "--seconds",
                    "6",
                    "--interval-s",
                    "1",
                    "--processes",
                    "0",
                    "--threads",
                    "1",
                    "--inject",
                    what,
                ])
            })
        })
        .collect();
    for (h, (what, says)) in runs.into_iter().zip(cases) {
        let (ok, s, text) = h.join().unwrap();
        assert!(!ok, "--inject {what} passed:\n{text}");
        let failures = s["failures"].to_string();
        assert!(
            failures.contains(says),
            "--inject {what}: failures do not say {says:?}: {failures}"
        );
        if what == "error" {
            assert!(
                failures.contains("RdmaProtectionErr"),
                "the injected out-of-lease read must be what failed: {failures}"
            );
        } else {
            assert_eq!(s["unexpected"], 0, "--inject {what}: {s}");
        }
    }
}
