//! Per-client limits of a directory and the ledger of who allocated what.
//!
//! A client is a client thread (its connection, the directory's peer
//! index); a client node is the process that owns `client_threads`
//! consecutive peers. Limits apply per directory, so one flooding client
//! cannot take the windows, protection regions or allocation bytes that the
//! others need. Allocations belong to the client node that made them (its
//! threads may free each other's blocks: they are one process); no other
//! node can free them.

use std::collections::HashMap;

use super::addr::BufOff;

/// Limits per client, per directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Client threads per node (peers `node * threads ..`).
    pub threads_per_node: u16,
    /// Live leases one client thread may hold.
    pub leases_per_thread: u32,
    /// Live leases one client node may hold.
    pub leases_per_node: u32,
    /// Bytes one client node may hold allocated.
    pub alloc_bytes_per_node: u64,
}

impl Quotas {
    /// The node of peer `peer`.
    pub fn node_of(&self, peer: usize) -> u16 {
        (peer / self.threads_per_node.max(1) as usize) as u16
    }
    /// The peers of node `node`.
    pub fn peers_of(&self, node: u16) -> std::ops::Range<usize> {
        let t = self.threads_per_node.max(1) as usize;
        node as usize * t..(node as usize + 1) * t
    }
}

/// Which client node owns each live allocated block, and how many bytes
/// each node holds.
#[derive(Debug, Default)]
pub struct AllocLedger {
    owners: HashMap<(u64, BufOff), (u16, u64)>,
    bytes: HashMap<u16, u64>,
}

impl AllocLedger {
    /// True when `node` may allocate `size` more bytes under `q`.
    pub fn admits(&self, q: &Quotas, node: u16, size: u64) -> bool {
        let held = self.bytes.get(&node).copied().unwrap_or(0);
        held.checked_add(size)
            .is_some_and(|t| t <= q.alloc_bytes_per_node)
    }
    /// Records block `(hint, off)` of `size` bytes as `node`'s.
    pub fn record(&mut self, node: u16, hint: u64, off: BufOff, size: u64) {
        self.owners.insert((hint, off), (node, size));
        *self.bytes.entry(node).or_default() += size;
    }
    /// Forgets block `(hint, off)` if `node` owns it with `size` bytes;
    /// false (and nothing changes) otherwise.
    pub fn release(&mut self, node: u16, hint: u64, off: BufOff, size: u64) -> bool {
        match self.owners.get(&(hint, off)) {
            Some(&(owner, s)) if owner == node && s == size => {
                self.owners.remove(&(hint, off));
                if let Some(b) = self.bytes.get_mut(&node) {
                    *b = b.saturating_sub(size);
                }
                true
            }
            _ => false,
        }
    }
    /// Bytes `node` holds.
    pub fn held(&self, node: u16) -> u64 {
        self.bytes.get(&node).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Quotas {
        Quotas {
            threads_per_node: 4,
            leases_per_thread: 2,
            leases_per_node: 3,
            alloc_bytes_per_node: 100,
        }
    }

    #[test]
    fn peers_map_to_their_node() {
        let q = q();
        assert_eq!(q.node_of(0), 0);
        assert_eq!(q.node_of(7), 1);
        assert_eq!(q.peers_of(2), 8..12);
    }

    #[test]
    fn only_the_owner_node_frees_and_bytes_are_bounded() {
        let q = q();
        let mut l = AllocLedger::default();
        assert!(l.admits(&q, 1, 100));
        l.record(1, 0, BufOff(64), 60);
        assert!(!l.admits(&q, 1, 41), "past the node's quota");
        assert!(l.admits(&q, 2, 100), "other nodes are unaffected");
        assert!(
            !l.release(2, 0, BufOff(64), 60),
            "a foreign node cannot free it"
        );
        assert!(!l.release(1, 0, BufOff(64), 61), "wrong size");
        assert!(!l.release(1, 5, BufOff(64), 60), "wrong allocator");
        assert_eq!(l.held(1), 60);
        assert!(l.release(1, 0, BufOff(64), 60));
        assert!(!l.release(1, 0, BufOff(64), 60), "freed once");
        assert_eq!(l.held(1), 0);
        assert!(!l.admits(&q, 3, u64::MAX), "no overflow");
    }
}
