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
//! Admission (TinyLFU's rule, Einziger et al. 2017): once the cache is full,
//! a missed page takes CLOCK's victim's slot only if it was shipped more
//! often lately than the victim. Without it, a working set larger than the
//! cache that the guest rewrites in a cycle (a sequential sweep) evicts
//! every page before its next version: CLOCK, like LRU, then hits nothing
//! (measured on the test bed: a 64 MiB sweep beside the kernel's pages put
//! 36-44 % of pages raw in a 64 MiB cache). With it, the cache keeps a
//! stable part of the sweep (hits in proportion to cache / working set),
//! pages shipped every epoch stay, and a new working set still replaces an
//! old one, since the counts halve every [`AGING`] × capacity ships and the
//! old pages' counts fall below the new ones'. The counts cost one byte per
//! guest page up to the highest page shipped.
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

/// Ship counts halve after this many times the capacity in ships
/// (TinyLFU's sample size), so they say what was shipped lately.
const AGING: u64 = 10;

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
    /// Missed pages not let in (shipped no more often lately than the page
    /// they would have evicted).
    pub refused: u64,
}

/// Whether a missed page may evict another (see the module doc); `Always`
/// is plain CLOCK, kept for the side-by-side measure
/// (`delta_cache_bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Always,
    Frequency,
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
    admission: Admission,
    /// gfn → ships lately (saturating, halved every `AGING` × capacity).
    counts: Vec<u8>,
    /// Ships since the counts last halved.
    since_aging: u64,
    pub stats: DeltaStats,
}

impl DeltaBase {
    /// A cache of at most `bytes` of page copies (0: no deltas at all).
    pub fn new(bytes: usize) -> Self {
        Self::with_admission(bytes, Admission::Frequency)
    }

    pub fn with_admission(bytes: usize, admission: Admission) -> Self {
        DeltaBase {
            capacity: bytes / PAGE_SIZE,
            slots: HashMap::new(),
            gfns: Vec::new(),
            referenced: Vec::new(),
            data: Vec::new(),
            hand: 0,
            admission,
            counts: Vec::new(),
            since_aging: 0,
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
        self.count(gfn);
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

    /// One more ship of `gfn`; every `AGING` × capacity ships all counts
    /// halve. Nothing to count without a cache.
    fn count(&mut self, gfn: u64) {
        if self.capacity == 0 || self.admission == Admission::Always {
            return;
        }
        let i = usize::try_from(gfn).expect("a guest page number fits in usize");
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] = self.counts[i].saturating_add(1);
        self.since_aging += 1;
        if self.since_aging >= AGING * self.capacity as u64 {
            self.since_aging = 0;
            self.counts.iter_mut().for_each(|c| *c /= 2);
        }
    }

    fn count_of(&self, gfn: u64) -> u8 {
        usize::try_from(gfn)
            .ok()
            .and_then(|i| self.counts.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Puts `gfn` in a free slot, or in the one CLOCK evicts if admission
    /// lets it (see the module doc); else the cache stays as it was.
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
            let old = self.gfns[s];
            if self.admission == Admission::Frequency && self.count_of(gfn) <= self.count_of(old) {
                self.stats.refused += 1;
                return;
            }
            self.slots.remove(&old);
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
pub(crate) mod tests {
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
                evictions: 0,
                refused: 0,
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
        let mut b = DeltaBase::with_admission(2 * PAGE_SIZE, Admission::Always);
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
            let admission = if rng.chance(500) {
                Admission::Always
            } else {
                Admission::Frequency
            };
            let mut b = DeltaBase::with_admission(rng.below(12) as usize * PAGE_SIZE, admission);
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

    /// Ships `epochs` epochs of `pattern(epoch)` (the gfns dirtied, each
    /// page changed in one byte) and returns the share of pages that went
    /// as deltas in the last `tail` epochs, in percent.
    pub(crate) fn delta_share(
        b: &mut DeltaBase,
        epochs: u64,
        tail: u64,
        pattern: impl Fn(u64) -> Vec<u64>,
    ) -> f64 {
        let mut pages: HashMap<u64, Vec<u8>> = HashMap::new();
        let (mut shipped, mut deltas) = (0u64, 0u64);
        for e in 0..epochs {
            for g in pattern(e) {
                let p = pages.entry(g).or_insert_with(|| page(g as u8 | 1));
                p[(e as usize * 7) % PAGE_SIZE] = e as u8 | 1;
                let d = b.ship(g, p);
                if e >= epochs - tail {
                    shipped += 1;
                    deltas += matches!(d, PageData::Delta(_)) as u64;
                }
            }
        }
        100.0 * deltas as f64 / shipped.max(1) as f64
    }

    /// A cyclic sweep of `n` pages, `per` pages an epoch, beside `hot`
    /// pages (gfns from 1,000,000) shipped every epoch.
    pub(crate) fn sweep(n: u64, per: u64, hot: u64) -> impl Fn(u64) -> Vec<u64> {
        move |e| {
            let mut v: Vec<u64> = (0..per).map(|i| (e * per + i) % n).collect();
            v.extend((0..hot).map(|h| 1_000_000 + h));
            v
        }
    }

    #[test]
    fn a_sweep_larger_than_the_cache_keeps_a_stable_part_of_it() {
        // 96-page sweep, 64-page cache: CLOCK evicts every page before its
        // next version; admission keeps about 64 of the 96.
        let pattern = || sweep(96, 4, 0);
        let mut clock = DeltaBase::with_admission(64 * PAGE_SIZE, Admission::Always);
        let mut tiny = DeltaBase::new(64 * PAGE_SIZE);
        let c = delta_share(&mut clock, 600, 240, pattern());
        let t = delta_share(&mut tiny, 600, 240, pattern());
        assert!(c < 1.0, "CLOCK alone hit {c:.1} %");
        assert!(t > 55.0, "admission hit {t:.1} %, expected about 64/96");
        assert!(tiny.stats.refused > 0);
    }

    #[test]
    fn pages_shipped_every_epoch_stay_through_a_sweep() {
        // A sweep exactly the cache's size beside 8 hot pages (the bench's
        // 64 MiB working set in a 64 MiB cache, beside the kernel's pages).
        let mut b = DeltaBase::new(64 * PAGE_SIZE);
        let share = delta_share(&mut b, 400, 100, sweep(64, 4, 8));
        // 8 hot + 4 sweep pages an epoch; the hot ones always deltas, and
        // most of the sweep (56 of its 64 pages fit).
        assert!(share > 85.0, "{share:.1} %");
        let mut hot_only = DeltaBase::new(64 * PAGE_SIZE);
        delta_share(&mut hot_only, 400, 100, sweep(64, 4, 8));
        let hot = delta_share(&mut hot_only, 50, 50, |_| {
            (0..8).map(|h| 1_000_000 + h).collect()
        });
        assert_eq!(hot, 100.0);
    }

    #[test]
    fn a_new_working_set_replaces_an_old_one() {
        // 64 pages in a 64-page cache, then another 64: the old counts halve
        // away and the new pages get in.
        let mut b = DeltaBase::new(64 * PAGE_SIZE);
        delta_share(&mut b, 200, 1, sweep(64, 16, 0));
        let moved = |e: u64| sweep(64, 16, 0)(e).into_iter().map(|g| g + 5_000).collect();
        let share = delta_share(&mut b, 600, 100, moved);
        assert!(share > 95.0, "{share:.1} %");
    }
}
