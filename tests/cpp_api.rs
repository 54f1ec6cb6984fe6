//! The header-only C++ shim (bindings/cpp/patronus.hpp) against the real
//! libpatronus.so: tests/cpp/test_patronus.cpp built with
//! `-std=c++17 -Wall -Wextra -Werror -pedantic` and run; the header also
//! compiles as C++20.

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
        .arg(root().join("tests/cpp/test_patronus.cpp"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpatronus")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "g++ -std={std}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    exe
}

#[test]
fn cpp_class_api_in_the_original_style() {
    let exe = build("c++17", "test_patronus");
    let o = Command::new(&exe)
        .env("PATRONUS_LOG", "warn")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
