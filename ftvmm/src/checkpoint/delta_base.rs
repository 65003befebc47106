//! The Primary's delta base: the bytes of recently shipped pages as the
//! Secondary holds them, so an epoch can ship a dirty page as a delta
//! against them (`delta.rs`) instead of raw. Issue 11's measurement (the
//! Secondary's `DeltaProbe`, a Linux KV guest under load) put the deltas of
//! a Linux guest's dirty pages at 1-2 % of their raw bytes.
//!
//! A delta needs the page's previous version, and only the Secondary holds
//! all of guest memory a second time; the Primary keeps a bounded cache of
//! the pages it shipped last (as QEMU's XBZRLE cache for live migration),
//! evicted by CLOCK (second chance): a page shipped again since the hand
//! last passed it stays. A page not in the cache goes raw (or zero) and
//! enters it; its next version can then be a delta.
//!
//! Why a delta is right at the Secondary: it applies epochs in order, each
//! whole or not at all (`receiver.rs`), so once epoch `e` is applied its
//! copy of page `p` is the version the Primary shipped last, in the newest
//! epoch up to `e` that carried `p` — exactly what this cache holds for `p`
//! (updated with every version it ships, raw, zero or delta). That holds
//! for one receiver, from a full epoch on: a new receiver (a join's link,
//! `JoinStep::Full`, or the first epoch) starts with [`DeltaBase::reset`],
//! and epochs the link dropped are never followed by another on the same
//! link (a lost link is only replaced by a join, whose first epoch is
//! full). A full epoch fills nothing in: its pages go raw, the cache fills
//! from the epochs after it.

use std::collections::HashMap;

use super::delta;
use super::epoch::{PageData, PAGE_SIZE};

/// Default cache size in bytes of page copies: 64 MiB (16,384 pages;
/// `vms[].delta_cache_mib` sets another), about a hundred times the dirty
/// set of a busy Linux guest's 20 ms epoch on the test bed (70-100 pages).
pub const DEFAULT_BYTES: usize = (config_schema::model::DEFAULT_DELTA_CACHE_MIB as usize) << 20;

/// A delta is only tried up to half a page: past that the page goes raw
/// (the saving would be small and the encoding time not).
const MAX_DELTA: usize = PAGE_SIZE / 2;

/// Unused slot.
const FREE: u64 = u64::MAX;

/// What the cache did, since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeltaStats {
    /// Pages shipped as deltas.
    pub deltas: u64,
    /// Pages shipped raw while their previous version was in the cache
    /// (the delta would not have been shorter than half a page).
    pub raw_hits: u64,
    /// Pages shipped raw because the cache did not hold them.
    pub misses: u64,
    /// Pages dropped from the cache to make room.
    pub evictions: u64,
}

/// See the module doc.
pub struct DeltaBase {
    capacity: usize,
    /// gfn → slot.
    slots: HashMap<u64, usize>,
    /// slot → gfn ([`FREE`] if unused).
    gfns: Vec<u64>,
    /// slot → shipped again since the hand last passed.
    referenced: Vec<bool>,
    /// slot `s` holds its page at `s * PAGE_SIZE`; grows as slots are used.
    data: Vec<u8>,
    hand: usize,
    pub stats: DeltaStats,
}

impl DeltaBase {
    /// A cache of at most `bytes` of page copies (0: no deltas at all).
    pub fn new(bytes: usize) -> Self {
        DeltaBase {
            capacity: bytes / PAGE_SIZE,
            slots: HashMap::new(),
            gfns: Vec::new(),
            referenced: Vec::new(),
            data: Vec::new(),
            hand: 0,
            stats: DeltaStats::default(),
        }
    }

    /// Pages the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pages it holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The receiver holds nothing this cache knows of (a new link, a full
    /// epoch): every cached version is forgotten. The memory is kept.
    pub fn reset(&mut self) {
        self.slots.clear();
        self.gfns.iter_mut().for_each(|g| *g = FREE);
        self.referenced.iter_mut().for_each(|r| *r = false);
        self.hand = 0;
    }

    /// How page `gfn`, now `new`, ships in this epoch, and the cache then
    /// holds `new` as the receiver's version of it. A zero page ships as
    /// [`PageData::Zero`] and is cached only if it was already (a freed
    /// page often stays zero; caching it would evict a page that changes).
    pub fn ship(&mut self, gfn: u64, new: &[u8]) -> PageData {
        assert_eq!(new.len(), PAGE_SIZE, "page of gfn {gfn} is not a page");
        let zero = new.iter().all(|&b| b == 0);
        if let Some(&s) = self.slots.get(&gfn) {
            debug_assert_eq!(self.gfns[s], gfn, "slot map and slot owners disagree");
            self.referenced[s] = true;
            let old = &mut self.data[s * PAGE_SIZE..(s + 1) * PAGE_SIZE];
            let data = if zero {
                PageData::Zero
            } else if let Some(d) = delta::encode(old, new, MAX_DELTA) {
                self.stats.deltas += 1;
                PageData::Delta(d)
            } else {
                self.stats.raw_hits += 1;
                PageData::Raw(new.to_vec())
            };
            old.copy_from_slice(new);
            return data;
        }
        if zero {
            return PageData::Zero;
        }
        if self.capacity > 0 {
            self.stats.misses += 1;
            self.insert(gfn, new);
        }
        PageData::Raw(new.to_vec())
    }

    /// Puts `gfn` in a free slot, or in the one CLOCK evicts.
    fn insert(&mut self, gfn: u64, page: &[u8]) {
        let s = if self.gfns.len() < self.capacity {
            self.gfns.push(FREE);
            self.referenced.push(false);
            self.data.extend_from_slice(page);
            self.gfns.len() - 1
        } else {
            self.victim()
        };
        if self.gfns[s] != FREE {
            self.slots.remove(&self.gfns[s]);
            self.stats.evictions += 1;
        }
        self.gfns[s] = gfn;
        // A new entry gets no second chance: a page shipped once and never
        // again goes before one shipped twice.
        self.referenced[s] = false;
        self.data[s * PAGE_SIZE..(s + 1) * PAGE_SIZE].copy_from_slice(page);
        self.slots.insert(gfn, s);
    }

    /// The slot the hand stops at: the first free or not referenced since
    /// it last passed (clearing the marks it passes). Ends within two
    /// turns: the first clears every mark.
    fn victim(&mut self) -> usize {
        loop {
            let s = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            if self.gfns[s] == FREE || !self.referenced[s] {
                return s;
            }
            self.referenced[s] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE_SIZE]
    }

    #[test]
    fn a_page_goes_raw_first_then_as_a_delta_against_what_was_shipped() {
        let mut b = DeltaBase::new(4 * PAGE_SIZE);
        let mut p = page(7);
        assert_eq!(b.ship(3, &p), PageData::Raw(p.clone()));
        let mut held = p.clone();
        p[100] = 1;
        p[2000] = 2;
        let PageData::Delta(d) = b.ship(3, &p) else {
            panic!("a two-byte change is a delta");
        };
        assert!(d.len() < 32, "delta of {} bytes", d.len());
        delta::apply(&mut held, &d).unwrap();
        assert_eq!(held, p);
        assert_eq!(b.ship(3, &page(0)), PageData::Zero);
        // The cache holds the zero page as shipped: the next version is a
        // delta against zeros.
        let mut q = page(0);
        q[9] = 9;
        let PageData::Delta(d) = b.ship(3, &q) else {
            panic!("against the zero page shipped");
        };
        let mut held = page(0);
        delta::apply(&mut held, &d).unwrap();
        assert_eq!(held, q);
        // A rewritten page goes raw, and is the base after.
        assert_eq!(b.ship(3, &page(5)), PageData::Raw(page(5)));
        assert_eq!(
            b.stats,
            DeltaStats {
                deltas: 2,
                raw_hits: 1,
                misses: 1,
                evictions: 0
            }
        );
    }

    #[test]
    fn reset_forgets_every_version_and_a_zero_cache_never_deltas() {
        let mut b = DeltaBase::new(4 * PAGE_SIZE);
        b.ship(1, &page(1));
        b.reset();
        assert!(b.is_empty());
        assert_eq!(b.ship(1, &page(1)), PageData::Raw(page(1)));
        let mut off = DeltaBase::new(0);
        for _ in 0..3 {
            assert_eq!(off.ship(1, &page(1)), PageData::Raw(page(1)));
        }
        assert_eq!(off.stats, DeltaStats::default());
        assert!(off.is_empty());
    }

    #[test]
    fn clock_keeps_the_pages_shipped_again() {
        let mut b = DeltaBase::new(2 * PAGE_SIZE);
        b.ship(1, &page(1));
        b.ship(2, &page(2));
        b.ship(1, &page(1)); // 1 referenced
        b.ship(3, &page(3)); // evicts 2 (1 has its second chance)
        assert_eq!(b.len(), 2);
        assert!(matches!(b.ship(1, &page(1)), PageData::Delta(_)));
        assert_eq!(b.ship(2, &page(2)), PageData::Raw(page(2)));
        assert_eq!(b.stats.evictions, 2);
    }

    /// Seeded model check: a receiver that applies what the cache ships, in
    /// order, always holds the Primary's pages, whatever the cache size,
    /// the resets (with the receiver then given the full memory) and the
    /// kind of change.
    #[test]
    fn the_receiver_always_ends_with_the_primarys_pages() {
        use crate::checkpoint::sim_world::Rng;
        const PAGES: u64 = 24;
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            let mut b = DeltaBase::new(rng.below(12) as usize * PAGE_SIZE);
            let mut primary = vec![page(0); PAGES as usize];
            let mut secondary = primary.clone();
            for _epoch in 0..60 {
                if rng.chance(30) {
                    b.reset();
                    secondary = primary.clone();
                }
                let mut dirty: Vec<usize> = (0..rng.below(8))
                    .map(|_| rng.below(PAGES) as usize)
                    .collect();
                dirty.sort();
                dirty.dedup();
                for &g in &dirty {
                    let kind = rng.below(4);
                    let p = &mut primary[g];
                    match kind {
                        0 => p.fill(0),
                        1 => p.iter_mut().for_each(|b| *b = rng.next() as u8),
                        _ => {
                            for _ in 0..rng.below(20) {
                                p[rng.below(PAGE_SIZE as u64) as usize] = rng.next() as u8;
                            }
                        }
                    }
                }
                for &g in &dirty {
                    match b.ship(g as u64, &primary[g]) {
                        PageData::Zero => secondary[g] = page(0),
                        PageData::Raw(r) => secondary[g] = r,
                        PageData::Delta(d) => delta::apply(&mut secondary[g], &d).unwrap(),
                    }
                }
                assert_eq!(secondary, primary, "seed {seed}");
                assert!(b.len() <= b.capacity());
            }
        }
    }
}
