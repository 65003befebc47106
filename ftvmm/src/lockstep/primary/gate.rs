//! The output gate of [`PrimaryLog`]: the Output Rule, the member's [`Gate`]
//! and the host's grant (module docs of `primary`).

use std::sync::MutexGuard;
use std::time::Instant;

use super::{Gate, Held, PrimaryLog, State};
use crate::io::{ExitIndex, OutputEvent, Outputs};
use crate::lockstep::log::{Body, Encoded, LogError};

impl PrimaryLog {
    /// An output produced now (vCPU thread). Waits while everything is held
    /// (the member races, hands over or lost its grant: the guest must not
    /// run ahead producing outputs nobody may release), then releases it at
    /// once if the gate allows and nothing is held before it, else holds it.
    pub fn emit(&self, n: ExitIndex, ev: OutputEvent) {
        let st = self.lock();
        let mut st = self.stall_while_held(st);
        st.out_digest.add(&ev);
        st.stats.outputs_emitted += 1;
        let trace = st.timeline.on_output(&ev, Instant::now());
        let now = st.held.is_empty() && st.gate == Gate::Open && self.grant.valid();
        if now {
            Self::emit_traced(&mut st, n, ev, trace);
        } else {
            // While paired its `need` is set when the covering `Outputs`
            // record is appended; open, it only waits for the grant.
            st.held.push_back(Held {
                need: None,
                ev,
                trace,
            });
        }
    }

    /// Hands `ev` to the real sink, noting the moments of its trace.
    fn emit_traced(st: &mut State, n: ExitIndex, ev: OutputEvent, trace: Option<u64>) {
        if let Some(id) = trace {
            st.timeline.on_released(id, Instant::now());
        }
        st.sink.emit(n, ev);
        st.stats.outputs_released += 1;
        if let Some(id) = trace {
            st.timeline.on_wire(id, Instant::now());
        }
    }

    /// Appends the `Outputs` digest of the outputs since the last one, if
    /// there were any (vCPU thread, at every input call): it covers every
    /// output held without a `need` yet.
    pub(super) fn append_output_digest(&self, n: ExitIndex) -> Result<(), LogError> {
        let Some((count, digest)) = self.lock().out_digest.take() else {
            return Ok(());
        };
        let enc = Encoded::new(n, &Body::Outputs { count, digest })?;
        self.append_encoded(&enc, |st| {
            // The record just appended is the last one (only the vCPU thread
            // appends); running alone nothing was appended and nothing
            // waits. Set under the append's lock, so the timeline sees the
            // covering record before the sender can take it.
            let covering = st.next_seq;
            let now = Instant::now();
            let State {
                held,
                timeline,
                wanted,
                ..
            } = st;
            for h in held.iter_mut().rev() {
                if h.need.is_some() {
                    break;
                }
                h.need = Some(covering);
                // A held output waits on this record: ship it at once.
                *wanted = covering;
                if let Some(id) = h.trace {
                    timeline.on_covered(id, covering, now);
                }
            }
            self.release(st);
        });
        Ok(())
    }

    /// Releases, in order, what the gate allows now.
    pub(super) fn release(&self, st: &mut State) {
        if st.gate == Gate::Held || !self.grant.valid() {
            return;
        }
        let open = st.gate == Gate::Open;
        while let Some(h) = st.held.front() {
            let ok = open || h.need.is_some_and(|need| need <= st.fresh_acked);
            if !ok {
                break;
            }
            let h = st.held.pop_front().expect("front exists");
            Self::emit_traced(st, 0, h.ev, h.trace);
        }
    }

    /// Waits (vCPU thread) while nothing may leave: the gate is `Held` or
    /// the host has no grant. Ends early when the VM is stopping.
    pub(super) fn stall_while_held<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> MutexGuard<'a, State> {
        let mut counted = false;
        while !st.stopping && (st.gate == Gate::Held || !self.grant.valid()) {
            if !counted {
                st.stats.held_stalls += 1;
                counted = true;
            }
            st = self.wait(st);
        }
        st
    }

    /// The member's gate (driver). Opening a gate acknowledges, as far as
    /// the Output Rule is concerned, everything recorded so far: running
    /// alone, nobody replays, and what was held leaves now.
    pub fn set_gate(&self, gate: Gate) {
        let mut st = self.lock();
        st.gate = gate;
        if gate == Gate::Open {
            let upto = st.next_seq;
            st.pending.clear();
            st.pending_since = None;
            st.pending_first = upto;
            st.acked = upto;
            st.fresh_acked = upto;
            st.replayed = upto;
            st.sent.clear();
            st.unacked_bytes = 0;
            // Nothing more is acknowledged: the open traces would end with
            // moments that are not acks.
            st.timeline.drop_open();
        }
        self.release(&mut st);
        drop(st);
        self.cv.notify_all();
    }

    pub fn gate(&self) -> Gate {
        self.lock().gate
    }

    /// The host grant came back: release what waited for it and wake a
    /// stalled vCPU.
    pub fn kick(&self) {
        let mut st = self.lock();
        self.release(&mut st);
        drop(st);
        self.cv.notify_all();
    }

    /// The VM is stopping: a vCPU stalled on the gate or the window goes on
    /// (to see its stop request); what is held stays held.
    pub fn stop_waiting(&self) {
        self.lock().stopping = true;
        self.cv.notify_all();
    }

    /// Drops the real output sink (its backends are being shut down); outputs
    /// from now on are counted and discarded.
    pub fn detach_sink(&self) {
        struct Discard;
        impl Outputs for Discard {
            fn emit(&mut self, _n: ExitIndex, _e: OutputEvent) {}
        }
        let old = std::mem::replace(&mut self.lock().sink, Box::new(Discard));
        drop(old);
    }
}
