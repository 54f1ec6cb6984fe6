//! Access rights, protection domains, memory windows and rkey tags.

/// Access rights of MRs, MWs and QPs. Bit values equal `ibv_access_flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access(pub u32);

impl Access {
    /// No rights.
    pub const NONE: Access = Access(0);
    /// IBV_ACCESS_LOCAL_WRITE.
    pub const LOCAL_WRITE: Access = Access(1);
    /// IBV_ACCESS_REMOTE_WRITE.
    pub const REMOTE_WRITE: Access = Access(1 << 1);
    /// IBV_ACCESS_REMOTE_READ.
    pub const REMOTE_READ: Access = Access(1 << 2);
    /// IBV_ACCESS_REMOTE_ATOMIC.
    pub const REMOTE_ATOMIC: Access = Access(1 << 3);
    /// IBV_ACCESS_MW_BIND.
    pub const MW_BIND: Access = Access(1 << 4);
    /// Everything a read lease grants: remote read only (Patronus-rs does not
    /// grant atomics to read windows, unlike the original).
    pub const READ_WINDOW: Access = Access(1 << 2);
    /// Everything a write lease grants.
    pub const WRITE_WINDOW: Access = Access((1 << 1) | (1 << 2) | (1 << 3));
    /// An MR usable for everything.
    pub const ALL: Access = Access(0x1f);

    /// True when every right in `other` is also in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A protection domain handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pd(pub u32);

/// A memory window: its handle and its current rkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MwInfo {
    /// Handle used in bind/invalidate work requests.
    pub handle: u32,
    /// rkey as of allocation (changes with every bind/invalidate).
    pub rkey: u32,
}

/// Bumps the 8-bit key tag of an rkey, wrapping, as `ibv_inc_rkey` intends
/// (without its overflow panic): the index bits never change.
pub fn inc_rkey(rkey: u32) -> u32 {
    (rkey & 0xffff_ff00) | ((rkey as u8).wrapping_add(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_sets() {
        assert!(Access::WRITE_WINDOW.contains(Access::REMOTE_ATOMIC));
        assert!(!Access::READ_WINDOW.contains(Access::REMOTE_WRITE));
        assert!(!Access::READ_WINDOW.contains(Access::REMOTE_ATOMIC));
    }

    #[test]
    fn inc_rkey_wraps_tag_only() {
        assert_eq!(inc_rkey(0x0000_0100), 0x0000_0101);
        assert_eq!(inc_rkey(0x0000_01ff), 0x0000_0100);
        assert_eq!(inc_rkey(u32::MAX), 0xffff_ff00);
    }
}
