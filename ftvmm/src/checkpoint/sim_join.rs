//! Joins in the checkpoint simulation (`sim_tests.rs`): a lone Primary takes
//! a new Secondary as `respawn.rs` does. The join's first epoch `F` is full
//! (every page, against the new Secondary's blank staging, whose receiver
//! starts just before `F` as `respawn.rs`'s `first_receiver` makes it) and
//! closed alone, like the epochs after it that stream the new Secondary up
//! to date while the Primary still releases alone (the gate takes no acks
//! then; the shipper counts them, as the Primary's link does). Once `F` is
//! acknowledged and at most one epoch is unacknowledged (or, now and then,
//! with more), the switch epoch `J` closes with
//! [`EpochGate::close_epoch_joining`]. Each attempt is a new connection,
//! reliable and in order as TCP is (random delays; a cut connection is the
//! keeper giving the join up), where the pair's first link lost, duplicated
//! and reordered. The member pairs when `J`'s acknowledgement arrives
//! (`end_join`; the new Secondary may take over from then on), or gives the
//! join up at a random deadline — while streaming (nothing changes for the
//! gate) or after the switch (`abandon_join`: alone again) — and the
//! would-be Secondary is discarded.
//!
//! [`EpochGate::close_epoch_joining`]: super::super::gate::EpochGate::close_epoch_joining

use super::*;

/// A join in progress.
pub(super) struct Join {
    /// The full epoch (the first on the new link).
    full: u64,
    /// The switch epoch, once closed: paired from it on.
    j: Option<u64>,
    /// When the keeper gives the join up if it did not pair.
    give_up_at: u64,
}

impl Join {
    pub(super) fn j(&self) -> Option<u64> {
        self.j
    }
}

impl World {
    /// The keeper offers a new Secondary: `F` closes alone, full, and goes
    /// to it.
    fn start_join(&mut self) {
        let g = self.generation;
        let f = self.gate.current();
        // A new connection (TCP: in order, nothing lost), and nothing of an
        // earlier one arrives on it.
        self.fwd = Link::tcp(self.fwd.max_delay);
        self.back = Link::tcp(self.back.max_delay);
        self.toy.dirty = (0..PAGES).collect();
        // A new receiver: nothing it holds is known (a full epoch).
        self.base.reset();
        self.shipper.unacked.clear();
        self.acks.reset(self.now * TICK_MS);
        self.rx = Some(Receiver::new(g, Toy::new().mem, f - 1));
        self.join = Some(Join {
            full: f,
            j: None,
            give_up_at: self.now + 2 + self.rng.below(80),
        });
        let (closed, actions) = self.gate.close_epoch();
        assert_eq!(closed.number, f);
        assert_eq!(self.gate.mode(), Mode::Solo { generation: g });
        self.shipper.last_progress = self.now;
        self.ship(closed, actions);
    }

    /// The new Secondary caught up: `J` closes paired.
    fn switch(&mut self) {
        let g = self.generation;
        let j = self.gate.current();
        let full = self.join.as_ref().expect("joining").full;
        let durable = self.gate.progress().2;
        if durable + 1 < full && self.write_epochs.range(durable + 1..full).next().is_some() {
            // Epochs closed alone before `F` whose writes are not durable
            // yet: `J` must carry them for the new Secondary to re-write.
            self.st.join_carried_writes += 1;
        }
        self.alone_below = j;
        let (closed, actions) = self.gate.close_epoch_joining(g).expect("alone in g");
        assert_eq!(closed.number, j);
        let join = self.join.as_mut().expect("joining");
        join.j = Some(j);
        join.give_up_at = self.now + 2 + self.rng.below(40);
        self.st.joins_switched += 1;
        self.ship(closed, actions);
    }

    /// Every tick: while streaming, the switch once the new Secondary
    /// caught up; then the member pairs once `J` is acknowledged; the
    /// keeper gives the join up at its deadline.
    pub(super) fn join_tick(&mut self) {
        let Some(join) = &self.join else { return };
        let (full, switched, give_up_at) = (join.full, join.j, join.give_up_at);
        match switched {
            None => {
                // The shipper keeps only epochs above the last ack.
                let full_acked = self.shipper.unacked.keys().all(|&n| n > full);
                if self.now >= give_up_at {
                    assert_eq!(
                        self.gate.mode(),
                        Mode::Solo {
                            generation: self.generation
                        },
                        "streaming leaves the gate alone"
                    );
                    self.join = None;
                    self.rx = None;
                    self.shipper.unacked.clear();
                    self.st.joins_given_up_streaming += 1;
                } else if full_acked
                    && (self.shipper.unacked.len() <= 1 || self.rng.chance(100))
                    && self.shipper.unacked.len() < MAX_UNACKED
                {
                    self.switch();
                }
            }
            Some(j) if self.gate.progress().0 >= j => {
                assert!(
                    self.rx.as_ref().is_some_and(|r| r.last() >= j),
                    "paired only when the new Secondary holds the switch epoch"
                );
                self.gate.end_join();
                self.join = None;
                self.st.joins_paired += 1;
            }
            Some(_) if self.now >= give_up_at => {
                let actions = self.gate.abandon_join(self.generation).expect("joining");
                self.join = None;
                self.rx = None;
                self.alone_below = u64::MAX;
                self.shipper.unacked.clear();
                self.st.joins_given_up += 1;
                let r = perform(actions, &mut self.dev);
                self.release(r);
            }
            Some(_) => {}
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
