//! The verbs backend (feature `verbs`): the fabric contract on real RDMA
//! NICs through libibverbs (`rdma-sys`).
//!
//! Mapping, one to one:
//! - [`VerbsNic::open`] picks a device (`PATRONUS_RDMA_DEVICE`, default the
//!   first one) and a port (`PATRONUS_RDMA_PORT`, default 1). It refuses a
//!   device without memory windows (`max_mw` 0 or no window capability). On
//!   an Ethernet (RoCE) port it reads the GID table with `ibv_query_gid_ex`
//!   and picks the source GID by type ([`map::select_gid`]: RoCE v2 with an
//!   IPv4-mapped address first) unless `PATRONUS_RDMA_GID_INDEX` names one;
//!   a zero GID is refused. With no device it fails at once with
//!   [`FabricError::NoDevice`](crate::fabric::FabricError::NoDevice) naming
//!   what `ibv_get_device_list` returned and errno.
//! - MRs are NIC-owned memfd blocks registered with `ibv_reg_mr`; sub-MRs and
//!   `ibv_rereg_mr` implement the MR-re-registration competitor.
//! - Windows are type 2 when the device reports
//!   `IBV_DEVICE_MEM_WINDOW_TYPE_2A/2B`, bound with `IBV_WR_BIND_MW` posted
//!   on the memory node's RC QP towards the holder with a fresh key tag each
//!   time, and invalidated with `IBV_WR_LOCAL_INV`. Otherwise type 1 (PD-wide,
//!   `ibv_bind_mw`), announced in the start-up log and in [`Caps::mw_type2`](crate::fabric::Caps::mw_type2).
//!   Every bind/invalidate is tracked per window ([`map::Windows`]): posted
//!   signaled under an internal wr_id, its completion (polled by the caller
//!   through [`VerbsCq`]) publishes the new rkey, syncs `ibv_mw::rkey` (rxe
//!   needs it) or restores the old key on failure, and is then delivered
//!   under the caller's wr_id (swallowed if the caller posted it unsignaled
//!   and it succeeded). Binds longer than the device's limit (2 GiB on mlx5)
//!   are refused before posting; an `ibv_mw` is retired after 255 tag steps.
//! - RC QPs go RESET → INIT → RTR → RTS with the peer's lid/gid/qpn/psn
//!   from its [`QpEndpoint`](crate::fabric::QpEndpoint), always with a GRH on
//!   RoCE, read/atomic depths clamped to the device's `max_qp_rd_atom` /
//!   `max_qp_init_rd_atom` (at most 16), queue and CQ depths clamped to
//!   `max_qp_wr` / `max_cqe`. [`Qp::reset`](crate::fabric::Qp::reset) moves
//!   a QP with binds/invalidates outstanding to ERR and drains their flush
//!   completions first, then to RESET; [`Qp::connect`](crate::fabric::Qp::connect)
//!   reconnects the same QP (same qpn) with the last PSNs, and
//!   [`Qp::connect_psns`](crate::fabric::Qp::connect_psns) with fresh ones
//!   (this end's `sq_psn`, and the `rq_psn` it expects instead of the one
//!   in the peer's endpoint). Both ends are reset together and connect with
//!   the two halves of one [`ConnPsns`](crate::fabric::ConnPsns), as the
//!   lease layer's recovery does (the client picks them, the directory gets
//!   them in the admin `QpReset`).
//! - Windows across RESET: `Caps::windows_survive_reset` is true for type-1
//!   windows (PD-wide) and, for type 2, only with
//!   `PATRONUS_RDMA_WINDOWS_SURVIVE_RESET=1` (no source settles what a
//!   device does). When false, [`Qp::reset`](crate::fabric::Qp::reset)
//!   gives every window bound through that QP a fresh `ibv_mw` under the
//!   same handle and frees the old one (`ibv_dealloc_mw` unbinds it if the
//!   device kept it), so the old key is dead and the handle can be bound
//!   again whatever the device did; the directory then re-binds the
//!   holder's leases.
//! - Teardown frees windows before the MRs they lie in, then PDs.
//! - Completions are polled with `ibv_poll_cq` by the caller's thread.

mod config;
mod cq;
mod device;
pub mod map;
mod nic;
mod qp;

pub use config::VerbsConfig;
pub use cq::VerbsCq;
pub use device::device_names;
pub use nic::VerbsNic;
pub use qp::VerbsQp;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::FabricError;

    #[test]
    fn config_reads_the_environment_and_rejects_garbage() {
        // One test owns these variables (tests in this module run in one
        // process; no other test reads them).
        std::env::set_var("PATRONUS_RDMA_DEVICE", "mlx5_3");
        std::env::set_var("PATRONUS_RDMA_PORT", "2");
        std::env::set_var("PATRONUS_RDMA_GID_INDEX", "3");
        std::env::set_var("PATRONUS_RDMA_WINDOWS_SURVIVE_RESET", "1");
        let c = VerbsConfig::from_env().unwrap();
        assert_eq!(c.device.as_deref(), Some("mlx5_3"));
        assert_eq!((c.port, c.gid_index), (2, Some(3)));
        assert_eq!(c.windows_survive_reset, Some(true));
        std::env::set_var("PATRONUS_RDMA_WINDOWS_SURVIVE_RESET", "maybe");
        assert!(VerbsConfig::from_env().is_err());
        std::env::remove_var("PATRONUS_RDMA_WINDOWS_SURVIVE_RESET");
        std::env::set_var("PATRONUS_RDMA_PORT", "0");
        assert!(VerbsConfig::from_env().is_err());
        std::env::set_var("PATRONUS_RDMA_PORT", "1");
        std::env::set_var("PATRONUS_RDMA_GID_INDEX", "-1");
        assert!(VerbsConfig::from_env().is_err());
        std::env::remove_var("PATRONUS_RDMA_DEVICE");
        std::env::remove_var("PATRONUS_RDMA_PORT");
        std::env::remove_var("PATRONUS_RDMA_GID_INDEX");
        assert_eq!(VerbsConfig::from_env().unwrap(), VerbsConfig::default());
    }

    /// Where no RDMA device exists (CI), opening fails at once with an error
    /// that names the device list; where one exists, opening works.
    #[test]
    fn no_device_is_a_clear_error() {
        match device_names() {
            Err(e) => {
                let msg = e.to_string();
                assert!(matches!(e, FabricError::NoDevice(_)), "{e:?}");
                assert!(msg.contains("ibv_get_device_list"), "{msg}");
                assert!(msg.contains("errno"), "{msg}");
                let e = VerbsNic::open(VerbsConfig::default())
                    .err()
                    .expect("open without a device");
                assert!(e.to_string().contains("no RDMA device"), "{e}");
            }
            Ok(names) => {
                assert!(!names.is_empty());
                let e = VerbsNic::open(VerbsConfig {
                    device: Some("no-such-device-xyz".into()),
                    ..VerbsConfig::default()
                })
                .err()
                .expect("an unknown device name");
                assert!(e.to_string().contains("not found"), "{e}");
            }
        }
    }
}
