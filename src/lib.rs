//! Patronus-rs: protected remote memory with leases.
//!
//! Layers (see DESIGN.md): `fabric` (verbs-shaped RDMA contract, soft and verbs
//! backends) at the bottom; `time` and `lease` (pure data); `server`, `client`,
//! `cluster`; `node` ties them together; `ffi` exports the C ABI.
//!
//! `unsafe` is allowed only in `fabric` (raw memory, shm, verbs) and `ffi`.

#![deny(unsafe_code)]

/// cbindgen:ignore
pub mod app;
/// cbindgen:ignore
pub mod bench;
/// cbindgen:ignore
pub mod client;
/// cbindgen:ignore
pub mod cluster;
/// cbindgen:ignore
pub mod config;
/// cbindgen:ignore
pub mod demo;
/// cbindgen:ignore
pub mod error;
/// cbindgen:ignore
#[allow(unsafe_code)]
pub mod fabric;
#[allow(unsafe_code)]
pub mod ffi;
/// cbindgen:ignore
pub mod fuzzing;
/// cbindgen:ignore
pub mod kv;
/// cbindgen:ignore
pub mod lease;
/// cbindgen:ignore
pub mod node;
/// cbindgen:ignore
pub mod server;
/// cbindgen:ignore
pub mod time;

pub use error::{Error, Result};
