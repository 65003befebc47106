//! One renewal of the own lease, and what rides on it: taking the slot
//! ([`crate::slot`]), the check that nobody else writes it, reading the
//! other hosts' leases, freeze detection ([`crate::freeze`]) and the
//! deposition watch ([`crate::depose`]).
//!
//! # Order of one renewal
//!
//! 1. Until the slot is held: one step of the claim (a read, maybe a write).
//! 2. Read the own lease block; anything but the last record written means
//!    another machine writes the slot (give it up, claim again).
//! 3. Write the own record (counter + 1, the published running list).
//! 4. Read every other host's lease: liveness, and freeze evidence.
//! 5. For every (VM, generation) ftvmm runs here as Primary, read the other
//!    hosts' blocks of instance `generation + 1`: deposition.
//!
//! Steps 4 and 5 run side by side, and step 4's reads go at once: on a slow
//! storage path a renewal costs three round trips (2, 3, then 4–5) instead
//! of `2 + (N - 1) × (1 + VMs run here)`. Output is held once the last
//! renewal is older than 1 s (`hold_after`), so at 200 ms a round trip a
//! 3-host renewal of a Primary (six of them, one after the other) was at
//! that limit (chaos seed 114: a new Primary's storage delayed by 202 ms,
//! its grant held for 7 s after it won).
//!
//! A freeze found in 4 withholds the grant at once; it is lifted only by a
//! later renewal that completes 2–5 without evidence (so a deposition check
//! ran after the thaw).
//!
//! Lease writes are serialized under the slot lock (an `Acquire` publishes
//! through `Agent::publish` too), and every one is preceded by step 2.

use config_schema::clock::BootInstant;

use crate::agent::Agent;
use crate::depose::{deposition, Deposition};
use crate::freeze::Evidence;
use crate::io::each_at_once;
use crate::layout::{view_paxos, LeaseRecord, Running, SlotView};
use crate::paxos::{CorruptBlock, CORRUPT_REREADS};
use crate::slot::{describe, ClaimAction};

/// What one renewal did and what the daemon must do about it.
#[derive(Debug)]
pub struct Renewal {
    /// The own lease was renewed (steps 2–5 done).
    pub result: Result<(), String>,
    /// Console lines.
    pub lines: Vec<String>,
    /// Why the output grant must be withheld now (`None`: nothing does).
    pub withhold: Option<String>,
    /// A freeze was found in this renewal: withdraw the grant at once.
    pub frozen: bool,
    /// Copies to stop: send `Request::Deposed` for each.
    pub deposed: Vec<Deposed>,
    /// Why this host counts as preempted at the storage (every renewal
    /// while it does): it must be reset (`daemon::request_reset`).
    pub preempted: Option<String>,
    /// The preemption was found in this renewal: withdraw the grant at once.
    pub newly_preempted: bool,
}

/// How long the steps of one renewal took (steps 2–3, 4, 5).
#[derive(Debug, Default, Clone, Copy)]
struct StepTimes {
    own: std::time::Duration,
    others: std::time::Duration,
    deposition: std::time::Duration,
}

impl StepTimes {
    /// Steps 4 and 5 run side by side: the longer of them counts.
    fn total(&self) -> std::time::Duration {
        self.own + self.others.max(self.deposition)
    }
}

/// A `Request::Deposed` to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposed {
    pub vm: String,
    /// The generation that deposes the copy (`by`'s block names it).
    pub generation: u64,
    pub by: String,
}

impl Agent {
    /// One renewal issued at `now`.
    pub fn renew_once(&self, now: BootInstant) -> Renewal {
        let mut r = Renewal {
            result: Ok(()),
            lines: Vec::new(),
            withhold: None,
            frozen: false,
            deposed: Vec::new(),
            preempted: None,
            newly_preempted: false,
        };
        if let Err(e) = self.init_region() {
            r.result = Err(e.to_string());
        } else if let Err(why) = self.claim_step(now, &mut r.lines) {
            // Claiming is not a failing renewal: no "renewal failed" line.
            r.withhold = Some(why.clone());
            r.result = Err(why);
            self.check_fence(&mut r);
            return r;
        } else {
            let mut steps = StepTimes::default();
            r.result = self.renew_held(now, &mut r, &mut steps);
            // A renewal that takes a quarter of the lease timeout is on its
            // way to letting the lease expire in the other hosts' view while
            // this host lives (chaos seed 111, a host slowed to a quarter
            // with its storage delayed): say where the time went.
            if steps.total() >= self.timing.timeout / 4 {
                r.lines.push(format!(
                    "fencing: lease renewal took {} ms (own lease {} ms, other leases {} ms, \
                     deposition watch {} ms); other hosts count the lease expired after {} ms \
                     without one",
                    steps.total().as_millis(),
                    steps.own.as_millis(),
                    steps.others.as_millis(),
                    steps.deposition.as_millis(),
                    self.timing.timeout.as_millis()
                ));
            }
        }
        self.count(now, &r.result, &mut r.lines);
        let held = self.slot_held();
        let frozen = self.freeze.lock().expect("lock").active.clone();
        r.withhold = match (&r.result, frozen) {
            (Err(e), _) if !held => Some(e.clone()),
            (_, Some(e)) => Some(self.freeze_line(&e)),
            _ => None,
        };
        self.check_fence(&mut r);
        r
    }

    fn count(&self, now: BootInstant, result: &Result<(), String>, lines: &mut Vec<String>) {
        let mut c = self.counters.lock().expect("lock");
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                c.renewals += 1;
                c.last_ok = Some(now);
            }
            Err(e) => {
                c.failures += 1;
                c.last_error = Some(e.clone());
            }
        }
        if c.renewing != Some(ok) {
            lines.push(match result {
                Ok(()) => format!(
                    "fencing: lease renewed (host {}, every {} ms, timeout {} ms)",
                    self.hosts[self.me as usize],
                    self.timing.renew.as_millis(),
                    self.timing.timeout.as_millis()
                ),
                Err(e) => format!("fencing: lease renewal failed: {e}"),
            });
        }
        c.renewing = Some(ok);
    }

    /// Step 1: until the slot is held, one step of the claim. `Ok` once held.
    fn claim_step(&self, now: BootInstant, lines: &mut Vec<String>) -> Result<(), String> {
        let mut s = self.slot.lock().expect("lock");
        if s.claim.held() {
            return Ok(());
        }
        let at = self.geo.lease_block(self.me);
        let bytes = self
            .io
            .read(at)
            .map_err(|e| format!("claiming the lease slot: reading it: {e}"))?;
        let action = s.claim.on_read(&bytes, now);
        lines.extend(s.claim.take_lines());
        match action {
            ClaimAction::Held => return Ok(()),
            ClaimAction::Write => {
                // Registered before this host's first write: an unregistered
                // host cannot write a reserved device.
                self.join_fence(lines)?;
                let published = self.publication.lock().expect("lock").published();
                let rec = s.own.next(true, published);
                let mine = rec.encode(self.geo.block_len());
                self.io
                    .write(at, &mine)
                    .map_err(|e| format!("claiming the lease slot: writing it: {e}"))?;
                s.claim.on_written(&mine, BootInstant::now());
                s.written = Some(mine.to_vec());
            }
            ClaimAction::Wait => {}
        }
        Err(match s.claim.refused() {
            Some(why) => format!("not fencing: {why}"),
            None => "claiming this host's lease slot".into(),
        })
    }

    /// Steps 2–5, timed into `steps`.
    fn renew_held(
        &self,
        now: BootInstant,
        r: &mut Renewal,
        steps: &mut StepTimes,
    ) -> Result<(), String> {
        let t = std::time::Instant::now();
        let rec = self.write_own(true, &mut r.lines);
        steps.own = t.elapsed();
        let rec = rec?;
        self.liveness
            .lock()
            .expect("lock")
            .own_renewed(self.me as usize, &rec, now);
        // Steps 4 and 5 read different blocks and depend on nothing the
        // other finds: side by side, so a slow path costs one round trip
        // for both, not one per block (each step's reads go at once too:
        // `crate::io::each_at_once`).
        let deposition_timed = || {
            let t = std::time::Instant::now();
            (self.watch_deposition(), t.elapsed())
        };
        let (others, deposition) = std::thread::scope(|s| {
            // No thread to be had (no resources): the watch runs after
            // step 4 instead, as it did before.
            let d = std::thread::Builder::new().spawn_scoped(s, deposition_timed);
            let t = std::time::Instant::now();
            let e = (self.read_others(), t.elapsed());
            let d = match d {
                Ok(d) => d.join().unwrap_or_else(|_| {
                    (
                        Err("the deposition watch panicked".to_string()),
                        std::time::Duration::ZERO,
                    )
                }),
                Err(_) => deposition_timed(),
            };
            (e, d)
        });
        (steps.others, steps.deposition) = (others.1, deposition.1);
        let evidence = others.0?;
        let deposed = deposition.0?;
        let mut f = self.freeze.lock().expect("lock");
        match evidence {
            Some(e) => {
                if f.active.is_none() {
                    r.frozen = true;
                    f.detections += 1;
                    r.lines.push(format!(
                        "{}; withdrawing the output grant and checking for deposition",
                        self.freeze_line(&e)
                    ));
                }
                f.active = Some(e);
            }
            None if f.active.take().is_some() => r.lines.push(
                "fencing: clean renewal and deposition check after the freeze; granting output again"
                    .into(),
            ),
            None => {}
        }
        drop(f);
        for d in deposed {
            self.on_deposed(d, r);
        }
        Ok(())
    }

    pub(crate) fn freeze_line(&self, e: &Evidence) -> String {
        format!(
            "fencing: this host was frozen: host {}'s lease advanced {} renewals while this \
             host's clock advanced {} ms (at most {} possible)",
            self.hosts[e.host as usize],
            e.advanced,
            e.elapsed.as_millis(),
            e.possible
        )
    }

    /// `Acquire`'s publication: writes the own lease record (without a
    /// renewal) so that it lists what is published now.
    pub(crate) fn publish(&self) -> Result<(), String> {
        let mut lines = Vec::new();
        let r = self.write_own(false, &mut lines).map(|_| ());
        for l in lines {
            config_schema::console::say(l);
        }
        r
    }

    /// Steps 2 and 3: check that the slot is still this host's, then write
    /// the own record (`bump`: a renewal). Returns the record written.
    fn write_own(&self, bump: bool, lines: &mut Vec<String>) -> Result<LeaseRecord, String> {
        let mut s = self.slot.lock().expect("lock");
        if !s.claim.held() {
            return Err(match s.claim.refused() {
                Some(why) => format!("this host does not hold its lease slot: {why}"),
                None => "this host does not hold its lease slot yet".into(),
            });
        }
        let at = self.geo.lease_block(self.me);
        let now = BootInstant::now();
        let seen = self
            .io
            .read(at)
            .map_err(|e| format!("reading own lease: {e}"))?;
        let mine = |b: &Option<Vec<u8>>| b.as_deref() == Some(&seen[..]);
        // This agent's own older record (same boot incarnation, a counter it
        // already wrote): a write of its own that landed late, after a newer
        // one, on a loaded or reordering path. Another machine has another
        // incarnation (random per start), so this is never an impostor; the
        // write below puts the newest record back.
        let own_late = LeaseRecord::decode(&seen).is_ok_and(|r| {
            r.host == s.own.host && r.incarnation == s.own.incarnation && r.counter <= s.own.counter
        });
        if own_late && !mine(&s.written) && !mine(&s.maybe) {
            tracing::warn!(
                "fencing: an older record of this agent's own lease landed late ({}); rewriting it",
                describe(&seen)
            );
        }
        if !mine(&s.written) && !mine(&s.maybe) && !own_late {
            let expected = s.written.clone().unwrap_or_default();
            s.claim.on_taken(&expected, &seen, now);
            lines.extend(s.claim.take_lines());
            return Err(format!(
                "another machine wrote this host's lease slot (found {}); not using it",
                describe(&seen)
            ));
        }
        let published = self.publication.lock().expect("lock").published();
        let rec = s.own.next(bump, published);
        let bytes = rec.encode(self.geo.block_len()).to_vec();
        match self.io.write(at, &bytes) {
            Ok(()) => {
                s.written = Some(bytes);
                s.maybe = None;
                Ok(rec)
            }
            Err(e) if crate::pr::is_reservation_conflict(&e) => {
                s.maybe = Some(bytes);
                Err(format!(
                    "writing own lease: the device refused it with RESERVATION CONFLICT ({e})"
                ))
            }
            Err(e) => {
                s.maybe = Some(bytes);
                Err(format!("writing own lease: {e}"))
            }
        }
    }

    /// Step 4: every other host's lease; freeze evidence if any.
    fn read_others(&self) -> Result<Option<Evidence>, String> {
        // All at once (one round trip on a slow path), then judged in host
        // order; each read keeps its own issue and completion times, which
        // is all freeze detection looks at.
        let hosts: Vec<u32> = (0..self.geo.hosts).filter(|&h| h != self.me).collect();
        let reads = each_at_once(&hosts, |&h| {
            let issued = BootInstant::now();
            let r = self.io.read(self.geo.lease_block(h));
            (h, issued, r, BootInstant::now())
        });
        let mut evidence = None;
        for read in reads {
            let (h, issued, s, completed) =
                read.map_err(|_| "a lease read panicked".to_string())?;
            let s = s.map_err(|e| format!("reading lease of {}: {e}", self.hosts[h as usize]))?;
            let rec = LeaseRecord::decode(&s)
                .ok()
                .filter(|r| r.host == h && r.running.iter().all(|x| x.vm < self.geo.vms));
            let e = self.freeze.lock().expect("lock").detector.on_read(
                h as usize,
                rec.as_ref(),
                issued,
                completed,
            );
            evidence = evidence.or(e);
            self.liveness
                .lock()
                .expect("lock")
                .observe(h as usize, rec, completed);
        }
        Ok(evidence)
    }

    /// Step 5: the deposition watch over what ftvmm runs here.
    pub(crate) fn watch_deposition(&self) -> Result<Vec<Deposition>, String> {
        let running: Vec<Running> = self
            .publication
            .lock()
            .expect("lock")
            .running()
            .iter()
            .copied()
            .collect();
        // Every block at once (one round trip on a slow path, as step 4's
        // reads: this step runs beside it and the renewal waits for both),
        // then judged VM by VM in host order.
        let others: Vec<u32> = (0..self.geo.hosts).filter(|&h| h != self.me).collect();
        let blocks: Vec<(Running, u32)> = (running.iter())
            .flat_map(|r| others.iter().map(move |&h| (*r, h)))
            .collect();
        let mut read =
            crate::io::each_at_once(&blocks, |(r, h)| self.read_view(r.vm, r.generation + 1, *h))
                .into_iter();
        let mut found = Vec::new();
        for r in running {
            let next = r.generation + 1;
            let mut views = Vec::with_capacity(others.len());
            for &h in &others {
                let v = (read.next())
                    .expect("one read per (VM, host)")
                    .map_err(|_| "a Paxos block read panicked".to_string())??;
                views.push((h, v));
            }
            if let Some(d) = deposition(r.vm, r.generation, &views, self.own_next(r.vm, next)) {
                found.push(d);
            }
        }
        Ok(found)
    }

    /// Whether this host acquires or won (`vm`, `generation`).
    fn own_next(&self, vm: u32, generation: u64) -> bool {
        let r = Running { vm, generation };
        self.publication.lock().expect("lock").acquiring(r)
            || self
                .decisions
                .lock()
                .expect("lock")
                .get(&(self.vm_name(vm), generation))
                .is_some_and(|(o, _)| *o == self.hosts[self.me as usize])
    }

    /// Host `h`'s block of (`vm`, `generation`), a corrupt one read again
    /// [`CORRUPT_REREADS`] times.
    fn read_view(&self, vm: u32, generation: u64, h: u32) -> Result<SlotView, String> {
        let at = self.geo.paxos_block(vm, generation, h);
        let mut v = SlotView::Empty;
        for _ in 0..=CORRUPT_REREADS {
            let s = self.io.read(at).map_err(|e| {
                format!("reading the Paxos block of {}: {e}", self.hosts[h as usize])
            })?;
            v = view_paxos(&s, h, vm, generation, self.geo.ring);
            if !matches!(v, SlotView::Corrupt(_)) {
                break;
            }
        }
        Ok(v)
    }

    fn on_deposed(&self, d: Deposition, r: &mut Renewal) {
        let vm = self.vm_name(d.vm);
        let by = self.hosts[d.by as usize].clone();
        let first = self.deposed.lock().expect("lock").insert(Running {
            vm: d.vm,
            generation: d.generation,
        });
        let why = match &d.corrupt {
            None => format!("host {by}'s block names generation {}", d.later),
            Some(reason) => {
                let block = self.geo.paxos_block(d.vm, d.later, d.by);
                let alarm = CorruptBlock {
                    host: d.by,
                    block,
                    reason: reason.clone(),
                };
                format!(
                    "{} (it may name a later generation)",
                    self.alarm(&vm, Some(d.later), alarm)
                )
            }
        };
        if first {
            r.lines.push(format!(
                "fencing: vm {vm} generation {} is deposed: {why}; telling ftvmm to stop it",
                d.generation
            ));
        }
        r.deposed.push(Deposed {
            vm,
            generation: d.later,
            by,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::StepTimes;
    use std::time::Duration;

    #[test]
    fn a_renewal_takes_its_own_step_then_the_longer_of_the_two_side_by_side() {
        let ms = Duration::from_millis;
        let t = StepTimes {
            own: ms(300),
            others: ms(200),
            deposition: ms(500),
        };
        assert_eq!(t.total(), ms(800));
    }
}
