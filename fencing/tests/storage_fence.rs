//! The agent with persistent reservations (docs/design.md §3 item 5), on the
//! SPC-4 fake target (`fencing::pr::fake`): each agent's block I/O goes
//! through its own nexus (`GatedIo`: a write the reservation refuses fails
//! with `EBADE`). Join at the slot claim, depose before `Decided`, the
//! deposed host's reaction, a target that loses its registrations.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{file_region, runtime, take_slot};
use config_schema::clock::BootInstant;
use config_schema::ctl::{Response, RunningVm};
use fencing::agent::{Agent, ACQUIRE_BOUND};
use fencing::io::BlockIo;
use fencing::pr::fake::{FakeNexus, FakeTarget, GatedIo};
use fencing::pr::fence::FENCE_TYPE;
use fencing::pr::{Key, Keys, PrError, Reservation, Reservations, Sense};
use fencing::storage_fence::Probe;

/// One host: its agent, its nexus, its key.
struct Host {
    agent: Arc<Agent>,
    nexus: FakeNexus,
    key: Key,
}

struct Rig {
    dir: tempfile::TempDir,
    region: Arc<dyn BlockIo>,
    target: FakeTarget,
}

fn rig() -> Rig {
    let (dir, region) = file_region(512);
    Rig {
        dir,
        region,
        target: FakeTarget::new(),
    }
}

impl Rig {
    fn marker(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("{host}.preempted"))
    }

    /// `host`'s agent of incarnation `inc` through `nexus`, offered the
    /// fence through `dev` (the nexus itself unless a test wraps it).
    fn host_on(
        &self,
        host: &str,
        inc: u64,
        nexus: FakeNexus,
        dev: Arc<dyn Reservations>,
    ) -> (Host, Option<String>) {
        let io = Arc::new(GatedIo::new(Arc::clone(&self.region), nexus.clone()));
        let agent = Arc::new(Agent::new(&runtime(host), io, inc).unwrap());
        let line = agent.offer_storage_fence(
            Box::new(move || Probe::Offered {
                dev: Arc::clone(&dev),
                persists: Some(false),
            }),
            Some(self.marker(host)),
        );
        let id = agent.host_ids[agent.me as usize] as u16;
        let key = Key::for_host(id, inc);
        (Host { agent, nexus, key }, line)
    }

    fn host(&self, host: &str, inc: u64) -> Host {
        let nexus = self.target.nexus(host);
        let (h, line) = self.host_on(host, inc, nexus.clone(), Arc::new(nexus));
        assert_eq!(line, None, "offered: nothing to say before the join");
        h
    }

    fn keys(&self) -> Vec<Key> {
        self.target.nexus("reader").read_keys().unwrap().keys
    }

    fn holder(&self) -> Option<Key> {
        self.target
            .nexus("reader")
            .read_reservation()
            .unwrap()
            .held
            .map(|(k, _)| k)
    }
}

fn renew(h: &Host) -> fencing::renew::Renewal {
    h.agent.renew_once(BootInstant::now())
}

/// Takes the slot and returns the console lines of both claim renewals.
fn claim(h: &Host) -> Vec<String> {
    let t = BootInstant::now();
    let mut lines = h.agent.renew_once(t).lines;
    let r = h.agent.renew_once(t + h.agent.timing.renew * 3);
    r.result.unwrap();
    lines.extend(r.lines);
    lines
}

fn runs(a: &Agent, vm: &str, generation: u64) {
    let epoch = a.grant_sent();
    a.on_running(
        &[RunningVm {
            vm: vm.into(),
            generation,
            slot: None,
        }],
        epoch,
    );
}

fn won(r: Response) -> bool {
    match r {
        Response::Decided { won, .. } => won,
        other => panic!("not decided: {other:?}"),
    }
}

/// Whether a `Decided` says the previous owner was cut off at the storage.
fn cut(r: &Response) -> bool {
    match r {
        Response::Decided { storage_cut, .. } => *storage_cut,
        other => panic!("not decided: {other:?}"),
    }
}

fn acquire(h: &Host, generation: u64) -> Response {
    h.agent.acquire("kv", generation, 1, ACQUIRE_BOUND)
}

/// host-a runs kv in generation 1, published; host-b saw host-a's lease
/// move with kv in it.
fn a_runs_kv(a: &Host, b: &Host) {
    assert!(won(acquire(a, 1)));
    runs(&a.agent, "kv", 1);
    for _ in 0..2 {
        renew(a).result.unwrap();
        renew(b).result.unwrap();
    }
    let seen = &b.agent.leases(BootInstant::now())[0];
    assert!(seen.live && seen.running == ["kv"], "{seen:?}");
}

#[test]
fn each_host_joins_with_its_key_after_the_slot_watch_and_before_its_first_write() {
    let r = rig();
    let a = r.host("host-a", 0x1_0000_0064);
    assert!(r.keys().is_empty(), "nothing registered before the claim");
    let lines = claim(&a);
    assert_eq!(a.key, Key::from_raw(0x4654_0001_0000_0064).unwrap());
    assert_eq!(r.keys(), [a.key]);
    assert_eq!(r.holder(), Some(a.key));
    assert!(
        lines.contains(&format!(
            "fencing: storage fencing active on host-a: key {} registered, reservation WERO held by this host ({}); the target does not persist registrations (after a target restart hosts join again, docs/design.md §3 item 5)",
            a.key, a.key
        )),
        "{lines:?}"
    );
    let b = r.host("host-b", 7);
    let lines = claim(&b);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reservation WERO held by host host-a")),
        "{lines:?}"
    );
    assert_eq!(r.keys(), [a.key, b.key]);
    let s = b.agent.status(BootInstant::now());
    assert_eq!(s["storage_fence"]["active"], true, "{s}");
    assert_eq!(s["storage_fence"]["key"], b.key.to_string());
    assert_eq!(s["storage_fence"]["persists_registrations"], false);

    // host-a reboots (same I_T nexus, new incarnation): its slot is not
    // blank, so it watches it for the lease timeout before it registers,
    // then its new key replaces the old one.
    let nexus = a.nexus.clone();
    let (a2, _) = r.host_on("host-a", 0x65, nexus.clone(), Arc::new(nexus));
    let t = BootInstant::now();
    let first = a2.agent.renew_once(t);
    assert!(first.result.is_err());
    assert_eq!(r.keys(), [a.key, b.key], "no registration while watching");
    assert!(a2
        .agent
        .renew_once(t + a2.agent.timing.timeout)
        .result
        .is_err());
    assert_eq!(r.keys(), [a2.key, b.key]);
}

#[test]
fn a_device_without_reservations_is_reported_and_acquire_works_without_them() {
    let r = rig();
    let io = Arc::new(GatedIo::new(Arc::clone(&r.region), r.target.nexus("a")));
    let a = Arc::new(Agent::new(&runtime("host-a"), io, 1).unwrap());
    let line = a.offer_storage_fence(
        Box::new(|| Probe::Unavailable("/dev/vdb is not a SCSI device (a file, virtio-blk, NVMe without SCSI translation): no SG_IO".into())),
        None,
    );
    assert_eq!(
        line.as_deref(),
        Some("fencing: storage fencing not active: /dev/vdb is not a SCSI device (a file, virtio-blk, NVMe without SCSI translation): no SG_IO")
    );
    take_slot(&a);
    assert!(won(a.acquire("kv", 1, 1, ACQUIRE_BOUND)));
    let s = a.status(BootInstant::now());
    assert_eq!(s["storage_fence"]["state"], "unavailable");
    assert_eq!(s["storage_fence"]["active"], false);
    assert!(s["storage_fence"]["why"]
        .as_str()
        .unwrap()
        .contains("not a SCSI device"));
    assert!(r.keys().is_empty());
}

/// Reservations that stop in PREEMPT until released, saying when they got there.
struct Gate {
    inner: FakeNexus,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Reservations for Gate {
    fn device(&self) -> &str {
        self.inner.device()
    }
    fn register(&self, old: Option<Key>, new: Key) -> Result<(), PrError> {
        self.inner.register(old, new)
    }
    fn register_ignore(&self, new: Key) -> Result<(), PrError> {
        self.inner.register_ignore(new)
    }
    fn unregister(&self, own: Key) -> Result<(), PrError> {
        self.inner.unregister(own)
    }
    fn reserve(&self, own: Key, kind: fencing::pr::PrType) -> Result<(), PrError> {
        self.inner.reserve(own, kind)
    }
    fn release(&self, own: Key, kind: fencing::pr::PrType) -> Result<(), PrError> {
        self.inner.release(own, kind)
    }
    fn preempt(
        &self,
        own: Key,
        victim: Key,
        kind: fencing::pr::PrType,
        abort: bool,
    ) -> Result<(), PrError> {
        self.entered.lock().unwrap().send(()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
        self.inner.preempt(own, victim, kind, abort)
    }
    fn clear(&self, own: Key) -> Result<(), PrError> {
        self.inner.clear(own)
    }
    fn read_keys(&self) -> Result<Keys, PrError> {
        self.inner.read_keys()
    }
    fn read_reservation(&self) -> Result<Reservation, PrError> {
        self.inner.read_reservation()
    }
    fn take_unit_attentions(&self) -> Vec<Sense> {
        self.inner.take_unit_attentions()
    }
}

#[test]
fn the_winner_answers_won_only_after_the_previous_owner_is_deposed_at_the_device() {
    let r = rig();
    let a = r.host("host-a", 1);
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let nexus = r.target.nexus("host-b");
    let gate = Arc::new(Gate {
        inner: nexus.clone(),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let (b, _) = r.host_on("host-b", 2, nexus, gate);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    // host-a froze; host-b, its Secondary, races for generation 2.
    let agent = Arc::clone(&b.agent);
    let answer = std::thread::spawn(move || agent.acquire("kv", 2, 1, ACQUIRE_BOUND));
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("host-b preempts host-a");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !answer.is_finished(),
        "Decided was answered before the depose completed"
    );
    assert!(a.nexus.may_write(), "the preempt has not run yet");
    release.send(()).unwrap();
    let answer = answer.join().unwrap();
    assert!(
        cut(&answer),
        "PREEMPT AND ABORT removed host-a's key: the answer says so"
    );
    assert!(won(answer));
    assert!(!a.nexus.may_write() && b.nexus.may_write());
    assert_eq!(r.keys(), [b.key]);
    assert_eq!(
        r.holder(),
        Some(b.key),
        "the reservation moved to the winner"
    );
    let s = b.agent.status(BootInstant::now());
    assert_eq!(s["storage_fence"]["keys_removed"], 1);
    assert_eq!(
        s["storage_fence"]["last_depose"],
        format!("fencing: deposed host host-a at the storage before answering vm kv generation 2 (it owned generation 1): removed [{}] with PREEMPT AND ABORT", a.key)
    );
    // Asked again (the same decision): nothing left to remove, still Won,
    // but how the keys went is not known any more: not counted as cut.
    release.send(()).unwrap();
    let again = acquire(&b, 2);
    assert!(!cut(&again));
    assert!(won(again));
}

#[test]
fn a_plain_preempt_is_not_a_cut_the_commands_the_target_accepted_may_still_run() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    r.target.refuse_preempt_abort(true);
    let answer = acquire(&b, 2);
    assert!(!cut(&answer), "{answer:?}");
    assert!(won(answer));
    assert!(!a.nexus.may_write(), "host-a is deposed all the same");
}

#[test]
fn a_depose_that_fails_gives_no_win_until_it_succeeds() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    r.target.set_offline(true);
    let started = Instant::now();
    match acquire(&b, 2) {
        Response::Error { message } => assert!(
            message.contains(
                "storage fencing: deposing host host-a (owner of vm kv generation 1) failed"
            ) && message.contains("transport failure"),
            "{message}"
        ),
        other => panic!("won without the fence: {other:?}"),
    }
    assert!(started.elapsed() < ACQUIRE_BOUND);
    assert!(a.nexus.may_write(), "host-a not deposed yet");
    r.target.set_offline(false);
    assert!(won(acquire(&b, 2)), "the caller asks again and wins");
    assert!(!a.nexus.may_write());
}

#[test]
fn nobody_is_deposed_after_an_own_generation_or_a_live_host_that_stopped_the_vm() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    // host-a's Primary re-checks after a hold (or lost its Secondary): it
    // wins 2 after itself.
    let own = acquire(&a, 2);
    assert!(!cut(&own));
    assert!(won(own));
    assert_eq!(r.keys(), [a.key, b.key]);
    // host-a stops kv and renews on: host-b starts it in 3 without fencing
    // host-a (and every other VM it runs).
    let epoch = a.agent.grant_sent();
    a.agent.on_running(&[], epoch);
    for _ in 0..2 {
        renew(&a).result.unwrap();
        renew(&b).result.unwrap();
    }
    let moved = acquire(&b, 3);
    assert!(
        !cut(&moved),
        "host-a was not deposed: its writes are not cut"
    );
    assert!(won(moved));
    assert_eq!(r.keys(), [a.key, b.key]);
    assert!(a.nexus.may_write());
    // host-b runs it, then freezes; host-a wins 4 and deposes host-b.
    runs(&b.agent, "kv", 3);
    renew(&b).result.unwrap();
    renew(&a).result.unwrap();
    let after_freeze = acquire(&a, 4);
    assert!(cut(&after_freeze));
    assert!(won(after_freeze));
    assert_eq!(r.keys(), [a.key]);
}

#[test]
fn a_deposed_host_withdraws_stops_its_vms_asks_for_its_reset_and_never_joins_again() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    assert!(won(acquire(&b, 2)));
    // host-a thaws: its next lease write is refused by the device.
    let rn = renew(&a);
    assert!(rn.newly_preempted);
    let why = rn.preempted.clone().expect("preempted");
    assert!(
        why.contains("RESERVATION CONFLICT") || why.contains("registrations preempted"),
        "{why}"
    );
    assert!(
        rn.lines.iter().any(|l| l.starts_with("fencing: this host was preempted at the storage (")
            && l.ends_with("withdrawing the output grant, stopping every VM it runs as primary, no longer feeding the watchdog; it joins again only after a reboot")),
        "{:?}",
        rn.lines
    );
    assert!(rn
        .withhold
        .as_deref()
        .unwrap()
        .starts_with("this host was preempted at the storage"));
    assert_eq!(rn.deposed.len(), 1);
    assert_eq!(
        (rn.deposed[0].vm.as_str(), rn.deposed[0].generation),
        ("kv", 2)
    );
    assert_eq!(
        rn.deposed[0].by, "host-b",
        "the exact deposition: host-b owns 2"
    );
    // Level-triggered, said once.
    let again = renew(&a);
    assert!(again.preempted.is_some() && !again.newly_preempted);
    assert!(!again
        .lines
        .iter()
        .any(|l| l.contains("preempted at the storage")));
    assert_eq!(again.deposed.len(), 1);
    // No win for it, and never a registration again in this incarnation.
    match acquire(&a, 3) {
        Response::Error { message } => assert!(
            message.contains("RESERVATION CONFLICT") || message.contains("preempted"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    for _ in 0..3 {
        renew(&a);
    }
    assert_eq!(r.keys(), [b.key]);
    let s = a.agent.status(BootInstant::now());
    assert_eq!(s["storage_fence"]["state"], "preempted");
    // The agent restarts in the same boot: the marker keeps it out.
    assert!(r.marker("host-a").exists());
    let (a2, _) = r.host_on("host-a", 9, a.nexus.clone(), Arc::new(a.nexus.clone()));
    let t = BootInstant::now();
    let rn = a2.agent.renew_once(t);
    assert!(rn
        .preempted
        .as_deref()
        .unwrap()
        .contains("preempted earlier in this boot"));
    a2.agent.renew_once(t + a2.agent.timing.timeout);
    assert_eq!(r.keys(), [b.key], "a restarted agent joined again");
}

#[test]
fn a_preemption_is_seen_through_the_target_even_before_a_write_is_refused() {
    let r = rig();
    // Writes always pass here (no GatedIo): only the target's word tells.
    let mk = |host: &str, inc| {
        let nexus = r.target.nexus(host);
        let a = Arc::new(Agent::new(&runtime(host), Arc::clone(&r.region), inc).unwrap());
        let dev: Arc<dyn Reservations> = Arc::new(nexus.clone());
        a.offer_storage_fence(
            Box::new(move || Probe::Offered {
                dev: Arc::clone(&dev),
                persists: None,
            }),
            None,
        );
        let key = Key::for_host(a.host_ids[a.me as usize] as u16, inc);
        Host {
            agent: a,
            nexus,
            key,
        }
    };
    let (a, b) = (mk("host-a", 1), mk("host-b", 2));
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    assert!(won(acquire(&b, 2)));
    let rn = renew(&a);
    assert_eq!(
        rn.preempted.as_deref(),
        Some(
            "the target reported UNIT ATTENTION 0x6, ASC/ASCQ 0x2a/0x05 (registrations preempted)"
        )
    );
    // Without the unit attention (another command took it): the key is gone
    // and another host holds the reservation.
    let c = mk("host-c", 3);
    claim(&c);
    assert!(won(acquire(&c, 3)));
    let _ = b.nexus.take_unit_attentions();
    let rn = renew(&b);
    assert_eq!(
        rn.preempted.as_deref(),
        Some(
            format!(
                "this host's key {} is no longer registered and host host-c holds the reservation",
                b.key
            )
            .as_str()
        )
    );
}

#[test]
fn after_a_target_restart_lost_registrations_hosts_join_again_unless_deposed() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    r.target.restart();
    // host-a notices first (no reservation): joins again and reserves.
    let ra = renew(&a);
    assert!(ra.preempted.is_none(), "{ra:?}");
    assert!(
        ra.lines.iter().any(|l| l.contains("the target lost its registrations); joined again with the same key after clean deposition checks (reservation held by this host)")),
        "{:?}",
        ra.lines
    );
    assert_eq!(r.holder(), Some(a.key));
    // host-b finds host-a's reservation, but the PR generation went back.
    let rb = renew(&b);
    assert!(rb.preempted.is_none(), "{rb:?}");
    assert_eq!(r.keys(), [a.key, b.key]);
    assert_eq!(
        b.agent.status(BootInstant::now())["storage_fence"]["rejoins"],
        1
    );

    // host-b wins 2 and deposes host-a; the target restarts before host-a
    // notices, and host-b joins again: the PR generation went back, but
    // host-a's deposition check finds host-b's generation 2, so host-a must
    // not join again.
    renew(&a).result.unwrap();
    assert!(won(acquire(&b, 2)));
    r.target.restart();
    assert!(renew(&b).preempted.is_none());
    let ra = renew(&a);
    let why = ra.preempted.expect("host-a stays out");
    assert!(why.contains("a VM this host runs was deposed"), "{why}");
    assert_eq!(r.keys(), [b.key]);
    assert!(!a.nexus.may_write());
}

/// A host whose iSCSI session was logged in again, at a target that ties
/// registrations to the session (tgt): its next write is refused although
/// its key is still listed. Not a preemption (that removes the key from
/// every nexus): it joins again between two clean deposition checks — and
/// stays out when a VM it runs was deposed meanwhile (qemu-tests
/// iscsi_login: a Secondary's severed session).
#[test]
fn a_session_logged_in_again_joins_again_unless_deposed() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);

    b.nexus.log_in_again();
    assert!(!b.nexus.may_write(), "the new nexus is not registered");
    assert!(r.keys().contains(&b.key), "the old registration is listed");
    let rb = renew(&b);
    assert!(rb.preempted.is_none(), "{rb:?}");
    assert!(
        rb.lines.iter().any(|l| l.contains(&format!(
            "although this host's key {} is registered: this host's I_T nexus is not (the target ties registrations to the iSCSI session, which was logged in again); joined again with the same key after clean deposition checks",
            b.key
        ))),
        "{:?}",
        rb.lines
    );
    assert!(b.nexus.may_write());
    renew(&b).result.unwrap();
    assert_eq!(
        b.agent.status(BootInstant::now())["storage_fence"]["rejoins"],
        1
    );

    // host-a's session is logged in again too, but host-b decided
    // generation 2 of kv before it could depose host-a (the target was
    // unreachable then): host-a's key is still listed, yet it must not
    // join again.
    a.nexus.log_in_again();
    r.target.set_offline(true);
    assert!(
        matches!(acquire(&b, 2), Response::Error { .. }),
        "no win without the fence"
    );
    r.target.set_offline(false);
    assert!(r.keys().contains(&a.key));
    let ra = renew(&a);
    let why = ra.preempted.expect("host-a stays out");
    assert!(why.contains("a VM this host runs was deposed"), "{why}");
    assert!(!a.nexus.may_write());
    assert!(won(acquire(&b, 2)), "host-b asks again and wins");
    assert!(!r.keys().contains(&a.key));
}

#[test]
fn disk_paxos_stops_at_a_reservation_conflict_instead_of_retrying_to_the_deadline() {
    use fencing::paxos::{decide, Ask, DecideError};
    let r = rig();
    let t = &r.target;
    let (x, y) = (t.nexus("x"), t.nexus("y"));
    let (kx, ky) = (Key::for_host(1, 1), Key::for_host(2, 2));
    x.register(None, kx).unwrap();
    y.register(None, ky).unwrap();
    y.reserve(ky, FENCE_TYPE).unwrap();
    y.preempt(ky, kx, FENCE_TYPE, false).unwrap();
    let io = GatedIo::new(Arc::clone(&r.region), x);
    let a = Agent::new(&runtime("host-a"), Arc::clone(&r.region), 1).unwrap();
    let ask = Ask {
        geo: a.geo,
        me: 0,
        vm: 0,
        generation: 1,
        config_generation: 1,
    };
    let started = Instant::now();
    let e = decide(
        &io,
        ask,
        BootInstant::now() + ACQUIRE_BOUND,
        Duration::from_millis(50),
    )
    .unwrap_err();
    assert!(matches!(e, DecideError::Refused(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_copy_fenced_only_because_its_host_was_preempted_is_stopped_in_the_next_generation() {
    let r = rig();
    let a = r.host("host-a", 1);
    let b = r.host("host-b", 2);
    claim(&a);
    claim(&b);
    a_runs_kv(&a, &b);
    // host-b deposes host-a for another VM (the fence is per host and per
    // LUN): nobody started kv's generation 2.
    b.nexus.preempt(b.key, a.key, FENCE_TYPE, false).unwrap();
    let rn = renew(&a);
    assert!(rn.newly_preempted);
    assert_eq!(rn.deposed.len(), 1);
    let d = &rn.deposed[0];
    assert_eq!((d.vm.as_str(), d.generation), ("kv", 2));
    assert_eq!(d.by, "host host-b (preempted this host at the storage)");
}
