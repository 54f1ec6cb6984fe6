//! Connection set-up: the control thread accepts shm and tcp channels
//! towards local QPs and maps the memory blocks initiators share.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::serve_tcp::InTcp;
use super::sys::{efd_signal, epoll_ctl};
use super::NicInner;
use crate::fabric::mem::MemBlock;
use crate::fabric::soft::qp::Inbound;
use crate::fabric::soft::shm::{self, ctl, InShm};
use crate::fabric::soft::tcp::{self, Framed};
use crate::fabric::FabricError;

pub(super) fn control_loop(nic: Arc<NicInner>, ul: UnixListener, tl: TcpListener) {
    let _ = ul.set_nonblocking(true);
    let _ = tl.set_nonblocking(true);
    while !nic.stop.load(Ordering::Acquire) {
        let chans: Vec<Arc<InShm>> = nic
            .in_shm
            .read()
            .iter()
            .filter(|c| !c.dead.load(Ordering::Relaxed))
            .cloned()
            .collect();
        let mut fds = vec![
            libc::pollfd {
                fd: nic.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ul.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        for c in &chans {
            fds.push(libc::pollfd {
                fd: c.ctrl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            while let Ok((s, _)) = ul.accept() {
                accept_shm(&nic, s);
            }
        }
        if fds[2].revents != 0 {
            while let Ok((s, _)) = tl.accept() {
                if !nic.admit_tcp() {
                    continue; // dropping `s` closes it
                }
                accept_tcp(&nic, s);
            }
        }
        let mut removed = false;
        for (c, f) in chans.iter().zip(&fds[3..]) {
            if f.revents == 0 {
                continue;
            }
            if f.revents & libc::POLLIN != 0 && handle_ctl(c).is_ok() {
                continue;
            }
            c.kill("initiator closed its control socket");
            removed = true;
        }
        if removed {
            nic.in_shm
                .write()
                .retain(|c| !c.dead.load(Ordering::Relaxed));
            nic.in_shm_ver.fetch_add(1, Ordering::Release);
        }
    }
}

fn handle_ctl(c: &InShm) -> std::io::Result<()> {
    let mut m = [0u8; 32];
    let fd = shm::recv_with_fd(&c.ctrl, &mut m)?;
    let (kind, id, len, _) = shm::ctl_parse(&m);
    if kind != ctl::BLOCK {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let ok = fd
        .filter(shm::check_sealed)
        .and_then(|fd| MemBlock::from_fd(fd, len as usize, id).ok());
    match ok {
        Some(b) => {
            c.blocks.write().insert(id, Arc::new(b));
            c.blocks_ver.fetch_add(1, Ordering::Release);
            shm::reply(&c.ctrl, ctl::OK, 0, None);
        }
        None => shm::reply(&c.ctrl, ctl::ERR, 1, None),
    }
    Ok(())
}

fn accept_shm(nic: &Arc<NicInner>, s: UnixStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut m = [0u8; 32];
    let Ok(fd) = shm::recv_with_fd(&s, &mut m) else {
        return;
    };
    let (kind, dst, _src, len) = shm::ctl_parse(&m);
    let q = nic.qps.read().get(&dst).cloned();
    // Refusal codes: 1 no such QP, 2 bad segment, 3 mapping failed,
    // 4 not a hello, 5 no segment fd.
    if kind != ctl::HELLO {
        shm::reply(&s, ctl::ERR, 4, None);
        return;
    }
    let Some(fd) = fd else {
        shm::reply(&s, ctl::ERR, 5, None);
        return;
    };
    let Some(q) = q else {
        // Code 1: no such QP on this NIC.
        shm::reply(&s, ctl::ERR, 1, None);
        return;
    };
    if !shm::check_sealed(&fd)
        || (len as usize) < shm::seg_len()
        || len as usize > shm::seg_len() + 4096
    {
        shm::reply(&s, ctl::ERR, 2, None);
        return;
    }
    let ch = MemBlock::from_fd(fd, len as usize, 0).and_then(|b| {
        InShm::new(
            Arc::new(b),
            s.try_clone().map_err(|e| FabricError::io("dup", e))?,
            Arc::downgrade(&q),
        )
    });
    match ch {
        Ok(ch) => {
            let ch = Arc::new(ch);
            q.attach_inbound(Inbound::Shm(ch.clone()));
            nic.in_shm.write().push(ch);
            nic.in_shm_ver.fetch_add(1, Ordering::Release);
            shm::reply(&s, ctl::OK, 0, Some(nic.doorbell.as_raw_fd()));
            efd_signal(nic.doorbell.as_raw_fd());
        }
        Err(e) => {
            tracing::warn!("refusing shm channel: {e}");
            shm::reply(&s, ctl::ERR, 3, None);
        }
    }
}

fn accept_tcp(nic: &Arc<NicInner>, mut s: std::net::TcpStream) {
    use std::io::{Read, Write};
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut h = [0u8; 16];
    if s.read_exact(&mut h).is_err() {
        return;
    }
    let Ok((dst, _src)) = tcp::parse_hello(&h) else {
        let _ = s.write_all(&tcp::hello_reply(false));
        return;
    };
    let Some(q) = nic.qps.read().get(&dst).cloned() else {
        let _ = s.write_all(&tcp::hello_reply(false));
        return;
    };
    if s.write_all(&tcp::hello_reply(true)).is_err() {
        return;
    }
    let _ = s.set_read_timeout(None);
    let fd = s.as_raw_fd();
    let Ok(f) = Framed::new(s) else { return };
    let token = nic.next_token.fetch_add(1, Ordering::Relaxed);
    let ch = Arc::new(InTcp::new(f, Arc::downgrade(&q), token, fd));
    q.attach_inbound(Inbound::Tcp(ch.clone()));
    nic.in_tcp.lock().insert(token, ch);
    if let Err(e) = epoll_ctl(
        nic.epoll.as_raw_fd(),
        libc::EPOLL_CTL_ADD,
        fd,
        libc::EPOLLIN as u32,
        token,
    ) {
        tracing::warn!("epoll add: {e}");
    }
}
