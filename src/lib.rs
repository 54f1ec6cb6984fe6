//! Patronus-rs: protected remote memory with leases.
//!
//! Layers (see DESIGN.md): `fabric` (verbs-shaped RDMA contract, soft and verbs
//! backends) at the bottom; `time` and `lease` (pure data); `server`, `client`,
//! `cluster`; `node` ties them together; `ffi` exports the C ABI.

pub mod bench;
pub mod demo;
pub mod error;
pub mod fabric;
pub mod lease;

pub use error::{Error, Result};
