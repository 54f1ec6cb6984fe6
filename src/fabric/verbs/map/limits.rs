//! Device limits and RoCE GID selection as pure functions over what
//! `ibv_query_device` / `ibv_query_gid_ex` report, so they are unit-tested
//! without a device.

use crate::fabric::{FabricError, Result};

/// `IBV_GID_TYPE_IB` (also what InfiniBand ports report).
pub const GID_TYPE_IB: u32 = 0;
/// `IBV_GID_TYPE_ROCE_V1`.
pub const GID_TYPE_ROCE_V1: u32 = 1;
/// `IBV_GID_TYPE_ROCE_V2`.
pub const GID_TYPE_ROCE_V2: u32 = 2;

/// One entry of a port's GID table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GidEntry {
    /// GID index (what `sgid_index` names).
    pub index: u8,
    /// `enum ibv_gid_type`.
    pub gid_type: u32,
    /// The GID.
    pub gid: [u8; 16],
}

/// True for `::ffff:a.b.c.d`, the form RoCE gives an IPv4 address.
pub fn is_ipv4_mapped(g: &[u8; 16]) -> bool {
    g[..10].iter().all(|&b| b == 0) && g[10] == 0xff && g[11] == 0xff
}

fn rank(e: &GidEntry) -> Option<u8> {
    if e.gid == [0; 16] {
        return None;
    }
    match (e.gid_type, is_ipv4_mapped(&e.gid)) {
        (GID_TYPE_ROCE_V2, true) => Some(0),
        (GID_TYPE_ROCE_V2, false) => Some(1),
        (GID_TYPE_ROCE_V1, true) => Some(2),
        (GID_TYPE_ROCE_V1, false) => Some(3),
        _ => None,
    }
}

/// The source GID of an Ethernet (RoCE) port: entry `forced`
/// (`PATRONUS_RDMA_GID_INDEX`) when given, else the first RoCE v2 GID that is
/// an IPv4-mapped address, then any RoCE v2 GID, then RoCE v1 in the same
/// order. A zero GID is never used: a forced index naming one, or a table
/// with no usable entry, is an error naming what the table holds.
pub fn select_gid(table: &[GidEntry], forced: Option<u8>) -> Result<GidEntry> {
    let listing = || {
        table
            .iter()
            .map(|e| {
                format!(
                    "{}:type{}:{}",
                    e.index,
                    e.gid_type,
                    if e.gid == [0; 16] {
                        "zero".into()
                    } else {
                        hex::encode(e.gid)
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(i) = forced {
        let e = table.iter().find(|e| e.index == i).ok_or_else(|| {
            FabricError::NoDevice(format!(
                "PATRONUS_RDMA_GID_INDEX={i} is not in the port's GID table [{}]",
                listing()
            ))
        })?;
        if e.gid == [0; 16] {
            return Err(FabricError::NoDevice(format!(
                "GID index {i} (PATRONUS_RDMA_GID_INDEX) holds a zero GID: the port has \
                 no address there (is the netdev up with an IP?); table [{}]",
                listing()
            )));
        }
        return Ok(*e);
    }
    table
        .iter()
        .filter_map(|e| rank(e).map(|r| (r, e.index, *e)))
        .min_by_key(|&(r, i, _)| (r, i))
        .map(|(_, _, e)| e)
        .ok_or_else(|| {
            FabricError::NoDevice(format!(
                "no usable RoCE GID on the port (all zero or not RoCE): [{}]; give the \
                 netdev an IP address or set PATRONUS_RDMA_GID_INDEX",
                listing()
            ))
        })
}

/// The device attributes the backend clamps to (from `ibv_device_attr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevLimits {
    /// `max_qp_wr`.
    pub max_qp_wr: i32,
    /// `max_cqe`.
    pub max_cqe: i32,
    /// `max_qp_rd_atom`: reads/atomics this QP answers at once (responder).
    pub max_qp_rd_atom: i32,
    /// `max_qp_init_rd_atom`: reads/atomics this QP has in flight (initiator).
    pub max_qp_init_rd_atom: i32,
    /// `max_mw`.
    pub max_mw: i32,
    /// `max_mr_size`.
    pub max_mr_size: u64,
    /// `IBV_DEVICE_MEM_WINDOW` (type 1) in `device_cap_flags`.
    pub mw_type1: bool,
    /// `IBV_DEVICE_MEM_WINDOW_TYPE_2A/2B` in `device_cap_flags`.
    pub mw_type2: bool,
}

/// The read/atomic depth the backend asks for, at most.
pub const WANT_RD_ATOMIC: u8 = 16;
/// The longest window mlx5 binds (longer binds fail with EOPNOTSUPP).
pub const MAX_WINDOW_LEN: u64 = 1 << 31;

impl DevLimits {
    /// Refuses a device without memory windows (Patronus needs them);
    /// returns whether they are type 2.
    pub fn check_windows(&self, name: &str) -> Result<bool> {
        if self.max_mw <= 0 || !(self.mw_type1 || self.mw_type2) {
            return Err(FabricError::NoDevice(format!(
                "RDMA device {name} has no memory windows (max_mw {}, type 1 {}, \
                 type 2 {}); Patronus protects leases with windows and cannot run on it",
                self.max_mw, self.mw_type1, self.mw_type2
            )));
        }
        Ok(self.mw_type2)
    }

    /// (`max_rd_atomic` for RTS, `max_dest_rd_atomic` for RTR): the wanted
    /// depth clamped to the device's initiator and responder limits (at
    /// least 1).
    pub fn rd_atomic(&self) -> (u8, u8) {
        let c = |v: i32| v.clamp(1, WANT_RD_ATOMIC as i32) as u8;
        (c(self.max_qp_init_rd_atom), c(self.max_qp_rd_atom))
    }

    /// A queue depth clamped to `max_qp_wr` (at least 1).
    pub fn qp_depth(&self, want: u32) -> u32 {
        want.clamp(1, self.max_qp_wr.max(1) as u32)
    }

    /// A CQ depth clamped to `max_cqe` (at least 1).
    pub fn cq_depth(&self, want: u32) -> u32 {
        want.clamp(1, self.max_cqe.max(1) as u32)
    }

    /// The longest window this device binds.
    pub fn max_window_len(&self) -> u64 {
        self.max_mr_size.min(MAX_WINDOW_LEN)
    }

    /// Refuses a bind longer than [`DevLimits::max_window_len`] before it is
    /// posted (a window is never silently shortened).
    pub fn check_window_len(&self, len: u64) -> Result<()> {
        if len > self.max_window_len() {
            return Err(FabricError::Invalid(format!(
                "BIND of {len} bytes exceeds the device's longest window ({} bytes)",
                self.max_window_len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(prefix: &[u8]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..prefix.len()].copy_from_slice(prefix);
        x
    }
    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[10] = 0xff;
        x[11] = 0xff;
        x[12..].copy_from_slice(&a);
        x
    }

    #[test]
    fn gid_by_type_then_ipv4() {
        let link_local = g(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2]);
        // A typical mlx5 RoCE table: 0/1 link-local v1/v2, 2/3 IPv4 v1/v2.
        let t = [
            GidEntry {
                index: 0,
                gid_type: GID_TYPE_ROCE_V1,
                gid: link_local,
            },
            GidEntry {
                index: 1,
                gid_type: GID_TYPE_ROCE_V2,
                gid: link_local,
            },
            GidEntry {
                index: 2,
                gid_type: GID_TYPE_ROCE_V1,
                gid: v4([10, 0, 0, 1]),
            },
            GidEntry {
                index: 3,
                gid_type: GID_TYPE_ROCE_V2,
                gid: v4([10, 0, 0, 1]),
            },
            GidEntry {
                index: 4,
                gid_type: GID_TYPE_ROCE_V2,
                gid: [0; 16],
            },
        ];
        assert_eq!(select_gid(&t, None).unwrap().index, 3);
        // Without the IPv4 v2 entry: the v2 link-local one.
        assert_eq!(select_gid(&t[..3], None).unwrap().index, 1);
        // Only v1: IPv4 first.
        assert_eq!(select_gid(&[t[0], t[2]], None).unwrap().index, 2);
        // The environment wins, unless it names a zero or missing GID.
        assert_eq!(select_gid(&t, Some(0)).unwrap().index, 0);
        let e = select_gid(&t, Some(4)).unwrap_err().to_string();
        assert!(e.contains("zero GID"), "{e}");
        assert!(select_gid(&t, Some(9))
            .unwrap_err()
            .to_string()
            .contains("not in"));
        // Nothing usable: zero GIDs and IB entries only.
        let e = select_gid(
            &[
                t[4],
                GidEntry {
                    index: 5,
                    gid_type: GID_TYPE_IB,
                    gid: link_local,
                },
            ],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no usable RoCE GID"), "{e}");
        assert!(select_gid(&[], None).is_err());
        assert!(is_ipv4_mapped(&v4([1, 2, 3, 4])) && !is_ipv4_mapped(&link_local));
    }

    #[test]
    fn limits_clamp_to_the_device() {
        let d = DevLimits {
            max_qp_wr: 8192,
            max_cqe: 4_194_303,
            max_qp_rd_atom: 16,
            max_qp_init_rd_atom: 4,
            max_mw: 1 << 24,
            max_mr_size: u64::MAX,
            mw_type1: true,
            mw_type2: true,
        };
        assert_eq!(d.rd_atomic(), (4, 16));
        assert_eq!(
            DevLimits {
                max_qp_rd_atom: 0,
                ..d
            }
            .rd_atomic(),
            (4, 1)
        );
        assert_eq!(
            DevLimits {
                max_qp_init_rd_atom: 255,
                ..d
            }
            .rd_atomic(),
            (16, 16)
        );
        assert_eq!(d.qp_depth(65_536), 8192);
        assert_eq!(d.qp_depth(0), 1);
        assert_eq!(d.qp_depth(128), 128);
        assert_eq!(d.cq_depth(1 << 30), 4_194_303);
        assert_eq!(d.max_window_len(), 1 << 31);
        assert!(d.check_window_len(1 << 31).is_ok());
        assert!(d.check_window_len((1 << 31) + 1).is_err());
        assert_eq!(
            DevLimits {
                max_mr_size: 4096,
                ..d
            }
            .max_window_len(),
            4096
        );
        assert!(d.check_windows("x").unwrap());
        assert!(!DevLimits {
            mw_type2: false,
            ..d
        }
        .check_windows("x")
        .unwrap());
        let e = DevLimits { max_mw: 0, ..d }
            .check_windows("mlx4_0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no memory windows") && e.contains("mlx4_0"),
            "{e}"
        );
        assert!(DevLimits {
            mw_type1: false,
            mw_type2: false,
            ..d
        }
        .check_windows("x")
        .is_err());
    }
}
