//! Queue-pair endpoints and their encoding for the keeper.

use bytes::{Buf, BufMut};

use super::{FabricError, Result};

/// How to reach a QP: the NIC's address plus the QP number, serialisable for
/// the keeper (soft: link kind + address; verbs: lid/gid/qpn/psn).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QpEndpoint {
    /// Backend-specific NIC address bytes.
    pub nic: Vec<u8>,
    /// Queue pair number on that NIC.
    pub qpn: u32,
}

impl QpEndpoint {
    /// Encodes as bytes: qpn (LE u32), length (LE u32), address.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.put(&mut v);
        v
    }

    fn encoded_len(&self) -> usize {
        8 + self.nic.len()
    }

    fn put(&self, w: &mut Vec<u8>) {
        w.put_u32_le(self.qpn);
        w.put_u32_le(self.nic.len() as u32);
        w.put_slice(&self.nic);
    }

    /// Decodes bytes written by [`QpEndpoint::encode`].
    pub fn decode(b: &[u8]) -> Result<QpEndpoint> {
        let mut r = b;
        let (Ok(qpn), Ok(n)) = (r.try_get_u32_le(), r.try_get_u32_le()) else {
            return Err(FabricError::Invalid(format!(
                "endpoint of {} bytes is shorter than its 8-byte header",
                b.len()
            )));
        };
        if r.remaining() != n as usize {
            return Err(FabricError::Invalid(format!(
                "endpoint says {n} address bytes, has {}",
                r.remaining()
            )));
        }
        Ok(QpEndpoint {
            nic: r.to_vec(),
            qpn,
        })
    }

    /// Encodes a list of endpoints: for each, its encoding's length (LE
    /// u32) and the encoding.
    pub fn encode_list(eps: &[QpEndpoint]) -> Vec<u8> {
        let mut v = Vec::with_capacity(eps.iter().map(|e| 4 + e.encoded_len()).sum());
        for e in eps {
            v.put_u32_le(e.encoded_len() as u32);
            e.put(&mut v);
        }
        v
    }

    /// Decodes a list written by [`QpEndpoint::encode_list`] (empty input:
    /// no endpoints).
    pub fn decode_list(b: &[u8]) -> Result<Vec<QpEndpoint>> {
        let mut r = b;
        let mut v = Vec::new();
        while r.has_remaining() {
            let n = r.try_get_u32_le().map_err(|e| {
                FabricError::Invalid(format!(
                    "endpoint list: entry {} has a truncated length ({e})",
                    v.len()
                ))
            })? as usize;
            if r.remaining() < n {
                return Err(FabricError::Invalid(format!(
                    "endpoint list: entry {} says {n} bytes, {} are left",
                    v.len(),
                    r.remaining()
                )));
            }
            v.push(QpEndpoint::decode(&r[..n])?);
            r.advance(n);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_round_trip_and_rejects_garbage() {
        let ep = QpEndpoint {
            nic: b"tcp:127.0.0.1:4000".to_vec(),
            qpn: 77,
        };
        assert_eq!(QpEndpoint::decode(&ep.encode()).unwrap(), ep);
        assert!(QpEndpoint::decode(&[1, 2, 3]).is_err());
        let mut bad = ep.encode();
        bad.push(0);
        assert!(QpEndpoint::decode(&bad).is_err());
    }

    /// The list format is the one the cluster set-up has always published:
    /// per endpoint a u32 LE length, then the endpoint's own encoding.
    #[test]
    fn lists_round_trip_in_the_published_format() {
        let eps = vec![
            QpEndpoint {
                nic: b"ab".to_vec(),
                qpn: 0x0102_0304,
            },
            QpEndpoint {
                nic: Vec::new(),
                qpn: 7,
            },
        ];
        let b = QpEndpoint::encode_list(&eps);
        let mut want = Vec::new();
        for e in &eps {
            let enc = e.encode();
            want.extend_from_slice(&(enc.len() as u32).to_le_bytes());
            want.extend_from_slice(&enc);
        }
        assert_eq!(b, want);
        assert_eq!(
            hex::encode(&b),
            "0a00000004030201020000006162080000000700000000000000"
        );
        assert_eq!(QpEndpoint::decode_list(&b).unwrap(), eps);
        assert!(QpEndpoint::decode_list(&[]).unwrap().is_empty());
        // Truncation anywhere inside an entry is an error, never a panic.
        for cut in (1..b.len()).filter(|&c| c != 14) {
            assert!(QpEndpoint::decode_list(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(QpEndpoint::decode_list(&b[..14]).unwrap(), eps[..1]);
        // An entry whose length disagrees with its endpoint is refused.
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(QpEndpoint::decode_list(&bad).is_err());
    }
}
