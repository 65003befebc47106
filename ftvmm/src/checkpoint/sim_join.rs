//! Joins in the checkpoint simulation (`sim_tests.rs`): a lone Primary takes
//! a new Secondary as `respawn.rs` does. The join's epoch `J` is closed with
//! [`EpochGate::close_epoch_joining`] and is full (every page, against the
//! new Secondary's blank staging, whose receiver starts just before `J` as
//! `respawn.rs`'s `first_receiver` makes it); each attempt is a new
//! connection, reliable and in order as TCP is (random delays; a cut
//! connection is the keeper giving the join up), where the pair's first
//! link lost, duplicated and reordered. The member pairs when `J`'s
//! acknowledgement arrives (`end_join`; the new Secondary may take over
//! from then on), or gives the join up at a random deadline
//! (`abandon_join`: alone again, the would-be Secondary discarded).
//!
//! [`EpochGate::close_epoch_joining`]: super::super::gate::EpochGate::close_epoch_joining

use super::*;

/// A join in progress.
pub(super) struct Join {
    /// The full epoch.
    j: u64,
    /// When the keeper gives the join up if `J` was not acknowledged.
    give_up_at: u64,
}

impl Join {
    pub(super) fn j(&self) -> u64 {
        self.j
    }
}

impl World {
    /// The keeper offers a new Secondary: `J` closes, full, and goes to it.
    fn start_join(&mut self) {
        let g = self.generation;
        let j = self.gate.current();
        let durable = self.gate.progress().2;
        if self.write_epochs.range(durable + 1..j).next().is_some() {
            // Epochs closed alone whose writes are not durable yet: `J`
            // must carry them for the new Secondary to re-write.
            self.st.join_carried_writes += 1;
        }
        // A new connection (TCP: in order, nothing lost), and nothing of an
        // earlier one arrives on it.
        self.fwd = Link::tcp(self.fwd.max_delay);
        self.back = Link::tcp(self.back.max_delay);
        self.toy.dirty = (0..PAGES).collect();
        self.shadow = vec![0; self.toy.mem.len()];
        self.rx = Some(Receiver::new(g, Toy::new().mem, j - 1));
        self.alone_below = j;
        self.join = Some(Join {
            j,
            give_up_at: self.now + 2 + self.rng.below(40),
        });
        let (closed, actions) = self.gate.close_epoch_joining(g).expect("alone in g");
        assert_eq!(closed.number, j);
        self.shipper.last_progress = self.now;
        self.ship(closed, actions);
    }

    /// Every tick: the member pairs once `J` is acknowledged; the keeper
    /// gives the join up at its deadline.
    pub(super) fn join_tick(&mut self) {
        let Some(join) = &self.join else { return };
        if self.gate.progress().0 >= join.j {
            assert!(
                self.rx.as_ref().is_some_and(|r| r.last() >= join.j),
                "paired only when the new Secondary holds the full epoch"
            );
            self.gate.end_join();
            self.join = None;
            self.st.joins_paired += 1;
        } else if self.now >= join.give_up_at {
            let actions = self.gate.abandon_join(self.generation).expect("joining");
            self.join = None;
            self.rx = None;
            self.alone_below = u64::MAX;
            self.shipper.unacked.clear();
            self.st.joins_given_up += 1;
            let r = perform(actions, &mut self.dev);
            self.release(r);
        }
    }

    /// After the Primary went alone: one to three join attempts (the next
    /// only after one was given up), a while of running, then an ending —
    /// the Primary crashes, the new Secondary dies, or the run drains.
    pub(super) fn joins(mut self) -> Sometimes {
        for _ in 0..1 + self.rng.below(3) {
            self.start_join();
            for _ in 0..self.rng.below(200) {
                self.tick();
                if self.join.is_none() {
                    break;
                }
            }
            if self.rx.is_some() {
                break; // paired, or still joining: go on with it
            }
            for _ in 0..self.rng.below(30) {
                self.tick();
            }
        }
        for _ in 0..self.rng.below(100) {
            self.tick();
        }
        let paired = self.rx.is_some() && self.join.is_none();
        match self.rng.below(3) {
            // The Primary's host dies. A paired new Secondary takes over; one
            // still joining never heard `Paired` and does not: nobody holds
            // the VM (a second failure while unprotected).
            0 if paired => self.fail_over(),
            0 => self.st,
            1 if paired => {
                self.go_alone();
                for _ in 0..self.rng.below(60) {
                    self.tick();
                }
                self.drain()
            }
            1 => {
                // The new Secondary dies while joining: the keeper gives up.
                if let Some(j) = self.join.as_mut() {
                    j.give_up_at = self.now;
                }
                self.tick();
                self.drain()
            }
            _ => self.drain(),
        }
    }
}
