//! Posted (pipelined) puts and deletes: the operations of many keys in
//! flight together on one client thread, in waves of posted calls
//! ([`ClientThread::post_write`], `post_read`, `post_cas`), as
//! [`KvTable::get_many`] does for lookups.
//!
//! A `put_many` wave: blocks allocated (topped up with their allocation
//! calls in flight together), every block WRITE in flight, every key's
//! candidate groups READ, the fingerprint-matching blocks READ, every
//! slot CAS in flight, and a last READ of the groups that settles each
//! key (the key's fingerprint in exactly one slot, its own: done). A
//! `del_many` wave: groups READ, blocks READ, every entry's CAS to 0.
//! A key that meets anything unusual (a frozen subtable, a torn block, a
//! lost CAS, full groups, a fingerprint shared with another key, a
//! duplicate left by a concurrent insert) goes on through the blocking
//! path of [`KvTable::put`] / [`KvTable::del`], which resolves it. The
//! result is the one of the blocking calls made in the given order: a key
//! given twice in one call is handled in a later wave than its first
//! occurrence.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Instant;

use super::io::{ready, Blocking};
use super::layout::{self, slot, Hashes, GROUP_BYTES};
use super::{post_all, Groups, KvTable};
use crate::client::ClientThread;
use crate::lease::Rc;
use crate::{Error, Result};

/// What one key's candidate groups and blocks showed.
enum Look {
    /// The key's first slot (table offset, word, block owner) and its
    /// later duplicates (offset, word, owner).
    Hit {
        at: u64,
        word: u64,
        owner: u16,
        later: Vec<(u64, u64, u16)>,
    },
    /// Not there (and no other key under its fingerprint): the groups as
    /// read.
    Miss(Groups),
    /// Something needs a second look: the blocking path decides.
    Unsure,
}

impl KvTable {
    /// Sets every `(key, value)` (insert or update), with the calls of
    /// many keys in flight together (see the module docs of
    /// `src/kv/many.rs`). The outcome equals `put` of each item in order.
    /// The thread must have no other calls in flight (their completions
    /// would be taken here). On an error some items may be in place and
    /// later ones not.
    pub fn put_many(&mut self, ct: &mut ClientThread, items: &[(&[u8], &[u8])]) -> Result<()> {
        self.no_inflight(ct, "put_many")?;
        for (k, v) in items {
            layout::check_kv(k, Some(v))?;
        }
        for r in distinct_runs(items.iter().map(|i| i.0)) {
            self.put_wave(ct, &items[r])?;
        }
        Ok(())
    }

    /// Removes every key, with the calls of many keys in flight together;
    /// per key, true when it was there. The outcome equals `del` of each
    /// key in order. The thread must have no other calls in flight.
    pub fn del_many(&mut self, ct: &mut ClientThread, keys: &[&[u8]]) -> Result<Vec<bool>> {
        self.no_inflight(ct, "del_many")?;
        for k in keys {
            layout::check_kv(k, None)?;
        }
        let mut out = Vec::with_capacity(keys.len());
        for r in distinct_runs(keys.iter().copied()) {
            out.extend(self.del_wave(ct, &keys[r])?);
        }
        Ok(out)
    }

    fn no_inflight(&self, ct: &ClientThread, what: &str) -> Result<()> {
        if ct.inflight() != 0 {
            return Err(Error::Invalid(format!(
                "kv {what}: the thread has {} calls in flight (their completions would be \
                 taken here): poll them first",
                ct.inflight()
            )));
        }
        Ok(())
    }

    /// One wave of puts of distinct keys.
    fn put_wave(&mut self, ct: &mut ClientThread, items: &[(&[u8], &[u8])]) -> Result<()> {
        let hs: Vec<Hashes> = items.iter().map(|(k, _)| Hashes::of(k)).collect();
        let blocks: Vec<Vec<u8>> = items
            .iter()
            .map(|(k, v)| layout::encode_block(k, v, self.me))
            .collect();
        let offs = self.take_blocks(ct, &blocks)?;
        let mines: Vec<u64> = blocks
            .iter()
            .zip(&hs)
            .zip(&offs)
            .map(|((b, h), &off)| slot::pack(h.fp(), (b.len() / layout::BLOCK_UNIT) as u64, off))
            .collect();
        let writes: Vec<(u64, &[u8])> = offs
            .iter()
            .zip(&blocks)
            .map(|(&o, b)| (o, &b[..]))
            .collect();
        let looks = match self
            .write_blocks(ct, &writes)
            .and_then(|()| self.look_many(ct, items.iter().map(|i| i.0), &hs))
        {
            Ok(l) => l,
            Err(e) => {
                // Nothing was installed: the blocks are spare again.
                for (b, &off) in blocks.iter().zip(&offs) {
                    self.st
                        .get_mut()
                        .spare
                        .entry(b.len())
                        .or_default()
                        .push(off);
                }
                return Err(e);
            }
        };
        // Per key: the slot to CAS (offset, expected word, owner of the
        // block it holds), or None (the blocking path).
        let mut taken = HashSet::new();
        let plan: Vec<Option<(u64, u64, u16)>> = looks
            .iter()
            .map(|l| match l {
                Look::Hit {
                    at, word, owner, ..
                } if taken.insert(*at) => Some((*at, *word, *owner)),
                Look::Miss(g) => {
                    let at = self.pick_empty_except(g, &taken)?;
                    taken.insert(at);
                    Some((at, 0, 0))
                }
                _ => None,
            })
            .collect();
        let cas: Vec<(usize, (u64, u64, u64))> = plan
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|(at, old, _)| (i, (at, old, mines[i]))))
            .collect();
        let reqs: Vec<(u64, u64, u64)> = cas.iter().map(|&(_, r)| r).collect();
        let olds = self.cas_many(ct, &reqs)?;
        let mut first_err = None;
        // Per key: 0 not yet tried or lost (blocking path), 1 installed,
        // 2 failed (error kept).
        let mut state = vec![0u8; items.len()];
        for (&(i, (_, old, _)), r) in cas.iter().zip(olds) {
            match r {
                Ok(o) if o == old => {
                    state[i] = 1;
                    if old != 0 {
                        let owner = plan[i].map_or(0, |p| p.2);
                        ready(self.free_block(&Blocking::new(ct), old, owner));
                    }
                }
                Ok(_) => self.st.get_mut().stats.retries += 1,
                Err(e) => {
                    state[i] = 2;
                    first_err.get_or_insert(e);
                }
            }
        }
        // Settle the installed keys: one READ of their groups each.
        let inst: Vec<usize> = (0..items.len()).filter(|&i| state[i] == 1).collect();
        let settled = match self.settled_many(ct, &inst, &hs, &mines) {
            Ok(s) => s,
            Err(e) => {
                // Installed blocks stay (they are values now); the others
                // were never reachable: free them.
                for i in 0..items.len() {
                    if state[i] != 1 {
                        ready(self.free_block(&Blocking::new(ct), mines[i], self.me));
                    }
                }
                return Err(e);
            }
        };
        let until = Instant::now() + self.params.patience;
        for (&i, ok) in inst.iter().zip(settled) {
            if ok {
                continue;
            }
            let at = plan[i].map_or(0, |p| p.0);
            let r = ready(self.settle(&Blocking::new(ct), items[i].0, &hs[i], at, mines[i], until));
            match r {
                Ok(true) => {}
                Ok(false) => state[i] = 0,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for i in 0..items.len() {
            match state[i] {
                0 => {
                    let mut installed = false;
                    let r = ready(self.install(
                        &Blocking::new(ct),
                        items[i].0,
                        &hs[i],
                        mines[i],
                        &mut installed,
                    ));
                    if let Err(e) = r {
                        if !installed {
                            ready(self.free_block(&Blocking::new(ct), mines[i], self.me));
                        }
                        first_err.get_or_insert(e);
                        continue;
                    }
                }
                2 => {
                    ready(self.free_block(&Blocking::new(ct), mines[i], self.me));
                    continue;
                }
                _ => {}
            }
            ready(self.tick(&Blocking::new(ct)));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One wave of deletes of distinct keys.
    fn del_wave(&mut self, ct: &mut ClientThread, keys: &[&[u8]]) -> Result<Vec<bool>> {
        let hs: Vec<Hashes> = keys.iter().map(|k| Hashes::of(k)).collect();
        let looks = self.look_many(ct, keys.iter().copied(), &hs)?;
        let mut out = vec![false; keys.len()];
        let mut again = vec![false; keys.len()];
        // (key, (offset, word, swap 0), owner)
        let mut cas: Vec<(usize, (u64, u64, u64), u16)> = Vec::new();
        for (i, l) in looks.into_iter().enumerate() {
            match l {
                Look::Hit {
                    at,
                    word,
                    owner,
                    later,
                } => {
                    cas.push((i, (at, word, 0), owner));
                    cas.extend(later.into_iter().map(|(a, w, o)| (i, (a, w, 0), o)));
                }
                Look::Miss(_) => {}
                Look::Unsure => again[i] = true,
            }
        }
        let reqs: Vec<(u64, u64, u64)> = cas.iter().map(|&(_, r, _)| r).collect();
        let olds = self.cas_many(ct, &reqs)?;
        let mut first_err = None;
        for (&(i, (_, w, _), owner), r) in cas.iter().zip(olds) {
            match r {
                Ok(o) if o == w => {
                    out[i] = true;
                    ready(self.free_block(&Blocking::new(ct), w, owner));
                }
                Ok(_) => {
                    self.st.get_mut().stats.retries += 1;
                    again[i] = true;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for (i, k) in keys.iter().enumerate() {
            if again[i] {
                // An entry this call removed already counts.
                let was = self.del(ct, k)?;
                out[i] |= was;
            } else if out[i] {
                ready(self.tick(&Blocking::new(ct)));
            }
        }
        Ok(out)
    }

    /// READs every key's candidate groups (all in flight together), then
    /// the blocks their fingerprints point at (all in flight together).
    fn look_many<'k>(
        &mut self,
        ct: &mut ClientThread,
        keys: impl Iterator<Item = &'k [u8]>,
        hs: &[Hashes],
    ) -> Result<Vec<Look>> {
        let keys: Vec<&[u8]> = keys.collect();
        let mut reqs = Vec::with_capacity(2 * hs.len());
        let mut per = Vec::with_capacity(hs.len());
        for h in hs {
            let s = ready(self.subtable_of(&Blocking::new(ct), h))?;
            let (g1, g2) = h.groups(self.geo.groups);
            let ats: Vec<u64> = std::iter::once(g1)
                .chain(g2)
                .map(|g| self.geo.group(s, g))
                .collect();
            reqs.extend(ats.iter().map(|&a| (a, GROUP_BYTES as usize)));
            per.push((s, ats));
        }
        let bufs = self.read_all(ct, false, &reqs)?;
        let mut groups = Vec::with_capacity(hs.len());
        let mut next = 0;
        for (s, ats) in per {
            let mut slots = Vec::with_capacity(2 * layout::SLOTS_PER_GROUP as usize);
            let mut frozen = false;
            for &at in &ats {
                for (i, w) in layout::words(&bufs[next]).enumerate() {
                    frozen |= w & slot::FROZEN != 0;
                    slots.push((at + 8 * i as u64, w));
                }
                next += 1;
            }
            groups.push(Groups {
                sub: s,
                slots,
                frozen,
            });
        }
        // The blocks of the fingerprint-matching slots of unfrozen groups.
        let mut breqs = Vec::new();
        for (g, h) in groups.iter().zip(hs) {
            if g.frozen {
                continue;
            }
            for &(_, w) in &g.slots {
                if !slot::is_empty(w) && slot::fp(w) == h.fp() {
                    breqs.push((slot::off(w), slot::len(w)));
                }
            }
        }
        let data = self.read_all(ct, true, &breqs)?;
        let mut next = 0;
        let mut out = Vec::with_capacity(hs.len());
        for ((g, h), key) in groups.into_iter().zip(hs).zip(keys) {
            if g.frozen {
                out.push(Look::Unsure);
                continue;
            }
            let mut first: Option<(u64, u64, u16)> = None;
            let mut later = Vec::new();
            let mut others = false;
            let mut torn = false;
            for &(at, w) in &g.slots {
                if slot::is_empty(w) || slot::fp(w) != h.fp() {
                    continue;
                }
                let b = &data[next];
                next += 1;
                match layout::decode_block(b) {
                    None => torn = true,
                    Some((k, _)) if k == key => {
                        let owner = layout::block_owner(b);
                        if first.is_none() {
                            first = Some((at, w, owner));
                        } else {
                            later.push((at, w, owner));
                        }
                    }
                    Some(_) => others = true,
                }
            }
            out.push(match first {
                _ if torn => Look::Unsure,
                Some((at, word, owner)) => Look::Hit {
                    at,
                    word,
                    owner,
                    later,
                },
                // Another key's block under the fingerprint may be this
                // key's old block reused: the blocking path checks.
                None if others => Look::Unsure,
                None => Look::Miss(g),
            });
        }
        Ok(out)
    }

    /// The first empty slot of the less full candidate group, leaving out
    /// the slots other keys of this wave take.
    fn pick_empty_except(&self, g: &Groups, taken: &HashSet<u64>) -> Option<u64> {
        let per = layout::SLOTS_PER_GROUP as usize;
        let mut best: Option<(usize, u64)> = None;
        for grp in g.slots.chunks(per) {
            let free: Vec<u64> = grp
                .iter()
                .filter(|&&(a, w)| w == 0 && !taken.contains(&a))
                .map(|&(a, _)| a)
                .collect();
            if let Some(&at) = free.first() {
                if best.is_none_or(|(f, _)| free.len() > f) {
                    best = Some((free.len(), at));
                }
            }
        }
        best.map(|(_, a)| a)
    }

    /// Per installed key `inst[j]`: true when a READ of its groups shows
    /// its fingerprint in exactly one slot, holding `mines[i]` (settled);
    /// false leaves it to [`KvTable::settle`].
    fn settled_many(
        &mut self,
        ct: &mut ClientThread,
        inst: &[usize],
        hs: &[Hashes],
        mines: &[u64],
    ) -> Result<Vec<bool>> {
        let mut reqs = Vec::with_capacity(2 * inst.len());
        let mut n = Vec::with_capacity(inst.len());
        for &i in inst {
            let s = ready(self.subtable_of(&Blocking::new(ct), &hs[i]))?;
            let (g1, g2) = hs[i].groups(self.geo.groups);
            let before = reqs.len();
            reqs.extend(
                std::iter::once(g1)
                    .chain(g2)
                    .map(|g| (self.geo.group(s, g), GROUP_BYTES as usize)),
            );
            n.push(reqs.len() - before);
        }
        let bufs = self.read_all(ct, false, &reqs)?;
        let mut next = 0;
        let mut out = Vec::with_capacity(inst.len());
        for (&i, k) in inst.iter().zip(n) {
            let ws: Vec<u64> = bufs[next..next + k]
                .iter()
                .flat_map(|b| layout::words(b).collect::<Vec<_>>())
                .collect();
            next += k;
            let frozen = ws.iter().any(|w| w & slot::FROZEN != 0);
            let mut same = ws
                .iter()
                .filter(|&&w| !slot::is_empty(w) && slot::fp(w) == hs[i].fp());
            let only_mine = same.next() == Some(&mines[i]) && same.next().is_none();
            out.push(!frozen && only_mine);
        }
        Ok(out)
    }

    /// Blocks for `blocks` (their sizes), from the spares, topped up with
    /// their allocation calls in flight together.
    fn take_blocks(&mut self, ct: &mut ClientThread, blocks: &[Vec<u8>]) -> Result<Vec<u64>> {
        let mut need: std::collections::BTreeMap<usize, usize> = Default::default();
        for b in blocks {
            *need.entry(b.len()).or_default() += 1;
        }
        let (node, dir, hint) = (self.node, self.dir, self.params.alloc_hint);
        for (&size, &n) in &need {
            let have = self.st.get_mut().spare.get(&size).map_or(0, Vec::len);
            if have >= n {
                continue;
            }
            let more = (n - have).max(super::ALLOC_AHEAD);
            let cs = post_all(ct, more, |ct, i| {
                ct.post_alloc(node, dir, size as u64, hint, i)
            })?;
            let got = cs.into_iter().filter(|c| {
                matches!(c.result, Ok(Rc::Ok))
                    && c.lease
                        .as_ref()
                        .is_some_and(|l| l.status == crate::lease::AcquireStatus::Success as u8)
            });
            let spare = self.st.get_mut().spare.entry(size).or_default();
            spare.extend(got.map(|c| c.value));
            if spare.len() < n {
                return Err(Error::NoMem(format!(
                    "kv put_many: node {node} dir {dir} has {} free blocks of {size} bytes, {n} \
                     needed (allocator hint {hint})",
                    spare.len()
                )));
            }
        }
        Ok(blocks
            .iter()
            .map(|b| {
                self.st
                    .get_mut()
                    .spare
                    .get_mut(&b.len())
                    .and_then(Vec::pop)
                    .unwrap_or_default()
            })
            .collect())
    }

    /// WRITEs every block (buffer offset, bytes) with the calls in flight
    /// together; the first failure once none is in flight.
    fn write_blocks(&mut self, ct: &mut ClientThread, writes: &[(u64, &[u8])]) -> Result<()> {
        let mut at = Vec::with_capacity(writes.len());
        for &(off, b) in writes {
            at.push(self.kv_range(off, b.len())?);
        }
        let flag = self.flag;
        let kv = self.kv.get_mut();
        let cs = post_all(ct, writes.len(), |ct, i| {
            ct.post_write(kv, writes[i as usize].1, at[i as usize], flag, i)
        })?;
        let mut err = None;
        for c in cs {
            c.apply(self.kv.get_mut());
            match c.result {
                Ok(Rc::Ok) => {}
                Ok(rc) => {
                    let off = writes.get(c.user_data as usize).map_or(0, |w| w.0);
                    err.get_or_insert(self.refused(rc, "block write", off));
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// CASes every (table offset, compare, swap) with the calls in flight
    /// together; per CAS the old value or its refusal.
    fn cas_many(
        &mut self,
        ct: &mut ClientThread,
        reqs: &[(u64, u64, u64)],
    ) -> Result<Vec<Result<u64>>> {
        let flag = self.flag;
        let table = self.table.get_mut();
        let cs = post_all(ct, reqs.len(), |ct, i| {
            let (at, cmp, swap) = reqs[i as usize];
            ct.post_cas(table, at, cmp, swap, flag, i)
        })?;
        let mut out: Vec<Result<u64>> = (0..reqs.len())
            .map(|_| Err(Error::Invalid("kv: a CAS without a completion".into())))
            .collect();
        for c in cs {
            c.apply(self.table.get_mut());
            let i = c.user_data as usize;
            let r = match c.result {
                Ok(Rc::Ok) => Ok(c.value),
                Ok(rc) => Err(self.refused(rc, "table CAS", reqs.get(i).map_or(0, |r| r.0))),
                Err(e) => Err(e),
            };
            if let Some(o) = out.get_mut(i) {
                *o = r;
            }
        }
        Ok(out)
    }
}

/// Splits `keys` into consecutive runs without a repeated key.
fn distinct_runs<'k>(keys: impl Iterator<Item = &'k [u8]>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut start = 0;
    let mut n = 0;
    for (i, k) in keys.enumerate() {
        if !seen.insert(k) {
            out.push(start..i);
            seen.clear();
            seen.insert(k);
            start = i;
        }
        n = i + 1;
    }
    if n > start {
        out.push(start..n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::distinct_runs;

    #[test]
    fn runs_split_at_repeats() {
        let ks: Vec<&[u8]> = vec![b"a", b"b", b"a", b"c", b"c"];
        assert_eq!(distinct_runs(ks.iter().copied()), vec![0..2, 2..4, 4..5]);
        assert!(distinct_runs(std::iter::empty()).is_empty());
    }
}
