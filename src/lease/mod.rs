//! Lease-layer data: messages, flags, protection regions (pure data, safe Rust).

pub mod msg;
