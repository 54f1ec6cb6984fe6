#![no_main]
//! libFuzzer target: see `patronus::fuzzing::endpoint`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::endpoint(data));
