//! The header-only C++ shim (bindings/cpp/patronus.hpp) against the real
//! libpatronus.so: tests/cpp/test_patronus.cpp built with
//! `-std=c++17 -Wall -Wextra -Werror -pedantic` and run; the header also
//! compiles as C++20.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn libdir() -> PathBuf {
    // Tests of this file run on parallel threads: the directory of symlinks
    // is made once.
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let so = dir.join("libpatronus.so");
        assert!(
            so.exists(),
            "{} is missing: run `cargo build` first",
            so.display()
        );
        let d = std::env::temp_dir().join(format!("patronus-cpp-api-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for name in ["libpatronus.so", "libpatronus.so.0"] {
            let _ = std::fs::remove_file(d.join(name));
            std::os::unix::fs::symlink(&so, d.join(name)).unwrap();
        }
        d
    })
    .clone()
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
