//! `make chaos` (issue 12): the nemesis runner. Per seed (`FT_CHAOS_SEED`,
//! `FT_CHAOS_RUNS`; defaults seed 1, one run) it boots host-a and host-b as
//! the lockstep pair of VM `kv` on NBD storage paths (as `frozen_host.rs`
//! does), and host-c beside them if it boots in time — a standby: respawn
//! places a new Secondary there after a failure. Even seeds' configs name a
//! VM witness (`cluster.vm_witness`), a router on a VM hub port of its own,
//! so a VM-network cut also cuts a host from it (`FT_CHAOS_WITNESS=on|off`
//! overrides, e.g. to replay a seed's schedule both ways; the replay line
//! carries the override); odd seeds keep the rules without one under the
//! nemesis. It starts the VM network
//! capture and four clients (`chaos/clients.rs`: three long-lived
//! connections, one connection per op) on 8 overlapping keys, recording every
//! op in a `history::Recorder`; plays the seeded `chaos::Schedule` (faults
//! drawn by weight, the pair failures first: kills, freezes, FT partitions
//! and each storage kind alike; each seed's first fault of another class in
//! turn, so any 15 consecutive seeds start with every class and any 10 with
//! every pair-failure kind; that is draw 2, the default: `FT_CHAOS_DRAW=1`
//! draws as campaigns did before draws had versions, to replay their seeds,
//! `chaos::draw`), with at most one
//! pair failure per run, or with `FT_CHAOS_SEQUENTIAL=1` a second one once
//! the pair is protected again: after the respawn's `protected:` line, or
//! when the first cost no member, healed with the pair unchanged
//! (`chaos/plan.rs`, `chaos/nemesis.rs`, `chaos::pair_watch`), over ~60 s. Killed hosts boot again into the running cluster
//! (`chaos/fleet.rs`) and may become the new Secondary; slowed hosts get
//! their QEMU stopped part of every 100 ms until the heal. Then it heals,
//! lets the clients be served again, stops them and GETs every key on a
//! fresh connection (recorded too).
//!
//! A run fails on (`chaos/verdicts.rs`): a non-linearizable (or unchecked)
//! history; a final value the guest's on-disk log does not hold or a final
//! GET without an answer; more switches of the host emitting guest frames
//! than go-lives on the consoles of all QEMU processes (`won generation N;
//! live as primary`), frames a thawed host's NIC held at its freeze left
//! out, and cold starts; every cold start (`won generation N to start:
//! <why>`, N > 1) is a double fault, counted and not failed, only when
//! `chaos::cold::judge` finds its account true against the schedule and
//! the consoles (no member holding the VM's state was left), else a failed
//! `cold restart`; a rebooted host winning a generation won before it booted; `lockstep
//! divergence` on any console; a client that could not reconnect; the VM not
//! protected again at the end while two hosts run. Faults the harness failed
//! to apply are notes. Per run it writes `report.json`,
//! `history.json`, `table.txt` and `latency.svg` under
//! `$CARGO_TARGET_TMPDIR/chaos/seed-<seed>/`, and at the end the campaign's
//! `campaign.json` and `campaign.txt`; a failed run prints its replay line.
//! Each report names the image it booted. `chaos_summary` (`make
//! chaos-report`) sums the run reports of several campaigns into one.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64, qemu-nbd
//! and root. Run: `FT_CHAOS_SEED=1 FT_CHAOS_RUNS=1 cargo test -p qemu-tests
//! --test chaos -- --ignored --nocapture`. A seed's schedule depends on the
//! seed, the hosts that booted, `FT_CHAOS_SEQUENTIAL` and `FT_CHAOS_DRAW`
//! only, its cluster on the seed and `FT_CHAOS_WITNESS`: the replay line each
//! report prints (`chaos::replay_line`) gives both back.

#[path = "chaos/clients.rs"]
mod clients;
mod common;
#[path = "chaos/fleet.rs"]
mod fleet;
#[path = "chaos/nemesis.rs"]
mod nemesis;
#[path = "chaos/plan.rs"]
mod plan;
#[cfg(test)]
#[path = "chaos/plan_tests.rs"]
mod plan_tests;
#[path = "chaos/verdicts.rs"]
mod verdicts;
#[cfg(test)]
#[path = "chaos/verdicts_tests.rs"]
mod verdicts_tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{BOOT_TIMEOUT, VM};
use fleet::Fleet;
use qemu_tests::chaos::{self, CampaignReport, Draw, OpCounts, RunReport, Schedule};
use qemu_tests::cluster::VM_WITNESS;
use qemu_tests::history::Recorder;
use qemu_tests::kv::GUEST;
use qemu_tests::netns::NetnsTap;
use qemu_tests::Cluster;

/// How long host-c may take to be ready once the pair serves.
const THIRD_HOST_TIMEOUT: Duration = Duration::from_secs(180);
/// After the last step: replies the clients must get again, and how long for.
const SETTLE_REPLIES: usize = 30;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// After the heal, how long the owner of the VM may take to be protected
/// again when another host runs (a placement look, a transfer, back-off).
const PROTECTED_AT_END: Duration = Duration::from_secs(60);

#[test]
#[ignore = "make chaos"]
fn chaos_campaign() {
    let seeds = chaos::seeds_from_env(1, 1).unwrap_or_else(|e| panic!("{e}"));
    let sequential = chaos::sequential_from_env().unwrap_or_else(|e| panic!("{e}"));
    let witness = chaos::witness_from_env().unwrap_or_else(|e| panic!("{e}"));
    let draw = chaos::draw_from_env().unwrap_or_else(|e| panic!("{e}"));
    let out = out_dir();
    let image = qemu_tests::paths::appliance_iso()
        .and_then(|iso| qemu_tests::paths::image_id(&iso))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("chaos: image {image}");
    let mut runs = Vec::new();
    for seed in seeds {
        let dir = out.join(format!("seed-{seed}"));
        let image = Some(image.clone());
        let run = || run(seed, &dir, sequential, draw, witness, image.clone());
        let report = match std::panic::catch_unwind(run) {
            Ok(r) => r,
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                let hosts = ["host-a", "host-b", "host-c"];
                let planned = plan::generate(seed, &hosts, sequential, draw);
                let mut r = RunReport::new(planned);
                r.witness = witness;
                r.image = image;
                r.linearizable = chaos::Verdict::Unknown {
                    why: format!("the run broke off: {why}"),
                };
                r.judge();
                write(&dir.join("report.json"), &r.to_json());
                r
            }
        };
        if !report.passed {
            eprintln!(
                "chaos: seed {seed} FAILED; replay: {}",
                chaos::replay_line(seed, sequential, draw, witness)
            );
        }
        runs.push(report);
    }
    let campaign = CampaignReport::from_runs(&runs);
    let table = campaign.table();
    write(&out.join("campaign.json"), &campaign.to_json());
    write(&out.join("campaign.txt"), &table);
    eprintln!("{table}");
    eprintln!(
        "chaos: campaign report in {}",
        out.join("campaign.json").display()
    );
    assert!(campaign.all_passed(), "chaos campaign failed:\n{table}");
}

/// Every run report under the directories of `FT_CHAOS_REPORTS`
/// (whitespace-separated; unset: this runner's own, where `make chaos`
/// writes), summed into one campaign report, written as `summary.json` and
/// `summary.txt` beside the first: the figures of many campaigns, e.g. of
/// one image over several sessions (`make chaos-report`). Each run counts
/// once: a report equal to one already read (the same file copied into two
/// directories) is skipped and counted. The summary lists the images the
/// runs booted and each failed run's own replay line. Fails on a report it
/// cannot read, naming the file, and on no report at all.
#[test]
#[ignore = "make chaos-report"]
fn chaos_summary() {
    let dirs: Vec<PathBuf> = match std::env::var("FT_CHAOS_REPORTS") {
        Ok(v) => v.split_whitespace().map(PathBuf::from).collect(),
        Err(_) => vec![out_dir()],
    };
    let mut runs: Vec<chaos::RunReport> = Vec::new();
    let mut copies = 0;
    for dir in &dirs {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut files: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let seed = name.strip_prefix("seed-")?.parse().ok()?;
                Some((seed, e.path().join("report.json")))
            })
            .filter(|(_, p)| p.is_file())
            .collect();
        files.sort();
        for (_, path) in files {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let report = chaos::RunReport::from_json(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match runs.contains(&report) {
                true => copies += 1,
                false => runs.push(report),
            }
        }
    }
    assert!(!runs.is_empty(), "no seed-*/report.json under {dirs:?}");
    let summary = CampaignReport::from_runs(&runs);
    let table = summary.table();
    let first = &dirs[0];
    write(&first.join("summary.json"), &summary.to_json());
    write(&first.join("summary.txt"), &table);
    eprintln!("{table}");
    eprintln!(
        "chaos: summary of {} run(s) ({copies} copied report(s) skipped) in {}",
        runs.len(),
        first.join("summary.json").display()
    );
}

/// Where run reports and the campaign's go.
fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos")
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Whether run `seed`'s config names a VM witness: even seeds (both the
/// witness and the three-host rules without one stay under the nemesis),
/// unless `FT_CHAOS_WITNESS` (`witness`, [`chaos::witness_from_env`]) is `on`
/// or `off` (to replay a seed's schedule the other way: the schedule does not
/// depend on it; the replay line carries the override).
fn with_witness(seed: u64, witness: Option<bool>) -> bool {
    witness.unwrap_or(seed.is_multiple_of(2))
}

/// Boots the pair (and host-c if it comes up); the hosts in the run and
/// notes. With a VM witness ([`with_witness`]) its router is up before the
/// hosts boot; it lives as long as the cluster's VM hub.
fn boot(seed: u64, witness: Option<bool>) -> (Cluster, Option<NetnsTap>, Vec<String>, Vec<String>) {
    let name = format!("chaos-{seed}");
    let with_witness = with_witness(seed, witness);
    let mut cluster = match with_witness {
        true => Cluster::example_with_witness(&name).unwrap(),
        false => Cluster::example(&name).unwrap(),
    };
    let router = with_witness.then(|| cluster.vm_witness_router().unwrap());
    cluster.use_nbd_storage().unwrap();
    for h in ["host-a", "host-b", "host-c"] {
        cluster.boot(h).unwrap();
    }
    for h in ["host-a", "host-b"] {
        let host = cluster.host(h).unwrap();
        host.wait_for(
            format!("appliance ready: host={h} generation=1"),
            BOOT_TIMEOUT,
        )
        .unwrap();
    }
    let mut notes = Vec::new();
    if router.is_some() {
        notes.push(format!(
            "VM witness {VM_WITNESS} (a router on its own VM hub port)"
        ));
    }
    let mut hosts = match power_on_pair(&cluster) {
        Ok((primary, secondary, note)) => {
            notes.extend(note);
            vec![primary, secondary]
        }
        Err(e) => panic!("power-on: {e}"),
    };
    let spare = ["host-a", "host-b", "host-c"]
        .into_iter()
        .find(|h| !hosts.iter().any(|m| m == h))
        .expect("a pair of three hosts leaves a spare");
    let c = cluster.host(spare).unwrap();
    match c.wait_for(format!("appliance ready: host={spare}"), THIRD_HOST_TIMEOUT) {
        Ok(_) => hosts.push(spare.into()),
        Err(e) => {
            notes.push(format!(
                "{spare} not ready, killed, run on the pair only: {e}"
            ));
            let _ = c.kill();
        }
    }
    (cluster, router, hosts, notes)
}

/// The pair the cluster formed at power-on: (Primary, Secondary, a note if
/// it is not the configured one). Normally host-a serves with host-b
/// following in generation 1. On a loaded machine the pair can fail over
/// before the first fault (a TCG host silent on the logging channel for
/// more than the 1 s failure timeout; seen with load 12 on 2 cores): the
/// survivor then runs alone and its keeper respawns a Secondary, printing
/// `protected: secondary X`. The run starts from that pair (the schedule
/// takes its hosts Primary first) instead of waiting for a console line the
/// configured Primary, now a Secondary, never prints.
fn power_on_pair(cluster: &Cluster) -> Result<(String, String, Option<String>), String> {
    let configured = format!("ftvmm: vm {VM}: paired with primary host-a; generation 1");
    let listening = format!("[{VM}] kv: listening on {GUEST}");
    let protected = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: protected: secondary ([\w.-]+) in lockstep"
    ))
    .expect("valid regex");
    let deadline = Instant::now() + Duration::from_secs(300);
    let lines = |h: &str| {
        cluster
            .host(h)
            .map(|host| host.console().lines())
            .unwrap_or_default()
    };
    let text = |h: &str| -> Vec<String> { lines(h).into_iter().map(|l| l.text).collect() };
    // A go-live or a lone Primary's re-win (not "won generation 1 to start").
    let took_over = |l: &String| {
        l.contains(&format!("ftvmm: vm {VM}: won generation"))
            && (l.contains("live as primary") || l.contains("continues without secondary"))
    };
    while Instant::now() < deadline {
        let (a, b) = (text("host-a"), text("host-b"));
        let failed_over = ["host-a", "host-b", "host-c"]
            .iter()
            .any(|h| text(h).iter().any(took_over));
        if !failed_over
            && b.iter().any(|l| l.contains(&configured))
            && a.iter().any(|l| l.contains(&listening))
        {
            return Ok(("host-a".into(), "host-b".into(), None));
        }
        if failed_over {
            // The last `protected:` line of any host names the current pair.
            // (The hosts booted together, so their console times compare.)
            let mut last: Option<(Duration, String, String)> = None;
            for h in ["host-a", "host-b", "host-c"] {
                for l in lines(h) {
                    if let Some(c) = protected.captures(&l.text) {
                        if last.as_ref().is_none_or(|(t, _, _)| l.at > *t) {
                            last = Some((l.at, h.to_string(), c[1].to_string()));
                        }
                    }
                }
            }
            if let Some((_, p, s)) = last {
                let note = format!(
                    "power-on: the configured pair failed over before the first fault; \
                     the run starts from primary {p}, secondary {s}"
                );
                eprintln!("chaos: {note}");
                return Ok((p, s, Some(note)));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(format!(
        "no pair within 300 s: neither host-b {configured:?} with host-a serving, nor a \
         `protected:` line after a failover"
    ))
}

/// One seeded run (module doc).
fn run(
    seed: u64,
    dir: &Path,
    sequential: bool,
    draw: Draw,
    witness: Option<bool>,
    image: Option<String>,
) -> RunReport {
    let (mut cluster, _router, hosts, boot_notes) = boot(seed, witness);
    let mut notes = vec![format!(
        "replay: {}",
        chaos::replay_line(seed, sequential, draw, witness)
    )];
    notes.extend(boot_notes);
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let generated = plan::generate(seed, &names, sequential, draw);
    let (schedule, dropped) = plan::restrict(&generated);
    notes.extend(dropped);
    for s in &schedule.steps {
        let gate = s.gate.as_ref().map_or(String::new(), |g| {
            format!(
                " (once protected again; planned pair {}, {})",
                g.primary, g.secondary
            )
        });
        eprintln!(
            "chaos: seed {seed}: planned at {:6} ms: {}{gate}",
            s.at_ms, s.fault
        );
    }
    cluster.vm.start_capture();
    let net = cluster.vm_client("chaos", "198.51.100.200/24").unwrap();
    let rec = Recorder::new();
    let stop = AtomicBool::new(false);
    // After the cluster: the rebooted hosts die before its hubs.
    let mut fleet = Fleet::new(&cluster);
    let (played, stats, settled) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..=clients::SHORT_LIVED)
            .map(|c| {
                let (net, rec, stop) = (&net, &rec, &stop);
                s.spawn(move || clients::run_client(c, seed, net, rec, stop))
            })
            .collect();
        let played = nemesis::play(&mut fleet, &schedule, &rec);
        let since = rec.now();
        let settled = clients::wait_replies(&rec, since, SETTLE_REPLIES, SETTLE_TIMEOUT);
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::SeqCst);
        let stats: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().expect("client thread"))
            .collect();
        (played, stats, settled)
    });
    let finals = clients::final_gets(seed, &net, &rec);
    std::thread::sleep(Duration::from_secs(2));
    let frames = cluster.vm.stop_capture();
    let t0 = rec.started();
    let history = rec.finish();

    // The steps as played (a gate's wait and renaming): what windows, pauses
    // and the plot go by.
    let schedule = Schedule {
        steps: played.steps.clone(),
        ..schedule
    };
    notes.extend(played.notes.iter().cloned());
    let mut report = RunReport::new(schedule.clone());
    report.witness = witness;
    report.image = image;
    let points = verdicts::points(&history);
    report.ops = OpCounts::of(&points);
    report.linearizable = verdicts::linearizability(&history);
    report.lost_acked_writes = verdicts::final_values_on_disk(&cluster, &finals);
    let consoles = verdicts::consoles(&fleet, t0);
    let (switches, held) = verdicts::guest_switches(&frames, &played.thaws);
    // A switch is explained by a go-live or a cold start; anything else is
    // dual-live. Every cold start after the first generation is judged,
    // whether or not the switch count needs it (seed 111's replay on this
    // stop: host-c's cold start was hidden behind host-b's go-live, whose
    // output never flowed): a double fault when its account holds up
    // (`chaos::cold`: no member holding the VM's state was left; counted,
    // not failed), else a failure of its own (the VM restarted from disk
    // with a member holding its state alive).
    let (lives, colds) = (consoles.golives.len(), consoles.cold_starts.len());
    if switches > lives + colds {
        report.dual_live.push(format!(
            "guest frames switched host {switches} times, {lives} go-live(s) and {colds} cold \
             start(s) on the consoles"
        ));
    }
    let windows = schedule.windows();
    for (line, cold) in &consoles.cold_starts {
        match chaos::cold::judge(cold, &windows, &consoles.said) {
            Ok(account) => report.double_faults.push(format!("{line} ({account})")),
            Err(why) => report.cold_restarts.push(format!(
                "guest frames switched host {switches} times, {lives} go-live(s); {line}: {why}"
            )),
        }
    }
    report.dual_live.extend(verdicts::stale_wins(&fleet));
    report.divergences = consoles.divergences.clone();
    report.unprotected.extend(verdicts::unprotected_at_end(
        &fleet,
        PROTECTED_AT_END,
        BOOT_TIMEOUT,
    ));
    (report.pauses_ms, report.recovery_ms) = verdicts::pauses(&history, &schedule);
    notes.push(format!(
        "guest frames: {} captured, {switches} host switch(es), {held} held by a frozen NIC left out",
        frames.len()
    ));
    notes.extend(consoles.golives.iter().map(|l| format!("go-live: {l}")));
    notes.extend(reboot_notes(&fleet));
    notes.extend(consoles.generations.iter().map(|l| format!("console: {l}")));
    for a in &played.applied {
        notes.push(format!(
            "applied at {} ms: {}{}",
            a.at_ms,
            a.what,
            a.error
                .as_ref()
                .map_or(String::new(), |e| format!(" (FAILED: {e})"))
        ));
    }
    for st in &stats {
        notes.push(format!(
            "client {}: {} ops, {} reconnects",
            st.client, st.ops, st.reconnects
        ));
        if let Some(why) = &st.gave_up {
            report
                .unavailable
                .push(format!("client {} gave up: {why}", st.client));
        }
    }
    if !settled {
        notes.push(format!(
            "clients got fewer than {SETTLE_REPLIES} replies within {SETTLE_TIMEOUT:?} after the heal"
        ));
    }
    report.notes = notes;
    let passed = report.judge();

    let paths = [
        ("report", dir.join("report.json")),
        ("history", dir.join("history.json")),
        ("table", dir.join("table.txt")),
        ("plot", dir.join("latency.svg")),
    ];
    let table = format!(
        "{}notes:\n  {}\n",
        report.table(),
        report.notes.join("\n  ")
    );
    write(&paths[0].1, &report.to_json());
    write(&paths[1].1, &history.to_json());
    write(&paths[2].1, &table);
    if let Err(e) = chaos::plot_run(
        &paths[3].1,
        &format!("chaos seed {seed}"),
        &points,
        &schedule,
    ) {
        eprintln!("chaos: plot: {e}");
    }
    eprintln!("{table}");
    for (what, p) in &paths {
        eprintln!("chaos: seed {seed}: {what}: {}", p.display());
    }
    drop(fleet);
    if passed {
        cluster.pass();
    }
    report
}

/// Per reboot: when its host was ready and whether it became a Secondary
/// (`restored from <primary> at exit N; following in generation G`).
fn reboot_notes(fleet: &Fleet) -> Vec<String> {
    let line = |h: &qemu_tests::Host, needle: &str| {
        (h.console().lines().into_iter())
            .find(|l| l.text.contains(needle))
            .map(|l| (l.at.as_millis(), l.text))
    };
    (fleet.reboots().iter())
        .map(|r| {
            let h = &r.host;
            let ready = line(h, &format!("appliance ready: host={}", h.name()))
                .map_or("never ready".to_string(), |(ms, _)| {
                    format!("ready {ms} ms after its boot")
                });
            let joined = line(h, &format!("ftvmm: vm {VM}: restored from "))
                .map_or("never a Secondary".to_string(), |(ms, t)| {
                    format!("at {ms} ms: {t}")
                });
            format!("reboot: {}: {ready}; {joined}", fleet.label(h))
        })
        .collect()
}
