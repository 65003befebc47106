//! The deposition watch: is a VM this host runs as Primary in generation `g`
//! still this host's, or did another host start `g + 1` (docs/design.md §1)?
//!
//! # Rules
//!
//! - Read the other hosts' blocks of the VM's Disk Paxos instance of `g + 1`
//!   (its ring slot). A block naming `g + 1` or a later generation of that
//!   slot means another host started a later generation: this copy is
//!   deposed.
//! - Except `g + 1` itself while this host is acquiring it or won it (a
//!   Primary re-checking after a hold competes for `g + 1`; the loser's
//!   block names it too).
//! - A corrupt block there may hide exactly such a block: it deposes too (and
//!   raises an alarm). Stopping a VM wrongly loses availability; keeping a
//!   deposed copy running loses the promise.
//! - Blank blocks and blocks of older generations say nothing.

use crate::layout::SlotView;

/// Why a running copy is deposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposition {
    pub vm: u32,
    /// The generation this host runs.
    pub generation: u64,
    /// The host whose block deposes it.
    pub by: u32,
    /// The later generation its block names (`generation + 1` if corrupt).
    pub later: u64,
    /// Set if the block is corrupt rather than valid.
    pub corrupt: Option<String>,
}

/// Judges the other hosts' `views` of instance `generation + 1` for a copy
/// of `vm` in `generation`; `own_next`: this host acquires or won
/// `generation + 1`.
pub fn deposition(
    vm: u32,
    generation: u64,
    views: &[(u32, SlotView)],
    own_next: bool,
) -> Option<Deposition> {
    let next = generation + 1;
    let found = |by, later, corrupt| Deposition {
        vm,
        generation,
        by,
        later,
        corrupt,
    };
    let mut first = None;
    for (host, v) in views {
        let d = match v {
            SlotView::Empty => None,
            SlotView::Block(_) if own_next => None,
            SlotView::Block(b) => Some(found(*host, b.generation, None)),
            SlotView::Later(g) => Some(found(*host, *g, None)),
            SlotView::Corrupt(why) => Some(found(*host, next, Some(why.clone()))),
        };
        // A valid block is the better reason to report than a corrupt one.
        match (&first, d) {
            (None, d) => first = d,
            (
                Some(Deposition {
                    corrupt: Some(_), ..
                }),
                Some(d),
            ) if d.corrupt.is_none() => first = Some(d),
            _ => {}
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PaxosBlock;

    fn block(host: u32, generation: u64) -> SlotView {
        SlotView::Block(PaxosBlock {
            mbal: 1,
            ..PaxosBlock::empty(host, 0, generation)
        })
    }

    #[test]
    fn a_block_of_the_next_generation_deposes_unless_this_host_races_for_it() {
        assert_eq!(
            deposition(0, 3, &[(1, SlotView::Empty), (2, SlotView::Empty)], false),
            None
        );
        let d = deposition(0, 3, &[(1, SlotView::Empty), (2, block(2, 4))], false).unwrap();
        assert_eq!((d.by, d.later, d.corrupt), (2, 4, None));
        assert_eq!(deposition(0, 3, &[(2, block(2, 4))], true), None);
        // A later generation of the slot deposes even while racing for 4.
        let d = deposition(0, 3, &[(1, SlotView::Later(20))], true).unwrap();
        assert_eq!((d.by, d.later), (1, 20));
    }

    #[test]
    fn a_corrupt_block_deposes_but_a_valid_reason_is_preferred() {
        let bad = SlotView::Corrupt("bad checksum".into());
        let d = deposition(0, 3, &[(1, bad.clone())], true).unwrap();
        assert_eq!(
            (d.by, d.later, d.corrupt.as_deref()),
            (1, 4, Some("bad checksum"))
        );
        let d = deposition(0, 3, &[(1, bad), (2, block(2, 4))], false).unwrap();
        assert_eq!((d.by, d.corrupt), (2, None));
    }
}
