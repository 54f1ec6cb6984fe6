//! The directory's access to protection regions in the node's registered
//! region: the I/O half of `lease::pr` (the words are decided there).

use super::nic_atomics::NicAtomics;
use crate::fabric::Mr;
use crate::lease::pr::{self, Term, Word};
use crate::lease::RegionOff;
use crate::Result;

/// Protection regions of one node, in its registered region. With `nic`,
/// the words clients CAS are changed by RDMA CAS through the directory's
/// loopback QP (a NIC whose atomics are not atomic with CPU atomics).
pub(crate) struct Prs<'a> {
    pub region: &'a Mr,
    pub nic: Option<&'a NicAtomics>,
}

impl Prs<'_> {
    /// The current word of the region at `at`.
    pub fn word(&self, at: RegionOff) -> Result<Word> {
        Ok(Word::unpack(self.region.load_u64(at.0 + pr::WORD)?))
    }

    /// Initialises the region at `at` for a fresh grant; returns the word.
    pub fn grant(&self, at: RegionOff, term: Term) -> Result<Word> {
        let w = Word::granted(self.word(at)?.aba);
        self.region
            .write(at.0 + pr::BEGIN, &term.begin.to_le_bytes())?;
        self.region
            .write(at.0 + pr::UNIT, &term.unit.to_le_bytes())?;
        self.region.store_u64(at.0 + pr::WORD, w.pack())?;
        self.region.write(at.0 + pr::VALID, &[1])?;
        Ok(w)
    }

    /// Closes the region at `at` (no extension can succeed any more): a CAS
    /// from the word seen to its closed form, again until it holds, so that
    /// an extension landing in between is never overwritten.
    pub fn close(&self, at: RegionOff) -> Result<()> {
        loop {
            let w = self.word(at)?;
            if w.is_closed() || self.cas(at, w, w.closed())? == w {
                return Ok(());
            }
        }
    }

    /// CAS of the word from `from` to `to`; returns the word found.
    pub fn cas(&self, at: RegionOff, from: Word, to: Word) -> Result<Word> {
        let off = at.0 + pr::WORD;
        Ok(Word::unpack(match self.nic {
            Some(n) => n.cas(off, from.pack(), to.pack())?,
            None => self.region.cas_u64(off, from.pack(), to.pack())?,
        }))
    }

    /// Leaves the region at `at` ready for its next lease.
    pub fn retire(&self, at: RegionOff) -> Result<()> {
        let w = self.word(at)?;
        self.region.store_u64(at.0 + pr::WORD, w.retired().pack())?;
        self.region.write(at.0 + pr::VALID, &[0])?;
        Ok(())
    }
}
