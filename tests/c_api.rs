//! The C API from C: tests/c/*.c and examples-c/*.c built with
//! `-Wall -Wextra -Werror` against the freshly built libpatronus.so, run as
//! real processes (one multi-process run through a real memcached), and
//! test_api.c once more under AddressSanitizer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{unique, Memcached};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn libdir() -> PathBuf {
    common::linked_libdir("c-api")
}

fn build(src: &Path, out_name: &str, extra: &[&str]) -> PathBuf {
    let lib = libdir();
    let out = lib.join(out_name);
    let o = Command::new("gcc")
        .args([
            "-std=c11",
            "-D_DEFAULT_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-g",
        ])
        .args(extra)
        .arg(format!("-I{}", root().join("include").display()))
        .arg(src)
        .arg("-o")
        .arg(&out)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lpatronus", "-pthread"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn run(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = Command::new(exe);
    c.args(args).env("PATRONUS_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{} failed ({:?}):\nstdout:\n{out}\nstderr:\n{}",
        exe.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn test_api_c() {
    let exe = build(&root().join("tests/c/test_api.c"), "test_api", &[]);
    assert!(run(&exe, &[], &[]).contains("test_api: ok"));
}

#[test]
fn test_boundary_c() {
    let exe = build(
        &root().join("tests/c/test_boundary.c"),
        "test_boundary",
        &[],
    );
    assert!(run(&exe, &[], &[]).contains("test_boundary: ok"));
}

#[test]
fn test_posted_c_under_address_sanitizer() {
    let exe = build(
        &root().join("tests/c/test_posted.c"),
        "test_posted_asan",
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    let out = run(
        &exe,
        &[],
        &[("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")],
    );
    assert!(out.contains("test_posted: ok"));
}

#[test]
fn test_kv_c() {
    let exe = build(&root().join("tests/c/test_kv.c"), "test_kv", &[]);
    assert!(run(&exe, &[], &[]).contains("test_kv: ok"));
}

#[test]
fn test_kv_c_under_address_sanitizer() {
    let exe = build(
        &root().join("tests/c/test_kv.c"),
        "test_kv_asan",
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    let out = run(
        &exe,
        &[],
        &[("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")],
    );
    assert!(out.contains("test_kv: ok"));
}

#[test]
fn test_api_c_under_address_sanitizer() {
    let exe = build(
        &root().join("tests/c/test_api.c"),
        "test_api_asan",
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    // The Rust library is not instrumented; ASan checks the C side (every
    // buffer we read or write on its behalf lies in C-owned memory).
    let out = run(
        &exe,
        &[],
        &[("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")],
    );
    assert!(out.contains("test_api: ok"));
}

#[test]
fn examples_quickstart_kv_and_inflight() {
    let q = build(&root().join("examples-c/quickstart.c"), "quickstart", &[]);
    let out = run(&q, &[], &[]);
    assert!(
        out.contains("read outside the lease: RDMA protection error"),
        "{out}"
    );
    assert!(out.contains("quickstart: ok"));
    let kv = build(&root().join("examples-c/kv.c"), "kv", &[]);
    let out = run(&kv, &["3", "150"], &[]);
    assert!(
        out.contains("450 of 450 keys read back, absent key absent"),
        "{out}"
    );
    // Posted READs from C: 32 in flight, every one byte-exact.
    let inf = build(&root().join("examples-c/inflight.c"), "inflight", &[]);
    let out = run(&inf, &["32", "0.3"], &[]);
    assert!(
        out.contains("32 READs of 64 B in flight") && out.contains("all byte-exact"),
        "{out}"
    );
    assert!(out.contains("inflight: ok"), "{out}");
}

#[test]
fn multi_process_c_cluster_through_memcached() {
    let mc = Memcached::start();
    let exe = build(&root().join("tests/c/test_mp.c"), "test_mp", &[]);
    let cluster = unique("c-mp");
    let spawn = |role: &str, ops: &str| {
        Command::new(&exe)
            .args([role, &mc.url, &cluster, "3", ops])
            .env("PATRONUS_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let s = spawn("server", "0");
    let a = spawn("client", "5000");
    let b = spawn("client", "5000");
    let t0 = std::time::Instant::now();
    let mut outs = vec![];
    for mut ch in [a, b, s] {
        loop {
            if let Some(st) = ch.try_wait().unwrap() {
                let mut o = String::new();
                use std::io::Read;
                ch.stdout.take().unwrap().read_to_string(&mut o).unwrap();
                assert!(st.success(), "{o}");
                outs.push(o);
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = ch.kill();
                panic!("C cluster did not finish in 60 s: {outs:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(outs[0].contains("total=10000 rc=0"), "{outs:?}");
    assert!(outs[1].contains("total=10000 rc=0"), "{outs:?}");
    assert!(outs[2].contains("served=1"), "{outs:?}");
}
