//! Storage fencing with SCSI-3 persistent reservations, on appliance hosts
//! (docs/design.md §3 item 5; issue 13).
//!
//! The shared storage is an iSCSI LUN served by Debian's `tgt`
//! (`Cluster::use_iscsi_storage`); host-a and host-b boot the appliance ISO's
//! kernel and initramfs and reach the LUN through their own storage paths with
//! QEMU's iSCSI initiator, each as a `scsi-block` device on virtio-scsi and
//! with its own initiator name (its own I_T nexus). The hosts run the
//! persistent-reservation test tool (the signed config's test hook `pr`, `/bin/ft-pr-test`), driven
//! by `ftpr ...` lines typed on their consoles, which uses the kernel's block
//! PR ioctls and SG_IO through `fencing::pr`:
//!
//! 1. both hosts log in (two I_T nexuses at the target); the device offers
//!    persistent reservations, the config disk (virtio-blk) does not;
//! 2. host-a registers, host-b registers, host-a reserves Write Exclusive –
//!    Registrants Only; both read the same keys and reservation; both write;
//! 3. host-b preempts host-a's key: host-b holds the reservation, host-a's key
//!    is gone, and host-a's next command meets a UNIT ATTENTION saying so;
//! 4. host-a's write fails with RESERVATION CONFLICT (EBADE) and never lands
//!    (the image file, read by the harness, holds host-b's data), host-a can
//!    neither reserve nor preempt back, host-b's write succeeds, and both
//!    hosts still read;
//! 5. the agent's steps (`fencing::pr::fence`): host-a joins again as a new
//!    boot incarnation (REGISTER AND IGNORE EXISTING KEY; host-b keeps the
//!    reservation) and writes again as a registrant; host-b deposes host 1
//!    (every key of it; tgt refuses PREEMPT AND ABORT, so PREEMPT) and
//!    host-a's writes fail again.
//!
//! The hosts' fencing agents stay out of the reservations (the hook's tool
//! owns this nexus's registration; they say so on the console).
//!
//! The latency of each PR command inside the host (µs, guest clock) is
//! printed at the end. The VM of the example config is placed on host-c
//! (never booted) so nothing else runs on host-a and host-b.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 with
//! `qemu-block-extra`, the `tgt` package and root; FAILS with a clear message
//! when one is missing.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use qemu_tests::storage::iscsi::initiator_iqn;
use qemu_tests::{Cluster, ClusterSource, Host, Pattern};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// One PR command or 4 KiB I/O through TCG and the iSCSI path; generous,
/// reached only when something hangs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// A MiB offset outside every region of the example config (256 MiB device:
/// fencing 0..16, kv-disk 16..80).
const FREE_MIB: u64 = 200;
const HOSTS: [&str; 2] = ["host-a", "host-b"];

/// The result of one `ftpr` command.
#[derive(Debug)]
struct Reply {
    ok: bool,
    micros: u64,
    /// What follows `ok <n> us: ` or `failed <n> us: `.
    detail: String,
}

/// Types `ftpr <command>` on `host`'s console and waits for its result line.
fn ftpr(host: &Host, command: &str) -> Reply {
    let re = format!(
        r"ftpr: {}: (ok|failed) (\d+) us(: (.*))?$",
        regex::escape(command)
    );
    host.send_console(&format!("ftpr {command}\n")).unwrap();
    let line = host
        .wait_for_next(Pattern::regex(&re).unwrap(), COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: ftpr {command}: no result: {e}", host.name()));
    let caps = regex::Regex::new(&re).unwrap().captures(&line).unwrap();
    let reply = Reply {
        ok: &caps[1] == "ok",
        micros: caps[2].parse().unwrap(),
        detail: caps.get(4).map_or("", |m| m.as_str()).to_owned(),
    };
    eprintln!("storage_pr: {} ftpr {command}: {reply:?}", host.name());
    reply
}

fn ok(host: &Host, command: &str, latencies: &mut Latencies) -> String {
    let r = ftpr(host, command);
    assert!(r.ok, "{}: ftpr {command} failed: {}", host.name(), r.detail);
    latencies.add(command, r.micros);
    r.detail
}

fn failed(host: &Host, command: &str) -> String {
    let r = ftpr(host, command);
    assert!(
        !r.ok,
        "{}: ftpr {command} should have failed: {}",
        host.name(),
        r.detail
    );
    r.detail
}

/// Microseconds per command kind (the first word).
#[derive(Default)]
struct Latencies(BTreeMap<String, Vec<u64>>);

impl Latencies {
    fn add(&mut self, command: &str, micros: u64) {
        let kind = command.split_whitespace().next().unwrap_or("").to_owned();
        self.0.entry(kind).or_default().push(micros);
    }

    fn print(&self) {
        eprintln!("storage_pr: command latency inside the host (us, guest clock):");
        for (kind, v) in &self.0 {
            let mut s = v.clone();
            s.sort_unstable();
            eprintln!(
                "storage_pr:   {kind:<12} n={} min={} median={} max={}",
                s.len(),
                s[0],
                s[s.len() / 2],
                s[s.len() - 1]
            );
        }
    }
}

/// The example config with the VM allowed on host-c only.
fn source(dir: &std::path::Path) -> ClusterSource {
    let mut source = ClusterSource::example();
    let text = std::fs::read_to_string(&source.config).unwrap();
    let moved = text.replace(
        r#"affinity = { groups = ["rack-1"], hosts = ["host-c"] }"#,
        r#"affinity = { hosts = ["host-c"] }"#,
    );
    assert_ne!(
        text, moved,
        "examples/cluster.toml changed its affinity line"
    );
    source.config = dir.join("cluster.toml");
    std::fs::write(&source.config, moved).unwrap();
    source
}

fn boot(cluster: &mut Cluster) {
    for h in HOSTS {
        let mut spec = cluster.host_spec(h).unwrap();
        // no_timer_check: under TCG on a loaded machine the kernel's IO-APIC
        // timer check can fail ("IO-APIC + timer doesn't work") and panic.
        spec.boot = cluster.kernel_boot("no_timer_check").unwrap();
        cluster.boot_spec(spec).unwrap();
    }
    for h in HOSTS {
        let host = cluster.host(h).unwrap();
        let ready = host
            .wait_for_line(
                format!("appliance ready: host={h} generation=1"),
                BOOT_TIMEOUT,
            )
            .unwrap();
        eprintln!(
            "storage_pr: {h} ready after {:.1} s",
            ready.at.as_secs_f64()
        );
        host.wait_for(
            Pattern::regex(&format!(
                r"ftpr: ready host={h} id=\d+ device=/dev/sd[a-z]+$"
            ))
            .unwrap(),
            COMMAND_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{h}: the PR test tool did not find the iSCSI LUN: {e}"));
        // The fencing agent leaves this nexus's registration to the tool.
        host.wait_for(
            "fencing: storage fencing not active: the signed config's test hook pr drives this device's persistent reservations",
            COMMAND_TIMEOUT,
        )
        .unwrap();
    }
}

/// What the shared image holds at `mib` MiB (up to the first NUL), read by
/// the harness from the file tgt serves.
fn on_disk(cluster: &Cluster, mib: u64) -> String {
    let f = std::fs::File::open(cluster.shared_storage()).unwrap();
    let mut buf = [0u8; 64];
    f.read_exact_at(&mut buf, mib << 20).unwrap();
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[test]
fn preempted_host_cannot_write_the_shared_lun() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::with_hooks("storage-pr", &source(dir.path()), &["pr"]).unwrap();
    cluster.use_iscsi_storage().unwrap();
    boot(&mut cluster);
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let mut lat = Latencies::default();

    // 1. Two sessions, two I_T nexuses; what the probe says.
    let initiators = cluster.iscsi().unwrap().initiators().unwrap();
    for h in HOSTS {
        assert!(
            initiators.contains(&initiator_iqn(h)),
            "{h} has no session at the target: {initiators:?}"
        );
    }
    let probe = ok(a, "probe", &mut lat);
    assert!(probe.contains("offers persistent reservations"), "{probe}");
    let not_scsi = failed(a, "probe /dev/vda");
    assert!(not_scsi.contains("is not a SCSI device"), "{not_scsi}");

    // 2. Register both, host-a reserves WERO; both registrants write.
    let key_a = ok(a, "register 17", &mut lat);
    let key_b = ok(b, "register 34", &mut lat);
    assert_eq!(key_a, "key 0x4654000100000011");
    assert_eq!(key_b, "key 0x4654000200000022");
    ok(a, "reserve", &mut lat);
    for h in [a, b] {
        let keys = ok(h, "keys", &mut lat);
        assert!(
            keys.ends_with("keys=[0x4654000100000011 0x4654000200000022]"),
            "{}: {keys}",
            h.name()
        );
        let r = ok(h, "reservation", &mut lat);
        assert!(
            r.ends_with("holder=0x4654000100000011 type=WERO"),
            "{}: {r}",
            h.name()
        );
    }
    ok(a, &format!("write {FREE_MIB} from-a-1"), &mut lat);
    ok(b, &format!("write {} from-b-1", FREE_MIB + 1), &mut lat);
    assert_eq!(on_disk(&cluster, FREE_MIB), "from-a-1");
    assert_eq!(on_disk(&cluster, FREE_MIB + 1), "from-b-1");

    // 3. host-b (the winner of the next generation) preempts host-a.
    ok(b, "preempt 1 17", &mut lat);
    // The target tells host-a on its next command (a UNIT ATTENTION, which
    // SG_IO hands up and the tool retries past).
    let keys = ok(a, "keys", &mut lat);
    assert!(
        keys.contains("keys=[0x4654000200000022]") && keys.contains("preempted)]"),
        "{keys}"
    );
    let r = ok(a, "reservation", &mut lat);
    assert!(r.ends_with("holder=0x4654000200000022 type=WERO"), "{r}");

    // 4. host-a is fenced at the device; host-b writes; both read.
    let refused = failed(a, &format!("write {FREE_MIB} from-a-2"));
    assert!(
        refused.contains("reservation conflict (EBADE)"),
        "{refused}"
    );
    assert_eq!(
        on_disk(&cluster, FREE_MIB),
        "from-a-1",
        "host-a's refused write landed"
    );
    let again = failed(a, "reserve");
    assert!(again.contains("reservation conflict"), "{again}");
    let back = failed(a, "preempt 2 34");
    assert!(back.contains("reservation conflict"), "{back}");
    ok(b, &format!("write {FREE_MIB} from-b-2"), &mut lat);
    assert_eq!(on_disk(&cluster, FREE_MIB), "from-b-2");
    for h in [a, b] {
        let read = ok(h, &format!("read {FREE_MIB}"), &mut lat);
        assert_eq!(read, "\"from-b-2\"", "{}", h.name());
    }

    // 5. A new incarnation of host-a joins; host-b deposes host 1 again.
    let joined = ok(a, "join 18", &mut lat);
    assert_eq!(
        joined,
        "key 0x4654000100000012 reserved=false holder=0x4654000200000022"
    );
    ok(a, &format!("write {FREE_MIB} from-a-3"), &mut lat);
    assert_eq!(on_disk(&cluster, FREE_MIB), "from-a-3");
    let removed = ok(b, "depose 1", &mut lat);
    // tgt 1.0.85 refuses PREEMPT AND ABORT (INVALID FIELD IN CDB, checked
    // with sg_persist): depose falls back to PREEMPT and says so.
    assert_eq!(removed, "removed=[0x4654000100000012] aborted=false");
    let refused = failed(a, &format!("write {FREE_MIB} from-a-4"));
    assert!(
        refused.contains("reservation conflict (EBADE)"),
        "{refused}"
    );
    assert_eq!(on_disk(&cluster, FREE_MIB), "from-a-3");
    let r = ok(b, "reservation", &mut lat);
    assert!(r.ends_with("holder=0x4654000200000022 type=WERO"), "{r}");
    lat.print();
    cluster.pass();
}
