//! Packet sequence numbers of a coordinated reset: after both ends of an
//! RC connection went through RESET, each end's new send PSN must be what
//! the other end's receive side expects. The requester (the client thread)
//! picks both directions' PSNs and sends them to the responder (the
//! directory) in its admin `QpReset` request; each end then connects with
//! its half ([`ConnPsns::requester_end`], [`ConnPsns::responder_end`]).

use rand::Rng;

use super::{FabricError, Result};

/// One end's initial PSNs for a connect: `send` becomes its `sq_psn`,
/// `recv` its `rq_psn` (the peer's `send`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Psns {
    /// This QP's first send PSN.
    pub send: u32,
    /// The first PSN this QP expects from its peer.
    pub recv: u32,
}

/// Both directions' PSNs of one connection after a coordinated reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnPsns {
    /// First PSN of requester → responder packets (client sq, directory rq).
    pub requester: u32,
    /// First PSN of responder → requester packets (directory sq, client rq).
    pub responder: u32,
}

/// PSNs are 24 bits on the wire.
pub const PSN_MASK: u32 = (1 << 24) - 1;

/// Marks an encoded pair (an encoded 0 means "no PSNs": the frame of a
/// sender that predates coordinated PSNs).
const PRESENT: u64 = 1 << 63;

impl ConnPsns {
    /// A fresh pair: each direction's PSN is random, 24-bit, never 0 and
    /// differs from that direction's PSN in `prev` (the pair of the last
    /// reset, if any).
    pub fn fresh(prev: Option<ConnPsns>) -> ConnPsns {
        ConnPsns::fresh_from(&mut rand::thread_rng(), prev)
    }

    /// As [`ConnPsns::fresh`] with the given random source.
    pub fn fresh_from(rng: &mut impl Rng, prev: Option<ConnPsns>) -> ConnPsns {
        let mut pick = |old: Option<u32>| loop {
            let p = rng.gen_range(1..=PSN_MASK);
            if Some(p) != old {
                return p;
            }
        };
        ConnPsns {
            requester: pick(prev.map(|p| p.requester)),
            responder: pick(prev.map(|p| p.responder)),
        }
    }

    /// The requester's (client's) half.
    pub fn requester_end(self) -> Psns {
        Psns {
            send: self.requester,
            recv: self.responder,
        }
    }

    /// The responder's (directory's) half.
    pub fn responder_end(self) -> Psns {
        Psns {
            send: self.responder,
            recv: self.requester,
        }
    }

    /// As one u64 (the admin request's argument): bit 63 set, the
    /// responder's PSN in bits 24..48, the requester's in bits 0..24.
    pub fn encode(self) -> u64 {
        PRESENT | ((self.responder & PSN_MASK) as u64) << 24 | (self.requester & PSN_MASK) as u64
    }

    /// Decodes [`ConnPsns::encode`]; 0 is "no PSNs" (None). Anything else
    /// without bit 63, with bits 48..63 set, or with a zero PSN is refused.
    pub fn decode(v: u64) -> Result<Option<ConnPsns>> {
        if v == 0 {
            return Ok(None);
        }
        let bad = |why: &str| {
            Err(FabricError::Invalid(format!(
                "PSN pair {v:#x}: {why} (bit 63 set, two non-zero 24-bit PSNs)"
            )))
        };
        if v & PRESENT == 0 || (v & !PRESENT) >> 48 != 0 {
            return bad("stray bits");
        }
        let p = ConnPsns {
            requester: (v & PSN_MASK as u64) as u32,
            responder: (v >> 24 & PSN_MASK as u64) as u32,
        };
        if p.requester == 0 || p.responder == 0 {
            return bad("a zero PSN");
        }
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fresh_pairs_differ_from_the_previous_one_and_both_ends_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut prev = None;
        for _ in 0..10_000 {
            let p = ConnPsns::fresh_from(&mut rng, prev);
            assert!((1..=PSN_MASK).contains(&p.requester), "{p:?}");
            assert!((1..=PSN_MASK).contains(&p.responder), "{p:?}");
            if let Some(q) = prev {
                assert_ne!(p.requester, q.requester);
                assert_ne!(p.responder, q.responder);
            }
            // What one end sends from is what the other expects.
            let (c, d) = (p.requester_end(), p.responder_end());
            assert_eq!(c.send, d.recv);
            assert_eq!(d.send, c.recv);
            // Through the wire and back: the directory's half is the same.
            let got = ConnPsns::decode(p.encode()).unwrap().unwrap();
            assert_eq!(got, p);
            assert_eq!(got.responder_end(), d);
            prev = Some(p);
        }
        // The same random draws as the previous reset's are rejected: a
        // source replaying them still yields other PSNs.
        let seeded = || rand::rngs::StdRng::seed_from_u64(99);
        let first = ConnPsns::fresh_from(&mut seeded(), None);
        let second = ConnPsns::fresh_from(&mut seeded(), Some(first));
        assert_ne!(second.requester, first.requester);
        assert_ne!(second.responder, first.responder);
        // A one-value range cannot repeat: the draw goes on until it differs.
        let a = ConnPsns {
            requester: 5,
            responder: 6,
        };
        let b = ConnPsns::fresh(Some(a));
        assert!(b.requester != 5 && b.responder != 6);
    }

    #[test]
    fn encoding_is_fixed_and_garbage_is_refused() {
        let p = ConnPsns {
            requester: 0x00ab_cdef,
            responder: 0x0012_3456,
        };
        assert_eq!(p.encode(), 0x8000_1234_56ab_cdef);
        assert_eq!(ConnPsns::decode(0).unwrap(), None, "old senders: no PSNs");
        assert!(ConnPsns::decode(9).is_err(), "no marker bit");
        assert!(ConnPsns::decode(p.encode() | 1 << 50).is_err());
        assert!(ConnPsns::decode(PRESENT | 5).is_err(), "zero responder PSN");
        assert!(
            ConnPsns::decode(PRESENT | 5 << 24).is_err(),
            "zero requester PSN"
        );
    }
}
