#![no_main]
//! libFuzzer target: see `patronus::fuzzing::node_memory`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| patronus::fuzzing::node_memory(data));
