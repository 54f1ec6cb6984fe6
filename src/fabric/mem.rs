//! NIC-owned registered memory.
//!
//! Memory the NIC may read or write behind the program's back is never
//! reachable through `&`/`&mut` references: it is raw memory behind a
//! pointer, accessed by copies and by atomics on 8-byte words. Blocks are
//! `memfd` mappings (`MAP_SHARED`) so that a soft NIC in another process can
//! map a client's local buffers and place data into them directly.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Access, FabricError, Result};

static NEXT_BLOCK_ID: AtomicU32 = AtomicU32::new(1);

/// A mapping of zeroed memory backed by a memfd.
pub struct MemBlock {
    ptr: *mut u8,
    len: usize,
    fd: OwnedFd,
    id: u32,
}

// SAFETY: the block is plain memory; all access goes through raw-pointer
// copies and atomics, never through references that could alias.
unsafe impl Send for MemBlock {}
// SAFETY: as above; concurrent access is the documented RDMA model.
unsafe impl Sync for MemBlock {}

impl MemBlock {
    /// Creates a block of `len` bytes (rounded up to a page), reserving its
    /// pages now so that a full /dev/shm is an error here, not a SIGBUS later.
    pub fn new(len: usize, name: &str) -> Result<MemBlock> {
        if len == 0 {
            return Err(FabricError::Invalid("memory block of 0 bytes".into()));
        }
        let page = 4096usize;
        let len = len
            .checked_add(page - 1)
            .ok_or_else(|| FabricError::Invalid(format!("memory block of {len} bytes")))?
            / page
            * page;
        let cname = std::ffi::CString::new(format!("patronus-{name}"))
            .map_err(|_| FabricError::Invalid("block name has a NUL".into()))?;
        // SAFETY: cname is a valid C string; flags are valid.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(FabricError::io(
                "memfd_create",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd was just returned by memfd_create and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid fd, non-negative length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(FabricError::io(
                format!("ftruncate memfd to {len} bytes"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: valid fd and range.
        let rc = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len as libc::off_t) };
        if rc != 0 {
            return Err(FabricError::io(
                format!("reserving {len} bytes of shared memory (is /dev/shm full?)"),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        let ptr = map_fd(&fd, len)?;
        Ok(MemBlock {
            ptr,
            len,
            fd,
            id: NEXT_BLOCK_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Maps a block received from a peer (its fd and length).
    pub fn from_fd(fd: OwnedFd, len: usize, id: u32) -> Result<MemBlock> {
        // SAFETY: fstat on a valid fd into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(FabricError::io(
                "fstat peer block",
                std::io::Error::last_os_error(),
            ));
        }
        if len == 0 || (st.st_size as u64) < len as u64 {
            return Err(FabricError::Invalid(format!(
                "peer block claims {len} bytes, file has {}",
                st.st_size
            )));
        }
        let ptr = map_fd(&fd, len)?;
        Ok(MemBlock { ptr, len, fd, id })
    }

    /// Block id (unique in this process; peers use the sender's id).
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false (blocks are never empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Base pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The memfd, to pass to a peer NIC.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Checks `[off, off+len)` lies inside the block; returns the pointer.
    #[inline]
    pub fn range(&self, off: u64, len: u64) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: off <= len of the mapping, so the result stays in bounds.
        Some(unsafe { self.ptr.add(off as usize) })
    }
}

fn map_fd(fd: &OwnedFd, len: usize) -> Result<*mut u8> {
    // SAFETY: mapping a valid fd with a valid length; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(FabricError::io(
            format!("mmap {len} bytes"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(p as *mut u8)
}

impl Drop for MemBlock {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap; nothing uses the block
        // any more (every user holds an Arc).
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// A registered memory region: a range of a [`MemBlock`] with keys.
pub struct Mr {
    pub(crate) block: Arc<MemBlock>,
    pub(crate) block_off: u64,
    len: u64,
    lkey: AtomicU32,
    rkey: AtomicU32,
    access: AtomicU32,
    /// Backend-specific handle (soft: key-table index; verbs: ibv_mr*).
    pub(crate) handle: u64,
}

impl std::fmt::Debug for Mr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mr")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .finish()
    }
}

impl Mr {
    pub(crate) fn new(
        block: Arc<MemBlock>,
        block_off: u64,
        len: u64,
        keys: (u32, u32),
        access: Access,
        handle: u64,
    ) -> Mr {
        Mr {
            block,
            block_off,
            len,
            lkey: AtomicU32::new(keys.0),
            rkey: AtomicU32::new(keys.1),
            access: AtomicU32::new(access.0),
            handle,
        }
    }

    pub(crate) fn set_keys(&self, lkey: u32, rkey: u32, access: Access) {
        self.lkey.store(lkey, Ordering::Release);
        self.rkey.store(rkey, Ordering::Release);
        self.access.store(access.0, Ordering::Release);
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.lkey.load(Ordering::Acquire)
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.rkey.load(Ordering::Acquire)
    }
    /// Access rights.
    pub fn access(&self) -> Access {
        Access(self.access.load(Ordering::Acquire))
    }
    /// Virtual address of the first byte (what remote requests name).
    pub fn addr(&self) -> u64 {
        self.block.as_ptr() as u64 + self.block_off
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for a 0-byte region (never created).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Raw pointer to the first byte, for FFI callers that hand out buffers.
    pub fn as_ptr(&self) -> *mut u8 {
        // SAFETY: block_off < block.len by construction.
        unsafe { self.block.as_ptr().add(self.block_off as usize) }
    }
    /// The block this region lies in.
    pub fn block(&self) -> &Arc<MemBlock> {
        &self.block
    }
    /// Offset of this region inside its block.
    pub fn block_offset(&self) -> u64 {
        self.block_off
    }

    /// True when `ptr` lies inside the region; returns its offset.
    pub fn offset_of(&self, ptr: *const u8) -> Option<u64> {
        let base = self.as_ptr() as usize;
        let p = ptr as usize;
        if p >= base && p < base + self.len as usize {
            Some((p - base) as u64)
        } else {
            None
        }
    }

    #[inline]
    fn ptr_at(&self, off: u64, len: u64, what: &str) -> Result<*mut u8> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: off + len <= self.len, inside the block.
                Ok(unsafe { self.as_ptr().add(off as usize) })
            }
            _ => Err(FabricError::Invalid(format!(
                "{what}: range [{off}, +{len}) outside region of {} bytes",
                self.len
            ))),
        }
    }

    /// Copies `dst.len()` bytes at `off` into `dst`.
    pub fn read(&self, off: u64, dst: &mut [u8]) -> Result<()> {
        let p = self.ptr_at(off, dst.len() as u64, "read")?;
        // SAFETY: p is valid for dst.len() bytes; dst is caller memory that
        // cannot overlap NIC memory handed out as references (none are).
        unsafe { std::ptr::copy(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Appends the `len` bytes at `off` to `dst` (nothing is zeroed first).
    pub fn read_append(&self, off: u64, len: usize, dst: &mut Vec<u8>) -> Result<()> {
        let p = self.ptr_at(off, len as u64, "read")?;
        // SAFETY: p is valid for len bytes (checked by ptr_at); the slice
        // lives only for the copy, into memory the NIC never hands out.
        dst.extend_from_slice(unsafe { std::slice::from_raw_parts(p, len) });
        Ok(())
    }

    /// Starts loading the cache line at `off` into this core's cache (a
    /// hint: a NIC or another core wrote it and the caller reads it soon,
    /// so several such loads overlap instead of stalling one after the
    /// other). An offset outside the region does nothing.
    #[inline]
    pub fn prefetch(&self, off: u64) {
        #[cfg(target_arch = "x86_64")]
        if let Ok(p) = self.ptr_at(off, 1, "prefetch") {
            // SAFETY: a prefetch has no architectural effect (it cannot
            // fault), and `p` points into this region anyway.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    p as *const i8,
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Copies `src` to `off`.
    pub fn write(&self, off: u64, src: &[u8]) -> Result<()> {
        let p = self.ptr_at(off, src.len() as u64, "write")?;
        // SAFETY: p is valid for src.len() bytes.
        unsafe { std::ptr::copy(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Fills `[off, off+len)` with `byte`.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<()> {
        let p = self.ptr_at(off, len, "fill")?;
        // SAFETY: p is valid for len bytes.
        unsafe { std::ptr::write_bytes(p, byte, len as usize) };
        Ok(())
    }

    /// The 8-byte word at `off` as an atomic (off must be 8-aligned).
    pub fn atomic_u64(&self, off: u64) -> Result<&AtomicU64> {
        let p = self.ptr_at(off, 8, "atomic")?;
        if (p as usize) % 8 != 0 {
            return Err(FabricError::Invalid(format!(
                "atomic at offset {off} is not 8-byte aligned"
            )));
        }
        // SAFETY: p is 8-aligned, in bounds, and lives as long as &self (the
        // block is kept alive by the Arc). Concurrent NIC access to the same
        // word uses atomics too.
        Ok(unsafe { &*(p as *const AtomicU64) })
    }

    /// Atomic load of the u64 at `off`.
    pub fn load_u64(&self, off: u64) -> Result<u64> {
        Ok(self.atomic_u64(off)?.load(Ordering::SeqCst))
    }
    /// Atomic store of the u64 at `off`.
    pub fn store_u64(&self, off: u64, v: u64) -> Result<()> {
        self.atomic_u64(off)?.store(v, Ordering::SeqCst);
        Ok(())
    }
    /// Atomic compare-and-swap at `off`; returns the old value.
    pub fn cas_u64(&self, off: u64, compare: u64, swap: u64) -> Result<u64> {
        let a = self.atomic_u64(off)?;
        Ok(
            match a.compare_exchange(compare, swap, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(v) | Err(v) => v,
            },
        )
    }
    /// Atomic fetch-and-add at `off`; returns the old value.
    pub fn faa_u64(&self, off: u64, add: u64) -> Result<u64> {
        Ok(self.atomic_u64(off)?.fetch_add(add, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mr(len: usize) -> Mr {
        let b = Arc::new(MemBlock::new(len, "test").unwrap());
        Mr::new(b, 0, len as u64, (1, 1), Access::ALL, 0)
    }

    #[test]
    fn bounds_are_checked() {
        let m = mr(4096);
        let mut buf = [0u8; 16];
        assert!(m.read(4080, &mut buf).is_ok());
        assert!(m.read(4081, &mut buf).is_err());
        assert!(m.read(u64::MAX, &mut buf).is_err());
        assert!(m.write(u64::MAX - 3, &buf).is_err());
        assert!(m.atomic_u64(4).is_err());
        assert!(m.atomic_u64(4088).is_ok());
        assert!(m.atomic_u64(4096).is_err());
    }

    #[test]
    fn atomics_and_copies() {
        let m = mr(8192);
        m.write(100, b"hello").unwrap();
        let mut b = [0u8; 5];
        m.read(100, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(m.faa_u64(8, 5).unwrap(), 0);
        assert_eq!(m.cas_u64(8, 5, 9).unwrap(), 5);
        assert_eq!(m.cas_u64(8, 5, 11).unwrap(), 9);
        assert_eq!(m.load_u64(8).unwrap(), 9);
    }
}
