//! The logging channels: each connects a Primary and a Secondary chosen at
//! run time (the power-on pair host-a/host-b on channel 0, join `k` on
//! channel `k`); what is in flight is a set; a delivery does what the
//! driver and the link threads do on the receiving side.

use ftvmm::lockstep::member::{Action, Event, State};

use super::{gate_code, Bounds, Node, Run, Sys, FRESH_UNITS};

/// A message in flight on channel `chan` to node `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Msg {
    pub chan: u8,
    pub to: u8,
    pub body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Body {
    /// Primary -> Secondary, stamped with the time it was sent.
    Batch {
        stamp: u8,
    },
    /// Secondary -> Primary: the newest stamp, and the generation it follows.
    Ack {
        echo: u8,
        g: u8,
    },
    Bye,
    Resign,
    Diverged,
    /// Primary -> restored copy: its member paired in `g` (design §11).
    Paired {
        g: u8,
    },
    /// Primary -> restored copy: its member did not pair; discard.
    Abort,
}

impl Sys {
    /// Whether channel `chan` has `in_flight` messages on the wire.
    pub(super) fn full(&self, b: &Bounds, chan: u8) -> bool {
        self.net.iter().filter(|m| m.chan == chan).count() >= b.in_flight
    }

    /// Puts `m` in flight; a full channel loses it (the model's loss).
    pub(super) fn put(&mut self, b: &Bounds, m: Msg) {
        if !self.full(b, m.chan) {
            self.net.insert(m);
        }
    }

    /// Whether `m` can still be delivered: its receiver is not crashed and
    /// listens on its channel (its link, or the transfer it runs). A closed
    /// end never opens again (each join has a channel of its own).
    fn live(&self, m: &Msg) -> bool {
        let n = &self.nodes[m.to as usize];
        let xfer = self.xfer.is_some_and(|x| x.p == m.to && x.chan == m.chan);
        n.run != Run::Crashed && ((n.link_open && n.chan == m.chan) || xfer)
    }

    /// Forgets what can no longer matter, so that states that behave alike
    /// are one state: messages nobody will receive, answers to crashed
    /// hosts, a crashed host's member (it never runs again; a reboot starts
    /// empty), and the link clocks of closed links (read only while open,
    /// set when one opens).
    pub(super) fn normalize(&mut self) {
        let dead: Vec<Msg> = self.net.iter().filter(|m| !self.live(m)).copied().collect();
        for m in dead {
            self.net.remove(&m);
        }
        let nodes = &self.nodes;
        self.answers
            .retain(|&(w, ..)| nodes[w as usize].run != Run::Crashed);
        for n in &mut self.nodes {
            if n.run == Run::Crashed {
                *n = Node {
                    run: Run::Crashed,
                    released: n.released,
                    ..Node::empty(n.inc)
                };
            }
            if !n.link_open {
                n.heard = 0;
                n.newest = 0;
            }
        }
    }

    /// Node `i` sends `body` on its channel to its peer.
    pub(super) fn send(&mut self, b: &Bounds, i: usize, body: Body) {
        let n = &self.nodes[i];
        let m = Msg {
            chan: n.chan,
            to: n.peer,
            body,
        };
        self.put(b, m);
    }

    /// Performs one of member `i`'s actions, as the driver does.
    pub(super) fn perform(&mut self, b: &Bounds, i: usize, a: Action) {
        let n = &mut self.nodes[i];
        match a {
            Action::Gate(g) => n.gate = gate_code(g),
            Action::Acquire { generation } => {
                self.asks.insert((i as u8, n.inc, generation as u8));
            }
            Action::StopVcpu => n.vcpu_stopped = true,
            Action::Resign { .. } => {
                n.link_open = false;
                self.send(b, i, Body::Resign);
            }
            Action::SendDiverged { .. } => {
                n.link_open = false;
                self.send(b, i, Body::Diverged);
            }
            Action::CloseLink { .. } => {
                if n.link_open {
                    n.link_open = false;
                    self.send(b, i, Body::Bye);
                }
            }
            Action::GoLive { .. } => n.vcpu_stopped = false,
            Action::Say(_) => {}
        }
    }

    pub fn deliver(&mut self, b: &Bounds, msg: Msg) {
        let i = msg.to as usize;
        // The transfer's channel, before the Primary paired: a cut fails
        // the transfer; the member (still alone) never hears of it.
        if let Some(x) = self.xfer {
            if x.p == msg.to && x.chan == msg.chan {
                if msg.body == Body::Bye {
                    self.xfer = None;
                }
                return;
            }
        }
        let n = &self.nodes[i];
        if !n.link_open || n.chan != msg.chan {
            return;
        }
        if n.joining.is_some() {
            self.deliver_to_copy(b, i, msg.body);
            return;
        }
        self.nodes[i].heard = self.now;
        let ev = match msg.body {
            Body::Batch { stamp } => {
                if matches!(self.nodes[i].state(), Some(State::Following { .. })) {
                    let n = &mut self.nodes[i];
                    n.newest = n.newest.max(stamp);
                    let (echo, g) = (n.newest, n.member().map_or(0, |m| m.generation()) as u8);
                    self.send(b, i, Body::Ack { echo, g });
                }
                return;
            }
            Body::Ack { echo, g } => {
                let n = &self.nodes[i];
                let fresh = self.now - echo < FRESH_UNITS;
                if n.gate == 1 && n.grant && !n.vcpu_stopped && fresh {
                    self.release(i, Some(g));
                }
                return;
            }
            // Losses: the driver holds at once, then tells the member.
            Body::Bye => Event::ChannelLost { why: "bye".into() },
            Body::Resign => Event::PeerResigned {
                why: "resigned".into(),
            },
            Body::Diverged => Event::PeerDiverged {
                what: "diverged".into(),
            },
            // Only a restored copy waits for these.
            Body::Paired { .. } | Body::Abort => return,
        };
        self.nodes[i].gate = 0;
        self.nodes[i].link_open = false;
        self.feed(b, i, ev);
    }
}
