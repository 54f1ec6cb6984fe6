//! Where the verbs backend finds its device (environment variables).

use crate::fabric::{FabricError, Result};

/// Where the verbs backend finds its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsConfig {
    /// Device name (`mlx5_0`); `None` picks the first device.
    pub device: Option<String>,
    /// Physical port (1-based).
    pub port: u8,
    /// GID index for RoCE (`PATRONUS_RDMA_GID_INDEX`; ignored on InfiniBand
    /// ports). `None`: chosen by type from the port's GID table (RoCE v2 with
    /// an IPv4-mapped address first, see [`map::select_gid`](super::map::select_gid)).
    pub gid_index: Option<u8>,
    /// Whether type-2 windows survive a RESET of their QP on this device
    /// (`PATRONUS_RDMA_WINDOWS_SURVIVE_RESET=1|0`). `None`: assume not
    /// (re-bind on recovery), which is correct whatever the device does.
    pub windows_survive_reset: Option<bool>,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        VerbsConfig {
            device: None,
            port: 1,
            gid_index: None,
            windows_survive_reset: None,
        }
    }
}

impl VerbsConfig {
    /// Reads `PATRONUS_RDMA_DEVICE`, `PATRONUS_RDMA_PORT`,
    /// `PATRONUS_RDMA_GID_INDEX` and `PATRONUS_RDMA_WINDOWS_SURVIVE_RESET`;
    /// malformed values are an error.
    pub fn from_env() -> Result<VerbsConfig> {
        let mut c = VerbsConfig::default();
        if let Ok(d) = std::env::var("PATRONUS_RDMA_DEVICE") {
            if !d.is_empty() {
                c.device = Some(d);
            }
        }
        if let Ok(p) = std::env::var("PATRONUS_RDMA_PORT") {
            c.port = p.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                FabricError::Invalid(format!("PATRONUS_RDMA_PORT={p:?} is not a port 1..255"))
            })?;
        }
        if let Ok(g) = std::env::var("PATRONUS_RDMA_GID_INDEX") {
            c.gid_index = Some(g.parse().map_err(|_| {
                FabricError::Invalid(format!(
                    "PATRONUS_RDMA_GID_INDEX={g:?} is not a GID index 0..255"
                ))
            })?);
        }
        if let Ok(v) = std::env::var("PATRONUS_RDMA_WINDOWS_SURVIVE_RESET") {
            c.windows_survive_reset = Some(match v.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => {
                    return Err(FabricError::Invalid(format!(
                        "PATRONUS_RDMA_WINDOWS_SURVIVE_RESET={v:?} is not 1 or 0"
                    )))
                }
            });
        }
        Ok(c)
    }
}
