//! Joins by live transfer (docs/design.md §11): a lone Primary (`Solo{g}`,
//! gate open, grant held) brings a new Secondary in, in its generation `g`.
//! The target restores and says `Restored` (`Act::Join`); the Primary's
//! member then takes `SecondaryJoined` (`Act::Pair`) and only if it paired
//! in `g` does `Paired{g}` go on the wire, else `Abort` (as
//! `respawn/source.rs::pair` does). The restored copy becomes a member
//! (`Member::secondary` in `Following{g}`) only when `Paired{g}` reaches it;
//! anything else that ends its channel first makes it discard its copy.

use ftvmm::lockstep::member::{Event, Member, State};

use super::{Act, Body, Bounds, Mem, Msg, Node, Run, Sys, NAMES, TIMEOUT_MS, UNIT_MS};

/// A transfer whose target restored, waiting for the Primary to pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Xfer {
    pub p: u8,
    pub s: u8,
    pub chan: u8,
    pub g: u8,
}

impl Sys {
    /// Node `s` can be the target of a join: up, no member that has not
    /// halted, no restored copy, not starting the VM itself (host-c).
    fn joinable(&self, s: usize) -> bool {
        let n = &self.nodes[s];
        let starting = n.m.is_none()
            && (self
                .asks
                .iter()
                .any(|&(w, inc, _)| w as usize == s && inc == n.inc)
                || self.answers.iter().any(|&(w, ..)| w as usize == s));
        n.run == Run::Up
            && n.joining.is_none()
            && n.member().is_none_or(|m| m.is_halted())
            && !starting
    }

    /// The join actions possible now.
    pub(super) fn join_actions(&self, b: &Bounds, fault: bool, out: &mut Vec<Act>) {
        let more = self.joins < b.joins;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.run == Run::Crashed && more && fault {
                out.push(Act::Reboot(i));
            }
            if n.run == Run::Up && n.joining.is_some() {
                if n.ticked < self.now && n.link_open {
                    out.push(Act::Tick(i));
                }
                if fault {
                    out.push(Act::Crash(i));
                    if n.link_open {
                        out.push(Act::LinkFails(i));
                    }
                }
            }
            let lone = n.active()
                && matches!(n.state(), Some(State::Solo { .. }))
                && n.gate == 2
                && n.grant
                && !n.link_open;
            if more && self.xfer.is_none() && lone {
                for s in 0..self.nodes.len() {
                    if s != i && self.joinable(s) {
                        out.push(Act::Join(i, s));
                    }
                }
            }
        }
        if let Some(x) = self.xfer {
            if self.nodes[x.p as usize].run == Run::Up {
                out.push(Act::Pair);
            }
        }
    }

    /// The transfer from `p` to `s` ran up to `Restored`.
    pub(super) fn join(&mut self, p: usize, s: usize) {
        let Some(State::Solo { g }) = self.nodes[p].state() else {
            unreachable!("only a lone Primary starts a join")
        };
        let g = *g as u8;
        self.joins += 1;
        let chan = self.joins;
        let n = &self.nodes[s];
        // A new member loop replaces a halted member.
        let inc = n.inc + u8::from(n.m.is_some());
        self.answers.retain(|&(w, ..)| w as usize != s);
        self.nodes[s] = Node {
            joining: Some(g),
            link_open: true,
            chan,
            peer: p as u8,
            heard: self.now,
            ticked: self.now,
            ..Node::empty(inc)
        };
        self.xfer = Some(Xfer {
            p: p as u8,
            s: s as u8,
            chan,
            g,
        });
    }

    /// The Primary heard `Restored`: its member is fed `SecondaryJoined`.
    pub(super) fn pair(&mut self, b: &Bounds) {
        let Some(x) = self.xfer.take() else {
            unreachable!("Pair without a transfer")
        };
        let (p, s) = (x.p as usize, x.s as usize);
        let peer = NAMES[s].to_string();
        let g = u64::from(x.g);
        self.feed(
            b,
            p,
            Event::SecondaryJoined {
                peer,
                generation: g,
            },
        );
        let to = |body| Msg {
            chan: x.chan,
            to: x.s,
            body,
        };
        if matches!(self.nodes[p].state(), Some(State::Paired { g: pg }) if *pg == g) {
            let n = &mut self.nodes[p];
            n.link_open = true;
            n.chan = x.chan;
            n.peer = x.s;
            n.heard = self.now;
            self.put(b, to(Body::Paired { g: x.g }));
        } else {
            self.put(b, to(Body::Abort));
        }
    }

    /// What reaches a restored copy: `Paired{g}` makes it a Secondary
    /// following `g`; batches and acks cannot come before `Paired` on the
    /// ordered channel and are dropped; anything else ends the transfer.
    pub(super) fn deliver_to_copy(&mut self, b: &Bounds, i: usize, body: Body) {
        let Some(g) = self.nodes[i].joining else {
            unreachable!("not a restored copy")
        };
        match body {
            Body::Paired { g: pg } if pg == g => {
                let n = &mut self.nodes[i];
                let p = n.peer as usize;
                let m = Member::secondary("kv", NAMES[p], u64::from(g), TIMEOUT_MS);
                n.m = Some(Mem::new(m));
                n.joining = None;
                n.joined = true;
                n.heard = self.now;
            }
            Body::Batch { .. } | Body::Ack { .. } => {}
            _ => self.discard(b, i, false),
        }
    }

    /// A restored copy gives up (its channel ended, or `Paired` did not
    /// come within the timeout): it throws its VM away; never races.
    pub(super) fn discard(&mut self, b: &Bounds, i: usize, say_bye: bool) {
        if say_bye {
            self.send(b, i, Body::Bye);
        }
        self.nodes[i] = Node::empty(self.nodes[i].inc);
    }

    /// A tick of a restored copy: `Paired` overdue means discard.
    pub(super) fn tick_copy(&mut self, b: &Bounds, i: usize) {
        let n = &mut self.nodes[i];
        n.ticked = self.now;
        if u64::from(self.now - n.heard) * UNIT_MS >= TIMEOUT_MS {
            self.discard(b, i, true);
        }
    }

    /// Host `i` crashes (also a host frozen past its lease, at the thaw);
    /// a transfer it ran as the Primary ends with it.
    pub(super) fn crash(&mut self, i: usize) {
        self.nodes[i].run = Run::Crashed;
        if self.xfer.is_some_and(|x| x.p as usize == i) {
            self.xfer = None;
        }
    }

    /// A crashed host boots again: no member, a new incarnation.
    pub(super) fn reboot(&mut self, i: usize) {
        let inc = self.nodes[i].inc + 1;
        self.nodes[i] = Node::empty(inc);
        self.answers.retain(|&(w, ..)| w as usize != i);
    }
}
