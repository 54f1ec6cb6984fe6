//! The protection region (PR): 40 bytes per lease on the memory node, bound
//! to the holder through a read+atomic window, and the term arithmetic that
//! both sides of a lease share.
//!
//! ```text
//! offset  0      8        16        24                 32     40
//!         valid  begin ns unit ns   word: aba | units   (meta)
//! ```
//!
//! The word is the only field that changes after the grant: its low 32 bits
//! are an ABA counter (bumped when the PR is reused), its high 32 bits the
//! units granted so far. A client extends by CAS from `(aba, units)` to
//! `(aba, units + n)`; the directory closes the lease by CAS to
//! `(aba, CLOSED)` before it unbinds, so an extension racing the GC is
//! either honoured or refused, never lost. The lease's deadline is
//! `begin + unit * units`.

/// Bytes of one protection region.
pub const SIZE: u64 = 40;
/// Offset of the valid byte.
pub const VALID: u64 = 0;
/// Offset of the grant time (i64 ns, little endian).
pub const BEGIN: u64 = 8;
/// Offset of the unit (i64 ns).
pub const UNIT: u64 = 16;
/// Offset of the extension word.
pub const WORD: u64 = 24;

/// Unit count that closes a protection region (no extension possible).
pub const CLOSED: u32 = u32::MAX;
/// Most units a lease may be extended to.
pub const MAX_UNITS: u32 = 1 << 20;

/// The extension word of a protection region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word {
    /// Reuse counter of the region.
    pub aba: u32,
    /// Units granted so far, or [`CLOSED`].
    pub units: u32,
}

impl Word {
    /// The packed 8-byte value (low 32 bits aba, high 32 bits units).
    pub fn pack(self) -> u64 {
        self.aba as u64 | (self.units as u64) << 32
    }
    /// Unpacks an 8-byte value.
    pub fn unpack(w: u64) -> Word {
        Word {
            aba: w as u32,
            units: (w >> 32) as u32,
        }
    }
    /// The word of a fresh grant on a region whose reuse counter is `aba`.
    pub fn granted(aba: u32) -> Word {
        Word { aba, units: 1 }
    }
    /// The word a region is left with when its lease ends (next reuse).
    pub fn retired(self) -> Word {
        Word {
            aba: self.aba.wrapping_add(1),
            units: 0,
        }
    }
    /// This word closed.
    pub fn closed(self) -> Word {
        Word {
            aba: self.aba,
            units: CLOSED,
        }
    }
    /// True once the directory closed the lease.
    pub fn is_closed(self) -> bool {
        self.units == CLOSED
    }
    /// The word after extending by `more` units, or why not: closed, or
    /// past [`MAX_UNITS`].
    pub fn extended(self, more: u32) -> Result<Word, Refusal> {
        if self.is_closed() {
            return Err(Refusal::Closed);
        }
        match self.units.checked_add(more) {
            Some(u) if u <= MAX_UNITS => Ok(Word {
                aba: self.aba,
                units: u,
            }),
            _ => Err(Refusal::Cap {
                units: self.units,
                more,
            }),
        }
    }
}

/// Why an extension was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The lease was closed (expired, relinquished or revoked).
    #[error("the lease is closed")]
    Closed,
    /// The extension would pass the cap.
    #[error("{units} + {more} units would pass the cap of {MAX_UNITS}")]
    Cap {
        /// Units held.
        units: u32,
        /// Units asked for.
        more: u32,
    },
    /// The lease has no protection region or no term.
    #[error("the lease has no protection region or no term (NO_BIND_PR, NO_GC)")]
    NoTerm,
    /// The word changed under the caller (a racing close or extension).
    #[error("the protection region changed (aba {}, units {})", .0.aba, .0.units)]
    Changed(Word),
}

/// A lease's term: granted at `begin` in units of `unit` ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Term {
    /// Grant time (PatronusTime ns).
    pub begin: i64,
    /// Unit length (ns); 0 for leases without a term.
    pub unit: i64,
}

impl Term {
    /// A term of `ns` per unit starting at `begin`; `ns` beyond i64::MAX
    /// saturates.
    pub fn new(begin: i64, ns: u64) -> Term {
        Term {
            begin,
            unit: i64::try_from(ns).unwrap_or(i64::MAX),
        }
    }
    /// The deadline after `units` units (saturating; never wraps).
    pub fn deadline(self, units: u32) -> i64 {
        self.begin
            .saturating_add(self.unit.saturating_mul(units as i64))
    }
    /// Units that cover `ns` more nanoseconds (at most [`MAX_UNITS`]), or
    /// None when the term has no unit.
    pub fn units_for(self, ns: u64) -> Option<u32> {
        if self.unit <= 0 {
            return None;
        }
        Some(ns.div_ceil(self.unit as u64).min(MAX_UNITS as u64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_packs_aba_low_units_high() {
        let w = Word { aba: 7, units: 3 };
        assert_eq!(w.pack(), 7 | 3 << 32);
        assert_eq!(Word::unpack(w.pack()), w);
        assert_eq!(Word::unpack(u64::MAX).units, CLOSED);
    }

    #[test]
    fn extension_respects_close_and_cap() {
        let w = Word::granted(5);
        assert_eq!(w.extended(2), Ok(Word { aba: 5, units: 3 }));
        assert_eq!(w.closed().extended(1), Err(Refusal::Closed));
        assert!(matches!(w.extended(MAX_UNITS), Err(Refusal::Cap { .. })));
        assert!(matches!(w.extended(u32::MAX - 1), Err(Refusal::Cap { .. })));
        assert_eq!(w.extended(MAX_UNITS - 1).map(|w| w.units), Ok(MAX_UNITS));
    }

    #[test]
    fn retire_bumps_aba_and_clears_units() {
        let w = Word {
            aba: u32::MAX,
            units: 9,
        };
        assert_eq!(w.retired(), Word { aba: 0, units: 0 });
    }

    #[test]
    fn term_arithmetic_saturates() {
        let t = Term::new(1_000, 10);
        assert_eq!(t.deadline(1), 1_010);
        assert_eq!(t.deadline(3), 1_030);
        let big = Term::new(i64::MAX - 5, u64::MAX);
        assert_eq!(big.unit, i64::MAX);
        assert_eq!(big.deadline(2), i64::MAX);
        assert_eq!(t.units_for(25), Some(3));
        assert_eq!(t.units_for(0), Some(0));
        assert_eq!(t.units_for(u64::MAX), Some(MAX_UNITS));
        assert_eq!(Term::new(0, 0).units_for(10), None);
    }
}
