//! The table's bytes, without I/O: hashing, slot words, KV blocks and the
//! offsets of every structure inside the table region (see the module
//! docs of `kv` for the picture).

use crate::{Error, Result};

/// "PRKVTBL1": the first word of a table region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PRKVTBL1");

/// Bytes of the table header.
pub const HEADER: u64 = 128;
/// Header word offsets.
pub mod hdr {
    /// [`super::MAGIC`].
    pub const MAGIC: u64 = 0;
    /// Combined buckets (groups) per subtable.
    pub const GROUPS: u64 = 8;
    /// Largest global depth (the directory has `1 << max_depth` entries).
    pub const MAX_DEPTH: u64 = 16;
    /// Subtables the region has room for.
    pub const MAX_SUBTABLES: u64 = 24;
    /// Global depth at creation (information only).
    pub const INITIAL_DEPTH: u64 = 32;
    /// Current global depth.
    pub const GLOBAL_DEPTH: u64 = 40;
    /// Next never-used subtable index (subtables are never reused).
    pub const NEXT_SUBTABLE: u64 = 48;
    /// Pending split: 0, or the index + 1 of the subtable being split.
    pub const PENDING_S: u64 = 56;
    /// Pending split: index of the new subtable for hash bit 0.
    pub const PENDING_A: u64 = 64;
    /// Pending split: index of the new subtable for hash bit 1.
    pub const PENDING_B: u64 = 72;
    /// Reserved (0). The resize lock is a conflict-detecting lease keyed on
    /// the table's base offset that covers the whole region (see the `kv`
    /// module docs), not a lease on this word.
    pub const LOCK: u64 = 80;
    /// Client nodes with a free ring (node ids below this).
    pub const RING_NODES: u64 = 88;
    /// Entries per free ring.
    pub const RING_LEN: u64 = 96;
}

/// A free-ring entry: `VALID | lap(8) << 55 | units(7) << 48 | offset`
/// (the slot word's layout with the lap in the fingerprint's place).
pub const RING_VALID: u64 = 1 << 63;

/// Slots per bucket.
pub const SLOTS_PER_BUCKET: u64 = 8;
/// Buckets per combined bucket (a group, read in one READ).
pub const BUCKETS_PER_GROUP: u64 = 2;
/// Slots per group.
pub const SLOTS_PER_GROUP: u64 = SLOTS_PER_BUCKET * BUCKETS_PER_GROUP;
/// Bytes of a group.
pub const GROUP_BYTES: u64 = SLOTS_PER_GROUP * 8;

/// Largest key.
pub const MAX_KEY: usize = 64;
/// Bytes of a KV block's header (key length, magic, value length) and of
/// its trailing checksum.
pub const BLOCK_OVERHEAD: usize = 16;
/// KV block lengths are kept in units of this many bytes in a slot.
pub const BLOCK_UNIT: usize = 64;
/// Largest block (7 bits of units).
pub const MAX_BLOCK: usize = 127 * BLOCK_UNIT;
/// Largest value with the largest key (8 048 bytes).
pub const MAX_VALUE: usize = MAX_BLOCK - BLOCK_OVERHEAD - MAX_KEY;
/// Second half-word of a block header.
const BLOCK_MAGIC: u16 = 0x4b56;

/// A slot word: `FROZEN(1) | fingerprint(8) | units(7) | offset(48)`; 0 is
/// an empty slot, `FROZEN` alone an empty frozen one.
pub mod slot {
    /// Set by a split on every slot of the subtable it retires: a CAS
    /// expecting an unfrozen word fails from then on.
    pub const FROZEN: u64 = 1 << 63;
    const OFF_MASK: u64 = (1 << 48) - 1;

    /// Packs a fingerprint, a block length in units and a buffer offset.
    pub fn pack(fp: u8, units: u64, off: u64) -> u64 {
        debug_assert!((1..=127).contains(&units) && off <= OFF_MASK && off != 0);
        ((fp as u64) << 55) | ((units & 0x7f) << 48) | (off & OFF_MASK)
    }
    /// True for an empty slot (frozen or not).
    pub fn is_empty(w: u64) -> bool {
        w & !FROZEN == 0
    }
    /// The fingerprint.
    pub fn fp(w: u64) -> u8 {
        (w >> 55) as u8
    }
    /// The block length in bytes.
    pub fn len(w: u64) -> usize {
        (((w >> 48) & 0x7f) as usize) * super::BLOCK_UNIT
    }
    /// The block's buffer offset.
    pub fn off(w: u64) -> u64 {
        w & OFF_MASK
    }
}

/// What a key hashes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hashes {
    /// Directory index bits (low bits) and the split bits.
    pub h1: u64,
    /// Second choice and fingerprint.
    pub h2: u64,
}

impl Hashes {
    /// The hashes of `key` (FNV-1a, then a splitmix64 finaliser).
    pub fn of(key: &[u8]) -> Hashes {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h1 = mix(h ^ key.len() as u64);
        Hashes {
            h1,
            h2: mix(h1 ^ 0x9e37_79b9_7f4a_7c15),
        }
    }
    /// The fingerprint kept in a slot.
    pub fn fp(&self) -> u8 {
        self.h2 as u8
    }
    /// The two candidate groups of a subtable of `groups` groups, in
    /// canonical order (lower index first; one group when `groups` is 1).
    pub fn groups(&self, groups: u64) -> (u64, Option<u64>) {
        let g1 = (self.h1 >> 32) % groups;
        let mut g2 = (self.h2 >> 32) % groups;
        if groups < 2 {
            return (g1, None);
        }
        if g2 == g1 {
            g2 = (g1 + 1) % groups;
        }
        (g1.min(g2), Some(g1.max(g2)))
    }
    /// The directory index at global depth `depth`.
    pub fn dir_index(&self, depth: u32) -> u64 {
        self.h1 & ((1u64 << depth) - 1)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0x6a09_e667_f3bc_c908 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h ^ w).wrapping_mul(0x9fb2_1c65_1e98_df25).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let r = chunks.remainder();
    tail[..r.len()].copy_from_slice(r);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(0x9fb2_1c65_1e98_df25);
    mix(h)
}

/// The owner node of a block that [`decode_block`] accepted.
pub fn block_owner(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[6], b[7]])
}

/// Checks a key and value against the table's limits.
pub fn check_kv(key: &[u8], value: Option<&[u8]>) -> Result<()> {
    if key.len() > MAX_KEY {
        return Err(Error::Invalid(format!(
            "kv key of {} bytes: at most {MAX_KEY}",
            key.len()
        )));
    }
    if let Some(v) = value {
        if v.len() > MAX_BLOCK - BLOCK_OVERHEAD - key.len() {
            return Err(Error::Invalid(format!(
                "kv value of {} bytes with a {}-byte key: at most {} (a block holds {MAX_BLOCK} bytes)",
                v.len(),
                key.len(),
                MAX_BLOCK - BLOCK_OVERHEAD - key.len()
            )));
        }
    }
    Ok(())
}

/// A KV block: `klen u16 | 0x4b56 u16 | vlen u16 | owner u16 | key |
/// value | checksum u64`, padded to a multiple of [`BLOCK_UNIT`]; `owner`
/// is the client node that allocated it (the only one the memory node lets
/// free it).
pub fn encode_block(key: &[u8], value: &[u8], owner: u16) -> Vec<u8> {
    let n = BLOCK_OVERHEAD + key.len() + value.len();
    let mut b = Vec::with_capacity(n.next_multiple_of(BLOCK_UNIT));
    b.extend_from_slice(&(key.len() as u16).to_le_bytes());
    b.extend_from_slice(&BLOCK_MAGIC.to_le_bytes());
    b.extend_from_slice(&(value.len() as u16).to_le_bytes());
    b.extend_from_slice(&owner.to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    let c = checksum(&b);
    b.extend_from_slice(&c.to_le_bytes());
    b.resize(n.next_multiple_of(BLOCK_UNIT), 0);
    b
}

/// The key and value of a block read back, or None when it is torn,
/// being rewritten, or not a block at all (its checksum or header does not
/// hold).
pub fn decode_block(b: &[u8]) -> Option<(&[u8], &[u8])> {
    if b.len() < BLOCK_OVERHEAD {
        return None;
    }
    let klen = u16::from_le_bytes([b[0], b[1]]) as usize;
    let magic = u16::from_le_bytes([b[2], b[3]]);
    let vlen = u16::from_le_bytes([b[4], b[5]]) as usize;
    if magic != BLOCK_MAGIC || klen > MAX_KEY {
        return None;
    }
    let end = 8usize.checked_add(klen)?.checked_add(vlen)?;
    if end.checked_add(8)? > b.len() {
        return None;
    }
    let sum = u64::from_le_bytes(b[end..end + 8].try_into().ok()?);
    if sum != checksum(&b[..end]) {
        return None;
    }
    Some((&b[8..8 + klen], &b[8 + klen..end]))
}

/// Where everything of a table lies, relative to the table's base offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Groups per subtable.
    pub groups: u64,
    /// Largest global depth.
    pub max_depth: u32,
    /// Subtables the region has room for.
    pub max_subtables: u64,
    /// Client nodes with a free ring.
    pub ring_nodes: u64,
    /// Entries per free ring.
    pub ring_len: u64,
}

impl Geometry {
    /// Checks the shape and computes the geometry (room for two subtables
    /// per directory entry at the largest depth: a split retires one).
    pub fn new(groups: u64, max_depth: u32) -> Result<Geometry> {
        if !(1..=1 << 16).contains(&groups) {
            return Err(Error::Invalid(format!(
                "kv groups per subtable {groups}: between 1 and 65536"
            )));
        }
        if max_depth > 20 {
            return Err(Error::Invalid(format!(
                "kv max global depth {max_depth}: at most 20"
            )));
        }
        Ok(Geometry {
            groups,
            max_depth,
            max_subtables: 2u64 << max_depth,
            ring_nodes: 0,
            ring_len: 0,
        })
    }
    /// With free rings for client nodes `0..nodes`, `len` entries each.
    pub fn with_rings(self, nodes: u64, len: u64) -> Result<Geometry> {
        if nodes > 1 << 12 || len > 1 << 16 || (nodes > 0 && len == 0) {
            return Err(Error::Invalid(format!(
                "kv free rings: {nodes} nodes of {len} entries (at most 4096 nodes of 65536, \
                 at least one entry)"
            )));
        }
        Ok(Geometry {
            ring_nodes: nodes,
            ring_len: len,
            ..self
        })
    }
    /// Offset of node `o`'s free ring: head word, tail word, entries.
    pub fn ring(&self, o: u64) -> u64 {
        self.sub_headers() + 8 * self.max_subtables + o * 8 * (self.ring_len + 2)
    }
    /// Offset of the directory (one word per entry: subtable index + 1).
    pub fn dir(&self) -> u64 {
        HEADER
    }
    /// Offset of directory entry `i`.
    pub fn dir_entry(&self, i: u64) -> u64 {
        self.dir() + 8 * i
    }
    /// Offset of the subtable headers (one word per subtable).
    pub fn sub_headers(&self) -> u64 {
        self.dir() + 8 * (1u64 << self.max_depth)
    }
    /// Offset of subtable `s`'s header word.
    pub fn sub_header(&self, s: u64) -> u64 {
        self.sub_headers() + 8 * s
    }
    /// Offset of the first subtable (64-byte aligned).
    pub fn subtables(&self) -> u64 {
        self.ring(self.ring_nodes).next_multiple_of(64)
    }
    /// Bytes of a subtable.
    pub fn sub_bytes(&self) -> u64 {
        self.groups * GROUP_BYTES
    }
    /// Offset of subtable `s`.
    pub fn subtable(&self, s: u64) -> u64 {
        self.subtables() + s * self.sub_bytes()
    }
    /// Offset of group `g` of subtable `s`.
    pub fn group(&self, s: u64, g: u64) -> u64 {
        self.subtable(s) + g * GROUP_BYTES
    }
    /// Bytes of the whole table region.
    pub fn total(&self) -> u64 {
        self.subtable(self.max_subtables)
    }
}

/// A subtable header word: `VALID | RETIRED | suffix(32) << 8 | local
/// depth(8)`.
pub mod sub {
    /// The subtable is in use (or was).
    pub const VALID: u64 = 1 << 63;
    /// A split replaced it; its slots are frozen for good.
    pub const RETIRED: u64 = 1 << 62;
    /// A live subtable's word.
    pub fn pack(depth: u32, suffix: u64) -> u64 {
        VALID | ((suffix & 0xffff_ffff) << 8) | (depth as u64 & 0xff)
    }
    /// Local depth.
    pub fn depth(w: u64) -> u32 {
        (w & 0xff) as u32
    }
    /// Suffix: the low `depth` bits every key of the subtable hashes to.
    pub fn suffix(w: u64) -> u64 {
        (w >> 8) & 0xffff_ffff
    }
}

/// Little-endian words of a byte buffer.
pub fn words(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

/// Bytes of little-endian words.
pub fn bytes_of(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_detect_tearing() {
        let b = encode_block(b"key", b"value", 3);
        assert_eq!(b.len() % BLOCK_UNIT, 0);
        assert_eq!(decode_block(&b), Some((&b"key"[..], &b"value"[..])));
        assert_eq!(block_owner(&b), 3);
        for i in 0..(BLOCK_OVERHEAD + 8) {
            let mut t = b.clone();
            t[i] ^= 0x40;
            assert_eq!(decode_block(&t), None, "flipped byte {i}");
        }
        // Half old, half new: a torn read.
        let a = encode_block(b"key", &[1u8; 200], 1);
        let c = encode_block(b"key", &[2u8; 200], 1);
        let mut torn = a.clone();
        torn[100..].copy_from_slice(&c[100..]);
        assert_eq!(decode_block(&torn), None);
        assert_eq!(decode_block(&[0u8; 64]), None, "a zeroed block");
        let big = encode_block(&[7u8; MAX_KEY], &vec![9u8; MAX_VALUE], u16::MAX);
        assert_eq!(big.len(), MAX_BLOCK);
        assert!(decode_block(&big).is_some());
        assert!(check_kv(&[0u8; 65], None).is_err());
        assert!(check_kv(&[0u8; 64], Some(&vec![0u8; MAX_VALUE + 1])).is_err());
        assert!(check_kv(b"", Some(&[0u8; 4096])).is_ok());
    }

    #[test]
    fn slot_words_pack_and_unpack() {
        let w = slot::pack(0xab, 65, 0x1234_5678_9abc);
        assert_eq!(slot::fp(w), 0xab);
        assert_eq!(slot::len(w), 65 * BLOCK_UNIT);
        assert_eq!(slot::off(w), 0x1234_5678_9abc);
        assert_eq!(w & slot::FROZEN, 0);
        assert!(!slot::is_empty(w));
        assert!(slot::is_empty(0) && slot::is_empty(slot::FROZEN));
        let f = w | slot::FROZEN;
        assert_eq!((slot::fp(f), slot::off(f)), (0xab, 0x1234_5678_9abc));
    }

    #[test]
    fn hashes_pick_two_distinct_groups_and_spread() {
        let mut per_index = [0u32; 16];
        for i in 0..4096u32 {
            let h = Hashes::of(&i.to_le_bytes());
            let (a, b) = h.groups(8);
            assert!(a < b.unwrap() && b.unwrap() < 8);
            per_index[h.dir_index(4) as usize] += 1;
        }
        // 256 expected per index.
        assert!(
            per_index.iter().all(|&n| (180..340).contains(&n)),
            "{per_index:?}"
        );
        assert_eq!(
            Hashes::of(b"x").groups(1),
            (Hashes::of(b"x").groups(1).0, None)
        );
        assert_eq!(Hashes::of(b"abc"), Hashes::of(b"abc"));
    }

    #[test]
    fn geometry_offsets_do_not_overlap() {
        let g = Geometry::new(64, 8).unwrap();
        assert_eq!(g.dir(), 128);
        assert_eq!(g.sub_headers(), 128 + 8 * 256);
        assert_eq!(g.subtables() % 64, 0);
        assert!(g.subtables() >= g.sub_headers() + 8 * 512);
        assert_eq!(g.group(1, 2), g.subtables() + 64 * 128 + 2 * 128);
        assert_eq!(g.total(), g.subtables() + 512 * 64 * 128);
        assert!(Geometry::new(0, 4).is_err() && Geometry::new(4, 21).is_err());
        let w = sub::pack(5, 0b10110);
        assert_eq!((sub::depth(w), sub::suffix(w)), (5, 0b10110));
    }
}
