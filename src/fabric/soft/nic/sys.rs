//! The system calls the NIC's threads wait with: eventfds and epoll.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::fabric::{FabricError, Result};

pub(super) fn eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(FabricError::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn efd_signal(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: write 8 bytes to an eventfd.
    unsafe {
        libc::write(fd, one.as_ptr() as *const libc::c_void, 8);
    }
}

pub(super) fn efd_drain(fd: RawFd) {
    let mut b = [0u8; 8];
    // SAFETY: read 8 bytes from a non-blocking eventfd.
    unsafe {
        libc::read(fd, b.as_mut_ptr() as *mut libc::c_void, 8);
    }
}

pub(super) fn epoll_ctl(
    ep: RawFd,
    op: i32,
    fd: RawFd,
    events: u32,
    token: u64,
) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) const STOP_TOKEN: u64 = u64::MAX;
