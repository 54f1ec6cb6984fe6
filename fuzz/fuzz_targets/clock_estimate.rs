#![no_main]
//! libFuzzer target: see `patronus::fuzzing::clock_estimate`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::clock_estimate(data));
