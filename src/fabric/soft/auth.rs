//! Connection authentication on both soft links (DESIGN.md, "Connections
//! are authenticated").
//!
//! Every soft NIC makes an X25519 key pair when it opens and publishes the
//! public half in its address (`NicAddr`, `;pk=<hex>`), so it travels in
//! every QP endpoint through the keeper: the keeper's integrity is the root
//! of trust, its readability is not. Two NICs derive a pairwise key with
//! HKDF-SHA256 from their X25519 shared secret (both public keys, in a fixed
//! order, in the info). A channel attaches to a QP only after a
//! challenge-response under that key:
//!
//! ```text
//! initiator -> responder  HELLO  (88 B): magic, version 2, kind, dst qpn, src qpn,
//!                                        link, epoch, initiator nonce, initiator pk
//! responder -> initiator  CHAL   (40 B): fresh random challenge   | REFUSE (code)
//! initiator -> responder  AUTH   (40 B): HMAC-SHA256(pairwise key, transcript)
//!                                        (+ the segment fd and its length on shm)
//! responder -> initiator  OK     (40 B)  (+ the doorbell fd on shm) | REFUSE (code)
//! ```
//!
//! The transcript is `"patronus-hello-v2" || link || dst || src || epoch ||
//! initiator nonce || challenge || initiator pk || responder pk`; the
//! responder checks it in constant time. Replayed bytes of a captured hello
//! fail because the challenge is fresh. An authenticated channel is
//! attached (served) when the named QP is connected to an endpoint with
//! the hello's public key and QP number, or provisionally while the QP is
//! connected to no one yet (closed if it then connects elsewhere); it never
//! replaces a live channel unless it is a newer connection (epoch) of the
//! same peer; one from another peer is held back unserved until the QP
//! connects to it (see `QpInner::attach_inbound`). Nothing here runs on the data path: it
//! is paid once per connection.

use std::collections::HashMap;

use bytes::{Buf, BufMut};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use super::wire::{WireError, MAGIC};

/// Version of the hello exchange (the frame version stays `wire::VERSION`;
/// version-1 hellos, which proved nothing, are refused).
pub const HELLO_VERSION: u8 = 2;
/// Kinds of the hello messages.
pub mod kind {
    /// Initiator's hello.
    pub const HELLO: u8 = 0x20;
    /// Responder's challenge.
    pub const CHAL: u8 = 0x21;
    /// Initiator's answer (the MAC).
    pub const AUTH: u8 = 0x22;
    /// Responder's refusal (with a code).
    pub const REFUSE: u8 = 0x23;
    /// Responder's acceptance.
    pub const OK: u8 = 0x24;
}

/// Refusal codes carried in a REFUSE message.
pub mod refuse {
    /// Not a version-2 hello.
    pub const BAD_HELLO: u32 = 1;
    /// No such QP on this NIC.
    pub const NO_QP: u32 = 2;
    /// The peer's public key gives no usable shared secret.
    pub const BAD_KEY: u32 = 4;
    /// The MAC did not verify.
    pub const BAD_MAC: u32 = 5;
    /// The QP has a live channel from a connection that is not older.
    pub const LIVE: u32 = 6;
    /// Bad shm segment (missing, unsealed, wrong size, unmappable).
    pub const BAD_SEGMENT: u32 = 7;
}

/// Hello length.
pub const HELLO_LEN: usize = 88;
/// Length of every other hello-exchange message.
pub const MSG_LEN: usize = 40;
/// Public-key, nonce and MAC length.
pub const KEY_LEN: usize = 32;

const PAIRWISE_SALT: &[u8] = b"patronus-pairwise-v1";
const TRANSCRIPT_TAG: &[u8] = b"patronus-hello-v2";

/// The link a hello was sent on (part of the transcript).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloLink {
    /// The tcp link.
    Tcp = 0,
    /// The shm link (abstract Unix socket).
    Shm = 1,
}

/// A NIC's key pair and its cache of pairwise keys.
pub struct Identity {
    secret: StaticSecret,
    public: [u8; KEY_LEN],
    pairwise: Mutex<HashMap<[u8; KEY_LEN], [u8; KEY_LEN]>>,
}

impl Identity {
    /// A fresh key pair from the OS's randomness.
    pub fn generate() -> Identity {
        let secret = StaticSecret::random_from_rng(rand::rngs::OsRng);
        let public = PublicKey::from(&secret).to_bytes();
        Identity {
            secret,
            public,
            pairwise: Mutex::new(HashMap::new()),
        }
    }

    /// The public half (published in the NIC's address).
    pub fn public(&self) -> [u8; KEY_LEN] {
        self.public
    }

    /// The pairwise key with the NIC whose public key is `peer`, cached per
    /// peer; None when the exchange is not contributory (a low-order point).
    pub fn pairwise(&self, peer: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
        if let Some(k) = self.pairwise.lock().get(peer) {
            return Some(*k);
        }
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        if !shared.was_contributory() {
            return None;
        }
        let (lo, hi) = if self.public <= *peer {
            (&self.public, peer)
        } else {
            (peer, &self.public)
        };
        let mut info = [0u8; 2 * KEY_LEN];
        info[..KEY_LEN].copy_from_slice(lo);
        info[KEY_LEN..].copy_from_slice(hi);
        let mut k = [0u8; KEY_LEN];
        hkdf::Hkdf::<Sha256>::new(Some(PAIRWISE_SALT), shared.as_bytes())
            .expand(&info, &mut k)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut cache = self.pairwise.lock();
        // Bounded: a flood of hellos with made-up keys (each costs one
        // X25519 operation) cannot grow the cache past this.
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(*peer, k);
        Some(k)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(pk={})", hex::encode(self.public))
    }
}

/// A fresh random nonce.
pub fn nonce() -> [u8; KEY_LEN] {
    let mut n = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// The initiator's hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// QP on the responder's NIC the channel is for.
    pub dst: u32,
    /// The initiator's QP.
    pub src: u32,
    /// Link the hello travels on.
    pub link: HelloLink,
    /// The initiator's connection epoch (grows with every new channel of
    /// its QP; a newer one may replace a live channel).
    pub epoch: u64,
    /// The initiator's nonce.
    pub nonce: [u8; KEY_LEN],
    /// The initiator NIC's public key.
    pub pk: [u8; KEY_LEN],
}

fn put_prefix(w: &mut &mut [u8], kind: u8) {
    w.put_u16_le(MAGIC);
    w.put_u8(HELLO_VERSION);
    w.put_u8(kind);
}

/// Checks a message prefix (first 4 bytes); returns its kind.
pub fn check_prefix(b: &[u8]) -> Result<u8, WireError> {
    let mut r = b;
    if r.len() < 4 {
        return Err(WireError::BadLength(r.len() as u64));
    }
    let magic = r.get_u16_le();
    let version = r.get_u8();
    let kind = r.get_u8();
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if version != HELLO_VERSION {
        return Err(WireError::BadVersion(version));
    }
    Ok(kind)
}

impl Hello {
    /// A hello from `id`'s NIC, QP `src`, to QP `dst`, with a fresh nonce.
    pub fn new(id: &Identity, link: HelloLink, dst: u32, src: u32, epoch: u64) -> Hello {
        Hello {
            dst,
            src,
            link,
            epoch,
            nonce: nonce(),
            pk: id.public(),
        }
    }

    /// Encodes the hello.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        let mut w = &mut b[..];
        put_prefix(&mut w, kind::HELLO);
        w.put_u32_le(self.dst);
        w.put_u32_le(self.src);
        w.put_u8(self.link as u8);
        w.put_slice(&[0u8; 3]);
        w.put_u64_le(self.epoch);
        w.put_slice(&self.nonce);
        w.put_slice(&self.pk);
        b
    }

    /// Parses a hello (refusing other versions and kinds).
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, WireError> {
        if check_prefix(b)? != kind::HELLO {
            return Err(WireError::BadKind(b[3]));
        }
        // Every read lies inside the 88-byte array.
        let mut r = &b[4..];
        let dst = r.get_u32_le();
        let src = r.get_u32_le();
        let link = match r.get_u8() {
            0 => HelloLink::Tcp,
            1 => HelloLink::Shm,
            k => return Err(WireError::BadKind(k)),
        };
        r.advance(3);
        let epoch = r.get_u64_le();
        let mut nonce = [0u8; KEY_LEN];
        r.copy_to_slice(&mut nonce);
        let mut pk = [0u8; KEY_LEN];
        r.copy_to_slice(&mut pk);
        Ok(Hello {
            dst,
            src,
            link,
            epoch,
            nonce,
            pk,
        })
    }

    /// The MAC the initiator answers `challenge` with, for a responder
    /// whose public key is `responder_pk`.
    pub fn mac(
        &self,
        key: &[u8; KEY_LEN],
        challenge: &[u8; KEY_LEN],
        responder_pk: &[u8; KEY_LEN],
    ) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .expect("HMAC-SHA256 takes keys of any length");
        m.update(TRANSCRIPT_TAG);
        m.update(&[self.link as u8]);
        m.update(&self.dst.to_le_bytes());
        m.update(&self.src.to_le_bytes());
        m.update(&self.epoch.to_le_bytes());
        m.update(&self.nonce);
        m.update(challenge);
        m.update(&self.pk);
        m.update(responder_pk);
        m
    }

    /// The answer's MAC bytes.
    pub fn answer(
        &self,
        key: &[u8; KEY_LEN],
        challenge: &[u8; KEY_LEN],
        responder_pk: &[u8; KEY_LEN],
    ) -> [u8; KEY_LEN] {
        self.mac(key, challenge, responder_pk)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Verifies an answer in constant time.
    pub fn verify(
        &self,
        key: &[u8; KEY_LEN],
        challenge: &[u8; KEY_LEN],
        responder_pk: &[u8; KEY_LEN],
        mac: &[u8; KEY_LEN],
    ) -> bool {
        self.mac(key, challenge, responder_pk)
            .verify_slice(mac)
            .is_ok()
    }
}

/// A 40-byte message: prefix, a u32 (code or segment length), 32 bytes
/// (challenge or MAC; zero otherwise).
pub fn msg(kind: u8, word: u32, body: &[u8; KEY_LEN]) -> [u8; MSG_LEN] {
    let mut b = [0u8; MSG_LEN];
    let mut w = &mut b[..];
    put_prefix(&mut w, kind);
    w.put_u32_le(word);
    w.put_slice(body);
    b
}

/// Parses a 40-byte message: (kind, word, body).
pub fn parse_msg(b: &[u8; MSG_LEN]) -> Result<(u8, u32, [u8; KEY_LEN]), WireError> {
    let k = check_prefix(b)?;
    // Every read lies inside the 40-byte array.
    let mut r = &b[4..];
    let word = r.get_u32_le();
    let mut body = [0u8; KEY_LEN];
    r.copy_to_slice(&mut body);
    Ok((k, word, body))
}

/// A refusal.
pub fn refusal(code: u32) -> [u8; MSG_LEN] {
    msg(kind::REFUSE, code, &[0u8; KEY_LEN])
}

/// The body of the responder's message `r` if it is of kind `want`;
/// otherwise the error an initiator reports (`nic` names the responder).
pub fn expect_msg(
    r: &[u8; MSG_LEN],
    want: u8,
    nic: &str,
    dst_qpn: u32,
) -> crate::fabric::Result<[u8; KEY_LEN]> {
    use crate::fabric::FabricError;
    match parse_msg(r) {
        Ok((k, _, body)) if k == want => Ok(body),
        Ok((kind::REFUSE, code, _)) => Err(FabricError::PeerLost(format!(
            "{nic} refused the connection to QP {dst_qpn}: {} (code {code})",
            refusal_reason(code)
        ))),
        Ok((k, _, _)) => Err(FabricError::PeerLost(format!(
            "{nic} answered the hello with message kind {k:#x}"
        ))),
        Err(e) => Err(FabricError::PeerLost(format!(
            "{nic} answered the hello with a bad message: {e}"
        ))),
    }
}

/// What a refusal code means (for error messages).
pub fn refusal_reason(code: u32) -> &'static str {
    match code {
        refuse::BAD_HELLO => "not a version-2 hello",
        refuse::NO_QP => "no such QP",
        refuse::BAD_KEY => "unusable public key",
        refuse::BAD_MAC => "authentication failed",
        refuse::LIVE => "the QP has a live channel that is not older",
        refuse::BAD_SEGMENT => "bad shm segment",
        _ => "unknown reason",
    }
}

/// Parses a NIC's public key from its hex form.
pub fn parse_pk(s: &str) -> Option<[u8; KEY_LEN]> {
    let mut k = [0u8; KEY_LEN];
    hex::decode_to_slice(s, &mut k).ok()?;
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_keys_agree_and_differ_per_pair() {
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let ab = a.pairwise(&b.public()).unwrap();
        assert_eq!(ab, b.pairwise(&a.public()).unwrap());
        assert_eq!(ab, a.pairwise(&b.public()).unwrap(), "cached");
        assert_ne!(ab, a.pairwise(&c.public()).unwrap());
        assert_ne!(ab, c.pairwise(&b.public()).unwrap());
        // Low-order points give no key (the all-zero point is one).
        assert!(a.pairwise(&[0u8; KEY_LEN]).is_none());
    }

    #[test]
    fn hello_roundtrip_and_mac() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let h = Hello {
            dst: 7,
            src: 9,
            link: HelloLink::Shm,
            epoch: 3,
            nonce: nonce(),
            pk: a.public(),
        };
        let e = h.encode();
        assert_eq!(Hello::decode(&e).unwrap(), h);
        let k = a.pairwise(&b.public()).unwrap();
        let ch = nonce();
        let m = h.answer(&k, &ch, &b.public());
        assert!(h.verify(&k, &ch, &b.public(), &m));
        // Another challenge, key, epoch or direction: refused.
        assert!(!h.verify(&k, &nonce(), &b.public(), &m));
        assert!(!h.verify(&[0u8; 32], &ch, &b.public(), &m));
        let mut h2 = h.clone();
        h2.epoch = 4;
        assert!(!h2.verify(&k, &ch, &b.public(), &m));
        assert!(!h.verify(&k, &ch, &a.public(), &m));
        // Version-1 hellos and other kinds are refused.
        let mut old = e;
        old[2] = 1;
        assert!(matches!(Hello::decode(&old), Err(WireError::BadVersion(1))));
        let mut other = e;
        other[3] = kind::AUTH;
        assert!(matches!(Hello::decode(&other), Err(WireError::BadKind(_))));
        let (k2, w, body) = parse_msg(&msg(kind::CHAL, 5, &ch)).unwrap();
        assert_eq!((k2, w, body), (kind::CHAL, 5, ch));
    }
}
