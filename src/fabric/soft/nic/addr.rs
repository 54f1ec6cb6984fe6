//! How peers reach a soft NIC, and who it is.

use crate::fabric::soft::auth::{parse_pk, KEY_LEN};
use crate::fabric::{FabricError, Result};

/// How peers reach a NIC: both listeners' addresses and its public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicAddr {
    /// Abstract Unix socket name (shm link).
    pub shm: Option<String>,
    /// host:port (tcp link).
    pub tcp: Option<String>,
    /// The NIC's X25519 public key (hellos to it are authenticated with
    /// the pairwise key; `connect` refuses an address without one).
    pub pk: Option<[u8; KEY_LEN]>,
}

impl NicAddr {
    /// "soft1;shm=NAME;tcp=HOST:PORT;pk=HEX".
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
        if let Some(k) = &self.pk {
            s.push_str(";pk=");
            s.push_str(&hex::encode(k));
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
            pk: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("shm", v)) => a.shm = Some(v.to_string()),
                Some(("tcp", v)) => a.tcp = Some(v.to_string()),
                Some(("pk", v)) => {
                    a.pk = Some(parse_pk(v).ok_or_else(|| {
                        FabricError::Invalid(format!(
                            "soft NIC public key {v:?} is not 64 hex digits"
                        ))
                    })?)
                }
                _ => {
                    return Err(FabricError::Invalid(format!(
                        "bad soft NIC address part {p:?}"
                    )))
                }
            }
        }
        Ok(a)
    }

    /// The public key, or an error naming the address (connect refuses
    /// unauthenticated peers).
    pub fn require_pk(&self) -> Result<[u8; KEY_LEN]> {
        self.pk.ok_or_else(|| {
            FabricError::Invalid(format!(
                "soft NIC address {:?} carries no public key: refusing an unauthenticated peer",
                String::from_utf8_lossy(&self.encode())
            ))
        })
    }
}
