//! Which model actions are possible in a state (the checker tries each).

use ftvmm::lockstep::member::State;

use super::{Act, Body, Bounds, Msg, Run, Sys};

impl Sys {
    pub fn actions(&self, b: &Bounds, out: &mut Vec<Act>) {
        let fault = self.faults < b.faults;
        for &m in &self.net {
            let up = self.nodes[m.to as usize].run == Run::Up;
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
        if self.now < b.time {
            out.push(Act::TimePasses);
        }
        for &(w, inc, g) in &self.asks {
            out.push(Act::Decide(w, inc, g));
        }
        for &(w, g, a) in &self.answers {
            if self.nodes[w as usize].run == Run::Up {
                out.push(Act::Answer(w, g, a));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.active() {
                self.member_actions(b, fault, i, out);
            }
            if matches!(n.run, Run::Frozen { .. }) {
                out.push(Act::Thaw(i));
            }
        }
        self.join_actions(b, fault, out);
        let c_empty = self
            .nodes
            .get(2)
            .is_some_and(|c| c.run == Run::Up && c.m.is_none() && c.joining.is_none());
        if b.c_starts && c_empty && !self.c_tried && self.c_may_start() {
            out.push(Act::StartC);
        }
    }

    /// What an active member `i` may do or suffer.
    fn member_actions(&self, b: &Bounds, fault: bool, i: usize, out: &mut Vec<Act>) {
        let n = &self.nodes[i];
        let batch = Msg {
            chan: n.chan,
            to: n.peer,
            body: Body::Batch { stamp: self.now },
        };
        if n.link_open
            && !n.vcpu_stopped
            && !self.full(b, n.chan)
            && !self.net.contains(&batch)
            && matches!(
                n.state(),
                Some(State::Paired { .. } | State::StorageHeld { .. })
            )
        {
            out.push(Act::SendBatch(i));
        }
        // A tick matters only to a member with a link (silence) or a
        // hand-over deadline; others only learn the time.
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
            if matches!(
                n.state(),
                Some(State::Paired { .. } | State::StorageHeld { .. })
            ) {
                out.push(Act::Leave(i));
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
        match n.state() {
            Some(State::Following { .. }) if fault => out.push(Act::Diverge(i)),
            Some(State::Draining { .. }) => {
                out.push(Act::ReplayDone(i));
                if fault {
                    out.push(Act::Diverge(i));
                }
            }
            Some(State::HandingOver { .. }) if n.link_open => out.push(Act::AllAcked(i)),
            _ => {}
        }
    }
}
