//! Addresses on a memory node: the layout of its registered region and the
//! two kinds of offset into it, kept apart by type.
//!
//! A memory node registers one region with its NIC:
//!
//! ```text
//! region offset 0                 internal                      total
//! | time area | protection regions | lease buf | alloc buf | reserved |
//!   TIME_AREA   dirs x prs x 40 B    \______ server buffer ________/
//!               (page aligned)        buffer offset 0
//! ```
//!
//! A [`GlobalAddress`] (and everything a user names) carries a *buffer
//! offset* ([`BufOff`]); the NIC and windows see *region offsets*
//! ([`RegionOff`], the original's "dsm offsets"). Only [`Layout`] converts
//! between them, and a remote node's conversion uses that node's published
//! layout, never the local one.

use super::pr;

/// Bytes of the time-sync area at region offset 0.
pub const TIME_AREA: u64 = 4096;

/// An offset into a memory node's registered region (what windows bind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionOff(pub u64);

/// An offset into a memory node's server buffer (what a GlobalAddress
/// carries and what allocators hand out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufOff(pub u64);

impl RegionOff {
    /// `self + n`, or None on overflow.
    pub fn checked_add(self, n: u64) -> Option<RegionOff> {
        self.0.checked_add(n).map(RegionOff)
    }
}

/// Memory layout of a node's registered region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes before the server buffer (time area and protection regions).
    pub internal: u64,
    /// Lease buffer bytes.
    pub lease: u64,
    /// Allocation buffer bytes.
    pub alloc: u64,
    /// Reserved buffer bytes.
    pub reserved: u64,
    /// Protection regions per directory.
    pub prs_per_dir: u64,
}

impl Layout {
    /// The layout of a node with `dirs` directories of `prs_per_dir`
    /// protection regions each and the given buffer sizes.
    pub fn new(dirs: u16, prs_per_dir: u64, lease: u64, alloc: u64, reserved: u64) -> Layout {
        let internal = TIME_AREA + (dirs as u64 * prs_per_dir * pr::SIZE).next_multiple_of(4096);
        Layout {
            internal,
            lease,
            alloc,
            reserved,
            prs_per_dir,
        }
    }
    /// Server buffer bytes (lease + alloc + reserved).
    pub fn buffer(&self) -> u64 {
        self.lease
            .saturating_add(self.alloc)
            .saturating_add(self.reserved)
    }
    /// Whole registered size.
    pub fn total(&self) -> u64 {
        self.internal.saturating_add(self.buffer())
    }
    /// Region offset of protection region `i` of directory `d`.
    pub fn pr(&self, d: u16, i: u64) -> RegionOff {
        RegionOff(TIME_AREA + (d as u64 * self.prs_per_dir + i) * pr::SIZE)
    }
    /// The region offset of buffer offset `b` (no range check: a lease's
    /// range is admitted separately).
    pub fn region(&self, b: BufOff) -> RegionOff {
        RegionOff(self.internal.saturating_add(b.0))
    }
    /// The buffer offset of region offset `r`, or None when `r` lies in the
    /// internal part (time area, protection regions).
    pub fn buf(&self, r: RegionOff) -> Option<BufOff> {
        r.0.checked_sub(self.internal).map(BufOff)
    }
    /// True when `[b, b + len)` lies inside the server buffer and is not
    /// empty.
    pub fn admits(&self, b: BufOff, len: u64) -> bool {
        len > 0 && b.0.checked_add(len).is_some_and(|e| e <= self.buffer())
    }
}

/// What a memory node publishes about its registered region: where it is
/// (the NIC's address of region offset 0), its keys and its layout, so that
/// peers convert its offsets with its own layout. The region itself is
/// registered without remote rights; peers reach it only through windows
/// and through these narrow keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMemory {
    /// NIC address of region offset 0.
    pub region_addr: u64,
    /// The universal rkey over the lease and allocation buffers (0: the
    /// node did not opt in, `Config::allow_universal_rkey`).
    pub region_rkey: u32,
    /// Read-only key over the time area's clock words.
    pub clock_rkey: u32,
    /// Atomic-only key over the time area's request word.
    pub request_rkey: u32,
    /// The node's layout.
    pub layout: Layout,
}

impl NodeMemory {
    /// Text form for the keeper.
    pub fn encode(&self) -> String {
        let l = &self.layout;
        format!(
            "{} {} {} {} {} {} {} {} {}",
            self.region_addr,
            self.region_rkey,
            self.clock_rkey,
            self.request_rkey,
            l.internal,
            l.lease,
            l.alloc,
            l.reserved,
            l.prs_per_dir
        )
    }
    /// Parses [`NodeMemory::encode`]'s text.
    pub fn decode(s: &str) -> Option<NodeMemory> {
        let v: Vec<u64> = s
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        let [addr, rkey, clock, request, internal, lease, alloc, reserved, prs] = v[..] else {
            return None;
        };
        Some(NodeMemory {
            region_addr: addr,
            region_rkey: u32::try_from(rkey).ok()?,
            clock_rkey: u32::try_from(clock).ok()?,
            request_rkey: u32::try_from(request).ok()?,
            layout: Layout {
                internal,
                lease,
                alloc,
                reserved,
                prs_per_dir: prs,
            },
        })
    }
}

/// Bits of a GlobalAddress's offset.
pub const GADDR_OFFSET_BITS: u32 = 48;

/// A node id and a buffer offset on that node, packed as the original's
/// `GlobalAddress` (low 48 bits offset, high 16 bits node id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GlobalAddress {
    /// Memory node.
    pub node: u16,
    /// Buffer offset on that node (48 bits).
    pub offset: BufOff,
}

impl GlobalAddress {
    /// The address of `offset` (truncated to 48 bits) on `node`.
    pub fn new(node: u16, offset: u64) -> GlobalAddress {
        GlobalAddress {
            node,
            offset: BufOff(offset & ((1 << GADDR_OFFSET_BITS) - 1)),
        }
    }
    /// The packed 64-bit value.
    pub fn to_u64(self) -> u64 {
        (self.node as u64) << GADDR_OFFSET_BITS | self.offset.0
    }
    /// Unpacks a 64-bit value.
    pub fn from_u64(v: u64) -> GlobalAddress {
        GlobalAddress::new((v >> GADDR_OFFSET_BITS) as u16, v)
    }
    /// Offset 0 is the null address (as the original).
    pub fn is_null(self) -> bool {
        self.offset.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lay() -> Layout {
        Layout::new(2, 100, 1 << 20, 1 << 20, 4096)
    }

    #[test]
    fn region_and_buffer_offsets_convert_both_ways() {
        let l = lay();
        assert_eq!(l.internal % 4096, 0);
        assert!(l.internal >= TIME_AREA + 2 * 100 * pr::SIZE);
        let r = l.region(BufOff(123));
        assert_eq!(r, RegionOff(l.internal + 123));
        assert_eq!(l.buf(r), Some(BufOff(123)));
        assert_eq!(
            l.buf(RegionOff(TIME_AREA)),
            None,
            "the PR area is not buffer"
        );
        assert_eq!(l.total(), l.internal + (2 << 20) + 4096);
    }

    #[test]
    fn protection_regions_lie_between_time_area_and_buffer() {
        let l = lay();
        assert_eq!(l.pr(0, 0), RegionOff(TIME_AREA));
        let last = l.pr(1, 99);
        assert!(last.0 + pr::SIZE <= l.internal);
        assert_eq!(l.pr(1, 0).0 - l.pr(0, 0).0, 100 * pr::SIZE);
    }

    #[test]
    fn admission_checks_the_whole_range() {
        let l = lay();
        let end = l.buffer();
        assert!(l.admits(BufOff(0), end));
        assert!(!l.admits(BufOff(1), end));
        assert!(!l.admits(BufOff(0), 0));
        assert!(!l.admits(BufOff(u64::MAX), 2));
        assert!(!l.admits(BufOff(end), 1));
    }

    #[test]
    fn node_memory_round_trips_and_rejects_garbage() {
        let m = NodeMemory {
            region_addr: 1 << 40,
            region_rkey: 0xdead_beef,
            clock_rkey: 7,
            request_rkey: 8,
            layout: lay(),
        };
        assert_eq!(NodeMemory::decode(&m.encode()), Some(m));
        assert_eq!(NodeMemory::decode("1 2 3"), None);
        assert_eq!(NodeMemory::decode("1 99999999999 3 4 5 6 7 8 9"), None);
        assert_eq!(NodeMemory::decode("a b c d e f g h i"), None);
        assert_eq!(NodeMemory::decode("1 2 3 4 5 6 7"), None, "the old form");
    }

    #[test]
    fn global_address_packs_as_the_original() {
        let g = GlobalAddress::new(7, 0x1234_5678_9abc);
        assert_eq!(g.to_u64(), 7 << 48 | 0x1234_5678_9abc);
        assert_eq!(GlobalAddress::from_u64(g.to_u64()), g);
        assert_eq!(GlobalAddress::new(1, 1 << 48).offset, BufOff(0));
        assert!(GlobalAddress::new(3, 0).is_null());
    }
}
