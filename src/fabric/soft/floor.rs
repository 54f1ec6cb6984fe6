//! The shared-memory floor: the best case of a request/response between two
//! processes through shared memory, both busy-polling, with the server
//! copying `size` bytes per response as a READ would. Benchmarks report the
//! soft NIC's shm link as a ratio to this.
//!
//! Segment layout: request counter at 0, response counter at 64, stop flag at
//! 128, park flag at 192, source data at 4096, response data at 4096 + 64
//! KiB.
//!
//! The benchmark interleaves floor and fabric measurements so both see the
//! same machine state; meanwhile the idle side must not spin, so a parked
//! server sleeps until the client clears the park flag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fabric::mem::MemBlock;
use crate::fabric::{FabricError, Result};

const REQ: usize = 0;
const RESP: usize = 64;
const STOP: usize = 128;
const PARK: usize = 192;
const SRC: usize = 4096;
const DST: usize = 4096 + (64 << 10);
/// Segment bytes.
pub const SEG: usize = DST + (64 << 10);
/// Largest response size.
pub const MAX_SIZE: usize = 64 << 10;

/// One side's view of a floor segment.
pub struct Floor {
    seg: Arc<MemBlock>,
}

impl Floor {
    /// Creates a segment (client side).
    pub fn create() -> Result<Floor> {
        Ok(Floor {
            seg: Arc::new(MemBlock::new(SEG, "floor")?),
        })
    }

    /// Opens a segment created by process `pid` as its fd `fd` (server side).
    pub fn open(pid: u32, fd: i32) -> Result<Floor> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|e| FabricError::io(format!("opening floor segment {pid}/{fd}"), e))?;
        let fd = std::os::fd::OwnedFd::from(f);
        Ok(Floor {
            seg: Arc::new(MemBlock::from_fd(fd, SEG, 0)?),
        })
    }

    /// The fd number to pass to the server process.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.seg.fd().as_raw_fd()
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        // SAFETY: off is 8-aligned and inside the segment; the block lives
        // as long as self.
        unsafe { &*(self.seg.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Server loop: answers requests until stopped, the parent dies, or
    /// `limit` passes.
    pub fn serve(&self, size: usize, limit: Duration) {
        let size = size.min(MAX_SIZE);
        let t0 = Instant::now();
        let ppid = std::os::unix::process::parent_id();
        let mut done = self.word(RESP).load(Ordering::Acquire);
        let mut idle = 0u64;
        loop {
            let req = self.word(REQ).load(Ordering::Acquire);
            if req > done {
                // SAFETY: SRC and DST ranges of `size` bytes are inside the
                // segment (size <= MAX_SIZE).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.seg.as_ptr().add(SRC),
                        self.seg.as_ptr().add(DST),
                        size,
                    )
                };
                done += 1;
                self.word(RESP).store(done, Ordering::Release);
                idle = 0;
                continue;
            }
            idle += 1;
            if idle % 1024 == 0 && self.word(PARK).load(Ordering::Relaxed) != 0 {
                // Parked: sleep until resumed (or stopped, or orphaned).
                while self.word(PARK).load(Ordering::Acquire) != 0 {
                    if self.word(STOP).load(Ordering::Relaxed) != 0
                        || std::os::unix::process::parent_id() != ppid
                        || t0.elapsed() > limit
                    {
                        return;
                    }
                    // Long naps: a parked server must not disturb the
                    // measurement running meanwhile (the client warms up).
                    std::thread::sleep(Duration::from_micros(500));
                }
                idle = 0;
                continue;
            }
            if idle % (1 << 20) == 0 {
                if self.word(STOP).load(Ordering::Relaxed) != 0
                    || std::os::unix::process::parent_id() != ppid
                    || t0.elapsed() > limit
                {
                    return;
                }
                if idle > 1 << 26 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            std::hint::spin_loop();
        }
    }

    /// One request/response; returns when the response arrived.
    #[inline]
    pub fn round_trip(&self, n: u64) {
        self.word(REQ).store(n, Ordering::Release);
        while self.word(RESP).load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
    }

    /// Pipelined: keeps up to `depth` requests outstanding until `total`
    /// responses arrived after `start`. Returns the last sequence number.
    pub fn pipelined(&self, start: u64, total: u64, depth: u64) -> u64 {
        let end = start + total;
        let mut posted = start;
        loop {
            let done = self.word(RESP).load(Ordering::Acquire);
            if done >= end {
                return end;
            }
            if posted < end && posted - done < depth {
                posted = (posted + 32).min(end).min(done + depth);
                self.word(REQ).store(posted, Ordering::Release);
            }
            std::hint::spin_loop();
        }
    }

    /// Parks the server (it sleeps instead of spinning) until `resume`.
    pub fn park(&self) {
        self.word(PARK).store(1, Ordering::Release);
    }

    /// Resumes a parked server (it may take a few tens of microseconds to
    /// spin again: warm up before measuring).
    pub fn resume(&self) {
        self.word(PARK).store(0, Ordering::Release);
    }

    /// Tells the server to exit.
    pub fn stop(&self) {
        self.word(STOP).store(1, Ordering::Release);
    }
}
