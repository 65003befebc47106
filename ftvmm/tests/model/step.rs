//! One model action: what it changes around the member and which [`Event`]
//! it feeds to the real `Member::on_event`.

use ftvmm::lockstep::member::{Decision, Event, Grant, Member};

use super::{
    gate_code, Act, Ans, Body, Bounds, Msg, Run, Sys, FRESH_UNITS, NAMES, TIMEOUT_MS, UNIT_MS,
};

impl Sys {
    /// Fencing's deposition watch: tells member `i` of a later generation
    /// another host owns, if there is one.
    fn depose(&mut self, b: &Bounds, i: usize) {
        if let Some((g, o)) = self.deposer(i) {
            let by = NAMES[o as usize].to_string();
            self.feed(
                b,
                i,
                Event::Deposed {
                    generation: u64::from(g),
                    by,
                },
            );
        }
    }

    pub fn step(&self, b: &Bounds, act: Act) -> Sys {
        let mut s = self.clone();
        match act {
            Act::Deliver(m) => {
                s.take(m);
                s.deliver(b, m);
            }
            Act::Lose(m) => {
                s.faults += 1;
                s.take(m);
            }
            // Delivered, and a copy stays in flight.
            Act::Duplicate(m) => {
                s.faults += 1;
                s.deliver(b, m);
            }
            Act::SendBatch(i) => {
                let n = &s.nodes[i];
                s.net.insert(Msg {
                    chan: n.chan,
                    to: n.peer,
                    body: Body::Batch { stamp: s.now },
                });
            }
            Act::Tick(i) if s.nodes[i].joining.is_some() => s.tick_copy(b, i),
            Act::Tick(i) => {
                let n = &mut s.nodes[i];
                n.ticked = s.now;
                // Only the threshold matters to the member: cap the silence
                // at the timeout (its log lines would name each value).
                let silent = if n.link_open {
                    (s.now - n.heard).min(2)
                } else {
                    0
                };
                let ev = Event::Tick {
                    now_ms: u64::from(s.now) * UNIT_MS,
                    silent_ms: u64::from(silent) * UNIT_MS,
                    // The model's links fail both ways (silence).
                    unacked_ms: 0,
                    unacked_grace_ms: 0,
                };
                s.feed(b, i, ev);
            }
            Act::TimePasses => {
                s.now += 1;
                // A frozen host's grant expires on its running clock before
                // its lease does (fencing/src/guard.rs).
                for n in &mut s.nodes {
                    if let Run::Frozen { since } = n.run {
                        if s.now - since >= 2 && n.grant {
                            n.grant = false;
                            n.lapsed = true;
                        }
                    }
                }
            }
            // Decided on disk; the answer reaches only the incarnation
            // that asked.
            Act::Decide(w, inc, g) => {
                s.asks.remove(&(w, inc, g));
                let a = s.decide(w, g);
                if s.nodes[w as usize].inc == inc {
                    s.answers.insert((w, g, a));
                }
            }
            Act::Answer(w, g, a) => {
                s.answers.remove(&(w, g, a));
                let decision = match a {
                    Ans::Won => Decision::Won,
                    Ans::Lost(o) => Decision::Lost {
                        owner: NAMES[o as usize].to_string(),
                    },
                    Ans::Superseded(by) => Decision::Superseded { by: u64::from(by) },
                };
                let i = w as usize;
                if s.nodes[i].m.is_none() {
                    // Only host-c's start asks with no member (a join
                    // waits for it; a reboot drops older answers).
                    assert_eq!(i, 2, "an answer for an empty host");
                    // host-c: starts the VM alone in `g` if it won.
                    if a == Ans::Won {
                        let m = Member::primary("kv", NAMES[0], u64::from(g), false, TIMEOUT_MS);
                        let n = &mut s.nodes[i];
                        n.gate = gate_code(m.initial_gate());
                        n.m = Some(super::Mem::new(m));
                        n.ticked = s.now;
                    }
                } else {
                    s.feed(
                        b,
                        i,
                        Event::Decided {
                            generation: u64::from(g),
                            decision,
                        },
                    );
                }
            }
            Act::Crash(i) => {
                s.faults += 1;
                s.crash(i);
            }
            Act::Freeze(i) => {
                s.faults += 1;
                s.nodes[i].run = Run::Frozen { since: s.now };
            }
            // Frozen on a running clock past its lease (when host-c may
            // take over): its watchdog, starved since the grant lapsed,
            // has reset the host (fencing/src/lease.rs arithmetic: the
            // watchdog fires before another host may count the lease as
            // expired). Clock-stopping freezes are not modelled (§3).
            Act::Thaw(i) if matches!(s.nodes[i].run, Run::Frozen { since } if s.now - since >= FRESH_UNITS) =>
            {
                s.crash(i);
            }
            Act::Thaw(i) => {
                s.nodes[i].run = Run::Up;
                if std::mem::take(&mut s.nodes[i].lapsed) {
                    s.feed(b, i, Event::Grant(Grant::Lapsed));
                }
            }
            Act::Withdraw(i) => {
                s.faults += 1;
                s.nodes[i].grant = false;
                let reason = "lease renewal failing".into();
                s.feed(b, i, Event::Grant(Grant::Withdrawn { reason }));
            }
            // Fencing re-checks before it grants again (docs/design.md §3
            // item 4): a deposition it finds is reported first.
            Act::Restore(i) => {
                s.depose(b, i);
                s.nodes[i].grant = true;
                s.feed(b, i, Event::Grant(Grant::Ok));
            }
            Act::LinkFails(i) if s.nodes[i].joining.is_some() => {
                s.faults += 1;
                s.discard(b, i, true);
            }
            Act::LinkFails(i) => {
                s.faults += 1;
                s.nodes[i].gate = 0;
                s.nodes[i].link_open = false;
                s.feed(
                    b,
                    i,
                    Event::ChannelLost {
                        why: "reset".into(),
                    },
                );
            }
            Act::Diverge(i) => {
                s.faults += 1;
                s.feed(
                    b,
                    i,
                    Event::Diverged {
                        what: "model".into(),
                    },
                );
            }
            Act::ReplayDone(i) => {
                s.nodes[i].vcpu_stopped = true;
                let at = u64::from(s.now);
                s.feed(b, i, Event::ReplayExhausted { at });
            }
            Act::AllAcked(i) => s.feed(b, i, Event::AllAcked),
            Act::Leave(i) => {
                s.faults += 1;
                s.flags.left_host = true;
                let why = "VM network lost".into();
                s.feed(b, i, Event::LeaveHost { why });
            }
            Act::Depose(i) => s.depose(b, i),
            Act::Emit(i) => s.release(i, None),
            Act::StartC => {
                s.c_tried = true;
                let next = s.register.keys().next_back().copied().unwrap_or(0) + 1;
                s.asks.insert((2, s.nodes[2].inc, next));
            }
            Act::Join(p, t) => s.join(p, t),
            Act::Pair => s.pair(b),
            Act::Reboot(i) => {
                s.faults += 1;
                s.reboot(i);
            }
        }
        s.normalize();
        s
    }

    fn take(&mut self, m: Msg) {
        self.net.remove(&m);
    }

    /// The highest generation any member is in or asks for.
    pub fn max_gen(&self) -> u8 {
        let members = self
            .nodes
            .iter()
            .filter_map(|n| n.member())
            .map(|m| m.generation() as u8);
        let asked = self.asks.iter().map(|&(_, _, g)| g);
        members.chain(asked).max().unwrap_or(0)
    }

    /// A one-line picture of the system, for traces.
    pub fn summary(&self) -> String {
        let mut out = format!("t={} faults={}", self.now, self.faults);
        for (i, n) in self.nodes.iter().enumerate() {
            let st = match (n.state(), n.joining) {
                (Some(st), _) => st.to_string(),
                (None, Some(g)) => format!("restored copy of generation {g}"),
                (None, None) => "no member".to_string(),
            };
            let gate = ["held", "by-acks", "open"][n.gate as usize];
            let link = if n.link_open {
                format!("channel {} to {}", n.chan, NAMES[n.peer as usize])
            } else {
                "no link".to_string()
            };
            out += &format!(
                " | {}: {st}, {:?}, gate {gate}, grant {}, {link}, released {:#b}",
                NAMES[i], n.run, n.grant, n.released
            );
        }
        out += &format!(
            " | paxos {:?} asks {:?} answers {:?} net {:?} transfer {:?}",
            self.register, self.asks, self.answers, self.net, self.xfer
        );
        out
    }
}
