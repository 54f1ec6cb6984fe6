//! The capabilities a backend advertises against what it does.

use super::{fail, Pair};
use crate::fabric::{Access, RecvWr, Result, WcStatus, WrOp};

/// The capabilities a backend advertises match what it does.
pub fn check_caps(p: &Pair) -> Result<()> {
    let caps = p.client.nic.caps().clone();
    if !caps.atomics || caps.max_send_size == 0 || caps.max_qp_wr == 0 {
        return fail(format!("implausible capabilities {caps:?}"));
    }
    if caps.modify_qp_access {
        // The memory node restricts what its QP grants the client.
        p.server.qp.modify_access(Access::REMOTE_READ)?;
        let rkey = p.region.rkey();
        let r = p.read(rkey, 0, 0, 8)?;
        let w = p.write(rkey, 0, 0, 8)?;
        p.server
            .qp
            .modify_access(Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC)?;
        if r != WcStatus::Success || w != WcStatus::RemAccessErr {
            return fail(format!(
                "modify_qp_access advertised, read {r:?} write {w:?}"
            ));
        }
        p.client.recover(&p.server)?;
        if p.write(rkey, 0, 0, 8)? != WcStatus::Success {
            return fail("write refused after the QP access was restored");
        }
    } else if p.server.qp.modify_access(Access::REMOTE_READ).is_ok() {
        return fail("modify_qp_access not advertised but accepted");
    }
    if caps.rereg_mr {
        let sub = p.server.nic.reg_sub_mr(&p.region, 0, 4096, Access::ALL)?;
        let old = sub.rkey();
        if p.read(old, 0, 0, 8)? != WcStatus::Success {
            return fail("sub-MR rkey refused");
        }
        let (_, new) = p.server.nic.rereg_mr(&sub, Access::REMOTE_READ)?;
        p.expect_denied(p.read(old, 0, 0, 8)?, "old key after rereg")?;
        if p.read(new, 0, 0, 8)? != WcStatus::Success {
            return fail("new key after rereg refused");
        }
        p.expect_denied(p.write(new, 0, 0, 8)?, "write after rereg to read-only")?;
        p.server.nic.dereg_mr(&sub)?;
        p.expect_denied(p.read(new, 0, 0, 8)?, "key after dereg")?;
    }
    // SENDs up to max_send_size pass, larger ones fail.
    let max = caps.max_send_size;
    if (max as u64) < p.client.buf.len() {
        p.server.qp.post_recv(&[RecvWr {
            wr_id: 7,
            local: p.server.sge(0, max.min(60 << 10)),
        }])?;
        let wc = p.client.run(WrOp::Send {
            local: p.client.sge(0, max),
        })?;
        if wc.status != WcStatus::Success || p.server.wait()?.byte_len != max {
            return fail(format!("SEND of max_send_size {max}: {wc:?}"));
        }
        let wc = p.client.run(WrOp::Send {
            local: p.client.sge(0, max + 1),
        })?;
        if wc.status == WcStatus::Success {
            return fail("SEND above max_send_size succeeded");
        }
        p.client.recover(&p.server)?;
    }
    Ok(())
}
