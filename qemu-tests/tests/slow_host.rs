//! A slowed host (issue 12): the pair's Primary, and then its Secondary,
//! has its QEMU stopped 75 of every 100 ms (`Host::throttle`: the whole
//! host gets a quarter of its speed in bursts, its clocks going on) for
//! 12 s each, under one client on one TCP connection.
//!
//! What a slowdown may cost, and what it may not. The appliance does not
//! try to tell a slow host from a failing one: a host too slow to renew
//! its storage lease within a second loses its output grant like a host
//! whose storage path failed (a Primary then hands the VM over to its
//! Secondary; a lone Primary holds its output and wins the next
//! generation before it releases any), and a member silent on the logging
//! channel for the failure timeout is lost (a Secondary is dropped and
//! respawned, a Primary is replaced by its Secondary). Which of those a
//! given slowdown triggers depends on timing, so the test does not insist
//! on one; it prints what happened (throughput and the longest gap per
//! phase, the pair's role lines). It insists on what the promise says:
//! the same connection is served again after each slowdown, no
//! acknowledged PUT is lost (read back on that connection and found in the
//! on-disk log), guest frames switch host only at a go-live (never two
//! live copies), no lockstep divergence, and the VM is protected again
//! after each slowdown (the same pair, or a new Secondary placed by the
//! keeper).
//!
//! Measured (stop 41: 4 runs, 2 with a core busy; the figures are in
//! docs/architecture.md §7 "Slow hosts"): the slowed Primary kept its role
//! in 2 runs and was replaced by its Secondary in 2 (longest gaps 1.5–6.3
//! s); the slowed Secondary's longest gaps were 1.1–2.4 s, and 6.4 s once
//! with a core busy (its renewals lagged on and off; the lag throttle held
//! the pair to its pace). The test passed all 4.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and
//! root; FAILS with a clear message when one is missing.

mod common;

use std::time::{Duration, Instant};

use common::{all_on_disk, boot_pair, guest_frames, Client, VM};
use qemu_tests::{Cluster, Host};

/// Stopped this much of every [`PERIOD`]: a quarter of the speed.
const STOPPED: Duration = Duration::from_millis(75);
const PERIOD: Duration = Duration::from_millis(100);
/// How long the client runs at full speed first, for its rate.
const BASELINE: Duration = Duration::from_secs(10);
/// How long each slowdown lasts.
const SLOW_FOR: Duration = Duration::from_secs(12);
/// How long the VM may take to be protected again after a slowdown: a
/// respawn's transfer with back-off, on a loaded machine.
const PROTECTED_AGAIN: Duration = Duration::from_secs(180);

/// Who runs the VM: the host with the newest win, and the Secondary its
/// last pairing line after that win names, if it is protected (the last
/// `protected:`/`not protected:` word counts, as in the chaos verdicts).
fn pair_now(hosts: &[&Host]) -> Option<(String, String)> {
    let won = regex::Regex::new(&format!(r"ftvmm: vm {VM}: won generation (\d+)")).unwrap();
    let prot = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: (?:protected: secondary|paired with secondary) ([\w.-]+)"
    ))
    .unwrap();
    let mut owner: Option<(u64, Instant, &Host)> = None;
    for h in hosts {
        for l in h.console().lines() {
            if let Some(c) = won.captures(&l.text) {
                let g: u64 = c[1].parse().unwrap();
                let at = h.spawned_at() + l.at;
                if owner.is_none_or(|(og, oat, _)| (g, at) > (og, oat)) {
                    owner = Some((g, at, h));
                }
            }
        }
    }
    let (_, won_at, owner) = owner?;
    let mut secondary = None;
    for l in owner.console().lines() {
        if owner.spawned_at() + l.at < won_at {
            continue;
        }
        if let Some(c) = prot.captures(&l.text) {
            secondary = Some(c[1].to_string());
        } else if l.text.contains(&format!("ftvmm: vm {VM}: not protected: ")) {
            secondary = None;
        }
    }
    secondary.map(|s| (owner.name().to_string(), s))
}

/// Waits until the VM is protected ([`pair_now`]) and the pair's hosts are
/// both running; returns (Primary, Secondary).
fn wait_protected(hosts: &[&Host], what: &str) -> (String, String) {
    let deadline = Instant::now() + PROTECTED_AGAIN;
    loop {
        if let Some(p) = pair_now(hosts) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the VM was not protected again within {PROTECTED_AGAIN:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Replies per second in `from..to`.
fn rate(replies: &[Instant], from: Instant, to: Instant) -> f64 {
    let n = replies.iter().filter(|t| **t > from && **t <= to).count();
    n as f64 / (to - from).as_secs_f64()
}

/// The pair's role lines on `hosts` since `since`, for the log.
fn role_lines(hosts: &[&Host], since: Instant) -> Vec<String> {
    let pattern = regex::Regex::new(&format!(
        r"ftvmm: vm {VM}: (won generation|protected:|not protected:|handed the VM over|primary \S+ lost|secondary suspected|storage lost|fencing withdrew)"
    ))
    .unwrap();
    let mut out = Vec::new();
    for h in hosts {
        for l in h.console().lines() {
            let at = h.spawned_at() + l.at;
            if at >= since && pattern.is_match(&l.text) {
                out.push((
                    at,
                    format!("[{} {:7.3}] {}", h.name(), l.at.as_secs_f64(), l.text),
                ));
            }
        }
    }
    out.sort();
    out.into_iter().map(|(_, l)| l).collect()
}

#[test]
fn a_slowed_primary_then_a_slowed_secondary_lose_nothing_and_the_vm_is_protected_again() {
    let cluster = boot_pair(Cluster::example("slow-host").unwrap(), false);
    let (a, b) = (
        cluster.host("host-a").unwrap(),
        cluster.host("host-b").unwrap(),
    );
    let hosts = [a, b];
    cluster.vm.start_capture();
    let client = Client::start(&cluster, "slowed hosts");
    client.wait_replies(40, Duration::from_secs(120));
    // The rate before any slowdown, to compare with.
    let start = Instant::now();
    std::thread::sleep(BASELINE);
    let baseline_end = Instant::now();
    let mut phases = Vec::new();
    for role in ["primary", "secondary"] {
        let (p, s) = wait_protected(&hosts, &format!("before slowing the {role}"));
        let slowed = if role == "primary" {
            p.clone()
        } else {
            s.clone()
        };
        let host = cluster.host(&slowed).unwrap();
        let from = Instant::now();
        host.throttle(STOPPED, PERIOD).unwrap();
        std::thread::sleep(SLOW_FOR);
        let stats = host.unthrottle();
        let to = Instant::now();
        eprintln!(
            "slow host: {role} {slowed} (pair {p}, {s}) slowed x4 for {SLOW_FOR:?}: {stats:?}"
        );
        // Served again on the same connection, and protected again.
        client.goes_on(40, Duration::from_secs(120));
        let (np, ns) = wait_protected(&hosts, &format!("after slowing the {role} {slowed}"));
        eprintln!("slow host: after it: primary {np}, secondary {ns}");
        for l in role_lines(&hosts, from) {
            eprintln!("  {l}");
        }
        phases.push((role, slowed, from, to));
    }
    let done = client.finish();
    let frames = cluster.vm.stop_capture();
    let normal = rate(&done.replies, start, baseline_end);
    eprintln!("slow host: before the slowdowns {normal:.1} replies/s");
    for (role, host, from, to) in &phases {
        let end = *to + Duration::from_secs(3);
        let (rate, gap) = (
            rate(&done.replies, *from, end),
            done.pause(*from, Some(end)),
        );
        eprintln!(
            "slow host: {role} {host} slowed: {rate:.1} replies/s, longest gap {} ms",
            gap.as_millis()
        );
    }
    // Never two live copies: guest frames change host only at a go-live.
    let guest = guest_frames(&frames);
    let switches = guest.windows(2).filter(|w| w[0].from != w[1].from).count();
    let golives: usize = hosts
        .iter()
        .map(|h| {
            h.console().count(
                regex::Regex::new(&format!(
                    r"ftvmm: vm {VM}: won generation \d+; live as primary"
                ))
                .unwrap(),
            )
        })
        .sum();
    assert!(
        switches <= golives,
        "guest frames switched host {switches} times with {golives} go-live(s): two copies were live"
    );
    all_on_disk(&cluster, &done.acked, "after the slowdowns");
    for h in hosts {
        h.assert_absent("lockstep divergence", Duration::ZERO)
            .unwrap();
    }
}
