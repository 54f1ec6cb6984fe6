//! How peers reach a soft NIC.

use crate::fabric::{FabricError, Result};

/// How peers reach a NIC: both listeners' addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicAddr {
    /// Abstract Unix socket name (shm link).
    pub shm: Option<String>,
    /// host:port (tcp link).
    pub tcp: Option<String>,
}

impl NicAddr {
    /// "soft1;shm=NAME;tcp=HOST:PORT".
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::from("soft1");
        if let Some(n) = &self.shm {
            s.push_str(";shm=");
            s.push_str(n);
        }
        if let Some(t) = &self.tcp {
            s.push_str(";tcp=");
            s.push_str(t);
        }
        s.into_bytes()
    }

    /// Parses an address written by `encode`.
    pub fn decode(b: &[u8]) -> Result<NicAddr> {
        let s = std::str::from_utf8(b)
            .map_err(|_| FabricError::Invalid("soft NIC address is not UTF-8".into()))?;
        let mut parts = s.split(';');
        if parts.next() != Some("soft1") {
            return Err(FabricError::Invalid(format!(
                "not a soft NIC address: {s:?}"
            )));
        }
        let mut a = NicAddr {
            shm: None,
            tcp: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("shm", v)) => a.shm = Some(v.to_string()),
                Some(("tcp", v)) => a.tcp = Some(v.to_string()),
                _ => {
                    return Err(FabricError::Invalid(format!(
                        "bad soft NIC address part {p:?}"
                    )))
                }
            }
        }
        Ok(a)
    }
}
