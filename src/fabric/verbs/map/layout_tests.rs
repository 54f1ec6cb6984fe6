//! The Rust layouts of the verbs structures against the C compiler's.

use rdma_sys::{ibv_mw_bind_info, ibv_recv_wr, ibv_send_wr, ibv_sge, ibv_wr_opcode};

/// The Rust layout of `ibv_send_wr`, `ibv_sge`, `ibv_recv_wr`, `ibv_wc`
/// and the bind fields equals the C compiler's, read from the installed
/// <infiniband/verbs.h>: a mismatch would post garbage to a real NIC.
#[test]
fn layouts_match_the_c_header() {
    use std::mem::{offset_of, size_of};
    let dir = std::env::temp_dir().join(format!("patronus-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("l.c");
    std::fs::write(
        &src,
        r#"#include <stddef.h>
#include <stdio.h>
#include <infiniband/verbs.h>
#define O(t, f) printf("%zu\n", offsetof(struct t, f))
int main(void) {
  printf("%zu\n%zu\n%zu\n%zu\n%zu\n", sizeof(struct ibv_send_wr), sizeof(struct ibv_sge),
     sizeof(struct ibv_recv_wr), sizeof(struct ibv_wc), sizeof(struct ibv_mw_bind));
  O(ibv_send_wr, wr_id); O(ibv_send_wr, next); O(ibv_send_wr, sg_list);
  O(ibv_send_wr, num_sge); O(ibv_send_wr, opcode); O(ibv_send_wr, send_flags);
  O(ibv_send_wr, invalidate_rkey); O(ibv_send_wr, wr.rdma.remote_addr);
  O(ibv_send_wr, wr.rdma.rkey); O(ibv_send_wr, wr.atomic.compare_add);
  O(ibv_send_wr, wr.atomic.swap); O(ibv_send_wr, wr.atomic.rkey);
  O(ibv_send_wr, bind_mw.mw); O(ibv_send_wr, bind_mw.rkey);
  O(ibv_send_wr, bind_mw.bind_info.mr); O(ibv_send_wr, bind_mw.bind_info.addr);
  O(ibv_send_wr, bind_mw.bind_info.length);
  O(ibv_send_wr, bind_mw.bind_info.mw_access_flags);
  O(ibv_sge, addr); O(ibv_sge, length); O(ibv_sge, lkey);
  O(ibv_wc, status); O(ibv_wc, opcode); O(ibv_wc, byte_len); O(ibv_wc, qp_num);
  printf("%d %d %d %d %d %d %d\n", IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ,
     IBV_WR_ATOMIC_CMP_AND_SWP, IBV_WR_ATOMIC_FETCH_AND_ADD, IBV_WR_SEND,
     IBV_WR_BIND_MW, IBV_WR_LOCAL_INV);
  return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("l");
    let cc = std::process::Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("a C compiler (cc) is needed for this test");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = std::process::Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let c: Vec<usize> = lines
        .by_ref()
        .take(30)
        .map(|l| l.parse().unwrap())
        .collect();
    type W = ibv_send_wr;
    let rust = vec![
        size_of::<W>(),
        size_of::<ibv_sge>(),
        size_of::<ibv_recv_wr>(),
        size_of::<rdma_sys::ibv_wc>(),
        size_of::<rdma_sys::ibv_mw_bind>(),
        offset_of!(W, wr_id),
        offset_of!(W, next),
        offset_of!(W, sg_list),
        offset_of!(W, num_sge),
        offset_of!(W, opcode),
        offset_of!(W, send_flags),
        offset_of!(W, imm_data_invalidated_rkey_union),
        offset_of!(W, wr),
        offset_of!(W, wr) + offset_of!(rdma_sys::rdma_t, rkey),
        offset_of!(W, wr) + offset_of!(rdma_sys::atomic_t, compare_add),
        offset_of!(W, wr) + offset_of!(rdma_sys::atomic_t, swap),
        offset_of!(W, wr) + offset_of!(rdma_sys::atomic_t, rkey),
        offset_of!(W, bind_mw_tso_union),
        offset_of!(W, bind_mw_tso_union) + offset_of!(rdma_sys::bind_mw_t, rkey),
        offset_of!(W, bind_mw_tso_union) + offset_of!(rdma_sys::bind_mw_t, bind_info),
        offset_of!(W, bind_mw_tso_union)
            + offset_of!(rdma_sys::bind_mw_t, bind_info)
            + offset_of!(ibv_mw_bind_info, addr),
        offset_of!(W, bind_mw_tso_union)
            + offset_of!(rdma_sys::bind_mw_t, bind_info)
            + offset_of!(ibv_mw_bind_info, length),
        offset_of!(W, bind_mw_tso_union)
            + offset_of!(rdma_sys::bind_mw_t, bind_info)
            + offset_of!(ibv_mw_bind_info, mw_access_flags),
        offset_of!(ibv_sge, addr),
        offset_of!(ibv_sge, length),
        offset_of!(ibv_sge, lkey),
        offset_of!(rdma_sys::ibv_wc, status),
        offset_of!(rdma_sys::ibv_wc, opcode),
        offset_of!(rdma_sys::ibv_wc, byte_len),
        offset_of!(rdma_sys::ibv_wc, qp_num),
    ];
    assert_eq!(rust, c, "Rust vs C layout");
    let ops: Vec<u32> = lines
        .next()
        .unwrap()
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(
        ops,
        vec![
            ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            ibv_wr_opcode::IBV_WR_RDMA_READ,
            ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP,
            ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD,
            ibv_wr_opcode::IBV_WR_SEND,
            ibv_wr_opcode::IBV_WR_BIND_MW,
            ibv_wr_opcode::IBV_WR_LOCAL_INV,
        ]
    );
}
