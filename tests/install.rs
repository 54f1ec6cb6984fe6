//! scripts/install.sh lays out a tree that C consumers build against with
//! pkg-config and with CMake's find_package(Patronus), and the result runs.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

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

#[test]
fn installed_tree_builds_with_pkg_config_and_cmake() {
    let tmp = std::env::temp_dir().join(format!("patronus-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let prefix = tmp.join("prefix");
    ok(Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .args(["--no-build", "--prefix"])
        .arg(&prefix)
        .arg("--from")
        .arg(profile_dir()));
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
    let pc = std::fs::read_to_string(prefix.join("lib/pkgconfig/patronus.pc")).unwrap();
    assert!(
        pc.contains("Libs.private: -l"),
        "Libs.private missing: {pc}"
    );
    // pkg-config build.
    let flags = ok(Command::new("pkg-config")
        .args(["--cflags", "--libs", "patronus"])
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    let exe = tmp.join("version-pc");
    let mut cc = Command::new("gcc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(root().join("examples-c/version.c"))
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    ok(&mut cc);
    assert!(ok(&mut Command::new(&exe)).contains("patronus ABI 3: ok"));
    // The examples' Makefile (pkg-config), out of tree.
    let mk = tmp.join("make");
    std::fs::create_dir_all(&mk).unwrap();
    for f in ["Makefile", "version.c", "quickstart.c", "kv.c"] {
        std::fs::copy(root().join("examples-c").join(f), mk.join(f)).unwrap();
    }
    ok(Command::new("make")
        .arg("-C")
        .arg(&mk)
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    assert!(ok(&mut Command::new(mk.join("quickstart"))).contains("quickstart: ok"));
    // CMake build.
    let build = tmp.join("cmake-build");
    ok(Command::new("cmake")
        .arg("-S")
        .arg(root().join("examples-c"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg("-DCMAKE_BUILD_RPATH=".to_string() + &prefix.join("lib").display().to_string()));
    ok(Command::new("cmake").arg("--build").arg(&build));
    assert!(ok(&mut Command::new(build.join("version"))).contains("patronus ABI 3: ok"));
    assert!(ok(&mut Command::new(build.join("quickstart"))).contains("quickstart: ok"));
    assert!(ok(Command::new(build.join("kv")).args(["2", "50"])).contains("100 of 100 keys"));
    let _ = std::fs::remove_dir_all(&tmp);
}
