//! Which model actions are possible in a state (the checker tries each).

use ftvmm::lockstep::member::State;

use super::{Act, Bounds, Msg, Run, Sys};

impl Sys {
    pub fn actions(&self, b: &Bounds, out: &mut Vec<Act>) {
        let fault = self.faults < b.faults;
        for &m in &self.net {
            let up = self.nodes[m.to()].run == Run::Up;
            if up {
                out.push(Act::Deliver(m));
            }
            if fault {
                out.push(Act::Lose(m));
                if up {
                    out.push(Act::Duplicate(m));
                }
            }
        }
        let p = &self.nodes[0];
        if p.active()
            && p.link_open
            && !p.vcpu_stopped
            && self.net.len() < b.in_flight
            && !self.net.contains(&Msg::Batch { stamp: self.now })
            && matches!(
                p.state(),
                Some(State::Paired { .. } | State::StorageHeld { .. })
            )
        {
            out.push(Act::SendBatch);
        }
        if self.now < b.time {
            out.push(Act::TimePasses);
        }
        for &(w, g) in &self.asks {
            out.push(Act::Decide(w, g));
        }
        for &(w, g, a) in &self.answers {
            if self.nodes[w as usize].run == Run::Up {
                out.push(Act::Answer(w, g, a));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.active() {
                // A tick matters only to a member with a link (silence) or
                // a hand-over deadline; others only learn the time.
                let timed = n.link_open || matches!(n.state(), Some(State::HandingOver { .. }));
                if n.ticked < self.now && timed {
                    out.push(Act::Tick(i));
                }
                if fault {
                    out.push(Act::Crash(i));
                    out.push(Act::Freeze(i));
                    if n.grant {
                        out.push(Act::Withdraw(i));
                    }
                    if n.link_open {
                        out.push(Act::LinkFails(i));
                    }
                }
                if !n.grant {
                    out.push(Act::Restore(i));
                }
                if self.deposer(i).is_some() {
                    out.push(Act::Depose(i));
                }
                if n.gate == 2 && n.grant {
                    out.push(Act::Emit(i));
                }
            }
            if matches!(n.run, Run::Frozen { .. }) {
                out.push(Act::Thaw(i));
            }
        }
        let s = &self.nodes[1];
        if s.active() {
            match s.state() {
                Some(State::Following { .. }) if fault => out.push(Act::Diverge),
                Some(State::Draining { .. }) => {
                    out.push(Act::ReplayDone);
                    if fault {
                        out.push(Act::Diverge);
                    }
                }
                _ => {}
            }
        }
        if p.active() && p.link_open && matches!(p.state(), Some(State::HandingOver { .. })) {
            out.push(Act::AllAcked);
        }
        if b.members == 3 && !self.c_tried && self.c_may_start() {
            out.push(Act::StartC);
        }
    }
}
