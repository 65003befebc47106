//! A lockstep pair in two QEMU appliance hosts (nested KVM in TCG): host-a
//! runs VM `kv` as Primary, host-b as Secondary (examples/cluster.toml: the
//! first two hosts the VM's affinity allows). A client on the VM network does
//! `KEYS` PUTs (default 1,000) and their GETs over one TCP connection through
//! the Primary; then both sides hash guest memory at a common exit index (the
//! Primary puts the point into the log: `ftvmm-test digest kv <delta>`) and
//! the digests must be equal. The Secondary must report no divergence.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root;
//! FAILS with a clear message when one is missing. `FT_VM_KEYS=N` changes the
//! number of keys. Timings go to stderr.

use std::time::{Duration, Instant};

use qemu_tests::kv::{get_all, put_all, Kv, GUEST};
use qemu_tests::Cluster;

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
const VM: &str = "kv";

fn digest_line(host: &qemu_tests::Host, other: &qemu_tests::Host, role: &str) -> (u64, String) {
    let line = host
        .wait_for(
            qemu_tests::Pattern::regex(&format!(
                r"ftvmm: vm {VM}: memory digest n=\d+ sha256=[0-9a-f]{{64}} role={role}"
            ))
            .unwrap(),
            Duration::from_secs(300),
        )
        .unwrap_or_else(|e| {
            panic!(
                "no memory digest from the {role}: {e}\n--- last console lines of {} ---\n{}",
                other.name(),
                other.console().tail(60)
            )
        });
    let n = line
        .split("n=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line}"));
    let sha = line
        .split("sha256=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    (n, sha)
}

#[test]
fn pair_replays_1000_puts_and_memory_matches() {
    let keys: usize = std::env::var("FT_VM_KEYS")
        .ok()
        .map(|k| k.parse().expect("FT_VM_KEYS is a number"))
        .unwrap_or(1000);
    // `ftvmm-test digest` needs the vmctl hook, which only the signed config enables.
    let mut cluster = Cluster::example_with_hooks("pair", &["vmctl"]).unwrap();
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    for (h, name) in [(a, "host-a"), (b, "host-b")] {
        let ready = h
            .wait_for_line(
                format!("appliance ready: host={name} generation=1"),
                BOOT_TIMEOUT,
            )
            .unwrap();
        eprintln!("pair: {name} ready at {:.1} s", ready.at.as_secs_f64());
        h.wait_for("ftvmm: /dev/kvm ok", Duration::ZERO)
            .unwrap_or_else(|e| panic!("no KVM inside {name}: {e}"));
    }
    b.wait_for(
        format!("ftvmm: vm {VM}: paired with primary host-a; generation 1"),
        Duration::from_secs(120),
    )
    .unwrap();
    a.wait_for(
        format!("ftvmm: vm {VM}: paired with secondary host-b; generation 1"),
        Duration::from_secs(30),
    )
    .unwrap();
    a.wait_for(format!("[{VM}] kv: listening on {GUEST}"), GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("the primary's guest is not listening: {e}"));

    let client = cluster.vm_client("client", "198.51.100.200/24").unwrap();
    let mut kv = Kv::connect(&client);
    let t = Instant::now();
    put_all(&mut kv, keys);
    eprintln!(
        "pair: {keys} PUTs on one connection through the primary: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    get_all(&mut kv, keys);
    eprintln!("pair: {keys} GETs: {:.1} s", t.elapsed().as_secs_f64());

    // A common exit index, chosen by the Primary and carried in the log.
    a.send_console(&format!("ftvmm-test digest {VM} 20000\n"))
        .unwrap();
    a.wait_for(
        format!("ftvmm: test hook: digest {VM}: done"),
        Duration::from_secs(30),
    )
    .unwrap();
    // The guest must make exits for the point to be reached: keep it busy.
    let stat = kv.one("STAT");
    assert!(stat.starts_with("STAT "), "{stat}");
    let (pn, psha) = digest_line(a, b, "primary");
    let (sn, ssha) = digest_line(b, a, "secondary");
    eprintln!("pair: memory digest at exit {pn}: primary {psha}, secondary at {sn} {ssha}");
    assert_eq!(pn, sn, "both sides pause at the same exit index");
    assert_eq!(psha, ssha, "guest memory differs at exit {pn}");
    // The pair runs on in lockstep after the pause and still serves. (A
    // stale record at the pause exit once made the Secondary call the very
    // next exit a divergence; the Primary then lost its Secondary.)
    let t = Instant::now();
    put_all(&mut kv, 100);
    get_all(&mut kv, 100);
    eprintln!(
        "pair: 100 PUTs + 100 GETs after the pause: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    b.assert_absent("lockstep divergence", Duration::from_secs(1))
        .unwrap();
    a.assert_absent("secondary lost", Duration::ZERO).unwrap();
    cluster.pass();
}
