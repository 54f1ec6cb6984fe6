#![no_main]
//! libFuzzer target: see `patronus::fuzzing::lease_msg`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::lease_msg(data));
