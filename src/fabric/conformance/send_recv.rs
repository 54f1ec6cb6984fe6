//! Two-sided SEND/RECV.

use super::{fail, Pair};
use crate::fabric::{RecvWr, Result, WcOpcode, WcStatus, WrOp};

/// SEND/RECV: in order, byte exact, receive too small = LocLenErr.
pub fn check_send_recv(p: &Pair) -> Result<()> {
    for i in 0..64u64 {
        p.server.qp.post_recv(&[RecvWr {
            wr_id: i,
            local: p.server.sge(i * 512, 512),
        }])?;
    }
    for i in 0..64u64 {
        let msg = vec![i as u8; (i as usize * 7) % 500 + 1];
        p.client.buf.write(0, &msg)?;
        let wc = p.client.run(WrOp::Send {
            local: p.client.sge(0, msg.len() as u32),
        })?;
        if wc.status != WcStatus::Success {
            return fail(format!("SEND {i}: {wc:?}"));
        }
        let r = p.server.wait()?;
        if r.opcode != WcOpcode::Recv || r.wr_id != i || r.byte_len as usize != msg.len() {
            return fail(format!("RECV {i}: {r:?}"));
        }
        let mut got = vec![0u8; msg.len()];
        p.server.buf.read(i * 512, &mut got)?;
        if got != msg {
            return fail(format!("RECV {i}: bytes differ"));
        }
    }
    p.server.qp.post_recv(&[RecvWr {
        wr_id: 99,
        local: p.server.sge(0, 4),
    }])?;
    p.client.buf.write(0, &[1u8; 100])?;
    p.client.run(WrOp::Send {
        local: p.client.sge(0, 100),
    })?;
    let r = p.server.wait()?;
    if r.status != WcStatus::LocLenErr {
        return fail(format!("oversized message: {r:?}"));
    }
    Ok(())
}
