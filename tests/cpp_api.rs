//! The header-only C++ shim (bindings/cpp/patronus.hpp) against the real
//! libpatronus.so: tests/cpp/test_patronus.cpp built with
//! `-std=c++17 -Wall -Wextra -Werror -pedantic` and run; the header also
//! compiles as C++20 and without Boost; tests/cpp/test_coro.cpp runs the
//! original's coroutine model (Boost.Coroutine master + 16 workers).

mod common;

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn libdir() -> PathBuf {
    common::linked_libdir("cpp-api")
}

fn build(std: &str, out: &str) -> PathBuf {
    build_src(std, "tests/cpp/test_patronus.cpp", out, &[])
}

fn build_src(std: &str, src: &str, out: &str, libs: &[&str]) -> PathBuf {
    let lib = libdir();
    let exe = lib.join(out);
    let o = Command::new("g++")
        .arg(format!("-std={std}"))
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
            "-pthread",
        ])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-I{}", root().join("bindings/cpp").display()))
        .arg(root().join(src))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpatronus")
        .args(libs)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "g++ -std={std}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    exe
}

/// Runs `exe` (library logs at warn); its stdout, once it exited 0.
fn run_ok(exe: &std::path::Path) -> String {
    let o = Command::new(exe)
        .env("PATRONUS_LOG", "warn")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn cpp_class_api_in_the_original_style() {
    let exe = build("c++17", "test_patronus");
    let out = run_ok(&exe);
    assert!(
        out.contains("read outside the lease: RDMA protection error"),
        "{out}"
    );
    assert!(out.contains("test_patronus: ok"));
}

#[test]
fn cpp_header_compiles_as_cpp20() {
    build("c++20", "test_patronus20");
}

#[test]
fn cpp_coroutines_in_the_original_style_overlap_calls() {
    let exe = build_src(
        "c++17",
        "tests/cpp/test_coro.cpp",
        "test_coro",
        &["-lboost_coroutine", "-lboost_context"],
    );
    let out = run_ok(&exe);
    eprintln!("{out}");
    assert!(out.contains("test_coro: ok"), "{out}");
}

#[test]
fn cpp_header_compiles_without_boost() {
    let o = Command::new("g++")
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
        ])
        .arg("-DPATRONUS_NO_BOOST")
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-I{}", root().join("bindings/cpp").display()))
        .arg(root().join("tests/cpp/test_patronus.cpp"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The first C++ program of bindings/cpp/README.md, compiled and run as it
/// stands there: a newcomer's copy of it must work.
#[test]
fn the_readme_program_runs() {
    let readme = std::fs::read_to_string(root().join("bindings/cpp/README.md")).unwrap();
    let start = readme.find("```cpp\n").expect("a ```cpp block") + 7;
    let len = readme[start..].find("```").unwrap();
    let src = libdir().join("readme_quickstart.cpp");
    std::fs::write(&src, &readme[start..start + len]).unwrap();
    let exe = build_src("c++17", src.to_str().unwrap(), "readme_quickstart", &[]);
    let out = run_ok(&exe);
    assert!(out.contains("read: hello, remote memory (ok)"), "{out}");
    assert!(
        out.contains("outside the lease: RDMA protection error"),
        "{out}"
    );
}
