//! The lease layer's pure data: flags and codes, the RPC wire format.

pub mod flags;
pub mod msg;

pub use flags::{AcquireStatus, Rc};
