//! The fuzz targets' smoke run on stable (no nightly, no cargo-fuzz): every
//! target body from `patronus::fuzzing` over every file of its corpus in
//! `fuzz/corpus/<target>/`, then a few thousand seeded random mutations of
//! those files. The bodies assert no panic and round-trip equality where
//! it applies.
//!
//! Regenerate the corpus (after a wire format changes):
//! `PATRONUS_WRITE_CORPUS=1 cargo test --test fuzz_corpus -- --ignored write_corpus`

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use patronus::fuzzing::{self, Target, TARGETS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mutations per target.
const MUTATIONS: usize = 3000;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("corpus entry").path();
            let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), b)
        })
        .collect();
    v.sort();
    v
}

/// Runs `f` on `input`; on a panic, names the target and the input (hex)
/// so the failure can be replayed.
fn run(name: &str, f: Target, what: &str, input: &[u8]) {
    if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(input))) {
        eprintln!(
            "target {name} failed on {what}: input {}",
            hex::encode(input)
        );
        std::panic::resume_unwind(e);
    }
}

/// A stable file name for a corpus input (FNV-1a 64 of its bytes).
fn file_name(b: &[u8]) -> String {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("seed-{h:016x}")
}

fn all_targets() -> impl Iterator<Item = (&'static str, Target)> {
    TARGETS.iter().copied()
}

#[test]
#[ignore = "writes fuzz/corpus; run with PATRONUS_WRITE_CORPUS=1"]
fn write_corpus() {
    assert!(
        std::env::var_os("PATRONUS_WRITE_CORPUS").is_some(),
        "set PATRONUS_WRITE_CORPUS=1 to rewrite fuzz/corpus"
    );
    for (name, _) in all_targets() {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for s in fuzzing::seeds(name) {
            std::fs::write(dir.join(file_name(&s)), &s).expect("write seed");
        }
    }
}

#[test]
fn every_target_has_a_corpus_holding_its_seeds() {
    let mut total = 0;
    for (name, _) in all_targets() {
        let files = corpus(name);
        let seeds = fuzzing::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for s in &seeds {
            assert!(
                files.iter().any(|(_, b)| b == s),
                "{name}: seed {} is missing from fuzz/corpus (a format changed? \
                 regenerate: PATRONUS_WRITE_CORPUS=1 cargo test --test fuzz_corpus -- \
                 --ignored write_corpus)",
                hex::encode(s)
            );
        }
        total += files.iter().map(|(_, b)| b.len()).sum::<usize>();
    }
    assert!(total < 200 << 10, "corpus is {total} bytes");
}

/// The seeds are what the brief says they are: valid encodings that the
/// decoders accept (so the corpus starts the fuzzer inside the formats).
#[test]
fn seeds_are_accepted_encodings() {
    use patronus::fabric::soft::auth;
    use patronus::fabric::QpEndpoint;
    use patronus::lease::NodeMemory;
    for s in fuzzing::seeds("lease_msg") {
        patronus::lease::msg::decode(&s).expect("lease_msg seed decodes");
    }
    let hellos = fuzzing::seeds("tcp_hello");
    let h: [u8; auth::HELLO_LEN] = hellos[0][..].try_into().unwrap();
    assert!(auth::Hello::decode(&h).is_ok());
    for m in &hellos[2..] {
        let m: [u8; auth::MSG_LEN] = m[..].try_into().unwrap();
        assert!(auth::parse_msg(&m).is_ok());
    }
    for s in fuzzing::seeds("endpoint") {
        assert!(
            QpEndpoint::decode(&s).is_ok() || QpEndpoint::decode_list(&s).is_ok() || s[0] == b's'
        );
    }
    for s in fuzzing::seeds("node_memory") {
        assert!(NodeMemory::decode(std::str::from_utf8(&s).unwrap()).is_some());
    }
}

#[test]
fn corpus_files_run_clean() {
    for (name, f) in all_targets() {
        for (path, b) in corpus(name) {
            run(name, f, &path, &b);
        }
    }
}

fn mutate(rng: &mut StdRng, pool: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = pool[rng.gen_range(0..pool.len())].1.clone();
    for _ in 0..rng.gen_range(1..=4) {
        let len = b.len();
        match rng.gen_range(0..7) {
            0 if len > 0 => b[rng.gen_range(0..len)] ^= 1 << rng.gen_range(0..8),
            1 if len > 0 => b[rng.gen_range(0..len)] = rng.gen(),
            2 if len > 0 => {
                b[rng.gen_range(0..len)] = [0u8, 0x7f, 0x80, 0xff][rng.gen_range(0..4)];
            }
            3 => b.insert(rng.gen_range(0..=len), rng.gen()),
            4 if len > 0 => {
                b.remove(rng.gen_range(0..len));
            }
            5 => b.truncate(rng.gen_range(0..=len)),
            _ => {
                // Splice a piece of another input in.
                let o = &pool[rng.gen_range(0..pool.len())].1;
                if !o.is_empty() {
                    let s = rng.gen_range(0..o.len());
                    let e = rng.gen_range(s..=o.len());
                    let at = rng.gen_range(0..=len);
                    b.splice(at..at, o[s..e].iter().copied());
                }
            }
        }
    }
    b
}

#[test]
fn seeded_mutations_run_clean() {
    for (name, f) in TARGETS {
        let pool = corpus(name);
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 ^ name.len() as u64);
        for i in 0..MUTATIONS {
            let b = mutate(&mut rng, &pool);
            run(name, *f, &format!("mutation {i}"), &b);
        }
    }
}

/// Finding F1, the crash libFuzzer found in `clock_estimate` after about
/// 1.15 M runs (artifact crash-5c23f68a..., as found): a live ClockInfo
/// whose `ns` is near i64::MIN overflows `SyncSample::estimate`
/// (time/sync.rs, `parent_ns - mid`): a panic in debug builds, a wrapped
/// offset in release. Fixed: the estimate rejects such samples.
#[test]
fn regression_clock_estimate_overflow() {
    let crash = hex::decode(
        "000000000800ff89ffffffffffffffffffff00000000000032321010ddccbbaa\
         0000000800ff89ffffffffffffffffffff00000000000032321010ddccbbaa",
    )
    .unwrap();
    fuzzing::clock_estimate(&crash);
}
