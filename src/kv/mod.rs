//! A protected disaggregated hash table, RACE-style (ATC'20), on Patronus
//! leases: clients find, insert, update and delete keys with one-sided
//! READ, WRITE and CAS on a memory node, with no server CPU on the data
//! path, and only as far as their leases allow.
//!
//! # Layout
//!
//! The table region lies in the memory node's *lease buffer* at the buffer
//! offset `KvParams::base`; offsets below are relative to it (all words
//! little-endian u64):
//!
//! ```text
//! 0      header (128 B)
//!          +0  magic "PRKVTBL1"        +40 global depth
//!          +8  groups per subtable     +48 next unused subtable index
//!          +16 max global depth        +56 pending split: S + 1 (0: none)
//!          +24 max subtables           +64 pending split: A (bit 0 half)
//!          +32 initial depth           +72 pending split: B (bit 1 half)
//!                                      +80 reserved (0)
//!                                      +88 free rings: client nodes
//!                                      +96 free rings: entries each (L)
//! 128    directory: 2^max_depth words, entry i = subtable index + 1
//!          (0: unset); key -> entry h1 & (2^global_depth - 1)
//! D      subtable headers: max_subtables words,
//!          VALID(63) | RETIRED(62) | suffix(32) << 8 | local depth(8)
//!          with D = 128 + 8 * 2^max_depth
//! R      free rings (R = D + 8 * max_subtables), one per client node n
//!          at R + n * 8 * (L + 2): head word, tail word, L entries
//!          VALID(63) | lap(62..55) | units(54..48) | offset(47..0)
//! T      subtables (T = end of the rings, rounded up to 64), each
//!          `groups` combined buckets of 128 B; subtable s at
//!          T + s * groups * 128, group g of it 128 * g further
//! group  2 buckets x 8 slots of 8 B, read in one READ
//! slot   FROZEN(63) | fingerprint(62..55) | block length in 64 B units
//!          (54..48) | block buffer offset (47..0); 0 = empty
//! ```
//!
//! max_subtables = 2 * 2^max_depth: a split never reuses a subtable (it
//! retires one and fills two new ones), so the region has room for every
//! split up to the largest depth.
//!
//! KV blocks live in the memory node's *allocation buffer*, allocated with
//! [`ClientThread::alloc`] on the table's directory (allocator
//! `KvParams::alloc_hint`; give the memory node `Config::alloc_classes`
//! near the block sizes you store, e.g. 128, 256, 4 224):
//!
//! ```text
//! 0  key length u16 | 0x4b56 u16 | value length u16 | owner node u16
//! 8  key bytes, value bytes
//!    checksum u64 over everything before it
//!    zero padding to a multiple of 64 B
//! ```
//!
//! Keys are up to 64 bytes, values up to [`MAX_VALUE`] (8 048 bytes with
//! a 64-byte key, more with shorter keys). A block is written whole before
//! its slot points at it and never changed after; a read that sees a bad
//! checksum (torn, or freed and being reused) reads the buckets again.
//!
//! # Operations
//!
//! Each key has two candidate groups in the subtable its directory entry
//! names. `get` READs both groups and then the block of each slot whose
//! fingerprint matches, in canonical order (lower group, lower slot first),
//! and returns the first block with the key. `put` allocates and WRITEs a
//! new block, then CASes the key's slot from the old word to the new (an
//! update; the old block is freed after) or an empty slot from 0 (an
//! insert), and READs the groups again: if the key also sits in an earlier
//! slot (a concurrent insert of the same key), it takes its own slot back
//! and updates that one; later duplicates it clears. `del` CASes the key's
//! slots to 0 and frees the blocks. Blocks are allocated [`ALLOC_AHEAD`] at
//! a time per size (calls in flight together) and freed [`FREE_BATCH`] at a
//! time, which also leaves a grace period before a replaced block is
//! reused. Blocks are freed only by the client node that allocated them
//! (the memory node refuses others), which each block names in its header:
//! a block another node wrote and this one replaced goes back to that node
//! through its *free ring* in the table region: the replacer reserves a
//! position with a FAA on the ring's tail and WRITEs the entry, tagged with
//! the position's lap; the owner's handles claim written entries with a
//! CAS on the ring's head (every 64 puts and dels, and at relinquish) and
//! free them. A full ring, an owner without a ring, or an entry a later lap
//! overwrote leaves the block allocated ([`KvStats::leaked`]); a position
//! reserved by a client that died before writing it is skipped after a
//! second.
//!
//! # Resizing
//!
//! Extendible hashing as RACE: when both candidate groups are full, the
//! subtable S (local depth l) is split into two new subtables A and B of
//! depth l + 1 (keys whose hash bit l is 0 go to A, the others to B;
//! the directory doubles first when l equals the global depth). The
//! splitter holds the *resize lock*: a write lease over the table region
//! acquired with `WITH_CONFLICT_DETECT` (its conflict key is the table's
//! base offset), with term `KvParams::lock_ns` (extended by a term
//! between phases and every 16 block reads while filling;
//! a handle whose splits lost the lock doubles the term for its next
//! attempts, up to 64x, until a split completes).
//! A client that dies while holding it loses the lock when that term ends
//! (plus the cluster's epsilon), when the memory node's GC collects the
//! lease. Every write and CAS of a split goes through the lock's own
//! window, not the handle's table lease: a holder that is descheduled past
//! its term and wakes up after another client took the lock over (and
//! writers went on in the new subtables) is refused, by its local expiry
//! check or by the memory node, whose GC unbinds the window before it
//! releases the conflict lock, instead of writing stale subtables or
//! directory entries over theirs. A split refused so is not an error of
//! the put that needed it: the put looks again (counted in
//! [`KvStats::locks_lost`]). The split
//! records itself in the header (pending S, A, B), then CASes every slot
//! of S to frozen (from then on no CAS on S succeeds, and every reader or
//! writer that meets a frozen slot waits for the directory to move on),
//! fills A and B from the frozen slots, writes the directory, and retires
//! S. Every step can be redone, so whoever takes the lock next finishes a
//! pending split first: a writer that waits on a frozen subtable past the
//! lock holder's term takes the lock itself and completes the split.
//!
//! # Protection modes
//!
//! Chosen per handle ([`Protection`]):
//! - `Lease`: the handle holds a lease over the table region and a
//!   tenant-wide lease over the memory node's allocation buffer (where
//!   the KV blocks are), read leases for a [`Access::ReadOnly`] handle,
//!   write leases for [`Access::ReadWrite`]; every access is one-sided
//!   through their windows. A read-only handle's `put` or `del` is refused
//!   by the memory node's NIC ([`crate::Error::Refused`] with
//!   `RdmaProtectionErr`); once relinquished or expired, every access is.
//!   `KvParams::lease_ns` 0 asks for leases that last until relinquished;
//!   otherwise they have that term and are auto-extended while the handle
//!   is used (unless `KvParams::auto_extend` is off).
//! - `Rpc`: the same leases, every access two-sided (`rpc_read`,
//!   `rpc_write`, `rpc_cas`), checked by the memory node against them.
//! - `Mr`: as `Lease`, with a memory region registered per lease instead
//!   of a window (the original's MR baseline: `USE_MR` leases, which never
//!   expire: `lease_ns` does not apply).
//! - `Unprotected`: the universal rkey (the original's baseline), with
//!   client-only leases and no RPC. The memory node must opt in
//!   (`Config::allow_universal_rkey`): with it, any client can read and
//!   write the whole lease and allocation buffers, and a read-only handle
//!   is read-only only by its own good will.
//!
//! The resize lock is a real lease in every mode.
//!
//! What the leases protect is the table against clients without a write
//! lease (and against anyone once a lease ends). Clients that hold write
//! leases on one table trust each other, as in RACE: a writer can CAS any
//! slot, and can put a block of another node into that node's free ring,
//! which would have the owner free a block still in use (the memory node
//! still lets each node free only its own blocks, so nothing outside the
//! table's tenants is reachable).
//!
//! The two candidate groups are READ in one batch (one chain, one
//! completion) where the handle's leases never expire and the mode is
//! one-sided; otherwise one after the other (batches skip the local expiry
//! check, so a handle with a term reads through the checked path).
//!
//! Many operations in flight per thread: [`KvTable::get_many`],
//! [`KvTable::put_many`] and [`KvTable::del_many`] post the calls of many
//! keys together, in waves (`src/kv/many.rs`).
//!
//! # Async forms
//!
//! The protocol above is written once, as async fns over the calls it
//! makes (`src/kv/io.rs`). [`KvTable::get_async`], [`KvTable::put_async`]
//! and [`KvTable::del_async`] run it on an [`AsyncThread`]: each call is
//! posted and awaited, so that any number of operations of a handle
//! (`join_all`, `FuturesUnordered`) are in flight together on one thread,
//! each going through its own steps (group READs, block READs, CAS,
//! allocation, a split or the wait for one). The blocking `get`, `put` and
//! `del` run the same code over the thread's blocking calls, whose futures
//! are ready at once. The C posted forms (`patronus_kv_post_*`,
//! `patronus_kv_poll`) drive these futures on the handle's thread.
//!
//! ```no_run
//! # fn demo(kv: &patronus::kv::KvTable, at: &patronus::client::AsyncThread)
//! #     -> patronus::Result<()> {
//! use futures::future::join_all;
//! let keys: Vec<Vec<u8>> = (0..32).map(|i| format!("k{i}").into_bytes()).collect();
//! let values = at.block_on(join_all(keys.iter().map(|k| kv.get_async(at, k))));
//! # let _ = values; Ok(()) }
//! ```
//!
//! Retired subtables are not reused: a client whose directory cache is
//! older than a split may still READ a retired subtable (it then finds its
//! slots frozen and reloads the directory), so reusing one would need a
//! grace period every client has passed, which one-sided clients cannot
//! announce. The region is sized for every split up to `max_depth`
//! instead (at most twice what the live subtables need).

mod io;
pub mod layout;
mod many;
mod resize;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use layout::{Geometry, Hashes, MAX_BLOCK, MAX_KEY, MAX_VALUE};
#[doc(hidden)]
pub use resize::SplitPhase;

use crate::client::{AsyncThread, Batch, ClientThread, Lease, Post};
use crate::lease::flags::{acquire, modify, rw};
use crate::lease::Rc;
use crate::node::Patronus;
use crate::{Error, Result};
use io::{ready, Blocking, KvIo};
use layout::{hdr, slot, sub, GROUP_BYTES, SLOTS_PER_GROUP};

/// How a handle reaches the table (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// One-sided through Patronus leases' windows.
    Lease,
    /// Two-sided memory RPCs checked against the same leases.
    Rpc,
    /// One-sided through memory regions registered per lease (the
    /// original's MR baseline: `USE_MR` leases, which never expire).
    Mr,
    /// The universal rkey, no leases (the memory node must opt in).
    Unprotected,
}

/// What a handle may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read leases: get only.
    ReadOnly,
    /// Write leases: get, put, del, resize.
    ReadWrite,
}

/// Shape and terms of a table.
#[derive(Clone, Debug)]
pub struct KvParams {
    /// Buffer offset of the table region in the memory node's lease
    /// buffer.
    pub base: u64,
    /// Combined buckets (16 slots each) per subtable.
    pub groups: u64,
    /// Global depth at creation (2^depth subtables).
    pub initial_depth: u32,
    /// Largest global depth (the region has room for it).
    pub max_depth: u32,
    /// Term of the handle's leases in ns; 0: until relinquished.
    pub lease_ns: u64,
    /// Auto-extend the handle's leases while it is used (`lease_ns` > 0).
    pub auto_extend: bool,
    /// Term of the resize lock's lease in ns (its holder extends it
    /// between phases; a dead holder loses it after this).
    pub lock_ns: u64,
    /// Allocator hint for KV blocks.
    pub alloc_hint: u64,
    /// How long an operation waits for a split (or a lock) before it fails
    /// with a timeout.
    pub patience: Duration,
    /// Client nodes (ids below this) that get a free ring: blocks they
    /// allocated and other nodes replaced come back to them there.
    pub free_ring_nodes: u64,
    /// Entries per free ring.
    pub free_ring_len: u64,
}

impl Default for KvParams {
    fn default() -> Self {
        KvParams {
            base: 0,
            groups: 64,
            initial_depth: 2,
            max_depth: 8,
            lease_ns: 0,
            auto_extend: true,
            lock_ns: 10_000_000,
            alloc_hint: 0,
            patience: Duration::from_secs(10),
            free_ring_nodes: 16,
            free_ring_len: 1024,
        }
    }
}

impl KvParams {
    /// Bytes of the table region these parameters describe.
    pub fn region_bytes(&self) -> Result<u64> {
        Ok(Geometry::new(self.groups, self.max_depth)?
            .with_rings(self.free_ring_nodes, self.free_ring_len)?
            .total())
    }
}

/// Counters of one handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Operations started again (a CAS lost, a torn block, a frozen
    /// subtable).
    pub retries: u64,
    /// Splits this handle completed (its own or another's pending one).
    pub splits: u64,
    /// Replaced or removed blocks this node could not free (allocated by
    /// another node).
    pub leaked: u64,
    /// Times the directory was read.
    pub dir_loads: u64,
    /// Blocks of other nodes this handle replaced and handed back to
    /// their owner through its free ring.
    pub handed_back: u64,
    /// Blocks this node allocated that came back through its free ring
    /// (freed by this handle).
    pub returned: u64,
    /// Duplicates of a key (left by concurrent inserts of it) this
    /// handle's puts settled: later ones cleared, or its own entry taken
    /// back to update the earlier one.
    pub dups_settled: u64,
    /// Splits this handle started whose resize lock ran out of its term
    /// before the split was done (a descheduled holder on a loaded host):
    /// the split is recorded in the header, so the operation that needed
    /// it takes the lock again and the next holder finishes it.
    pub locks_lost: u64,
}

/// A handle on a table: one per client thread (it holds that thread's
/// leases). Its operations borrow it shared (`&self`) for the async forms,
/// several of which run at once on one [`AsyncThread`]; what they change
/// (the directory cache, counters, spare and queued blocks, the leases'
/// state) sits in cells borrowed between awaits only.
pub struct KvTable {
    node: u16,
    dir: u16,
    mode: Protection,
    access: Access,
    params: KvParams,
    geo: Geometry,
    /// Lease over the table region.
    table: RefCell<Lease>,
    /// Lease over the allocation buffer (the KV blocks).
    kv: RefCell<Lease>,
    /// Buffer offset where `kv` starts.
    kv_base: u64,
    /// Bytes of the `kv` lease.
    kv_size: u64,
    /// RW flags of every access.
    flag: u64,
    /// This client node (the owner written into the blocks it allocates).
    me: u16,
    /// Reused for the candidate groups' READs (blocking path).
    batch: RefCell<Batch>,
    st: RefCell<KvState>,
}

/// What a handle's operations change.
#[derive(Default)]
struct KvState {
    /// Cached directory: subtable index + 1 per entry.
    dir_cache: Vec<u64>,
    depth: u32,
    stats: KvStats,
    /// Puts and dels since this handle last looked at its free ring.
    since_drain: u32,
    /// A ring position found unwritten (a producer between its FAA and
    /// its WRITE, or dead there), and since when.
    stalled: Option<(u64, Instant)>,
    /// Blocks allocated ahead, by size.
    spare: HashMap<usize, Vec<u64>>,
    /// Slot words of replaced or removed blocks, freed [`FREE_BATCH`] at
    /// a time (which also gives readers that read a slot just before it
    /// moved on a grace period before the block is reused).
    to_free: Vec<u64>,
    /// Test hook: a split calls this between computing the new subtables
    /// and writing them (a holder descheduled past its term).
    stall: Option<Box<dyn FnMut() + Send>>,
    /// Splits of this handle in a row whose lock ran out: each doubles the
    /// lock's term (up to [`LOCK_BACKOFF_MAX`] doublings), so that a split
    /// on a loaded host finishes; a split that completes resets it.
    lock_backoff: u32,
}

/// Most doublings of the resize lock's term after splits that lost it
/// (64 x `KvParams::lock_ns`).
pub const LOCK_BACKOFF_MAX: u32 = 6;

/// Blocks of one size allocated per allocation round (calls in flight).
pub const ALLOC_AHEAD: usize = 8;
/// Freed blocks queued before they are freed together.
pub const FREE_BATCH: usize = 32;

/// What a search of the candidate groups found.
enum Found {
    /// The key's first slot (offset in the table, word) and value, and
    /// its later duplicates.
    Hit {
        at: u64,
        word: u64,
        value: Vec<u8>,
        owner: u16,
        later: Vec<(u64, u64, u16)>,
    },
    /// Not there.
    Miss,
    /// Something changed under the search: read again.
    Again,
}

/// The candidate groups as read: (table offset of the slot, word) in
/// canonical order.
struct Groups {
    sub: u64,
    slots: Vec<(u64, u64)>,
    frozen: bool,
}

impl KvTable {
    /// Creates a table on node `node`'s lease buffer at `params.base`,
    /// served by directory `dir`, and returns a read-write handle. Whatever
    /// the region held is overwritten.
    pub fn create(
        ct: &mut ClientThread,
        node: u16,
        dir: u16,
        params: KvParams,
        mode: Protection,
    ) -> Result<KvTable> {
        let geo = Geometry::new(params.groups, params.max_depth)?
            .with_rings(params.free_ring_nodes, params.free_ring_len)?;
        if params.initial_depth > params.max_depth {
            return Err(Error::Invalid(format!(
                "kv initial depth {} above max depth {}",
                params.initial_depth, params.max_depth
            )));
        }
        let t = KvTable::with_leases(ct, node, dir, params, geo, mode, Access::ReadWrite)?;
        let io = Blocking::new(ct);
        let init = 1u64 << t.params.initial_depth;
        // Directory, subtable headers and the first subtables, zeroed and
        // then filled; the magic last.
        ready(t.t_write(&io, 0, &vec![0u8; geo.subtables() as usize]))?;
        let zero = vec![0u8; geo.sub_bytes() as usize];
        for s in 0..init {
            ready(t.t_write(&io, geo.subtable(s), &zero))?;
        }
        let entries: Vec<u64> = (1..=init).collect();
        ready(t.t_write(&io, geo.dir(), &layout::bytes_of(&entries)))?;
        let heads: Vec<u64> = (0..init)
            .map(|s| sub::pack(t.params.initial_depth, s))
            .collect();
        ready(t.t_write(&io, geo.sub_headers(), &layout::bytes_of(&heads)))?;
        let h = [
            layout::MAGIC,
            geo.groups,
            geo.max_depth as u64,
            geo.max_subtables,
            t.params.initial_depth as u64,
            t.params.initial_depth as u64,
            init,
        ];
        ready(t.t_write(&io, 8, &layout::bytes_of(&h[1..])))?;
        ready(t.t_write(
            &io,
            hdr::RING_NODES,
            &layout::bytes_of(&[geo.ring_nodes, geo.ring_len]),
        ))?;
        ready(t.t_write(&io, 0, &h[0].to_le_bytes()))?;
        ready(t.load_directory(&io))?;
        Ok(t)
    }

    /// Opens the table at `base` on node `node` (served by `dir`), with
    /// the leases `access` and `mode` need. `params` gives the terms
    /// (`lease_ns`, `lock_ns`, `alloc_hint`, `patience`); the shape is
    /// read from the table's header.
    pub fn open(
        ct: &mut ClientThread,
        node: u16,
        dir: u16,
        params: KvParams,
        mode: Protection,
        access: Access,
    ) -> Result<KvTable> {
        // The header first, through a lease on it alone, to learn the
        // region's size.
        let mut probe = KvTable::with_leases_sized(
            ct,
            node,
            dir,
            params.clone(),
            Geometry::new(1, 0)?,
            mode,
            Access::ReadOnly,
            layout::HEADER,
        )?;
        let h = ready(probe.t_read(&Blocking::new(ct), 0, layout::HEADER as usize));
        probe.relinquish(ct)?;
        let h: Vec<u64> = layout::words(&h?).collect();
        if h[0] != layout::MAGIC {
            return Err(Error::NotFound(format!(
                "no kv table at node {node} buffer offset {:#x} (magic {:#x})",
                params.base, h[0]
            )));
        }
        let geo = Geometry::new(h[1], h[2] as u32)?.with_rings(
            h[(hdr::RING_NODES / 8) as usize],
            h[(hdr::RING_LEN / 8) as usize],
        )?;
        let mut p = params;
        p.groups = geo.groups;
        p.max_depth = geo.max_depth;
        p.free_ring_nodes = geo.ring_nodes;
        p.free_ring_len = geo.ring_len;
        p.initial_depth = h[4] as u32;
        let t = KvTable::with_leases(ct, node, dir, p, geo, mode, access)?;
        ready(t.load_directory(&Blocking::new(ct)))?;
        Ok(t)
    }

    /// Publishes where the table is (node, directory, base) under the
    /// keeper key `kv/<name>`, for [`KvTable::open_published`] on other
    /// nodes.
    pub fn publish(&self, p: &Patronus, name: &str) -> Result<()> {
        let root = format!("{}:{}:{}", self.node, self.dir, self.params.base);
        p.put(&format!("kv/{name}"), root.as_bytes())
    }

    /// Opens the table published as `name` (waiting for it at most
    /// `Config::keeper_timeout`); `params.base` is taken from the keeper.
    pub fn open_published(
        ct: &mut ClientThread,
        p: &Patronus,
        name: &str,
        params: KvParams,
        mode: Protection,
        access: Access,
    ) -> Result<KvTable> {
        let v = p.get(&format!("kv/{name}"))?;
        let s = String::from_utf8_lossy(&v);
        let f: Vec<u64> = s.split(':').filter_map(|x| x.parse().ok()).collect();
        let [node, dir, base] = f[..] else {
            return Err(Error::Invalid(format!(
                "kv table {name:?}: the keeper holds {s:?}, not node:dir:base"
            )));
        };
        let params = KvParams { base, ..params };
        KvTable::open(ct, node as u16, dir as u16, params, mode, access)
    }

    fn with_leases(
        ct: &mut ClientThread,
        node: u16,
        dir: u16,
        params: KvParams,
        geo: Geometry,
        mode: Protection,
        access: Access,
    ) -> Result<KvTable> {
        let total = geo.total();
        KvTable::with_leases_sized(ct, node, dir, params, geo, mode, access, total)
    }

    #[allow(clippy::too_many_arguments)]
    fn with_leases_sized(
        ct: &mut ClientThread,
        node: u16,
        dir: u16,
        params: KvParams,
        geo: Geometry,
        mode: Protection,
        access: Access,
        table_bytes: u64,
    ) -> Result<KvTable> {
        let mem = ct.peer_memory(node)?;
        let lay = mem.layout;
        if params
            .base
            .checked_add(geo.total().max(table_bytes))
            .is_none_or(|e| e > lay.lease)
        {
            return Err(Error::Invalid(format!(
                "kv table of {} bytes at buffer offset {:#x} does not fit node {node}'s lease \
                 buffer of {} bytes",
                geo.total().max(table_bytes),
                params.base,
                lay.lease
            )));
        }
        if params.base % 8 != 0 {
            return Err(Error::Invalid(format!(
                "kv table base {:#x} is not 8-byte aligned",
                params.base
            )));
        }
        let write = access == Access::ReadWrite;
        let (lflag, ns, mut flag) = match mode {
            Protection::Unprotected => {
                if mem.region_rkey == 0 {
                    return Err(Error::Invalid(format!(
                        "kv unprotected mode: node {node} does not offer the universal rkey \
                         (it must opt in with Config::allow_universal_rkey)"
                    )));
                }
                (acquire::NO_RPC, 0, rw::USE_UNIVERSAL_RKEY)
            }
            Protection::Mr => (acquire::USE_MR | acquire::NO_GC, 0, 0),
            Protection::Lease | Protection::Rpc => {
                let two = if mode == Protection::Rpc {
                    rw::USE_TWO_SIDED
                } else {
                    0
                };
                if params.lease_ns == 0 {
                    (acquire::NO_GC, 0, two)
                } else {
                    let auto = if params.auto_extend && mode == Protection::Lease {
                        rw::WITH_AUTO_EXTEND
                    } else {
                        0
                    };
                    (0, params.lease_ns, two | auto)
                }
            }
        };
        if mode == Protection::Unprotected {
            flag &= !rw::WITH_AUTO_EXTEND;
        }
        let mut table = ct.get_lease(write, node, dir, params.base, table_bytes, ns, lflag)?;
        granted(&table, "the kv table region's lease", node, params.base)?;
        let kv_base = lay.lease;
        let kv = match ct.get_lease(write, node, dir, kv_base, lay.alloc, ns, lflag) {
            Ok(l) if l.success() => l,
            other => {
                let _ = ct.relinquish(&mut table, 0, 0);
                let l = other?;
                granted(
                    &l,
                    "the kv blocks' (allocation buffer) lease",
                    node,
                    kv_base,
                )?;
                l
            }
        };
        let kv_size = kv.size;
        Ok(KvTable {
            node,
            dir,
            mode,
            access,
            params,
            geo,
            table: RefCell::new(table),
            kv: RefCell::new(kv),
            kv_base,
            kv_size,
            flag,
            me: ct.node_id(),
            batch: RefCell::new(Batch::new()),
            st: RefCell::new(KvState::default()),
        })
    }

    /// Frees the handle's spare and queued blocks and gives its leases
    /// back; every later access of the handle fails. (A handle dropped
    /// without this leaves its leases to their terms and up to
    /// [`ALLOC_AHEAD`] spare blocks per size and [`FREE_BATCH`] queued
    /// frees allocated.)
    pub fn relinquish(&mut self, ct: &mut ClientThread) -> Result<()> {
        ready(self.free_all(&Blocking::new(ct)));
        let f = if self.mode == Protection::Mr {
            modify::USE_MR
        } else {
            0
        };
        let a = ct.relinquish(self.table.get_mut(), 0, f);
        let b = ct.relinquish(self.kv.get_mut(), 0, f);
        for (r, what) in [(a, "table"), (b, "kv blocks")] {
            match r? {
                Rc::Ok => {}
                rc => {
                    return Err(Error::Refused {
                        rc,
                        ctx: format!("relinquishing the kv {what} lease"),
                    })
                }
            }
        }
        Ok(())
    }

    /// The protection mode.
    pub fn mode(&self) -> Protection {
        self.mode
    }

    /// Read-only or read-write.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The table's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The global depth as last read.
    pub fn global_depth(&self) -> u32 {
        self.st.borrow().depth
    }

    /// Counters of this handle.
    pub fn stats(&self) -> KvStats {
        self.st.borrow().stats
    }

    /// Deadline of the handle's table lease (i64::MAX: none).
    pub fn lease_deadline(&self) -> i64 {
        self.table.borrow().ddl.min(self.kv.borrow().ddl)
    }

    /// Test hook: extra RW flags on every access (e.g.
    /// `NO_LOCAL_EXPIRE_CHECK`, to see the memory node refuse what the
    /// local check would have).
    #[doc(hidden)]
    pub fn add_rw_flags(&mut self, flag: u64) {
        self.flag |= flag;
    }

    /// Test hook: this handle's splits call `f` (which may block as long
    /// as it likes) after computing the new subtables and before writing
    /// them, as a holder descheduled past its lock's term would stop there.
    #[doc(hidden)]
    pub fn stall_splits(&mut self, f: Option<Box<dyn FnMut() + Send>>) {
        self.st.get_mut().stall = f;
    }

    /// Test hook: a hostile client that keeps using its rkeys after it
    /// relinquished its leases.
    #[doc(hidden)]
    pub fn forge_live(&mut self) {
        self.table.get_mut().live = true;
        self.kv.get_mut().live = true;
    }

    /// Slots that hold `key` (1 after any put settles; more only while
    /// concurrent inserts of the key are settling). For tests.
    #[doc(hidden)]
    pub fn entries_of(&mut self, ct: &mut ClientThread, key: &[u8]) -> Result<usize> {
        let io = Blocking::new(ct);
        let h = Hashes::of(key);
        let until = Instant::now() + self.params.patience;
        loop {
            let g = ready(self.read_groups(&io, &h))?;
            if g.frozen {
                ready(self.await_split(&io, &h, g.sub, until))?;
                continue;
            }
            match ready(self.search(&io, &g, key, &h))? {
                Found::Hit { later, .. } => return Ok(1 + later.len()),
                Found::Miss => return Ok(0),
                Found::Again => self.again(until, "entries_of")?,
            }
        }
    }

    /// Test hook: what a racing insert of `key` leaves behind: a block
    /// for `value` CASed into the `skip`-th empty slot (canonical order) of
    /// the key's candidate groups, duplicates left unsettled.
    #[doc(hidden)]
    pub fn insert_unsettled(
        &mut self,
        ct: &mut ClientThread,
        key: &[u8],
        value: &[u8],
        skip: usize,
    ) -> Result<()> {
        layout::check_kv(key, Some(value))?;
        let h = Hashes::of(key);
        let block = layout::encode_block(key, value, self.me);
        let off = ct
            .alloc(
                self.node,
                self.dir,
                block.len() as u64,
                self.params.alloc_hint,
            )?
            .ok_or_else(|| Error::NoMem("kv insert_unsettled: no block".into()))?;
        let mine = slot::pack(h.fp(), (block.len() / layout::BLOCK_UNIT) as u64, off);
        let io = Blocking::new(ct);
        ready(self.kv_write(&io, off, &block))?;
        let g = ready(self.read_groups(&io, &h))?;
        let at = g
            .slots
            .iter()
            .filter(|&&(_, w)| w == 0)
            .nth(skip)
            .map(|&(a, _)| a)
            .ok_or_else(|| Error::NoMem("kv insert_unsettled: no such empty slot".into()))?;
        if ready(self.t_cas(&io, at, 0, mine))? != 0 {
            return Err(Error::Invalid(
                "kv insert_unsettled: the slot filled".into(),
            ));
        }
        Ok(())
    }

    /// The value of `key`, or None.
    pub fn get(&mut self, ct: &mut ClientThread, key: &[u8]) -> Result<Option<Vec<u8>>> {
        ready(self.get_in(&Blocking::new(ct), key))
    }

    /// [`KvTable::get`] as a future on an [`AsyncThread`]: many of them
    /// (of this handle, with `join_all` or `FuturesUnordered`) keep their
    /// calls in flight together on the one thread, each going through its
    /// own steps. The thread must be the one the handle was made on.
    pub async fn get_async(&self, at: &AsyncThread, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_in(at, key).await
    }

    async fn get_in(&self, io: &impl KvIo, key: &[u8]) -> Result<Option<Vec<u8>>> {
        layout::check_kv(key, None)?;
        let h = Hashes::of(key);
        let until = Instant::now() + self.params.patience;
        loop {
            let g = self.read_groups(io, &h).await?;
            if g.frozen {
                self.await_split(io, &h, g.sub, until).await?;
                continue;
            }
            match self.search(io, &g, key, &h).await? {
                Found::Hit { value, .. } => return Ok(Some(value)),
                Found::Miss => return Ok(None),
                Found::Again => self.again(until, "get")?,
            }
        }
    }

    /// The values of many keys, with their READs in flight together: one
    /// wave of bucket READs (two per key), one wave of block READs, then
    /// the keys that need a second look (a frozen subtable, a torn block, a
    /// fingerprint shared with another key) one by one through
    /// [`KvTable::get`]. Each key's value is one it held during the call.
    /// The thread must have no other calls in flight (their completions
    /// would be taken here).
    pub fn get_many(
        &mut self,
        ct: &mut ClientThread,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        if ct.inflight() != 0 {
            return Err(Error::Invalid(format!(
                "kv get_many: the thread has {} calls in flight (their completions would be \
                 taken here): poll them first",
                ct.inflight()
            )));
        }
        let mut hs = Vec::with_capacity(keys.len());
        let mut reqs = Vec::with_capacity(2 * keys.len());
        for k in keys {
            layout::check_kv(k, None)?;
            let h = Hashes::of(k);
            let s = ready(self.subtable_of(&Blocking::new(ct), &h))?;
            let (g1, g2) = h.groups(self.geo.groups);
            let mut ats = vec![self.geo.group(s, g1)];
            ats.extend(g2.map(|g| self.geo.group(s, g)));
            for &at in &ats {
                reqs.push((at, GROUP_BYTES as usize));
            }
            hs.push((h, ats.len()));
        }
        let groups = self.read_all(ct, false, &reqs)?;
        // Per key: the fingerprint-matching slots, or None (look again).
        let mut cands: Vec<Option<Vec<u64>>> = Vec::with_capacity(keys.len());
        let mut blocks = Vec::new();
        let mut at = 0;
        for (h, n) in &hs {
            let ws: Vec<u64> = groups[at..at + n]
                .iter()
                .flat_map(|b| layout::words(b).collect::<Vec<_>>())
                .collect();
            at += n;
            if ws.iter().any(|w| w & slot::FROZEN != 0) {
                cands.push(None);
                continue;
            }
            let m: Vec<u64> = ws
                .into_iter()
                .filter(|&w| !slot::is_empty(w) && slot::fp(w) == h.fp())
                .collect();
            for &w in &m {
                blocks.push((slot::off(w), slot::len(w)));
            }
            cands.push(Some(m));
        }
        let data = self.read_all(ct, true, &blocks)?;
        let mut out = Vec::with_capacity(keys.len());
        let mut next = 0;
        for (k, c) in keys.iter().zip(cands) {
            let Some(m) = c else {
                out.push(self.get(ct, k)?);
                continue;
            };
            let mine = &data[next..next + m.len()];
            next += m.len();
            let mut found = None;
            let mut unsure = false;
            for b in mine {
                match layout::decode_block(b) {
                    Some((kk, v)) if kk == *k => {
                        found = Some(v.to_vec());
                        break;
                    }
                    Some(_) => unsure = true,
                    None => {
                        unsure = true;
                        break;
                    }
                }
            }
            match found {
                Some(v) => out.push(Some(v)),
                None if unsure => {
                    self.st.get_mut().stats.retries += 1;
                    out.push(self.get(ct, k)?);
                }
                None => out.push(None),
            }
        }
        Ok(out)
    }

    /// Posts READs of `reqs` (table offsets, or block buffer offsets when
    /// `kv`) as far as the thread's calls in flight allow and waits for all
    /// of them; the first failure is returned once none is in flight.
    fn read_all(
        &mut self,
        ct: &mut ClientThread,
        kv: bool,
        reqs: &[(u64, usize)],
    ) -> Result<Vec<Vec<u8>>> {
        // Offsets within the lease read, checked before anything is posted.
        let at: Vec<u64> = reqs
            .iter()
            .map(|&(off, len)| if kv { self.kv_range(off, len) } else { Ok(off) })
            .collect::<Result<_>>()?;
        let flag = self.flag;
        let lease = if kv {
            self.kv.get_mut()
        } else {
            self.table.get_mut()
        };
        let cs = post_all(ct, reqs.len(), |ct, i| {
            ct.post_read(lease, reqs[i as usize].1, at[i as usize], flag, i)
        })?;
        let mut out = vec![Vec::new(); reqs.len()];
        let mut err: Option<Error> = None;
        for c in cs {
            c.apply(if kv {
                self.kv.get_mut()
            } else {
                self.table.get_mut()
            });
            let i = c.user_data as usize;
            match c.result {
                Ok(Rc::Ok) if i < out.len() => out[i] = c.data,
                Ok(rc) => {
                    let what = if kv { "block read" } else { "table read" };
                    let off = reqs.get(i).map_or(0, |r| r.0);
                    err.get_or_insert(self.refused(rc, what, off));
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Sets `key` to `value` (insert or update).
    pub fn put(&mut self, ct: &mut ClientThread, key: &[u8], value: &[u8]) -> Result<()> {
        ready(self.put_in(&Blocking::new(ct), key, value))
    }

    /// [`KvTable::put`] as a future on an [`AsyncThread`] (see
    /// [`KvTable::get_async`]); a put that finds its candidate groups full
    /// splits the subtable as the blocking one does.
    pub async fn put_async(&self, at: &AsyncThread, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_in(at, key, value).await
    }

    async fn put_in(&self, io: &impl KvIo, key: &[u8], value: &[u8]) -> Result<()> {
        layout::check_kv(key, Some(value))?;
        let h = Hashes::of(key);
        let block = layout::encode_block(key, value, self.me);
        let off = self.alloc_block(io, block.len()).await?;
        let mine = slot::pack(h.fp(), (block.len() / layout::BLOCK_UNIT) as u64, off);
        let mut installed = false;
        let mut r = self.kv_write(io, off, &block).await;
        if r.is_ok() {
            r = self.install(io, key, &h, mine, &mut installed).await;
        }
        if r.is_err() && !installed {
            // Never reachable from the table: free it. (Once installed, a
            // later error leaves it in place: it is the key's value.)
            self.free_block(io, mine, self.me).await;
        }
        if r.is_ok() {
            self.tick(io).await;
        }
        r
    }

    /// Removes `key`; true when it was there.
    pub fn del(&mut self, ct: &mut ClientThread, key: &[u8]) -> Result<bool> {
        ready(self.del_in(&Blocking::new(ct), key))
    }

    /// [`KvTable::del`] as a future on an [`AsyncThread`] (see
    /// [`KvTable::get_async`]).
    pub async fn del_async(&self, at: &AsyncThread, key: &[u8]) -> Result<bool> {
        self.del_in(at, key).await
    }

    async fn del_in(&self, io: &impl KvIo, key: &[u8]) -> Result<bool> {
        layout::check_kv(key, None)?;
        let h = Hashes::of(key);
        let until = Instant::now() + self.params.patience;
        // Some entry of the key removed by this call (a round that lost a
        // CAS on a later duplicate goes on from a fresh read).
        let mut removed = false;
        'again: loop {
            let g = self.read_groups(io, &h).await?;
            if g.frozen {
                self.await_split(io, &h, g.sub, until).await?;
                continue;
            }
            let (at, word, owner, later) = match self.search(io, &g, key, &h).await? {
                Found::Miss => return Ok(removed),
                Found::Again => {
                    self.again(until, "del")?;
                    continue;
                }
                Found::Hit {
                    at,
                    word,
                    owner,
                    later,
                    ..
                } => (at, word, owner, later),
            };
            for (a, w, o) in std::iter::once((at, word, owner)).chain(later) {
                if self.t_cas(io, a, w, 0).await? != w {
                    self.again(until, "del")?;
                    continue 'again;
                }
                removed = true;
                self.free_block(io, w, o).await;
            }
            self.tick(io).await;
            return Ok(true);
        }
    }

    /// Puts `mine` (a written block) in place for `key`.
    async fn install(
        &self,
        io: &impl KvIo,
        key: &[u8],
        h: &Hashes,
        mine: u64,
        installed: &mut bool,
    ) -> Result<()> {
        let until = Instant::now() + self.params.patience;
        loop {
            let g = self.read_groups(io, h).await?;
            if g.frozen {
                self.await_split(io, h, g.sub, until).await?;
                continue;
            }
            let (at, old, owner) = match self.search(io, &g, key, h).await? {
                Found::Again => {
                    self.again(until, "put")?;
                    continue;
                }
                Found::Hit {
                    at, word, owner, ..
                } => (at, word, owner),
                Found::Miss => match self.pick_empty(&g) {
                    Some(at) => (at, 0, 0),
                    None => {
                        // Both candidate groups are full: split.
                        self.split_or_retry(io, g.sub).await?;
                        self.again(until, "put")?;
                        continue;
                    }
                },
            };
            if self.t_cas(io, at, old, mine).await? != old {
                self.again(until, "put")?;
                continue;
            }
            *installed = true;
            if old != 0 {
                self.free_block(io, old, owner).await;
            }
            if self.settle(io, key, h, at, mine, until).await? {
                return Ok(());
            }
            // `mine` was taken back out: install it again.
            *installed = false;
            self.again(until, "put")?;
        }
    }

    /// After `mine` went into slot `at`: clears later duplicates of the
    /// key, or, when the key also sits in an earlier slot (a concurrent
    /// insert), takes `mine` back out (false: install it again, as an
    /// update of that slot).
    async fn settle(
        &self,
        io: &impl KvIo,
        key: &[u8],
        h: &Hashes,
        at: u64,
        mine: u64,
        until: Instant,
    ) -> Result<bool> {
        loop {
            let g = self.read_groups(io, h).await?;
            if g.frozen {
                // The split copies whatever is there; look again in the
                // subtable that now holds the key.
                self.await_split(io, h, g.sub, until).await?;
                continue;
            }
            let (first, later) = match self.search(io, &g, key, h).await? {
                Found::Again => {
                    self.again(until, "put")?;
                    continue;
                }
                // Replaced or deleted by a later call: done.
                Found::Miss => return Ok(true),
                Found::Hit {
                    at: a, word, later, ..
                } => ((a, word), later),
            };
            if first.1 == mine {
                for (a, w, o) in later {
                    self.st.borrow_mut().stats.dups_settled += 1;
                    if self.t_cas(io, a, w, 0).await? == w {
                        self.free_block(io, w, o).await;
                    }
                }
                return Ok(true);
            }
            if !later.iter().any(|&(_, w, _)| w == mine) {
                // Someone replaced or removed `mine`: that call came later.
                return Ok(true);
            }
            self.st.borrow_mut().stats.dups_settled += 1;
            // An earlier slot holds the key: take `mine` back (from
            // wherever it is now) and update that one instead.
            let a = later
                .iter()
                .find(|&&(_, w, _)| w == mine)
                .map_or(at, |&(a, _, _)| a);
            return Ok(self.t_cas(io, a, mine, 0).await? != mine);
        }
    }

    /// The first empty slot of the less full candidate group.
    fn pick_empty(&self, g: &Groups) -> Option<u64> {
        let per = SLOTS_PER_GROUP as usize;
        let mut best: Option<(usize, u64)> = None;
        for grp in g.slots.chunks(per) {
            let free = grp.iter().filter(|&&(_, w)| w == 0).count();
            if free == 0 {
                continue;
            }
            if best.is_none_or(|(f, _)| free > f) {
                let at = grp.iter().find(|&&(_, w)| w == 0).map(|&(a, _)| a)?;
                best = Some((free, at));
            }
        }
        best.map(|(_, a)| a)
    }

    /// READs the key's two candidate groups (through the cached
    /// directory).
    async fn read_groups(&self, io: &impl KvIo, h: &Hashes) -> Result<Groups> {
        let s = self.subtable_of(io, h).await?;
        let (g1, g2) = h.groups(self.geo.groups);
        let mut slots = Vec::with_capacity(2 * SLOTS_PER_GROUP as usize);
        let mut frozen = false;
        let ats: Vec<u64> = std::iter::once(g1)
            .chain(g2)
            .map(|g| self.geo.group(s, g))
            .collect();
        let bufs = self.t_read_many(io, &ats, GROUP_BYTES as usize).await?;
        for (&at, b) in ats.iter().zip(&bufs) {
            for (i, w) in layout::words(b).enumerate() {
                frozen |= w & slot::FROZEN != 0;
                slots.push((at + 8 * i as u64, w));
            }
        }
        Ok(Groups {
            sub: s,
            slots,
            frozen,
        })
    }

    /// Looks for `key` among the groups' slots, reading the blocks whose
    /// fingerprint matches.
    async fn search(&self, io: &impl KvIo, g: &Groups, key: &[u8], h: &Hashes) -> Result<Found> {
        let mut first: Option<(u64, u64, Vec<u8>, u16)> = None;
        let mut later = Vec::new();
        let mut others = Vec::new();
        for &(at, w) in &g.slots {
            if slot::is_empty(w) || slot::fp(w) != h.fp() {
                continue;
            }
            let b = self.kv_read(io, slot::off(w), slot::len(w)).await?;
            match layout::decode_block(&b) {
                // Torn, or freed and being reused: the slot has moved on.
                None => return Ok(Found::Again),
                Some((k, v)) if k == key => {
                    let owner = layout::block_owner(&b);
                    if first.is_none() {
                        first = Some((at, w, v.to_vec(), owner));
                    } else {
                        later.push((at, w, owner));
                    }
                }
                Some(_) => others.push((at, w)),
            }
        }
        if first.is_none() {
            // A block of another key under a matching fingerprint may be
            // this key's old block, freed and reused after the slot moved
            // on: check that those slots still hold what was read.
            for (at, w) in others {
                let now = self.t_read(io, at, 8).await?;
                if layout::words(&now).next() != Some(w) {
                    return Ok(Found::Again);
                }
            }
        }
        Ok(match first {
            Some((at, word, value, owner)) => Found::Hit {
                at,
                word,
                value,
                owner,
                later,
            },
            None => Found::Miss,
        })
    }

    /// The subtable the cached directory names for `h` (the directory is
    /// read when nothing is cached).
    async fn subtable_of(&self, io: &impl KvIo, h: &Hashes) -> Result<u64> {
        if self.st.borrow().dir_cache.is_empty() {
            self.load_directory(io).await?;
        }
        let e = self.dir_entry(h);
        if e == 0 || e > self.geo.max_subtables {
            self.load_directory(io).await?;
            let e = self.dir_entry(h);
            if e == 0 || e > self.geo.max_subtables {
                return Err(Error::Invalid(format!(
                    "kv table at node {} offset {:#x}: directory entry {} is {e} (corrupt)",
                    self.node,
                    self.params.base,
                    h.dir_index(self.global_depth())
                )));
            }
            return Ok(e - 1);
        }
        Ok(e - 1)
    }

    /// The cached directory's entry for `h`.
    fn dir_entry(&self, h: &Hashes) -> u64 {
        let st = self.st.borrow();
        st.dir_cache
            .get(h.dir_index(st.depth) as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Reads the global depth, then the directory's entries up to it.
    async fn load_directory(&self, io: &impl KvIo) -> Result<()> {
        let mut d = self.t_word(io, hdr::GLOBAL_DEPTH).await?;
        loop {
            self.st.borrow_mut().stats.dir_loads += 1;
            if d > self.geo.max_depth as u64 {
                return Err(Error::Invalid(format!(
                    "kv table at node {} offset {:#x}: global depth {d} above max {}",
                    self.node, self.params.base, self.geo.max_depth
                )));
            }
            let b = self.t_read(io, self.geo.dir(), 8usize << d).await?;
            // A split that doubled the directory meanwhile may have
            // rewritten the lower half for the new depth: read again.
            let d2 = self.t_word(io, hdr::GLOBAL_DEPTH).await?;
            if d2 == d {
                let mut st = self.st.borrow_mut();
                st.dir_cache = layout::words(&b).collect();
                st.depth = d as u32;
                return Ok(());
            }
            d = d2;
        }
    }

    /// Waits until the directory no longer sends `h` to subtable `s` (a
    /// split retires it); past the lock's term, a read-write handle takes
    /// the resize lock and finishes the split itself.
    async fn await_split(&self, io: &impl KvIo, h: &Hashes, s: u64, until: Instant) -> Result<()> {
        self.st.borrow_mut().stats.retries += 1;
        let t0 = Instant::now();
        let help_after = Duration::from_nanos(self.params.lock_ns);
        loop {
            self.load_directory(io).await?;
            if self.subtable_of(io, h).await? != s {
                return Ok(());
            }
            if self.access == Access::ReadWrite && t0.elapsed() >= help_after {
                // The splitter may be dead: take the lock (once its lease
                // ends) and finish what it recorded.
                self.split_or_retry(io, s).await?;
                if Instant::now() < until {
                    continue;
                }
            }
            if Instant::now() >= until {
                return Err(Error::Timeout(format!(
                    "kv table at node {} offset {:#x}: subtable {s} stayed frozen (a split did \
                     not finish) for {:?}",
                    self.node, self.params.base, self.params.patience
                )));
            }
            io.pause(Duration::from_micros(50)).await;
        }
    }

    /// Counts a retry; fails once `until` has passed.
    fn again(&self, until: Instant, what: &str) -> Result<()> {
        self.st.borrow_mut().stats.retries += 1;
        if Instant::now() >= until {
            return Err(Error::Timeout(format!(
                "kv {what} on node {} offset {:#x}: no progress for {:?} (contention)",
                self.node, self.params.base, self.params.patience
            )));
        }
        Ok(())
    }

    /// A block of `size` bytes: a spare one, or [`ALLOC_AHEAD`] new ones
    /// allocated with their calls in flight together (one at a time when
    /// a blocking thread has other calls in flight).
    async fn alloc_block(&self, io: &impl KvIo, size: usize) -> Result<u64> {
        let spare = self.st.borrow_mut().spare.get_mut(&size).and_then(Vec::pop);
        if let Some(off) = spare {
            return Ok(off);
        }
        let (node, dir, hint) = (self.node, self.dir, self.params.alloc_hint);
        let mut got = io
            .alloc_blocks(node, dir, size as u64, hint, ALLOC_AHEAD)
            .await?;
        let first = got.pop().ok_or_else(|| {
            Error::NoMem(format!(
                "kv put: node {node} dir {dir} has no free block of {size} bytes (allocator hint \
                 {hint})"
            ))
        })?;
        self.st
            .borrow_mut()
            .spare
            .entry(size)
            .or_default()
            .extend(got);
        Ok(first)
    }

    /// Queues the block a replaced or removed slot word pointed at for
    /// freeing, when this node allocated it (`owner`); another node's
    /// block goes back to it through its free ring, or is counted as
    /// leaked (the memory node would refuse the free).
    async fn free_block(&self, io: &impl KvIo, w: u64, owner: u16) {
        if owner != self.me {
            let back = self.hand_back(io, w, owner).await.unwrap_or(false);
            let mut st = self.st.borrow_mut();
            if back {
                st.stats.handed_back += 1;
            } else {
                st.stats.leaked += 1;
            }
            return;
        }
        let full = {
            let mut st = self.st.borrow_mut();
            st.to_free.push(w);
            st.to_free.len() >= FREE_BATCH
        };
        if full {
            self.flush_frees(io).await;
        }
    }

    /// Frees the queued blocks with their calls in flight together;
    /// blocks of other nodes (refused by the memory node) are counted as
    /// leaked.
    async fn flush_frees(&self, io: &impl KvIo) {
        let (node, dir, hint) = (self.node, self.dir, self.params.alloc_hint);
        let blocks: Vec<(u64, u64)> = self
            .st
            .borrow_mut()
            .to_free
            .drain(..)
            .map(|w| (slot::off(w), slot::len(w) as u64))
            .collect();
        if blocks.is_empty() {
            return;
        }
        let leaked = io.dealloc_blocks(node, dir, hint, &blocks).await;
        self.st.borrow_mut().stats.leaked += leaked as u64;
    }

    /// Puts another node's block in that node's free ring: reserves a
    /// position with a FAA on the ring's tail and WRITEs the entry with
    /// the position's lap. False when the owner has no ring or its ring is
    /// full.
    async fn hand_back(&self, io: &impl KvIo, w: u64, owner: u16) -> Result<bool> {
        let (nodes, len) = (self.geo.ring_nodes, self.geo.ring_len);
        if owner as u64 >= nodes {
            return Ok(false);
        }
        let base = self.geo.ring(owner as u64);
        let ht: Vec<u64> = layout::words(&self.t_read(io, base, 16).await?).collect();
        if ht[1].wrapping_sub(ht[0]) >= len {
            return Ok(false);
        }
        let pos = self.t_faa(io, base + 8, 1).await?;
        let e = slot::pack(
            (pos / len) as u8,
            (slot::len(w) / layout::BLOCK_UNIT) as u64,
            slot::off(w),
        ) | layout::RING_VALID;
        self.t_write(io, base + 16 + 8 * (pos % len), &e.to_le_bytes())
            .await?;
        Ok(true)
    }

    /// Takes the entries other nodes put in this node's free ring (a CAS
    /// on the head claims them) and queues their blocks for freeing.
    async fn drain_ring(&self, io: &impl KvIo) -> Result<()> {
        self.st.borrow_mut().since_drain = 0;
        let (nodes, len) = (self.geo.ring_nodes, self.geo.ring_len);
        if self.me as u64 >= nodes || self.access != Access::ReadWrite {
            return Ok(());
        }
        let base = self.geo.ring(self.me as u64);
        let ht: Vec<u64> = layout::words(&self.t_read(io, base, 16).await?).collect();
        let (head, tail) = (ht[0], ht[1]);
        if head == tail {
            return Ok(());
        }
        let es: Vec<u64> =
            layout::words(&self.t_read(io, base + 16, 8 * len as usize).await?).collect();
        let mut p = head;
        let mut got = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            while p < tail && p < head + len {
                let e = es[(p % len) as usize];
                let lap = (p / len) as u8;
                if e & layout::RING_VALID != 0 && slot::fp(e) == lap {
                    got.push(e & !layout::RING_VALID & !(0xff << 55));
                } else if e & layout::RING_VALID != 0 && slot::fp(e) == lap.wrapping_add(1) {
                    // A producer of the next lap wrote over it (the ring
                    // was full): that block is lost to the ring.
                    st.stats.leaked += 1;
                } else {
                    // Not written yet; a producer that died after its FAA
                    // would block the ring: skip it after a second.
                    match st.stalled {
                        Some((q, t0)) if q == p && t0.elapsed() > Duration::from_secs(1) => {}
                        Some((q, _)) if q == p => break,
                        _ => {
                            st.stalled = Some((p, Instant::now()));
                            break;
                        }
                    }
                }
                p += 1;
            }
        }
        if p == head {
            return Ok(());
        }
        if self.t_cas(io, base, head, p).await? == head {
            let mut st = self.st.borrow_mut();
            st.stats.returned += got.len() as u64;
            st.to_free.extend(got);
        }
        Ok(())
    }

    /// Takes what other nodes handed back through this node's free ring
    /// and frees it (also done every 64 puts and dels, and at relinquish).
    pub fn drain_free_ring(&mut self, ct: &mut ClientThread) -> Result<()> {
        let io = Blocking::new(ct);
        ready(self.drain_ring(&io))?;
        ready(self.flush_frees(&io));
        Ok(())
    }

    /// Test hook: a client that dies between reserving a position in
    /// `owner`'s free ring (the FAA) and writing its entry.
    #[doc(hidden)]
    pub fn reserve_ring_position_and_die(
        &mut self,
        ct: &mut ClientThread,
        owner: u16,
    ) -> Result<u64> {
        let base = self.geo.ring(owner as u64);
        ready(self.t_faa(&Blocking::new(ct), base + 8, 1))
    }

    /// Counts a put or del; every 64, looks at this node's free ring.
    async fn tick(&self, io: &impl KvIo) {
        let due = {
            let mut st = self.st.borrow_mut();
            st.since_drain += 1;
            st.since_drain >= 64
        };
        if due {
            if let Err(e) = self.drain_ring(io).await {
                tracing::debug!("kv: free ring: {e}");
            }
            if self.st.borrow().to_free.len() >= FREE_BATCH {
                self.flush_frees(io).await;
            }
        }
    }

    /// Frees the queued and the spare blocks.
    async fn free_all(&self, io: &impl KvIo) {
        if let Err(e) = self.drain_ring(io).await {
            tracing::debug!("kv: free ring: {e}");
        }
        {
            let mut st = self.st.borrow_mut();
            for (size, offs) in std::mem::take(&mut st.spare) {
                let units = (size / layout::BLOCK_UNIT) as u64;
                for off in offs {
                    st.to_free.push(slot::pack(0, units, off));
                }
            }
        }
        self.flush_frees(io).await;
    }

    fn refused(&self, rc: Rc, what: &str, off: u64) -> Error {
        Error::Refused {
            rc,
            ctx: format!(
                "kv table at node {} buffer offset {:#x} ({:?} mode, {:?}): {what} at {off:#x}",
                self.node, self.params.base, self.mode, self.access
            ),
        }
    }

    async fn t_read(&self, io: &impl KvIo, off: u64, len: usize) -> Result<Vec<u8>> {
        match io.read(&self.table, len, off, self.flag).await? {
            (Rc::Ok, b) => Ok(b),
            (rc, _) => Err(self.refused(rc, "table read", off)),
        }
    }

    /// READs `len` bytes at each of `ats`: in one batch where the leases
    /// never expire and the mode is one-sided, else one by one.
    async fn t_read_many(&self, io: &impl KvIo, ats: &[u64], len: usize) -> Result<Vec<Vec<u8>>> {
        let batch = ats.len() > 1 && {
            let t = self.table.borrow();
            t.live
                && t.never_expires()
                && self.flag & (rw::USE_TWO_SIDED | rw::WITH_AUTO_EXTEND) == 0
        };
        if !batch {
            let mut out = Vec::with_capacity(ats.len());
            for &at in ats {
                out.push(self.t_read(io, at, len).await?);
            }
            return Ok(out);
        }
        match io
            .read_batch(&self.batch, &self.table, ats, len, self.flag)
            .await?
        {
            Ok(bufs) => Ok(bufs),
            Err((rc, at)) => Err(self.refused(rc, "batched table read", at)),
        }
    }

    async fn t_word(&self, io: &impl KvIo, off: u64) -> Result<u64> {
        let b = self.t_read(io, off, 8).await?;
        let w = layout::words(&b).next().unwrap_or(0);
        Ok(w)
    }

    async fn t_write(&self, io: &impl KvIo, off: u64, src: &[u8]) -> Result<()> {
        match io.write(&self.table, src, off, self.flag).await? {
            Rc::Ok => Ok(()),
            rc => Err(self.refused(rc, "table write", off)),
        }
    }

    /// CAS on a table word; returns the old value.
    async fn t_cas(&self, io: &impl KvIo, off: u64, cmp: u64, swap: u64) -> Result<u64> {
        match io.cas(&self.table, off, cmp, swap, self.flag).await? {
            (Rc::Ok, old) => Ok(old),
            (rc, _) => Err(self.refused(rc, "table CAS", off)),
        }
    }

    /// FAA on a table word (a free ring's tail); returns the old value.
    async fn t_faa(&self, io: &impl KvIo, off: u64, add: i64) -> Result<u64> {
        match io.faa(&self.table, off, add, self.flag).await? {
            (Rc::Ok, old) => Ok(old),
            (rc, _) => Err(self.refused(rc, "free ring FAA", off)),
        }
    }

    /// The block at buffer offset `off` (inside the kv lease).
    fn kv_range(&self, off: u64, len: usize) -> Result<u64> {
        off.checked_sub(self.kv_base)
            .filter(|r| r.saturating_add(len as u64) <= self.kv_size)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "kv table at node {} offset {:#x}: block {off:#x}+{len} outside the \
                     allocation buffer (corrupt slot)",
                    self.node, self.params.base
                ))
            })
    }

    async fn kv_read(&self, io: &impl KvIo, off: u64, len: usize) -> Result<Vec<u8>> {
        let r = self.kv_range(off, len)?;
        match io.read(&self.kv, len, r, self.flag).await? {
            (Rc::Ok, b) => Ok(b),
            (rc, _) => Err(self.refused(rc, "block read", off)),
        }
    }

    async fn kv_write(&self, io: &impl KvIo, off: u64, src: &[u8]) -> Result<()> {
        let r = self.kv_range(off, src.len())?;
        match io.write(&self.kv, src, r, self.flag).await? {
            Rc::Ok => Ok(()),
            rc => Err(self.refused(rc, "block write", off)),
        }
    }
}

/// An error unless `l` was granted.
fn granted(l: &Lease, what: &str, node: u16, off: u64) -> Result<()> {
    if l.success() {
        return Ok(());
    }
    Err(Error::Refused {
        rc: Rc::Invalid,
        ctx: format!(
            "{what} at node {node} buffer offset {off:#x} was not granted (acquire status {})",
            l.status
        ),
    })
}

/// Posts `n` calls (`post(ct, i)`) as far as the thread's calls in flight
/// allow and waits for all of them; the completions in the order they
/// came. A post that fails stops the posting; the error is returned once
/// nothing is in flight.
fn post_all(
    ct: &mut ClientThread,
    n: usize,
    mut post: impl FnMut(&mut ClientThread, u64) -> Result<Post>,
) -> Result<Vec<crate::client::Completion>> {
    let mut out = Vec::with_capacity(n);
    let (mut next, mut pending) = (0usize, 0usize);
    let mut err = None;
    while (next < n && err.is_none()) || pending > 0 {
        while next < n && err.is_none() {
            match post(ct, next as u64) {
                Ok(Post::Posted) => {
                    pending += 1;
                    next += 1;
                }
                Ok(Post::Retry) => break,
                Err(e) => err = Some(e),
            }
        }
        if pending == 0 {
            continue;
        }
        for c in ct.wait(pending, Duration::from_millis(100))? {
            pending -= 1;
            out.push(c);
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
