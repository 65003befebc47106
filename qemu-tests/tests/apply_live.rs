//! `ftctl apply` across a 3-host cluster (issue 15), one boot for every check.
//!
//! Proves, against host-a (Primary of `kv`), host-b (Secondary) and host-c
//! (standby), with the development operator key:
//! 1. host-c's QEMU is killed (a host down during the apply);
//! 2. generation 2 (failure timeout 1000 -> 2000 ms, heartbeat interval
//!    100 -> 50 ms, lag limit 500 -> 400 ms, `kv` powered off) is taken live
//!    on host-a and host-b: the apply lines say `live:` for each field and
//!    nothing needs a reboot; both consoles say heartbeat and ftvmm took the
//!    timing; the cluster status shows heartbeat's interval 50 ms and
//!    ftvmm's failure timeout 2000 ms (ack freshness still the booted
//!    1000 ms); the VM is powered off by generation 2;
//! 3. generation 2 again, and generation 1, are refused on both hosts with
//!    the reason;
//! 4. generation 3 (`kv` on) pairs the VM again, without a reboot;
//! 5. host-c boots again from its disk (generation 1), catches up to
//!    generation 3 by itself and its daemons take the live timing;
//! 6. host-c's QEMU is killed as soon as its config disk image starts to
//!    change during the apply of generation 4 (a power cut during the
//!    persist; where exactly it lands is up to QEMU's timing:
//!    `config-schema/src/slots_tests.rs` cuts after every write) and boots
//!    again with generation 3 or 4, then holds 4;
//! 7. two operators sign two different configs of generation 5 and apply
//!    them at once, one to host-a, one to host-c: every host ends on the
//!    one with the higher digest (offered the other, each refuses it naming
//!    both digests), whatever order the hosts saw them in;
//! 8. generation 6 without `kv` (running) is refused on every host with the
//!    reason; generation 6 adding `web` (its own disk region, fencing slot
//!    5, allowed on host-b and host-c) is taken live everywhere, without a
//!    reboot: host-b's fencing learns web's slot, host-b wins web's first
//!    generation in the fencing region `kv` goes on using, host-c pairs as
//!    its Secondary, and web answers a client; `kv` stays paired in its
//!    generation throughout.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{took, wait, wait_paired, VM};
use qemu_tests::ftctl;
use qemu_tests::paths::workspace_root;
use qemu_tests::{Cluster, ClusterSource, NetnsTap};

const OPERATOR_CIDR: &str = "192.0.2.200/24";

#[test]
fn apply_takes_timing_and_power_live_refuses_older_and_catches_up_a_host_that_was_down() {
    let t0 = Instant::now();
    let ftctl = ftctl::binary();
    let dir = tempfile::tempdir().unwrap();
    let source = ftctl::with_operator(dir.path());
    let base = std::fs::read_to_string(&source.config).unwrap();
    let mut cluster = Cluster::new("apply-live", &source).unwrap();
    cluster.boot_all().unwrap();
    cluster
        .host("host-c")
        .unwrap()
        .wait_for(
            "appliance ready: host=host-c generation=1",
            Duration::from_secs(180),
        )
        .unwrap();
    let mut cluster = wait_paired(cluster);
    eprintln!(
        "booted and paired after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let op = NetnsTap::attach(
        &cluster.ft,
        "operator",
        &format!("fta-{}-op", std::process::id()),
        OPERATOR_CIDR,
        None,
    )
    .unwrap();
    let key = workspace_root().join("examples/dev-keys/operators/dev-operator.pk8");
    let sign = |g: u64, power: &str| sign(&ftctl, &source, dir.path(), &base, g, power);

    // 1. host-c goes down.
    cluster.host("host-c").unwrap().kill().unwrap();

    // 2. Timing and power, live.
    let gen2 = sign(2, "off");
    let t_apply = Instant::now();
    let out = apply(&op, &ftctl, &key, &gen2);
    let gen2_line = |h: &str| {
        format!(
            "{h}: generation 2 persisted (was 1); live: timing.failure_timeout_ms 1000 -> 2000 \
             ms, timing.heartbeat_interval_ms 100 -> 50 ms, timing.lag_limit_ms 500 -> 400 ms, \
             vms[kv].power\n"
        )
    };
    // host-a, asked, persists it itself; host-b by the pass-on or first by
    // its catch-up ([`took`]).
    assert!(out.contains(&gen2_line("host-a")), "{out}");
    assert!(took(&out, "host-b", 2, &gen2_line("host-b")), "{out}");
    assert!(out.contains("host-c: unreachable: "), "{out}");
    assert!(!out.contains("needs reboot"), "{out}");
    let (a, b) = (
        cluster.host("host-a").unwrap(),
        cluster.host("host-b").unwrap(),
    );
    for h in [a, b] {
        wait(
            h,
            "heartbeat: timing of config generation 2 taken live: interval 100 -> 50 ms, \
             failure timeout 1000 -> 2000 ms"
                .into(),
        );
        wait(
            h,
            "ftvmm: timing of config generation 2 taken live: failure timeout 2000 ms, lag \
             limit 400 ms"
                .into(),
        );
        wait(
            h,
            format!("ftvmm: vm {VM}: powered off by config generation 2"),
        );
    }
    eprintln!(
        "generation 2 taken live on host-a and host-b {:.1} s after the apply started",
        t_apply.elapsed().as_secs_f64()
    );
    let st = status(&op, &ftctl, &key, &source.config);
    for h in ["host-a", "host-b"] {
        let hb = find_daemon(&st, h, "heartbeat");
        assert_eq!(hb["interval_ms"], 50, "{h}: {hb}");
        assert_eq!(hb["failure_timeout_ms"], 2000, "{h}: {hb}");
        let vmm = find_daemon(&st, h, "ftvmm");
        let t = &vmm["timing"];
        assert_eq!(t["generation"], 2, "{h}: {t}");
        assert_eq!(t["failure_timeout_ms"], 2000, "{h}: {t}");
        assert_eq!(t["ack_freshness_ms"], 1000, "{h}: {t}");
        assert_eq!(t["lag_limit_ms"], 400, "{h}: {t}");
    }
    // Nothing rebooted: each host booted once.
    for h in [a, b] {
        h.assert_absent(
            format!("appliance ready: host={} generation=2", h.name()).as_str(),
            Duration::ZERO,
        )
        .unwrap();
    }

    // 3. Equal and older: refused on every host that is up, with the
    // reason. An equal one is passed on (another host may lack it); an
    // older one is not, so it is offered to each host in turn.
    let out = apply(&op, &ftctl, &key, &gen2);
    for h in ["host-a", "host-b"] {
        assert!(
            out.contains(&format!(
                "{h}: refused: generation 2 is not newer than this host's generation 2"
            )),
            "{out}"
        );
    }
    let gen1 = sign(1, "on");
    for (h, addr) in [("host-a", "192.0.2.1"), ("host-b", "192.0.2.2")] {
        let out = apply_to(&op, &ftctl, &key, &gen1, addr);
        assert!(
            out.contains(&format!(
                "{h}: refused: generation 1 is not newer than this host's generation 2"
            )),
            "{out}"
        );
        assert!(!out.contains("persisted"), "{out}");
    }

    // 4. Power on, live.
    let gen3 = sign(3, "on");
    let out = apply(&op, &ftctl, &key, &gen3);
    let gen3_line = |h: &str| format!("{h}: generation 3 persisted (was 2); live: vms[kv].power\n");
    assert!(out.contains(&gen3_line("host-a")), "{out}");
    assert!(took(&out, "host-b", 3, &gen3_line("host-b")), "{out}");
    wait(
        a,
        format!("ftvmm: vm {VM}: powered on by config generation 3"),
    );
    wait(
        b,
        format!("ftvmm: vm {VM}: paired with primary host-a; generation 3"),
    );

    // 5. host-c comes back with generation 1 on its disk and catches up.
    let t_back = Instant::now();
    let c = cluster.boot("host-c").unwrap();
    c.wait_for(
        "appliance ready: host=host-c generation=1",
        Duration::from_secs(180),
    )
    .unwrap();
    wait(
        c,
        "heartbeat: timing of config generation 3 taken live: interval 100 -> 50 ms, \
         failure timeout 1000 -> 2000 ms"
            .into(),
    );
    wait(
        c,
        "ftvmm: timing of config generation 3 taken live: failure timeout 2000 ms, lag limit \
         400 ms"
            .into(),
    );
    eprintln!(
        "host-c caught up to generation 3 {:.1} s after its QEMU started",
        t_back.elapsed().as_secs_f64()
    );
    // Its disk holds generation 3 now: an apply of 3 is refused there too.
    // A host just booted on a loaded test machine may answer host-a's
    // pass-on after its deadline ("unreachable: … no answer within the time
    // limit", host-c's status service then reads a closed connection): the
    // operator applies again, as the line says; what is checked is the
    // refusal.
    let mut out = apply(&op, &ftctl, &key, &gen3);
    for _ in 0..3 {
        if !out.contains("host-c: unreachable: ") {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
        out = apply(&op, &ftctl, &key, &gen3);
    }
    for h in ["host-a", "host-b", "host-c"] {
        assert!(
            out.contains(&format!(
                "{h}: refused: generation 3 is not newer than this host's generation 3"
            )),
            "{out}"
        );
    }

    // 6. A power cut during the persist: generation 4 applied to host-a;
    // host-c's QEMU is killed as soon as the first byte of its config disk
    // image changes (its heartbeat began writing the spare slot; QEMU may
    // finish more of the persist before the SIGKILL lands). host-c must
    // boot again with the old (3) or the new (4) config, and end up with 4.
    let gen4 = sign(4, "on");
    let disk = cluster.config_disk("host-c").unwrap().to_path_buf();
    let before = std::fs::read(&disk).unwrap();
    let applying = {
        let (op_ns, ftctl, key, gen4) = (
            op.netns().to_string(),
            ftctl.clone(),
            key.clone(),
            gen4.clone(),
        );
        std::thread::spawn(move || {
            Command::new("ip")
                .args(["netns", "exec", &op_ns])
                .arg(&ftctl)
                .args(["apply", "--host", "192.0.2.1", "--key"])
                .arg(&key)
                .arg(&gen4)
                .output()
                .unwrap()
        })
    };
    let t_cut = Instant::now();
    while std::fs::read(&disk).unwrap() == before {
        assert!(
            t_cut.elapsed() < Duration::from_secs(30),
            "host-c's config disk never changed"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    cluster.host("host-c").unwrap().kill().unwrap();
    let killed_after = t_cut.elapsed();
    let changed = first_change(&before, &std::fs::read(&disk).unwrap());
    let out = applying.join().unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "power cut of host-c {} ms after ftctl apply started, once its config disk changed \
         ({changed}; the STATE sector is at {}):\n{out}",
        killed_after.as_millis(),
        config_schema::disk::STATE_OFFSET
    );
    let persisted = |h: &str| {
        format!("{h}: generation 4 persisted (was 3); nothing changed but the generation")
    };
    assert!(out.contains(&persisted("host-a")), "{out}");
    assert!(took(&out, "host-b", 4, &persisted("host-b")), "{out}");
    let c = cluster.boot("host-c").unwrap();
    let ready = c
        .wait_for(
            qemu_tests::console::Pattern::regex(r"appliance ready: host=host-c generation=(3|4)\b")
                .unwrap(),
            Duration::from_secs(180),
        )
        .unwrap();
    eprintln!("host-c after the power cut: {ready}");
    c.assert_absent("config refused", Duration::ZERO).unwrap();
    // Whichever it booted, it ends with 4 (by catch-up, or by this apply
    // passed on to it).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = apply(&op, &ftctl, &key, &gen4);
        if out.contains("host-c: refused: generation 4 is not newer than this host's generation 4")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-c never got generation 4: {out}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }

    // 7. Two operators, one generation: X to host-a and Y to host-c at once.
    let t_two = Instant::now();
    let lag = |ms: u64| {
        move |t: String| t.replacen("lag_limit_ms = 400\n", &format!("lag_limit_ms = {ms}\n"), 1)
    };
    let x = sign_edited(
        &ftctl,
        &source,
        dir.path(),
        &base,
        (5, "on"),
        "gen5-x",
        lag(450),
    );
    let y = sign_edited(
        &ftctl,
        &source,
        dir.path(),
        &base,
        (5, "on"),
        "gen5-y",
        lag(350),
    );
    let (lo, hi) = {
        let (ix, iy) = (config_id(&x), config_id(&y));
        assert_ne!(ix, iy);
        match ix < iy {
            true => ((x, ix), (y, iy)),
            false => ((y, iy), (x, ix)),
        }
    };
    // The lower digest to host-a, the higher to host-c (the digests do not
    // depend on the signing key: the same each run).
    let (to_a, to_c) = (lo.0.clone(), hi.0.clone());
    let (out_a, out_c) = std::thread::scope(|s| {
        let a = s.spawn(|| apply_in(op.netns(), &ftctl, &key, &to_a, "192.0.2.1"));
        let c = s.spawn(|| apply_in(op.netns(), &ftctl, &key, &to_c, "192.0.2.3"));
        (a.join().unwrap(), c.join().unwrap())
    });
    // A host may be reached by one apply after the other host already
    // passed the higher config on to it: it then holds that very config,
    // which is a converged answer too (CI saw it once for host-a). Holding
    // the lower one "already" would not be.
    let holds_hi = format!(
        "this host already holds this very config (digest {})",
        hi.1.short_digest()
    );
    for line in out_a.lines().chain(out_c.lines()) {
        assert!(
            line.contains("persisted generation 5 (replaced another generation-5 config")
                || line.contains("generation 5 persisted (was 4)")
                || line.contains("refused: holds another generation-5 config with a higher digest")
                || line.contains(&holds_hi),
            "{line}"
        );
    }
    let want = |h: &str| {
        format!(
            "{h}: refused: holds another generation-5 config with a higher digest ({} > {}); \
             the cluster converges on that one",
            hi.1.short_digest(),
            lo.1.short_digest()
        )
    };
    // Every host ends on the higher digest: offered the lower one, each
    // refuses it with both digests (at once, or after a catch-up round).
    let deadline = Instant::now() + Duration::from_secs(90);
    for (h, addr) in [
        ("host-a", "192.0.2.1"),
        ("host-b", "192.0.2.2"),
        ("host-c", "192.0.2.3"),
    ] {
        loop {
            let out = apply_to(&op, &ftctl, &key, &lo.0, addr);
            if out.contains(&want(h)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{h} did not end on the higher digest {}: {out}",
                hi.1
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    eprintln!(
        "two configs of generation 5: every host holds {} {:.1} s after the two applies started",
        hi.1,
        t_two.elapsed().as_secs_f64()
    );

    // 8. VMs: removing kv while it runs is refused everywhere; adding web
    // (its own region, fencing slot 5, host-b and host-c) is live: no host
    // reboots, web pairs on host-b and host-c beside kv.
    let t_vms = Instant::now();
    let no_kv = sign_edited(
        &ftctl,
        &source,
        dir.path(),
        &base,
        (6, "on"),
        "gen6-no-kv",
        |t| {
            let at = t.find("[[vms]]").expect("the example has a VM");
            t[..at].to_string()
        },
    );
    let out = apply(&op, &ftctl, &key, &no_kv);
    for h in ["host-a", "host-b", "host-c"] {
        let want = format!(
            "{h}: refused: vms[kv] would be removed while it runs (generation 5); power it off \
             in one config, then remove it in the next"
        );
        assert!(out.contains(&want), "{want}\n{out}");
    }
    let with_web = sign_edited(
        &ftctl,
        &source,
        dir.path(),
        &base,
        (6, "on"),
        "gen6-web",
        |t| {
            t.replacen(
                "[[host_groups]]",
                "[[storage.regions]]\nname = \"web-disk\"\noffset_mib = 80\nsize_mib = 64\n\n\
             [[host_groups]]",
                1,
            ) + "\n[[vms]]\nname = \"web\"\nslot = 5\nmemory_mib = 64\nimage = \"kv-guest\"\n\
             mode = \"kv\"\ndisk_region = \"web-disk\"\nmac = \"52:54:00:12:34:57\"\n\
             ip = \"198.51.100.11/24\"\naffinity = { hosts = [\"host-b\", \"host-c\"] }\n"
        },
    );
    let out = apply(&op, &ftctl, &key, &with_web);
    let line_a = out
        .lines()
        .find(|l| l.starts_with("host-a: "))
        .unwrap_or_else(|| panic!("no line for host-a: {out}"));
    // (The timing between the two configs of generation 5 may differ too:
    // which one won is up to their digests.)
    assert!(
        line_a.starts_with(
            "host-a: generation 6 persisted (was 5); live: storage.regions[web-disk] added, "
        ) && line_a.ends_with(", vms[web] added")
            && !line_a.contains("needs reboot"),
        "{line_a}"
    );
    // host-b and host-c: the same, or taken by their catch-up first.
    for h in ["host-b", "host-c"] {
        let want = format!("{}\n", line_a.replacen("host-a: ", &format!("{h}: "), 1));
        assert!(took(&out, h, 6, &want), "{want}{out}");
    }
    let (a, b, c) = (
        cluster.host("host-a").unwrap(),
        cluster.host("host-b").unwrap(),
        cluster.host("host-c").unwrap(),
    );
    for h in [a, b, c] {
        wait(
            h,
            "ftvmm: vm web: added by config generation 6 (fencing slot 5, disk region web-disk)"
                .into(),
        );
    }
    wait(
        b,
        "fencing: vm web: learned in fencing slot 5 (a VM added live)".into(),
    );
    wait(
        b,
        "fencing: decided vm=web generation=1 owner=host-b".into(),
    );
    wait(
        c,
        "ftvmm: vm web: paired with primary host-b; generation 1".into(),
    );
    // The guest comes up in lockstep (slower than alone): its service
    // listens once it has set up its disk.
    wait(b, "[web] kv: listening on 198.51.100.11:7000".into());
    let client = cluster.vm_client("web", "198.51.100.201/24").unwrap();
    let mut web = qemu_tests::kv::Kv::connect_to(&client, "198.51.100.11:7000".parse().unwrap());
    qemu_tests::kv::put_all(&mut web, 20);
    qemu_tests::kv::get_all(&mut web, 20);
    // No host rebooted for it, and kv went on paired on host-a and host-b.
    for h in [a, b, c] {
        h.assert_absent(
            format!("appliance ready: host={} generation=6", h.name()).as_str(),
            Duration::ZERO,
        )
        .unwrap();
        h.assert_absent("another layout", Duration::ZERO).unwrap();
    }
    for h in [a, b] {
        h.assert_absent("secondary suspected", Duration::ZERO)
            .unwrap();
    }
    eprintln!(
        "a VM added live: refused removal, then web paired on host-b and host-c and served {:.1} \
         s after the first apply",
        t_vms.elapsed().as_secs_f64()
    );
    drop(client);

    for h in cluster.hosts() {
        h.assert_absent("lockstep divergence", Duration::ZERO)
            .unwrap();
    }
    eprintln!("apply_live: {:.1} s in all", t0.elapsed().as_secs_f64());
    drop(op);
    cluster.pass();
}

/// Where `b` first differs from `a`, and how many bytes differ (console).
fn first_change(a: &[u8], b: &[u8]) -> String {
    let diff: Vec<usize> = (0..a.len().min(b.len()))
        .filter(|&i| a[i] != b[i])
        .collect();
    match (diff.first(), diff.last()) {
        (Some(f), Some(l)) => format!(
            "{} bytes differ between offsets {f} and {l} when killed",
            diff.len()
        ),
        _ => "no difference left when killed".into(),
    }
}

/// The example config at `generation` with `power`, and (from generation 2
/// on) the new timing; signed.
fn sign(
    ftctl: &Path,
    source: &ClusterSource,
    dir: &Path,
    base: &str,
    generation: u64,
    power: &str,
) -> PathBuf {
    let name = format!("gen{generation}");
    sign_edited(ftctl, source, dir, base, (generation, power), &name, |t| t)
}

/// The id (generation, digest) of a signed-config file.
fn config_id(signed: &Path) -> config_schema::config_id::ConfigId {
    let sc = config_schema::signed::SignedConfig::decode(&std::fs::read(signed).unwrap()).unwrap();
    let c = config_schema::canonical::decode(&sc.canonical).unwrap();
    config_schema::config_id::ConfigId::of_canonical(c.cluster.generation, &sc.canonical)
}

/// [`sign`]'s config edited by `edit`, written as `<name>.toml` and signed
/// as `<name>.ftcfg`.
fn sign_edited(
    ftctl: &Path,
    source: &ClusterSource,
    dir: &Path,
    base: &str,
    (generation, power): (u64, &str),
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let mut text = base
        .replacen(
            "generation = 1\n",
            &format!("generation = {generation}\n"),
            1,
        )
        .replacen(
            "disk_region = \"kv-disk\"\n",
            &format!("disk_region = \"kv-disk\"\npower = \"{power}\"\n"),
            1,
        );
    if generation >= 2 {
        for (from, to) in [
            (
                "heartbeat_interval_ms = 100\n",
                "heartbeat_interval_ms = 50\n",
            ),
            ("failure_timeout_ms = 1000\n", "failure_timeout_ms = 2000\n"),
            ("lag_limit_ms = 500\n", "lag_limit_ms = 400\n"),
        ] {
            assert!(text.contains(from), "the example config changed: {from}");
            text = text.replacen(from, to, 1);
        }
    }
    ftctl::sign(ftctl, &edit(text), &source.signing_key, dir, name)
}

/// `ftctl apply` of `signed` to host-a from the operator's namespace; stdout.
fn apply(op: &NetnsTap, ftctl: &Path, key: &Path, signed: &Path) -> String {
    apply_to(op, ftctl, key, signed, "192.0.2.1")
}

/// `ftctl apply` of `signed` to the host at `addr`; stdout.
fn apply_to(op: &NetnsTap, ftctl: &Path, key: &Path, signed: &Path, addr: &str) -> String {
    apply_in(op.netns(), ftctl, key, signed, addr)
}

/// [`apply_to`] from the network namespace `netns`.
fn apply_in(netns: &str, ftctl: &Path, key: &Path, signed: &Path, addr: &str) -> String {
    ftctl::apply_in(netns, ftctl, key, signed, addr)
}

/// `ftctl status --cluster --json` from the operator's namespace.
fn status(op: &NetnsTap, ftctl: &Path, key: &Path, config: &Path) -> serde_json::Value {
    ftctl::cluster_status(op.netns(), ftctl, key, config, "192.0.2.2")
}

/// The status object of `daemon` on `host` somewhere in a cluster report.
fn find_daemon<'a>(v: &'a serde_json::Value, host: &str, daemon: &str) -> &'a serde_json::Value {
    fn walk<'a>(
        v: &'a serde_json::Value,
        host: &str,
        daemon: &str,
    ) -> Option<&'a serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("daemon").and_then(|d| d.as_str()) == Some(daemon)
                    && m.get("host").and_then(|h| h.as_str()) == Some(host)
                {
                    return Some(v);
                }
                m.values().find_map(|x| walk(x, host, daemon))
            }
            serde_json::Value::Array(a) => a.iter().find_map(|x| walk(x, host, daemon)),
            _ => None,
        }
    }
    walk(v, host, daemon).unwrap_or_else(|| panic!("no {daemon} status of {host} in {v}"))
}
