//! The README's C recipes: a program linked against the cargo profile dir
//! runs with LD_LIBRARY_PATH; scripts/install.sh lays out a tree that C
//! consumers build against with pkg-config (shared, run without
//! LD_LIBRARY_PATH; and static) and with CMake's find_package(Patronus).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>, where cargo puts libpatronus.so and .rlib.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh scratch dir for one test.
fn scratch(tag: &str) -> PathBuf {
    let tmp = std::env::temp_dir().join(format!("patronus-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    tmp
}

/// Runs scripts/install.sh on this profile's build into `prefix`.
fn install(prefix: &Path) {
    ok(Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .args(["--no-build", "--prefix"])
        .arg(prefix)
        .arg("--from")
        .arg(profile_dir()));
}

/// `readelf -d` of a binary.
fn dynamic_section(f: &Path) -> String {
    ok(Command::new("readelf").arg("-d").arg(f))
}

/// A program that runs with nothing from the environment pointing at the
/// library (cargo test sets LD_LIBRARY_PATH to target dirs).
fn run_clean(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.env_remove("LD_LIBRARY_PATH");
    c
}

/// README: `cc prog.c -Iinclude -Ltarget/release -lpatronus`, then
/// `LD_LIBRARY_PATH=target/release ./a.out`.
#[test]
fn c_program_links_against_the_cargo_profile_dir() {
    let tmp = scratch("link-target");
    let exe = tmp.join("version");
    ok(Command::new("cc")
        .current_dir(root())
        .args(["examples-c/version.c", "-Iinclude"])
        .arg(format!("-L{}", profile_dir().display()))
        .arg("-lpatronus")
        .arg("-o")
        .arg(&exe));
    let out = ok(run_clean(&exe).env("LD_LIBRARY_PATH", profile_dir()));
    assert!(out.contains("patronus ABI 5: ok"), "{out}");
    // What the loader looks for is a file cargo made.
    let d = dynamic_section(&exe);
    assert!(d.contains("[libpatronus.so]"), "{d}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn installed_tree_builds_with_pkg_config_and_cmake() {
    let tmp = scratch("install");
    let prefix = tmp.join("prefix");
    install(&prefix);
    for f in [
        "include/patronus.h",
        "lib/libpatronus.so",
        "lib/libpatronus.so.0",
        "lib/libpatronus.so.0.1.0",
        "lib/libpatronus.a",
        "lib/pkgconfig/patronus.pc",
        "lib/cmake/Patronus/PatronusConfig.cmake",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    // The soname binds consumers to the ABI major version.
    let d = dynamic_section(&prefix.join("lib/libpatronus.so.0.1.0"));
    assert!(d.contains("Library soname: [libpatronus.so.0]"), "{d}");
    // pkg-config build, no rpath flag of our own: the .pc carries it.
    let flags = ok(Command::new("pkg-config")
        .args(["--cflags", "--libs", "patronus"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    let exe = tmp.join("version-pc");
    ok(Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(root().join("examples-c/version.c"))
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace()));
    assert!(ok(&mut run_clean(&exe)).contains("patronus ABI 5: ok"));
    let d = dynamic_section(&exe);
    assert!(d.contains("[libpatronus.so.0]"), "{d}");
    // The examples' Makefile (pkg-config), out of tree.
    let mk = tmp.join("make");
    std::fs::create_dir_all(&mk).unwrap();
    for f in [
        "Makefile",
        "version.c",
        "quickstart.c",
        "kv.c",
        "inflight.c",
    ] {
        std::fs::copy(root().join("examples-c").join(f), mk.join(f)).unwrap();
    }
    ok(Command::new("make")
        .arg("-C")
        .arg(&mk)
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    assert!(ok(&mut run_clean(&mk.join("quickstart"))).contains("quickstart: ok"));
    // CMake build (CMake sets the build rpath of an imported target itself).
    let build = tmp.join("cmake-build");
    ok(Command::new("cmake")
        .arg("-S")
        .arg(root().join("examples-c"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    ok(Command::new("cmake").arg("--build").arg(&build));
    assert!(ok(&mut run_clean(&build.join("version"))).contains("patronus ABI 5: ok"));
    assert!(ok(&mut run_clean(&build.join("quickstart"))).contains("quickstart: ok"));
    assert!(ok(run_clean(&build.join("kv")).args(["2", "50"])).contains("100 of 100 keys"));
    assert!(ok(run_clean(&build.join("inflight")).args(["8", "0.2"])).contains("inflight: ok"));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `cc -static prog.c $(pkg-config --static --cflags --libs patronus)`.
#[test]
fn static_link_through_pkg_config() {
    let tmp = scratch("static");
    let prefix = tmp.join("prefix");
    install(&prefix);
    let pc = std::fs::read_to_string(prefix.join("lib/pkgconfig/patronus.pc")).unwrap();
    assert!(
        pc.contains("Libs.private: -l"),
        "Libs.private missing: {pc}"
    );
    let flags = ok(Command::new("pkg-config")
        .args(["--static", "--cflags", "--libs", "patronus"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    for prog in ["version", "quickstart"] {
        let exe = tmp.join(prog);
        ok(Command::new("gcc")
            .args(["-static", "-std=c11", "-Wall", "-Wextra", "-Werror"])
            .arg(root().join(format!("examples-c/{prog}.c")))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace()));
        let d = dynamic_section(&exe);
        assert!(!d.contains("NEEDED"), "{prog} is not static: {d}");
        let out = ok(&mut run_clean(&exe));
        assert!(out.contains(": ok"), "{prog}: {out}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
