//! The checked-in C header equals a fresh cbindgen generation, every
//! exported symbol of the .so is declared in it, it compiles as C11 and
//! C++17 with warnings as errors, and its constants have API.md's values.
//! Run with PATRONUS_BLESS=1 to rewrite include/patronus.h.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let cfg = cbindgen::Config::from_file(root().join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root())
        .with_config(cfg)
        .generate()
        .expect("cbindgen")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_fresh() {
    let fresh = generate();
    let path = root().join("include/patronus.h");
    if std::env::var("PATRONUS_BLESS").is_ok() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/patronus.h is stale: run `PATRONUS_BLESS=1 cargo test --test ffi_header`"
    );
}

fn cdylib() -> PathBuf {
    // target/<profile>/deps/ffi_header-xxxx -> target/<profile>/libpatronus.so
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("libpatronus.so")
}

#[test]
fn every_exported_symbol_is_declared() {
    let so = cdylib();
    assert!(
        so.exists(),
        "{} missing (cargo builds the cdylib with the tests)",
        so.display()
    );
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .unwrap();
    assert!(out.status.success());
    let header = std::fs::read_to_string(root().join("include/patronus.h")).unwrap();
    let syms: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
        .filter(|s| s.starts_with("patronus_"))
        .collect();
    assert!(syms.len() >= 8, "too few exported symbols: {syms:?}");
    for s in &syms {
        assert!(
            header.contains(&format!("{s}(")),
            "{s} exported but not in patronus.h"
        );
    }
    // The installed library's soname (libpatronus.so.0) is checked in
    // tests/install.rs; the cargo artefact has none, so that a program
    // linked with -Ltarget/<profile> finds the file cargo made.
}

/// A lib dir with libpatronus.so and its soname link (as an install lays out).
fn libdir(tmp: &Path) -> PathBuf {
    let d = tmp.join("lib");
    std::fs::create_dir_all(&d).unwrap();
    for name in ["libpatronus.so", "libpatronus.so.0"] {
        let _ = std::fs::remove_file(d.join(name));
        std::os::unix::fs::symlink(cdylib(), d.join(name)).unwrap();
    }
    d
}

fn compile(lang: &str, std: &str, src: &str, tmp: &Path) -> std::process::Output {
    let lib = libdir(tmp);
    let (cc, ext) = if lang == "c" {
        ("gcc", "c")
    } else {
        ("g++", "cpp")
    };
    let file = tmp.join(format!("t.{ext}"));
    std::fs::write(&file, src).unwrap();
    Command::new(cc)
        .arg(format!("-std={std}"))
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(&file)
        .arg("-o")
        .arg(tmp.join(format!("t-{ext}")))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpatronus")
        .output()
        .unwrap()
}

/// API.md's constants, name and value.
const API_VALUES: &[(&str, u64)] = &[
    ("PATRONUS_ACQUIRE_NO_GC", 1 << 0),
    ("PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT", 1 << 1),
    ("PATRONUS_ACQUIRE_NO_BIND_PR", 1 << 2),
    ("PATRONUS_ACQUIRE_NO_BIND_ANY", 1 << 3),
    ("PATRONUS_ACQUIRE_WITH_ALLOCATION", 1 << 4),
    ("PATRONUS_ACQUIRE_ONLY_ALLOCATION", 1 << 5),
    ("PATRONUS_ACQUIRE_USE_MR", 1 << 6),
    ("PATRONUS_ACQUIRE_NO_RPC", 1 << 7),
    ("PATRONUS_ACQUIRE_DEBUG_SERVER_DO_NOTHING", 1 << 8),
    ("PATRONUS_MODIFY_NO_RELINQUISH_UNBIND_ANY", 1 << 0),
    ("PATRONUS_MODIFY_NO_RELINQUISH_UNBIND_PR", 1 << 1),
    ("PATRONUS_MODIFY_FORCE_UNBIND", 1 << 2),
    ("PATRONUS_MODIFY_WITH_DEALLOCATION", 1 << 3),
    ("PATRONUS_MODIFY_ONLY_DEALLOCATION", 1 << 4),
    ("PATRONUS_MODIFY_SERVER_DO_NOTHING", 1 << 5),
    ("PATRONUS_MODIFY_WAIT_UNTIL_SUCCESS", 1 << 6),
    ("PATRONUS_MODIFY_USE_MR", 1 << 7),
    ("PATRONUS_MODIFY_NO_RPC", 1 << 8),
    ("PATRONUS_MODIFY_DEBUG_EXTEND_DO_NOTHING", 1 << 9),
    ("PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK", 1 << 0),
    ("PATRONUS_RW_WITH_AUTO_EXTEND", 1 << 1),
    ("PATRONUS_RW_WITH_CACHE", 1 << 2),
    ("PATRONUS_RW_USE_UNIVERSAL_RKEY", 1 << 3),
    ("PATRONUS_RW_ENABLE_TRACE", 1 << 4),
    ("PATRONUS_RW_USE_TWO_SIDED", 1 << 5),
    ("PATRONUS_RW_USE_TWO_SIDED_AUTO_PACKING", 1 << 6),
    ("PATRONUS_KV_LEASE", 0),
    ("PATRONUS_KV_RPC", 1),
    ("PATRONUS_KV_MR", 2),
    ("PATRONUS_KV_UNPROTECTED", 3),
    ("PATRONUS_KV_READ_ONLY", 0),
    ("PATRONUS_KV_READ_WRITE", 1),
    ("PATRONUS_KV_MAX_POSTED", 64),
    ("PATRONUS_KV_OP_GET", 0),
    ("PATRONUS_KV_OP_PUT", 1),
    ("PATRONUS_KV_OP_DEL", 2),
    ("PATRONUS_ABI_VERSION", 5),
    ("PATRONUS_RC_OK", 0),
    ("PATRONUS_RC_NOT_FOUND", 1),
    ("PATRONUS_RC_NO_MEM", 2),
    ("PATRONUS_RC_RETRY", 3),
    ("PATRONUS_RC_CACHE_STALE", 4),
    ("PATRONUS_RC_INVALID", 5),
    ("PATRONUS_RC_RDMA_PROTECTION_ERR", 6),
    ("PATRONUS_RC_RDMA_EXECUTION_ERR", 7),
    ("PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR", 8),
    ("PATRONUS_RC_MOCK_CRASHED", 9),
    ("PATRONUS_RC_RESERVED", 10),
    ("PATRONUS_RC_INTERNAL", 11),
    ("PATRONUS_ACQUIRE_SUCCESS", 0),
    ("PATRONUS_ACQUIRE_MAGIC_MW_ERR", 1),
    ("PATRONUS_ACQUIRE_LOCKED_ERR", 2),
    ("PATRONUS_ACQUIRE_BIND_ERR", 3),
    ("PATRONUS_ACQUIRE_REG_MR_ERR", 4),
    ("PATRONUS_ACQUIRE_ADDRESS_OUT_OF_RANGE_ERR", 5),
    ("PATRONUS_ACQUIRE_NO_MEM", 6),
    ("PATRONUS_ACQUIRE_NO_MW", 7),
    ("PATRONUS_ACQUIRE_RESERVED", 8),
    ("PATRONUS_ACQUIRE_RESERVED_NO_RETURN", 9),
];

#[test]
fn every_constant_has_the_api_value() {
    let tmp = std::env::temp_dir().join(format!("patronus-val-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut src = String::from(
        "#include <patronus.h>\n#include <stdio.h>\nint main(void) {\n  int bad = 0;\n",
    );
    for (name, v) in API_VALUES {
        src.push_str(&format!(
            "  if ((unsigned long long)({name}) != {v}ull) {{ printf(\"{name}\\n\"); bad = 1; }}\n"
        ));
    }
    src.push_str("  if (sizeof(PATRONUS_ACQUIRE_NO_GC) != 8) { printf(\"flags are not 64-bit\\n\"); bad = 1; }\n");
    src.push_str("  return bad;\n}\n");
    let out = compile("c", "c11", &src, &tmp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(tmp.join("t-c")).output().unwrap();
    assert!(
        run.status.success(),
        "wrong values: {}",
        String::from_utf8_lossy(&run.stdout)
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

const VALUES_C: &str = r#"
#include <patronus.h>
#include <stdio.h>
#include <string.h>
#define CHECK(x) do { if (!(x)) { printf("FAIL %s\n", #x); return 1; } } while (0)
int main(void) {
    CHECK(PATRONUS_RC_OK == 0); CHECK(PATRONUS_RC_NOT_FOUND == 1); CHECK(PATRONUS_RC_NO_MEM == 2);
    CHECK(PATRONUS_RC_RETRY == 3); CHECK(PATRONUS_RC_CACHE_STALE == 4); CHECK(PATRONUS_RC_INVALID == 5);
    CHECK(PATRONUS_RC_RDMA_PROTECTION_ERR == 6); CHECK(PATRONUS_RC_RDMA_EXECUTION_ERR == 7);
    CHECK(PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR == 8); CHECK(PATRONUS_RC_MOCK_CRASHED == 9);
    CHECK(PATRONUS_RC_RESERVED == 10); CHECK(PATRONUS_RC_INTERNAL == 11);
    CHECK(sizeof(patronus_gaddr_t) == 8);
    CHECK(sizeof(patronus_kv_completion_t) == 24);
    patronus_gaddr_t g = patronus_gaddr(3, 4096);
    CHECK(patronus_gaddr_node(g) == 3 && patronus_gaddr_offset(g) == 4096 && !patronus_gaddr_is_null(g));
    CHECK(g.val == ((uint64_t)3 << 48 | 4096));
    CHECK(patronus_gaddr_is_null(patronus_gaddr(7, 0)));
    CHECK(patronus_last_error() == NULL);
    patronus_gaddr_t bad = patronus_gaddr(1, (uint64_t)1 << 48);
    CHECK(patronus_gaddr_is_null(bad));
    CHECK(patronus_last_error() != NULL && strstr(patronus_last_error(), "48 bits") != NULL);
    CHECK(patronus_gaddr_node(bad) == 0); /* pure helpers keep it */
    CHECK(patronus_last_error() != NULL);
    patronus_clear_last_error();
    CHECK(patronus_last_error() == NULL);
    bad = patronus_gaddr(1, (uint64_t)1 << 48);
    CHECK(patronus_last_error() != NULL);
    g = patronus_gaddr(1, 8); /* a successful call clears it */
    CHECK(patronus_last_error() == NULL);
    CHECK(strcmp(patronus_rc_str(PATRONUS_RC_RDMA_PROTECTION_ERR), "RDMA protection error") == 0);
    CHECK(strcmp(patronus_rc_str(99), "unknown return code") == 0);
    CHECK(strcmp(patronus_rc_str(-1), "unknown return code") == 0);
    CHECK(patronus_abi_version() == 5);
    printf("ok\n");
    return 0;
}
"#;

#[test]
fn header_compiles_and_values_match() {
    let tmp = std::env::temp_dir().join(format!("patronus-hdr-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for (lang, std) in [("c", "c11"), ("cpp", "c++17")] {
        let out = compile(lang, std, VALUES_C, &tmp);
        assert!(
            out.status.success(),
            "{lang}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ext = if lang == "c" { "c" } else { "cpp" };
        let run = Command::new(tmp.join(format!("t-{ext}"))).output().unwrap();
        assert!(
            run.status.success(),
            "{lang}: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn cpp_header_alone_and_two_translation_units() {
    let tmp = std::env::temp_dir().join(format!("patronus-cpp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let lib = libdir(&tmp);
    let inc = [
        format!("-I{}", root().join("include").display()),
        format!("-I{}", root().join("bindings/cpp").display()),
    ];
    // The header compiles on its own.
    std::fs::write(tmp.join("alone.cpp"), "#include <patronus.hpp>\n").unwrap();
    let out = Command::new("g++")
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
        ])
        .args(&inc)
        .arg(tmp.join("alone.cpp"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = tmp.join("types");
    let out = Command::new("g++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
        .args(&inc)
        .arg(root().join("tests/cpp/types_a.cpp"))
        .arg(root().join("tests/cpp/types_b.cpp"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lpatronus")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success(), "exit {:?}", run.status.code());
    let _ = std::fs::remove_dir_all(&tmp);
}
