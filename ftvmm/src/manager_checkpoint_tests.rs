//! The daemon's checkpoint VMs on /dev/kvm: two hosts' managers in one
//! process (their channel over loopback addresses, each its own fencing
//! socket onto one shared set of decided generations, as Disk Paxos would
//! decide them), the VM `web` of `examples/linux-vm.toml` with its image
//! written to the shared device (a file) the way `ftctl image write` does.
//! This machine's KVM cannot boot a stock kernel, so the guest is the
//! two-vCPU counter the checkpoint tests use, loaded by the test hook
//! instead of the Linux boot protocol; everything else is the daemon's
//! path: image check, placement, generation, Hello, epochs, the race and
//! the take-over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config_schema::ctl::{Request, Response};
use config_schema::runtime::RuntimeConfig;
use config_schema::DeviceLocator;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::checkpoint::daemon_spec::Boot;
use crate::linux::tests::{counter, CODE};
use crate::lockstep::channel::Identity;
use crate::lockstep::grant::HostGrant;

const KERNEL: &[u8] = b"a kernel, as far as this test is concerned";
const INITRD: &[u8] = b"an initrd";

/// Decided generations of every VM: (vm, generation) -> owner.
pub(super) type Decided = Arc<Mutex<BTreeMap<(String, u64), String>>>;

/// The hosts heartbeat sees alive and fencing sees leased (the respawn
/// keeper's facts; empty: nobody but the asking host).
pub(super) type Alive = Arc<Mutex<Vec<String>>>;

/// The VM-network view each host's heartbeat answers (`Request::VmNetwork`);
/// a host without one answers an error (nothing to judge by).
pub(super) type VmNets = Arc<Mutex<BTreeMap<String, config_schema::ctl::VmNetView>>>;

/// A heartbeat daemon's socket for `me`: every host of `alive` is alive;
/// the VM-network view is `me`'s in `vmnets`.
pub(super) fn serve_heartbeat(dir: &Path, me: &str, alive: Alive, vmnets: VmNets) -> PathBuf {
    let socket = dir.join(format!("heartbeat-{me}.sock"));
    let listener = config_schema::ctl_server::bind(&socket).unwrap();
    let me_exe = std::env::current_exe().unwrap();
    let policy = config_schema::ctl_server::Policy::heartbeat(
        config_schema::peer::Programs::appliance()
            .with(config_schema::peer::Program::Ftvmm, &me_exe),
    );
    let me = me.to_string();
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(listener, policy, move |req| match req {
            Request::VmNetwork => match vmnets.lock().unwrap().get(&me) {
                Some(view) => Response::VmNetwork { view: view.clone() },
                None => Response::Error {
                    message: "no VM-network view in this test".into(),
                },
            },
            Request::Peers => Response::Peers {
                peers: (alive.lock().unwrap().iter())
                    .map(|h| config_schema::ctl::PeerView {
                        host: h.clone(),
                        alive: true,
                        last_seen_ms: Some(0),
                    })
                    .collect(),
            },
            other => Response::Error {
                message: format!("not served: {other:?}"),
            },
        })
    });
    socket
}

/// A fencing agent's socket for `me`, deciding each generation once for
/// whoever asks first, and superseding requests for an older one; the
/// hosts of `alive` hold live leases.
pub(super) fn serve_fencing(dir: &Path, me: &str, decided: Decided, alive: Alive) -> PathBuf {
    let socket = dir.join(format!("fencing-{me}.sock"));
    let listener = config_schema::ctl_server::bind(&socket).unwrap();
    let me = me.to_string();
    std::thread::spawn(move || {
        config_schema::ctl_server::serve(
            listener,
            config_schema::ctl_server::Policy::fencing_for_this_test(),
            move |req| {
                let mut d = decided.lock().unwrap();
                let top = |d: &BTreeMap<(String, u64), String>, vm: &str| {
                    d.iter()
                        .filter(|((v, _), _)| v == vm)
                        .map(|((_, g), o)| (*g, o.clone()))
                        .max_by_key(|x| x.0)
                };
                match req {
                    Request::Highest { vm, .. } => {
                        let t = top(&d, &vm);
                        Response::Highest {
                            generation: t.as_ref().map_or(0, |x| x.0),
                            owner: t.map(|x| x.1),
                            vm,
                            config_generation: 1,
                        }
                    }
                    Request::Acquire { vm, generation, .. } => {
                        if let Some((g, _)) = top(&d, &vm).filter(|t| t.0 > generation) {
                            let owner = d[&(vm.clone(), g)].clone();
                            return Response::Decided {
                                won: false,
                                owner,
                                vm,
                                generation: g,
                                config_generation: 1,
                                storage_cut: false,
                            };
                        }
                        let owner = d
                            .entry((vm.clone(), generation))
                            .or_insert_with(|| me.clone())
                            .clone();
                        Response::Decided {
                            vm,
                            generation,
                            won: owner == me,
                            owner,
                            config_generation: 1,
                            storage_cut: false,
                        }
                    }
                    // A live host publishes the VMs whose highest
                    // generation it owns, as a running Primary does.
                    Request::Leases => Response::Leases {
                        leases: (alive.lock().unwrap().iter())
                            .map(|h| config_schema::ctl::LeaseView {
                                host: h.clone(),
                                live: true,
                                last_renewal_ms: Some(0),
                                expired: false,
                                running: (d.keys().map(|(v, _)| v.clone()))
                                    .filter(|v| top(&d, v).is_some_and(|t| &t.1 == h))
                                    .collect(),
                            })
                            .collect(),
                        renewal_complete_ms: Some(0),
                    },
                    other => Response::Error {
                        message: format!("not served: {other:?}"),
                    },
                }
            },
        )
    });
    socket
}

/// Two hosts of `linux-vm.toml` on loopback, a shared device with web's
/// image on it, and their fencing.
pub(super) struct World {
    dir: tempfile::TempDir,
    pub(super) config: config_schema::ClusterConfig,
    device: PathBuf,
    decided: Decided,
    alive: Alive,
    /// What each host's heartbeat says of the VM network.
    pub(super) vmnets: VmNets,
    /// The guest the managers load (the counter unless a test sets one).
    pub(super) boot: Boot,
}

pub(super) fn private(host: usize) -> [u8; 32] {
    [0x50 + host as u8; 32]
}

/// Where this test process's hosts of `World::new(net)` listen:
/// `127.net.k.0/24`, `k` the first whose claim socket (`127.net.k.254`,
/// port 7099) this process could take. Members listen on fixed ports (the
/// VM's channel port) at their host's address, and tests of other
/// processes on this machine (a second `cargo test` beside `make test`) use
/// the same `net`s: with one fixed /24 per `net`, a standby a test left
/// listening (host-a of `a_secondary_with_another_image_refuses_the_pair`
/// turns standby after its refused start and listens until its process
/// exits) made the other process's host-a fail with `Address already in
/// use 127.43.0.1:7101`. The claim is held until this process exits, as
/// such a listener may be.
fn subnet(net: u8) -> u8 {
    (0..=u8::MAX)
        .find(|&k| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::new(127, net, k, 254), 7099))
                .map(|claim| Box::leak(Box::new(claim)))
                .is_ok()
        })
        .unwrap_or_else(|| panic!("no free 127.{net}.k.0/24 for this test process"))
}

impl World {
    /// `net`: the second octet of this test's loopback addresses (tests
    /// run in parallel; each pair listens on its own address; the third is
    /// this process's, [`subnet`]).
    pub(super) fn new(net: u8) -> Self {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/linux-vm.toml"
        ))
        .unwrap();
        let mut config = config_schema::parse(&text).unwrap().config;
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("shared.img");
        let f = std::fs::File::create(&device).unwrap();
        f.set_len(config.storage.size_mib << 20).unwrap();
        // As `ftctl image write` does, against the config as signed.
        let img = config_schema::shared_images::write_image(
            &config,
            "web-linux",
            &device,
            KERNEL,
            Some(INITRD),
        )
        .unwrap();
        let at = config
            .images
            .iter()
            .position(|i| i.name == img.name)
            .unwrap();
        config.images[at] = img;
        // Then what this test's hosts see (validation wants /dev/ paths).
        config.storage.device = DeviceLocator::Path(device.display().to_string());
        let k = subnet(net);
        for (i, h) in config.hosts.iter_mut().enumerate() {
            h.ft.addr = format!("127.{net}.{k}.{}/24", i + 1);
            let id = Identity {
                private_key: private(i),
            };
            h.public_key = hex::encode(id.public_key());
        }
        // The first full epoch must arrive well within the failure timeout
        // on a loaded machine.
        config.timing.failure_timeout_ms = 2_000;
        let web = config.vms.iter_mut().find(|v| v.name == "web").unwrap();
        web.memory_mib = 64;
        World {
            dir,
            config,
            device,
            decided: Decided::default(),
            alive: Alive::default(),
            vmnets: VmNets::default(),
            boot: counter_guest(),
        }
    }

    /// The manager of host `i` (0: host-a), its guests the counter.
    pub(super) fn manager(&self, i: usize) -> VmManager {
        let rc = RuntimeConfig {
            host_name: self.config.hosts[i].name.clone(),
            config: self.config.clone(),
            host_private_key: hex::encode(private(i)),
        };
        let (dir, alive) = (self.dir.path(), &self.alive);
        let socket = serve_fencing(dir, &rc.host_name, Arc::clone(&self.decided), alive.clone());
        let heartbeat =
            serve_heartbeat(dir, &rc.host_name, alive.clone(), Arc::clone(&self.vmnets));
        let mut m = VmManager::new(rc, Members::new(HostGrant::always()));
        m.set_test_paths(self.dir.path(), &socket);
        m.set_test_heartbeat(&heartbeat);
        m.set_checkpoint_boot(Arc::clone(&self.boot));
        m
    }

    /// The hosts heartbeat sees alive and fencing sees leased from now on.
    pub(super) fn set_alive(&self, hosts: &[&str]) {
        *self.alive.lock().unwrap() = hosts.iter().map(|h| h.to_string()).collect();
    }

    pub(super) fn decided(&self) -> Vec<(String, u64, String)> {
        let d = self.decided.lock().unwrap();
        d.iter()
            .map(|((v, g), o)| (v.clone(), *g, o.clone()))
            .collect()
    }
}

/// The two-vCPU counter of `linux::tests`, written into guest memory.
pub(super) fn counter_guest() -> Boot {
    Arc::new(|vm, _spec| {
        vm.memory()
            .write_slice(CODE, GuestAddress(0x1000))
            .map_err(|e| crate::linux::LinuxVmError::Memory(e.to_string()))?;
        vm.enter_real_mode(0, 0x1000)?;
        vm.enter_real_mode(1, 0x1000)
    })
}

/// `web`'s status on `m`.
pub(super) fn web(m: &VmManager) -> serde_json::Value {
    m.status().into_iter().find(|v| v["name"] == "web").unwrap()
}

pub(super) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) const SETTLE: Duration = Duration::from_secs(60);

/// The daemon's path end to end for a checkpoint pair: host-a wins
/// generation 1 and pairs with host-b (same image digest, mode, vCPUs and
/// epoch in the Hello), epochs are acknowledged and shown in status; host-a's
/// member goes away, host-b wins generation 2, resumes from its last
/// complete epoch and the guest counts on there.
#[test]
fn a_checkpoint_pair_runs_on_two_daemons_and_the_secondary_takes_over() {
    let w = World::new(41);
    let (mut a, mut b) = (w.manager(0), w.manager(1));
    assert_eq!(web(&a)["replication"], "checkpoint");
    assert_eq!(web(&a)["state"], "stopped");
    b.start("web").unwrap();
    a.start("web").unwrap();
    wait_for("five epochs acknowledged", SETTLE, || {
        web(&a)["checkpoint"]["acknowledged"].as_u64() >= Some(5)
            && web(&b)["checkpoint"]["applied"].as_u64() >= Some(5)
    });
    let (sa, sb) = (web(&a), web(&b));
    assert_eq!(sa["state"], "running", "{sa}");
    assert_eq!(
        sa["lockstep"]["role"], "checkpoint primary (generation 1)",
        "{sa}"
    );
    assert_eq!(sa["lockstep"]["secondary"], "host-b", "{sa}");
    assert_eq!(sa["checkpoint"]["vcpus"], 2);
    assert_eq!(sa["checkpoint"]["epoch_ms"], 20);
    assert_eq!(
        sb["lockstep"]["role"], "checkpoint secondary (generation 1)",
        "{sb}"
    );
    assert_eq!(sb["lockstep"]["primary"], "host-a", "{sb}");
    assert_eq!(w.decided(), vec![("web".into(), 1, "host-a".into())]);
    let acked = sa["checkpoint"]["acknowledged"].as_u64().unwrap();

    // host-a's member goes away: its link closes without a goodbye.
    a.stop("web").unwrap();
    wait_for("host-b runs alone in generation 2", SETTLE, || {
        web(&b)["lockstep"]["role"] == "checkpoint primary (unprotected, generation 2)"
    });
    assert_eq!(
        w.decided(),
        vec![
            ("web".into(), 1, "host-a".into()),
            ("web".into(), 2, "host-b".into())
        ]
    );
    // The member's state is published before its go-live is performed.
    let fig = b.slots["web"].figures.clone().unwrap();
    wait_for("the VM resumed", SETTLE, || fig.resumed_memory().is_some());
    let sb = web(&b);
    assert!(
        sb["checkpoint"]["resumed_from_epoch"].as_u64() >= Some(acked),
        "resumed before epoch {acked}: {sb}"
    );
    let mem = fig.resumed_memory().unwrap();
    let at = counter(&mem);
    wait_for("the resumed guest counts on", SETTLE, || {
        counter(&mem) != at
    });
    b.stop("web").unwrap();
    assert_eq!(web(&b)["state"], "exited");
    assert_eq!(web(&a)["state"], "exited");
}

/// An image whose bytes on the shared device differ from the config's pin
/// is refused before anything is set up, in one line naming VM, part and
/// both hashes, and how to repair it.
#[test]
fn a_checkpoint_image_that_does_not_match_its_pin_is_refused_in_one_line() {
    let w = World::new(42);
    let c = &w.config;
    let img = c.images.iter().find(|i| i.name == "web-linux").unwrap();
    let at = config_schema::shared_images::part_offset(c, img, &img.kernel).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&w.device)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"A", at).unwrap();
    drop(f);
    let mut m = w.manager(0);
    let err = m.start("web").unwrap_err().to_string();
    assert!(!err.contains('\n'), "more than one line: {err}");
    assert!(
        err.starts_with("cannot start VM \"web\": vm web: kernel image on "),
        "{err}"
    );
    assert!(
        err.contains("config pins") && err.contains("ftctl image write"),
        "{err}"
    );
    assert!(m.pair("web").is_none(), "nothing was set up");
    assert!(!m.any_running());
    assert_eq!(web(&m)["state"], "stopped");
}

/// The Secondary's host has other bytes for the image (here: another
/// command line pinned for it): the Hello's image digests differ, the
/// Secondary refuses the pair, and the Primary's start fails naming why —
/// nothing runs unpaired.
#[test]
fn a_secondary_with_another_image_refuses_the_pair() {
    let mut w = World::new(43);
    let mut a = w.manager(0);
    let img = w.config.images.iter_mut().find(|i| i.name == "web-linux");
    img.unwrap().cmdline = "console=ttyS0 init=/other".into();
    let mut b = w.manager(1);
    b.start("web").unwrap();
    a.start("web").unwrap();
    wait_for("host-a's start fails", SETTLE, || {
        web(&a)["state"] == "failed"
    });
    let sa = web(&a);
    assert_eq!(
        sa["detail"], "secondary refused the pair: guest image differs",
        "{sa}"
    );
    assert!(sa["checkpoint"].get("epoch").is_none(), "a VM ran: {sa}");
    assert_eq!(
        web(&b)["lockstep"]["role"],
        "checkpoint secondary (pairing)"
    );
    b.stop("web").unwrap();
}

/// What both members agree on comes from the signed config alike: mode,
/// vCPUs, epoch and the image digest in the Hello; the guest's command line
/// is the image's, then the VM's own words; the kernel booted is the one
/// checked (sealed memory, same bytes).
#[test]
fn a_checkpoint_spec_is_built_from_the_config_and_the_checked_image() {
    let w = World::new(45);
    let (a, b) = (w.manager(0), w.manager(1));
    let (sa, sb) = (
        a.checkpoint_spec_for("web").unwrap(),
        b.checkpoint_spec_for("web").unwrap(),
    );
    assert_eq!(
        sa.pair.hello.replication,
        crate::lockstep::channel::PairMode::Checkpoint {
            vcpus: 2,
            epoch_ms: 20
        }
    );
    assert_eq!(sa.pair.hello.image_sha256, sb.pair.hello.image_sha256);
    assert_eq!(
        crate::lockstep::pair::hello_mismatch(
            &sb.pair.hello,
            &{
                let mut h = sa.pair.hello.clone();
                h.generation = 1;
                h
            },
            "host-a"
        ),
        None,
        "the two hosts' Hellos agree"
    );
    assert_eq!(
        sa.linux.cmdline,
        "console=ttyS0 quiet mode=kv ip=198.51.100.20/24 mac=52:54:00:12:34:60"
    );
    assert_eq!((sa.linux.vcpus, sa.linux.mem_mib), (2, 64));
    assert_eq!(sa.epoch, Duration::from_millis(20));
    assert_eq!(sa.delta_bytes, 64 << 20, "the default delta cache");
    assert_eq!(std::fs::read(&sa.linux.kernel).unwrap(), KERNEL);
    assert_eq!(
        std::fs::read(sa.linux.initrd.as_ref().unwrap()).unwrap(),
        INITRD
    );
    // The config's delta cache reaches the Primary's epoch loop.
    let mut w = w;
    let web = w.config.vms.iter_mut().find(|v| v.name == "web").unwrap();
    web.delta_cache_mib = Some(8);
    let s = w.manager(0).checkpoint_spec_for("web").unwrap();
    assert_eq!(s.delta_bytes, 8 << 20);
}

/// The respawn keeper's protection judgement covers checkpoint VMs: a
/// paired checkpoint Primary says `not protected` while its Secondary's host
/// hears no peer on the VM network (its heartbeat's view says so, as the
/// daemon's would), and `protected` again when it hears them; the pair runs
/// on throughout (epochs acknowledged, nobody goes live).
#[test]
fn a_checkpoint_primary_is_not_protected_while_its_secondarys_host_has_no_vm_network() {
    use config_schema::ctl::{PeerVmReach, VmNetView, VmReach};
    let w = World::new(49);
    let (mut a, mut b) = (w.manager(0), w.manager(1));
    w.set_alive(&["host-a", "host-b"]);
    b.start("web").unwrap();
    a.start("web").unwrap();
    let protection = |m: &VmManager| web(m)["checkpoint"]["protection"].clone();
    wait_for("paired and protected", SETTLE, || {
        protection(&a) == "protected: secondary host-b"
            && web(&a)["checkpoint"]["acknowledged"].as_u64() >= Some(3)
    });
    // host-a listens for a minute and hears host-c; host-b, heard on FT,
    // says it has heard nobody for 5 s.
    let view = |b_hears: &[&str], b_quiet_ms: u64| VmNetView {
        failure_timeout_ms: w.config.timing.failure_timeout_ms,
        own: VmReach {
            watch_ms: Some(60_000),
            quiet_ms: 0,
            hears: vec!["host-c".into()],
        },
        peers: vec![PeerVmReach {
            host: "host-b".into(),
            ft_alive: true,
            reach: Some(VmReach {
                watch_ms: Some(60_000),
                quiet_ms: b_quiet_ms,
                hears: b_hears.iter().map(|h| h.to_string()).collect(),
            }),
            age_ms: Some(50),
        }],
        own_since_heard_ms: Some(0),
    };
    let set = |v: VmNetView| {
        w.vmnets.lock().unwrap().insert("host-a".into(), v);
    };
    set(view(&[], 5_000));
    wait_for("not protected: host-b has no VM network", SETTLE, || {
        protection(&a)
            .as_str()
            .is_some_and(|p| p.starts_with("not protected: secondary host-b has no VM network"))
    });
    assert_eq!(
        web(&a)["lockstep"]["protection"],
        protection(&a),
        "lockstep and checkpoint status agree"
    );
    let acked = web(&a)["checkpoint"]["acknowledged"].as_u64().unwrap();
    set(view(&["host-a"], 0));
    wait_for("protected again", SETTLE, || {
        protection(&a) == "protected: secondary host-b"
    });
    wait_for("epochs go on being acknowledged", SETTLE, || {
        web(&a)["checkpoint"]["acknowledged"].as_u64() > Some(acked)
    });
    assert_eq!(w.decided(), vec![("web".into(), 1, "host-a".into())]);
    a.stop("web").unwrap();
    b.stop("web").unwrap();
}

/// Real mode, two vCPUs: vCPU 0 spins until the byte at 0x3000 is set and
/// then powers the VM off the way Linux does (0x34, SLP_TYP 5 | SLP_EN, to
/// the ACPI sleep control port 0x600); the others halt.
const POWER_OFF_ON_0X3000: &[u8] = &[
    0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
    0x0f, 0xa2, // cpuid
    0x66, 0xc1, 0xeb, 0x18, // shr ebx, 24
    0x80, 0xfb, 0x00, // cmp bl, 0
    0x75, 0x0d, // jne halt
    0xa0, 0x00, 0x30, // spin: mov al, [0x3000]
    0x84, 0xc0, // test al, al
    0x74, 0xf9, // jz spin
    0xba, 0x00, 0x06, // mov dx, 0x600
    0xb0, 0x34, // mov al, 0x34
    0xee, // out dx, al
    0xf4, // halt: hlt
    0xeb, 0xfd, // jmp halt
];

/// A guest that powers itself off ends the pair in order: the Primary
/// takes the ended VM's last epoch, the Secondary acknowledges it, the
/// Primary says `Bye`, and both members halt; the Secondary does not race
/// (no generation 2 is decided) and the guest is not resumed anywhere.
/// Guards the daemon's side of `primary::last_epoch`: the member's watcher
/// waits for the epoch loop instead of stopping it.
#[test]
fn a_guest_that_powers_off_ends_both_members_without_a_take_over() {
    let mut w = World::new(46);
    w.boot = Arc::new(|vm, _spec| {
        vm.memory()
            .write_slice(POWER_OFF_ON_0X3000, GuestAddress(0x1000))
            .map_err(|e| crate::linux::LinuxVmError::Memory(e.to_string()))?;
        vm.enter_real_mode(0, 0x1000)?;
        vm.enter_real_mode(1, 0x1000)
    });
    let (mut a, mut b) = (w.manager(0), w.manager(1));
    b.start("web").unwrap();
    a.start("web").unwrap();
    wait_for("three epochs acknowledged", SETTLE, || {
        web(&a)["checkpoint"]["acknowledged"].as_u64() >= Some(3)
    });
    let fig = a.slots["web"].figures.clone().unwrap();
    let mem = fig.primary_memory().expect("host-a runs the Primary");
    mem.write_obj(1u8, GuestAddress(0x3000)).unwrap();
    let t = Instant::now();
    wait_for("both members halted", SETTLE, || {
        web(&a)["state"] == "exited" && web(&b)["state"] == "exited"
    });
    let took = t.elapsed();
    // The Secondary halted on the goodbye: well inside the 2 s failure
    // timeout plus a race, and without one.
    assert_eq!(
        w.decided(),
        vec![("web".into(), 1, "host-a".into())],
        "no take-over: {}, {}",
        web(&a),
        web(&b)
    );
    assert!(
        fig.resumed_memory().is_none()
            && b.slots["web"]
                .figures
                .clone()
                .unwrap()
                .resumed_memory()
                .is_none(),
        "the guest was resumed somewhere"
    );
    eprintln!("power-off to both halted: {} ms", took.as_millis());
    a.stop("web").ok();
    b.stop("web").ok();
}
