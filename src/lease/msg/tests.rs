//! Codec tests: layouts byte for byte, round trips, and untrusted input.

use super::*;
use proptest::prelude::*;

fn hdr(ty: MsgType) -> Header {
    Header {
        ty,
        rpc_id: 42,
        node: 3,
        thread: 7,
    }
}

#[test]
fn round_trips() {
    let cases = vec![
        (
            MsgType::AcquireW,
            Msg::Acquire(AcquireReq {
                key: 4096,
                size: 64,
                ns: 5_000_000_000,
                flag: 3,
                dir: 1,
            }),
        ),
        (
            MsgType::AcquireResp,
            Msg::AcquireResp(AcquireResp {
                status: 0,
                rkey: 0x1234,
                pr_rkey: 0x5678,
                base: 1 << 40,
                pr_off: 99,
                begin_term: -5,
                ns_per_unit: 10_000_000_000,
                slot: 17,
                generation: u64::MAX - 1,
                aba: 9,
            }),
        ),
        (
            MsgType::Memory,
            Msg::Memory(MemReq {
                op: MemOp::Write,
                slot: 1,
                generation: 2,
                offset: 3,
                size: 5,
                arg0: 0,
                arg1: 0,
                dir: 0,
                payload: b"hello".to_vec(),
            }),
        ),
        (
            MsgType::AdminResp,
            Msg::AdminResp(AdminResp {
                rc: 0,
                value: i64::MIN,
            }),
        ),
    ];
    let mut buf = Vec::new();
    for (t, m) in cases {
        encode(&hdr(t), &m, &mut buf);
        let (h, d) = decode(&buf).unwrap();
        assert_eq!(h, hdr(t));
        assert_eq!(d, m);
        // Truncation anywhere is an error, never a panic.
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err());
        }
    }
}

/// The encoding of every message kind, byte for byte (recorded from
/// the hand-written codec this one replaced): the wire format is fixed.
#[test]
fn encodings_are_byte_identical_to_the_protocol() {
    let h = |ty| Header {
        ty,
        rpc_id: 0x0102_0304_0506_0708,
        node: 0x0a0b,
        thread: 0x0c0d,
    };
    let hdr = "08070605040302010b0a0d0c00000000";
    let cases = [
        (
            MsgType::AcquireW,
            Msg::Acquire(AcquireReq {
                key: 0x1122_3344_5566_7788,
                size: 64,
                ns: 5_000_000_000,
                flag: 3,
                dir: 0x0102,
            }),
            "504c010122000000",
            "8877665544332211400000000000000000f2052a0100000003000000000000000201",
        ),
        (
            MsgType::AcquireResp,
            Msg::AcquireResp(AcquireResp {
                status: 2,
                rkey: 0x1234_5678,
                pr_rkey: 0x9abc_def0,
                base: 1 << 40,
                pr_off: 99,
                begin_term: -5,
                ns_per_unit: 10_000_000_000,
                slot: 17,
                generation: u64::MAX - 1,
                aba: 9,
            }),
            "504c010339000000",
            "0278563412f0debc9a00000000000100006300000000000000fbffffffffffffff\
             00e40b540200000011000000feffffffffffffff09000000",
        ),
        (
            MsgType::Relinquish,
            Msg::Relinquish(ModifyReq {
                slot: 1,
                generation: 2,
                ns: 3,
                hint: 4,
                flag: 5,
                addr: 6,
                size: 7,
                dir: 8,
            }),
            "504c010436000000",
            "0100000002000000000000000300000000000000040000000000000005000000\
             00000000060000000000000007000000000000000800",
        ),
        (
            MsgType::ExtendResp,
            Msg::ExtendResp(ModifyResp {
                rc: 1,
                units: 0x0102_0304,
            }),
            "504c010709000000",
            "010403020100000000",
        ),
        (
            MsgType::Admin,
            Msg::Admin(AdminReq {
                op: AdminOp::QpReset,
                arg: 9,
                dir: 2,
            }),
            "504c01090b000000",
            "0409000000000000000200",
        ),
        (
            MsgType::AdminResp,
            Msg::AdminResp(AdminResp { rc: 1, value: -2 }),
            "504c010a09000000",
            "01feffffffffffffff",
        ),
        (
            MsgType::Memory,
            Msg::Memory(MemReq {
                op: MemOp::Write,
                slot: 1,
                generation: 2,
                offset: 3,
                size: 2,
                arg0: 4,
                arg1: 5,
                dir: 6,
                payload: b"hi".to_vec(),
            }),
            "504c010b2d000000",
            "0101000000020000000000000003000000000000000200000004000000000000\
             00050000000000000006006869",
        ),
        (
            MsgType::MemoryResp,
            Msg::MemoryResp(MemResp {
                rc: 0,
                old: 5,
                payload: vec![1, 2, 3],
            }),
            "504c010c0c000000",
            "000500000000000000010203",
        ),
    ];
    let mut buf = Vec::new();
    for (t, m, start, body) in cases {
        let n = encode(&h(t), &m, &mut buf);
        assert_eq!(n, buf.len());
        let want: String = [start, hdr, body].concat().split_whitespace().collect();
        assert_eq!(hex::encode(&buf), want, "{t:?}");
        assert_eq!(decode(&buf).unwrap(), (h(t), m));
    }
}

#[test]
fn rejections_name_the_cause() {
    let mut buf = Vec::new();
    let m = Msg::AdminResp(AdminResp { rc: 0, value: 1 });
    encode(&hdr(MsgType::AdminResp), &m, &mut buf);
    let err = |b: &[u8]| decode(b).unwrap_err().to_string();
    assert!(err(&buf[..3]).contains("truncated"), "{}", err(&buf[..3]));
    let mut long = buf.clone();
    long.push(0);
    long[4..8].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(err(&long), "malformed message: 1 trailing bytes");
    let mut bad = buf.clone();
    bad[0] = 0;
    assert!(err(&bad).contains("bad magic"));
    bad = buf.clone();
    bad[3] = 2;
    assert!(err(&bad).contains("unknown type 2"));
    assert!(err(&vec![0u8; MAX_MSG + 1]).contains("maximum"));
}

#[test]
fn ns_per_unit_is_64_bit() {
    let mut buf = Vec::new();
    let m = Msg::AcquireResp(AcquireResp {
        ns_per_unit: 10_000_000_000, // 10 s: did not fit the original's u32
        ..Default::default()
    });
    encode(&hdr(MsgType::AcquireResp), &m, &mut buf);
    match decode(&buf).unwrap().1 {
        Msg::AcquireResp(a) => assert_eq!(a.ns_per_unit, 10_000_000_000),
        _ => panic!("wrong type"),
    }
}

proptest! {
    #[test]
    fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&b);
    }

    #[test]
    fn decode_mutated_never_panics(i in 0usize..60, v in any::<u8>()) {
        let mut buf = Vec::new();
        encode(&hdr(MsgType::Relinquish), &Msg::Relinquish(ModifyReq {
            slot: 1, generation: 2, ns: 3, hint: 4, flag: 5, addr: 6, size: 7, dir: 0,
        }), &mut buf);
        let i = i % buf.len();
        buf[i] = v;
        let _ = decode(&buf);
    }
}

/// The admin QpReset carries the connection's fresh PSNs in `arg`; the
/// frame of a sender without them (arg 0) is unchanged and still decodes.
/// The lease-key page has a fixed layout, fits one message when full, and
/// refuses a count that disagrees with its bytes.
#[test]
fn qp_reset_psns_and_lease_key_pages() {
    use crate::fabric::ConnPsns;
    let h = Header {
        ty: MsgType::Admin,
        rpc_id: 1,
        node: 2,
        thread: 3,
    };
    let hdr = "01000000000000000200030000000000";
    let psns = ConnPsns {
        requester: 0x00ab_cdef,
        responder: 0x0012_3456,
    };
    let mut buf = Vec::new();
    let m = Msg::Admin(AdminReq {
        op: AdminOp::QpReset,
        arg: psns.encode(),
        dir: 2,
    });
    encode(&h, &m, &mut buf);
    assert_eq!(
        hex::encode(&buf),
        ["504c01090b000000", hdr, "04efcdab56341200800200"].concat()
    );
    match decode(&buf).unwrap().1 {
        Msg::Admin(a) => {
            let p = ConnPsns::decode(a.arg).unwrap().unwrap();
            assert_eq!(p, psns);
            assert_eq!(p.responder_end().recv, psns.requester_end().send);
        }
        m => panic!("{m:?}"),
    }
    // The old frame: arg 0, no PSNs.
    let old = ["504c01090b000000", hdr, "0400000000000000000200"].concat();
    let (_, m) = decode(&hex::decode(old).unwrap()).unwrap();
    assert_eq!(
        m,
        Msg::Admin(AdminReq {
            op: AdminOp::QpReset,
            arg: 0,
            dir: 2
        })
    );
    assert_eq!(ConnPsns::decode(0).unwrap(), None);
    // LeaseKeys request and its page.
    let req = Msg::Admin(AdminReq {
        op: AdminOp::LeaseKeys,
        arg: 160,
        dir: 0,
    });
    encode(&h, &req, &mut buf);
    assert_eq!(decode(&buf).unwrap().1, req);
    let page = LeaseKeysResp {
        rc: 0,
        total: 2,
        from: 0,
        keys: vec![
            LeaseKey {
                generation: 0x0102_0304_0506_0708,
                old_rkey: 0x11,
                rkey: 0x12,
                old_pr_rkey: 0x21,
                pr_rkey: 0x22,
            },
            LeaseKey {
                generation: 9,
                old_rkey: 0x31,
                rkey: 0x32,
                old_pr_rkey: 0,
                pr_rkey: 0,
            },
        ],
    };
    let hk = Header {
        ty: MsgType::LeaseKeysResp,
        ..h
    };
    encode(&hk, &Msg::LeaseKeysResp(page.clone()), &mut buf);
    let want: String = [
        "504c010d3b000000",
        hdr,
        "00020000000000000002 00",
        "0807060504030201 11000000 12000000 21000000 22000000",
        "0900000000000000 31000000 32000000 00000000 00000000",
    ]
    .concat()
    .split_whitespace()
    .collect();
    assert_eq!(hex::encode(&buf), want);
    assert_eq!(decode(&buf).unwrap(), (hk, Msg::LeaseKeysResp(page)));
    for cut in 0..buf.len() {
        assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
    }
    // A count that disagrees with the bytes is refused.
    let mut bad = buf.clone();
    bad[HDR_LEN + 9] = 3;
    assert!(decode(&bad)
        .unwrap_err()
        .to_string()
        .contains("lease-key page"));
    // A full page fits one message.
    let full = LeaseKeysResp {
        rc: 0,
        total: 1000,
        from: 160,
        keys: vec![LeaseKey::default(); KEYS_PER_MSG],
    };
    let n = encode(&hk, &Msg::LeaseKeysResp(full.clone()), &mut buf);
    assert!(n <= MAX_MSG, "{n}");
    assert_eq!(decode(&buf).unwrap().1, Msg::LeaseKeysResp(full));
}
