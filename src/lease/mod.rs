//! The lease layer's sans-IO core, in the manner of rustls and quinn-proto:
//! state and decisions that do no I/O and are unit-tested without a fabric.
//! `src/client` and `src/server` are the drivers that move bytes through the
//! fabric and feed these.
//!
//! - [`addr`]: the memory node's layout, region vs buffer offsets, GlobalAddress;
//! - [`pr`]: the protection region's layout, its word and the term arithmetic;
//! - [`client`] and [`cache`]: the client's view of a lease and its cache;
//! - [`table`]: the memory node's lease table, conflict locks and GC decision;
//! - [`quota`]: per-client limits and the ledger of allocation owners;
//! - [`flags`]: flags, return codes and statuses with the original's values;
//! - [`msg`]: the RPC wire format.

pub mod addr;
pub mod cache;
pub mod client;
pub mod flags;
pub mod msg;
pub mod pr;
pub mod quota;
pub mod table;

pub use addr::{BufOff, GlobalAddress, Layout, NodeMemory, RegionOff, TIME_AREA};
pub use client::Lease;
pub use flags::{AcquireStatus, Rc};
