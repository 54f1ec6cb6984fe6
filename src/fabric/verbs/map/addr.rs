//! The verbs endpoint address (lid, port, MTU, GID, PSN) and its encoding.

use bytes::{Buf, BufMut};
use rand::Rng;

use super::mtu_bytes;
use crate::fabric::{FabricError, QpEndpoint, Result};

/// Magic and version of the verbs endpoint encoding.
const EP_MAGIC: &[u8; 4] = b"VRB1";
/// Encoded length of [`VerbsAddr`].
pub const EP_LEN: usize = 4 + 2 + 1 + 1 + 16 + 4;

/// How a peer reaches a verbs QP: what `QpEndpoint::nic` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerbsAddr {
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Physical port number.
    pub port: u8,
    /// Active MTU of the port (`enum ibv_mtu`).
    pub mtu: u8,
    /// GID (RoCE, or IB with a GRH); all zero when unused.
    pub gid: [u8; 16],
    /// First packet sequence number of the QP's send queue (24 bits).
    pub psn: u32,
}

impl VerbsAddr {
    /// True when the peer must be addressed through a GRH (RoCE).
    pub fn needs_grh(&self) -> bool {
        self.gid.iter().any(|&b| b != 0)
    }

    /// Encodes as endpoint address bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(EP_LEN);
        v.put_slice(EP_MAGIC);
        v.put_u16_le(self.lid);
        v.put_u8(self.port);
        v.put_u8(self.mtu);
        v.put_slice(&self.gid);
        v.put_u32_le(self.psn);
        v
    }

    /// Decodes bytes written by [`VerbsAddr::encode`]; anything else (a soft
    /// endpoint, a truncated value, a PSN over 24 bits) is an error.
    pub fn decode(b: &[u8]) -> Result<VerbsAddr> {
        if b.len() != EP_LEN || &b[..4] != EP_MAGIC {
            return Err(FabricError::Invalid(format!(
                "not a verbs endpoint ({} bytes; expected {EP_LEN} starting with {:?})",
                b.len(),
                std::str::from_utf8(EP_MAGIC).unwrap_or("?")
            )));
        }
        // The length is exactly EP_LEN: every read below is in bounds.
        let mut r = &b[EP_MAGIC.len()..];
        let lid = r.get_u16_le();
        let port = r.get_u8();
        let mtu = r.get_u8();
        let mut gid = [0u8; 16];
        r.copy_to_slice(&mut gid);
        let psn = r.get_u32_le();
        if psn >= 1 << 24 {
            return Err(FabricError::Invalid(format!(
                "verbs endpoint PSN {psn:#x} exceeds 24 bits"
            )));
        }
        if mtu_bytes(mtu as u32) == 0 {
            return Err(FabricError::Invalid(format!(
                "verbs endpoint MTU code {mtu} is not an ibv_mtu"
            )));
        }
        Ok(VerbsAddr {
            lid,
            port,
            mtu,
            gid,
            psn,
        })
    }

    /// Decodes the address part of a contract endpoint.
    pub fn of(ep: &QpEndpoint) -> Result<VerbsAddr> {
        VerbsAddr::decode(&ep.nic)
    }
}

/// A fresh 24-bit packet sequence number (never 0, to tell it from unset).
pub fn fresh_psn() -> u32 {
    rand::thread_rng().gen_range(1..1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdma_sys::ibv_mtu;

    #[test]
    fn endpoint_round_trips_and_rejects_garbage() {
        let a = VerbsAddr {
            lid: 0x1234,
            port: 1,
            mtu: ibv_mtu::IBV_MTU_4096 as u8,
            gid: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            psn: 0x00ab_cdef,
        };
        let ep = QpEndpoint {
            nic: a.encode(),
            qpn: 99,
        };
        assert_eq!(
            VerbsAddr::of(&QpEndpoint::decode(&ep.encode()).unwrap()).unwrap(),
            a
        );
        // The layout byte for byte (as the hand-written codec wrote it).
        assert_eq!(
            hex::encode(a.encode()),
            "5652423134120105fe800000000000000102030405060708efcdab00"
        );
        assert!(a.needs_grh());
        assert!(!VerbsAddr { gid: [0; 16], ..a }.needs_grh());
        // A soft endpoint, truncation, a 25-bit PSN and a bad MTU are refused.
        assert!(VerbsAddr::decode(b"shm:/patronus-1").is_err());
        let enc = a.encode();
        for n in 0..enc.len() {
            assert!(VerbsAddr::decode(&enc[..n]).is_err());
        }
        let mut big = enc.clone();
        big[27] = 1;
        assert!(VerbsAddr::decode(&big).is_err());
        let mut mtu = enc;
        mtu[7] = 9;
        assert!(VerbsAddr::decode(&mtu).is_err());
    }

    #[test]
    fn psn_is_24_bit_and_nonzero() {
        for _ in 0..1000 {
            let p = fresh_psn();
            assert!(p > 0 && p < 1 << 24);
        }
    }
}
