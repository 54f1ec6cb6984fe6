#![no_main]
//! libFuzzer target: see `patronus::fuzzing::shm_ring`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::shm_ring(data));
