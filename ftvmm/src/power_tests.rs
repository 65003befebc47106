//! Tests of live power changes: the plan, the fence against a shared
//! scripted fencing agent (two hosts' sockets, one table of decisions, as
//! Disk Paxos decides each (vm, generation) once), the racing Secondary,
//! and the daemon's reaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use config_schema::ctl::{Request, Response};
use config_schema::runtime::RuntimeConfig;

use super::*;
use crate::daemon::KvmAvailability;
use crate::lockstep::member::{Action, Event, Halt, Member, State};
use crate::lockstep::start::{win_start_generation, StartCtx, StartError};
use crate::lockstep::{fence, grant::HostGrant};

fn vm(name: &str, power: Power) -> VmPower {
    VmPower {
        vm: name.into(),
        power,
        allowed: None,
    }
}

#[test]
fn the_plan_powers_off_fenced_only_what_acts_and_powers_on_what_was_off() {
    let now = |n: &str| match n {
        "a" | "b" | "c" => Some(Power::On),
        "d" | "e" => Some(Power::Off),
        _ => None,
    };
    let here = |n: &str| match n {
        "a" => MemberHere::Acting,
        "b" => MemberHere::Passive,
        "e" => MemberHere::Acting,
        _ => MemberHere::None,
    };
    let vms = [
        vm("a", Power::Off),
        vm("b", Power::Off),
        vm("c", Power::Off),
        vm("d", Power::On),
        // Already off, but a member still runs (an earlier fence failed).
        vm("e", Power::Off),
        // Not in the booted config: a VM added needs a reboot.
        vm("new", Power::On),
    ];
    let off = |n: &str, fence| Step::Off {
        vm: n.into(),
        fence,
    };
    assert_eq!(
        plan(&vms, now, here),
        [
            off("a", true),
            off("b", false),
            off("c", false),
            Step::On { vm: "d".into() },
            off("e", true),
        ]
    );
    // Nothing changes: no steps (a re-sent config does nothing).
    let same = [vm("a", Power::On), vm("d", Power::Off)];
    assert_eq!(plan(&same, now, |_| MemberHere::None), []);
    // On while a member runs: nothing (it runs already).
    assert_eq!(plan(&[vm("a", Power::On)], now, here), []);
}

/// One decision table for every host, served on one socket per host.
#[derive(Default)]
struct Table {
    /// (vm, generation) -> (owner, config generation)
    decided: Vec<(String, u64, String, u64)>,
}

struct SharedFencing {
    _dir: tempfile::TempDir,
    sockets: Vec<PathBuf>,
    table: Arc<Mutex<Table>>,
}

impl SharedFencing {
    fn serve(hosts: &[&str]) -> SharedFencing {
        let dir = tempfile::tempdir().unwrap();
        let table: Arc<Mutex<Table>> = Arc::default();
        let mut sockets = Vec::new();
        for host in hosts {
            let socket = dir.path().join(format!("{host}.sock"));
            let listener = config_schema::ctl_server::bind(&socket).unwrap();
            let (t, me) = (Arc::clone(&table), host.to_string());
            std::thread::spawn(move || {
                config_schema::ctl_server::serve(
                    listener,
                    config_schema::ctl_server::Policy::fencing_for_this_test(),
                    move |req| answer(&mut t.lock().unwrap(), &me, req),
                )
            });
            sockets.push(socket);
        }
        SharedFencing {
            _dir: dir,
            sockets,
            table,
        }
    }

    fn decided(&self) -> Vec<(String, u64, String, u64)> {
        self.table.lock().unwrap().decided.clone()
    }

    /// Records a decision as if `owner` had won it.
    fn preset(&self, vm: &str, g: u64, owner: &str, config: u64) {
        let mut t = self.table.lock().unwrap();
        t.decided.push((vm.into(), g, owner.into(), config));
    }
}

fn answer(t: &mut Table, me: &str, req: Request) -> Response {
    match req {
        Request::Highest { vm, .. } => {
            let top = t.decided.iter().filter(|d| d.0 == vm).max_by_key(|d| d.1);
            Response::Highest {
                vm,
                generation: top.map_or(0, |d| d.1),
                owner: top.map(|d| d.2.clone()),
                config_generation: top.map_or(0, |d| d.3),
            }
        }
        Request::Acquire {
            vm,
            generation,
            config_generation,
            ..
        } => {
            let found = t.decided.iter().find(|d| d.0 == vm && d.1 == generation);
            let (owner, config) = match found {
                Some(d) => (d.2.clone(), d.3),
                None => {
                    let d = (vm.clone(), generation, me.to_string(), config_generation);
                    t.decided.push(d);
                    (me.to_string(), config_generation)
                }
            };
            Response::Decided {
                vm,
                generation,
                won: owner == me,
                owner,
                config_generation: config,
                storage_cut: false,
            }
        }
        Request::Leases => Response::Leases {
            leases: vec![],
            renewal_complete_ms: None,
        },
        other => Response::Error {
            message: format!("not served: {other:?}"),
        },
    }
}

const FAST: Duration = Duration::from_millis(1);

/// The Secondary's side of a lost Primary, driven by hand: the channel
/// ends, the log runs out, it races; its Acquire goes to `socket` under
/// `config`. Returns the actions after the decision and the final state.
fn secondary_races(socket: &Path, g: u64, config: u64) -> (Vec<Action>, State) {
    let mut m = Member::secondary("kv", "host-a", g, 1_000);
    m.on_event(Event::ChannelLost {
        why: "primary stopped".into(),
    });
    let acts = m.on_event(Event::ReplayExhausted { at: 500 });
    let asked = acts.iter().find_map(|a| match a {
        Action::Acquire { generation } => Some(*generation),
        _ => None,
    });
    assert_eq!(asked, Some(g + 1), "{acts:?}");
    let a = fence::acquire(socket, "kv", g + 1, config).unwrap();
    let after = m.on_event(Event::Decided {
        generation: g + 1,
        decision: a.decision,
    });
    (after, m.state().clone())
}

fn goes_live(acts: &[Action]) -> bool {
    acts.iter().any(|a| matches!(a, Action::GoLive { .. }))
}

#[test]
fn a_secondary_racing_after_a_fenced_power_off_loses_and_never_goes_live() {
    let f = SharedFencing::serve(&["host-a", "host-b"]);
    // The pair runs in generation 3, decided under config 7.
    f.preset("kv", 3, "host-a", 7);
    // host-a took config 8 (power off) first: it fences, then stops.
    let won = fence_power_off(&f.sockets[0], "kv", 8, 3, FAST).unwrap();
    assert_eq!(won, 4);
    // host-b has not taken config 8: its Secondary sees the Primary gone
    // and races for 4 under config 7.
    let (acts, state) = secondary_races(&f.sockets[1], 3, 7);
    assert!(!goes_live(&acts), "a powered-off VM went live: {acts:?}");
    assert_eq!(
        state,
        State::Halted(Halt::Lost {
            generation: 4,
            owner: "host-a".into()
        })
    );
    // Whatever host-b's member loop tries next is a start: refused, the
    // power-off was decided under a newer config than host-b's.
    let cancel = AtomicBool::new(false);
    let start = win_start_generation(&StartCtx {
        vm: "kv",
        host: "host-b",
        config_generation: 7,
        fencing: &f.sockets[1],
        cancel: &cancel,
        acquiring: &|_| {},
        publish_settle: FAST,
    });
    assert_eq!(
        start,
        Err(StartError::OlderConfig {
            generation: 4,
            recorded: 8,
            ours: 7
        })
    );
    // A host that took config 9 (power on) starts it again, in 5.
    let start = win_start_generation(&StartCtx {
        vm: "kv",
        host: "host-a",
        config_generation: 9,
        fencing: &f.sockets[0],
        cancel: &cancel,
        acquiring: &|_| {},
        publish_settle: FAST,
    });
    assert_eq!(start, Ok(5));
}

#[test]
fn a_race_won_before_the_power_off_is_deposed_by_the_next_generation() {
    let f = SharedFencing::serve(&["host-a", "host-b"]);
    f.preset("kv", 3, "host-a", 7);
    // A real failure: host-b's Secondary raced first and is live in 4.
    let (acts, state) = secondary_races(&f.sockets[1], 3, 7);
    assert!(goes_live(&acts));
    assert_eq!(state, State::Solo { g: 4 });
    // The power-off (on either host) wins 5: fencing deposes the copy in 4.
    assert_eq!(fence_power_off(&f.sockets[0], "kv", 8, 3, FAST), Ok(5));
    let last = f.decided().pop().unwrap();
    assert_eq!(last, ("kv".into(), 5, "host-a".into(), 8));
    let mut live = Member::primary("kv", "", 4, false, 1_000);
    live.on_event(Event::Deposed {
        generation: 5,
        by: "host-a".into(),
    });
    assert!(live.is_halted());
}

#[test]
fn a_power_off_older_than_the_recorded_config_or_without_storage_is_not_fenced() {
    let f = SharedFencing::serve(&["host-a"]);
    // Powered on again under config 9 (and started in 6) before this
    // host got to config 8's power-off: 9 decides.
    f.preset("kv", 6, "host-b", 9);
    assert_eq!(
        fence_power_off(&f.sockets[0], "kv", 8, 3, FAST),
        Err(PowerOffError::NewerConfig {
            generation: 6,
            recorded: 9,
            ours: 8
        })
    );
    assert_eq!(f.decided().len(), 1, "nothing was acquired");
    let gone = f._dir.path().join("no-such.sock");
    match fence_power_off(&gone, "kv", 8, 2, FAST) {
        Err(PowerOffError::Storage { why }) => assert!(why.contains("cannot reach"), "{why}"),
        other => panic!("fenced without storage: {other:?}"),
    }
}

fn config(host: &str) -> RuntimeConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cluster.toml"
    ))
    .unwrap();
    let config: config_schema::ClusterConfig = toml::from_str(&text).unwrap();
    RuntimeConfig {
        host_name: host.into(),
        config,
        host_private_key: "00".repeat(32),
    }
}

#[test]
fn the_daemon_takes_power_changes_in_generation_order_and_says_so() {
    let f = SharedFencing::serve(&["host-a"]);
    let dir = tempfile::tempdir().unwrap();
    let mut rc = config("host-a");
    rc.config.storage.device = config_schema::DeviceLocator::Path("/dev/null".into());
    let d = Daemon::with_grant(
        rc,
        KvmAvailability::Ok { api_version: 12 },
        HostGrant::always(),
    );
    d.manager().set_test_paths(dir.path(), &f.sockets[0]);
    let state = |d: &Daemon| d.status()["vms"][0].clone();
    assert_eq!(state(&d)["state"], "stopped");
    // Through the control request, as heartbeat sends it (no worker: at once).
    let mut timing = d.status()["timing"].clone();
    assert_eq!(timing["failure_timeout_ms"], 1000, "{timing}");
    let mut t = config_schema::Timing {
        heartbeat_interval_ms: 100,
        failure_timeout_ms: 2500,
        lag_limit_ms: 200,
    };
    let off = Request::ConfigApplied {
        generation: 2,
        vms: vec![vm("kv", Power::Off)],
        timing: Some(t.clone()),
        config: None,
    };
    assert_eq!(d.handle(off), Response::Ok);
    // The timing is taken at once, with the rules of `live_timing`.
    timing = d.status()["timing"].clone();
    assert_eq!(timing["generation"], 2, "{timing}");
    assert_eq!(timing["failure_timeout_ms"], 2500, "{timing}");
    assert_eq!(timing["secondary_silence_ms"], 2500, "{timing}");
    assert_eq!(timing["ack_freshness_ms"], 1000, "{timing}");
    assert_eq!(timing["lag_limit_ms"], 200, "{timing}");
    // An older generation's timing is ignored.
    t.failure_timeout_ms = 400;
    let older = Request::ConfigApplied {
        generation: 1,
        vms: vec![vm("kv", Power::Off)],
        timing: Some(t),
        config: None,
    };
    assert_eq!(d.handle(older), Response::Ok);
    assert_eq!(d.status()["timing"]["failure_timeout_ms"], 2500);
    let s = state(&d);
    assert_eq!(s["state"], crate::manager::POWERED_OFF, "{s}");
    assert_eq!(s["detail"], "by config generation 2", "{s}");
    assert_eq!(s["powered_off_by_config_generation"], 2, "{s}");
    assert_eq!(d.status()["applied_generation"], 2);
    assert!(f.decided().is_empty(), "nothing ran here: nothing to fence");
    let Response::Error { message } = d.handle(Request::StartVm { name: "kv".into() }) else {
        panic!("a powered-off VM was started");
    };
    assert!(message.contains("powered off"), "{message}");
    // An older config is ignored; the newest one says on.
    let lines = apply(&d, 1, &[vm("kv", Power::On)]);
    assert_eq!(
        lines,
        ["ftvmm: config generation 1 ignored: generation 2 was taken already"]
    );
    assert_eq!(state(&d)["state"], crate::manager::POWERED_OFF);
    let lines = apply(&d, 3, &[vm("kv", Power::On)]);
    assert_eq!(lines, ["ftvmm: vm kv: powered on by config generation 3"]);
    // The start went the boot path: here it finds no guest image.
    let s = state(&d);
    assert_ne!(s["state"], crate::manager::POWERED_OFF, "{s}");
    assert_eq!(d.manager().power("kv").unwrap(), Power::On);
}

/// The daemon path end to end on /dev/kvm (the reference guest from
/// FTGUEST_ELF or guest/target): a VM alone on host-a runs; config 2
/// powers it off (its next generation is won for nobody first, then it
/// stops); config 3 powers it on, and it starts in a new generation
/// recorded under config 3. Needs /dev/kvm and the guest (root).
#[test]
fn a_running_vm_is_fenced_stopped_and_started_again_by_live_power_changes() {
    // A TAP name of its own (other tests run `kv` at the same time); alone
    // on host-a: no pairing in this test.
    let (d, f, _dir) = daemon_with_vm("host-a", "pwr", &["host-a"]);
    d.start_primaries();
    let running = |d: &Daemon| {
        for _ in 0..600 {
            let s = d.status()["vms"][0].clone();
            assert_ne!(s["state"], "failed", "{s}");
            if s["progress"]["exit_index"].as_u64().unwrap_or(0) > 50 {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the VM made no progress: {}", d.status());
    };
    running(&d);
    assert_eq!(d.manager().member_here("pwr"), MemberHere::Acting);
    let lines = apply(&d, 2, &[vm("pwr", Power::Off)]);
    assert_eq!(
        lines,
        [
            "ftvmm: vm pwr: power off (config generation 2): won generation 2 on shared storage \
             for nobody; stopping here",
            "ftvmm: vm pwr: powered off by config generation 2",
        ]
    );
    assert_eq!(d.manager().member_here("pwr"), MemberHere::None);
    let s = d.status()["vms"][0].clone();
    assert_eq!(s["state"], crate::manager::POWERED_OFF, "{s}");
    assert_eq!(s["detail"], "by config generation 2", "{s}");
    assert_eq!(
        f.decided(),
        [
            ("pwr".into(), 1, "host-a".into(), 1),
            ("pwr".into(), 2, "host-a".into(), 2)
        ]
    );
    // The same config again (a catch-up round) does nothing more.
    assert_eq!(apply(&d, 2, &[vm("pwr", Power::Off)]), Vec::<String>::new());
    let lines = apply(&d, 3, &[vm("pwr", Power::On)]);
    assert_eq!(lines, ["ftvmm: vm pwr: powered on by config generation 3"]);
    let s = running(&d);
    assert_eq!(s["lockstep"]["generation"], 3, "{s}");
    assert_eq!(f.decided()[2], ("pwr".into(), 3, "host-a".into(), 3));
    d.manager().stop("pwr").unwrap();
}

/// Adding a VM live, end to end on /dev/kvm (as the test above): config 2
/// adds `addv` (its own disk region, fencing slot 4, host-a only); the
/// daemon takes it into the config it runs, fencing is asked with its slot,
/// and it starts as at boot and runs beside the booted VM, which is not
/// touched. A VM the running config cannot take (its region overlaps one in
/// use) is refused with one line, once per config generation.
#[test]
fn a_vm_added_by_a_newer_config_starts_live_beside_the_running_one() {
    // Alone on host-a (no pair): the example's FT addresses, a valid config.
    let (d, f, _dir) = daemon_with("host-a", "keep", &["host-a"], false);
    d.start_primaries();
    let running = |d: &Daemon, i: usize| {
        for _ in 0..600 {
            let s = d.status()["vms"][i].clone();
            assert_ne!(s["state"], "failed", "{s}");
            if s["progress"]["exit_index"].as_u64().unwrap_or(0) > 50 {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("vm {i} made no progress: {}", d.status());
    };
    running(&d, 0);
    let booted = d.running_config().config.clone();
    let mut newer = booted.clone();
    newer.cluster.generation = 2;
    let mut add = newer.vms[0].clone();
    add.name = "addv".into();
    add.mac = "52:54:00:12:34:58".into();
    add.ip = "198.51.100.12/24".into();
    add.disk_region = "addv-disk".into();
    add.slot = Some(4);
    newer.vms.insert(0, add);
    newer.storage.regions.push(config_schema::NamedRegion {
        name: "addv-disk".into(),
        offset_mib: 96,
        size_mib: 32,
    });
    config_schema::validate::validate(&newer).unwrap();
    let power = [vm("addv", Power::On), vm("keep", Power::On)];
    let lines = apply_config(&d, 2, &power, Some(&newer));
    assert_eq!(
        lines,
        [
            "ftvmm: vm addv: added by config generation 2 (fencing slot 4, disk region addv-disk)",
            "ftvmm: vm addv: powered on by config generation 2",
        ]
    );
    let s = running(&d, 1);
    assert_eq!(s["name"], "addv", "{s}");
    assert_eq!(s["lockstep"]["generation"], 1, "{s}");
    assert_eq!(
        crate::lockstep::fence::slot_of(&f.sockets[0], "addv"),
        Some(4),
        "fencing is asked with the VM's slot"
    );
    assert!(
        f.decided()
            .contains(&("addv".into(), 1, "host-a".into(), 2)),
        "{:?}",
        f.decided()
    );
    assert_eq!(
        d.manager().member_here("keep"),
        MemberHere::Acting,
        "untouched"
    );
    // Its pair is named by the config that added it; keep's by the booted
    // one, whatever was taken live since.
    let id = config_schema::config_id::ConfigId::of_config;
    assert_eq!(d.manager().pair_identity("addv"), id(&newer));
    assert_eq!(d.manager().pair_identity("keep"), id(&booted));
    assert_eq!(d.running_config().config.slot_of("addv"), Some(4));
    // The same config again (a catch-up round): nothing more.
    assert_eq!(
        apply_config(&d, 2, &power, Some(&newer)),
        Vec::<String>::new()
    );
    // A VM whose region overlaps keep's disk: refused, said once.
    let mut clash = newer.clone();
    clash.cluster.generation = 3;
    let mut bad = clash.vms[0].clone();
    bad.name = "clash".into();
    bad.mac = "52:54:00:12:34:59".into();
    bad.ip = "198.51.100.13/24".into();
    bad.disk_region = "clash-disk".into();
    bad.slot = Some(6);
    clash.vms.push(bad);
    clash.storage.regions.push(config_schema::NamedRegion {
        name: "clash-disk".into(),
        offset_mib: 130,
        size_mib: 32,
    });
    // In the newer config keep's disk moved away (a reboot's business);
    // here keep still runs on it.
    let keep = booted.storage.regions[0].clone();
    let moved = (clash.storage.regions.iter_mut())
        .find(|r| r.name == keep.name)
        .unwrap();
    moved.offset_mib = 200;
    moved.size_mib = 16;
    let last = clash.storage.regions.len() - 1;
    clash.storage.regions[last].offset_mib = keep.offset_mib;
    config_schema::validate::validate(&clash).unwrap();
    let power = [
        vm("addv", Power::On),
        vm("keep", Power::On),
        vm("clash", Power::On),
    ];
    let lines = apply_config(&d, 3, &power, Some(&clash));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "ftvmm: vm clash: added by config generation 3 but not taken live: with it the \
             running config is invalid:"
        ) && lines[0].ends_with("it runs here after this host's next boot"),
        "{lines:?}"
    );
    assert_eq!(
        apply_config(&d, 3, &power, Some(&clash)),
        Vec::<String>::new()
    );
    assert!(d.manager().power("clash").is_err());
    d.manager().stop("addv").unwrap();
    d.manager().stop("keep").unwrap();
}

#[test]
fn a_secondary_leaves_a_host_the_config_no_longer_allows_and_a_newly_allowed_one_waits() {
    let (d, f, _dir) = daemon_with_vm("host-b", "aff", &["host-a", "host-b"]);
    // host-b is the Secondary of host-a (which never comes): it waits.
    d.start_primaries();
    let role = |d: &Daemon| d.status()["vms"][0]["lockstep"]["role"].clone();
    let wait_role = |d: &Daemon, want: &str| {
        for _ in 0..200 {
            if role(d) == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("role {} is not {want:?}: {}", role(d), d.status());
    };
    wait_role(&d, "secondary (pairing)");
    assert_eq!(d.manager().member_here("aff"), MemberHere::Passive);
    let allowed = |hosts: &[&str]| VmPower {
        vm: "aff".into(),
        power: Power::On,
        allowed: Some(hosts.iter().map(|h| h.to_string()).collect()),
    };

    // Generation 2 moves the VM to host-a and host-c: host-b's member stops.
    let lines = apply(&d, 2, &[allowed(&["host-a", "host-c"])]);
    assert_eq!(
        lines,
        [
            "ftvmm: vm aff: config generation 2 allows it on host-a, host-c only: stopping its \
          member on host-b"
        ]
    );
    assert_eq!(d.manager().member_here("aff"), MemberHere::None);
    let s = d.status()["vms"][0].clone();
    assert_eq!(s["state"], crate::manager::NOT_ALLOWED, "{s}");
    assert_eq!(
        s["detail"], "config generation 2 allows it on host-a, host-c only",
        "{s}"
    );
    assert_eq!(s["allowed_hosts"], serde_json::json!(["host-a", "host-c"]));
    // A pair or join offered by a Primary that has not taken generation 2
    // is refused here.
    assert_eq!(
        d.affinity()
            .check(&d.running_config().config, "aff", "host-b"),
        Err("config generation 2 does not allow vm aff on host-b".into())
    );
    // The same config again (a catch-up round): nothing more.
    assert_eq!(
        apply(&d, 2, &[allowed(&["host-a", "host-c"])]),
        Vec::<String>::new()
    );
    // An older generation's rule is not taken.
    apply(&d, 1, &[allowed(&["host-b"])]);
    assert!(!d
        .affinity()
        .allows(&d.running_config().config, "aff", "host-b"));

    // Generation 3 allows host-b again: it waits as a standby for a join.
    let lines = apply(&d, 3, &[allowed(&["host-b", "host-c"])]);
    assert_eq!(
        lines,
        [
            "ftvmm: vm aff: config generation 3 allows it on host-b: standby here for a new \
          secondary"
        ]
    );
    wait_role(&d, "standby");
    assert_eq!(d.manager().member_here("aff"), MemberHere::Passive);
    let s = d.status()["vms"][0].clone();
    assert_eq!(s["allowed_hosts"], serde_json::json!(["host-b", "host-c"]));
    assert!(f.decided().is_empty(), "nothing raced: {:?}", f.decided());
    d.manager().stop("aff").unwrap();
}

/// A daemon of `host` (the example cluster, a shared device in a temp dir,
/// loopback FT addresses of this process's own, the reference guest as
/// every image) whose first VM is named `vm` and allowed on `hosts`, behind
/// a scripted fencing agent that grants always; its fencing and temp dir.
fn daemon_with_vm(
    host: &str,
    vm: &str,
    hosts: &[&str],
) -> (Daemon, SharedFencing, tempfile::TempDir) {
    daemon_with(host, vm, hosts, true)
}

/// [`daemon_with_vm`]; `loopback_ft`: FT addresses on loopback (a pair can
/// meet; the config is then invalid, as no NIC has such an address).
fn daemon_with(
    host: &str,
    vm: &str,
    hosts: &[&str],
    loopback_ft: bool,
) -> (Daemon, SharedFencing, tempfile::TempDir) {
    let elf = crate::test_guest_elf();
    let f = SharedFencing::serve(&[host]);
    // Under /dev/ (tmpfs), so that the config stays valid (the shared
    // device's path): a VM added live is validated with the config it joins.
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut rc = config(host);
    let shared = dir.path().join("shared.img");
    let file = std::fs::File::create(&shared).unwrap();
    file.set_len(rc.config.storage.size_mib << 20).unwrap();
    rc.config.storage.device = config_schema::DeviceLocator::Path(shared.display().to_string());
    // Loopback FT addresses of this process's own (a listener binds there).
    let net = 100 + std::process::id() % 100;
    for (i, h) in (rc.config.hosts.iter_mut())
        .enumerate()
        .filter(|_| loopback_ft)
    {
        h.ft.addr = format!("127.{net}.31.{}/24", i + 1);
    }
    rc.config.vms[0].name = vm.into();
    rc.config.vms[0].affinity.groups.clear();
    rc.config.vms[0].affinity.hosts = hosts.iter().map(|h| h.to_string()).collect();
    let image = rc.config.vms[0].image.clone();
    std::os::unix::fs::symlink(&elf, dir.path().join(format!("{image}.elf"))).unwrap();
    let d = Daemon::with_grant(
        rc,
        KvmAvailability::Ok { api_version: 12 },
        HostGrant::always(),
    );
    d.manager().set_test_paths(dir.path(), &f.sockets[0]);
    (d, f, dir)
}
