//! `ftctl apply` through the status service on loopback: three services on
//! 127.79.x.y with temp config disks (real signed images), real TCP, Noise
//! between hosts. A newer config reaches every disk with one line per host;
//! older or equal ones and unknown operators are refused with the reason;
//! a live change (operators) takes effect at once; concurrent applies
//! converge on the highest generation; a host that was down catches up when
//! the config is applied again; a timing change is taken live by heartbeat
//! and passed to ftvmm. The catch-up racing the pass-on is
//! `apply_pass_on.rs`.

mod common;

use std::time::Duration;

use config_schema::ctl::{Request, VmPower};
use config_schema::keys;
use config_schema::model::{Operator, Power};
use config_schema::remote::apply::{self, Outcome};
use config_schema::remote::{client, OperatorRequest, Reply};

use common::*;

#[test]
fn a_newer_config_reaches_every_host_and_an_older_one_is_refused_everywhere() {
    let c = Cluster::new(10);
    (0..3).for_each(|i| c.start(i));
    let mut next = config(8);
    next.timing.heartbeat_interval_ms = 150;
    let (g, hosts) = c.apply(1, &dev_key(), &next);
    assert_eq!(g, 8);
    // 150 ms moves fencing's lease renewal: not live, and the line says why.
    assert_eq!(
        lines(&hosts),
        NAMES.map(|n| format!(
            "{n}: generation 8 persisted (was 7); needs reboot: timing.heartbeat_interval_ms \
             100 -> 150 ms (fencing's lease renewal goes from 500 to 750 ms, and fencing takes \
             it only at boot; hosts renewing that differently misjudge each other's leases: \
             restart every host together, not one by one)"
        ))
    );
    assert!(hosts.iter().all(|h| h.outcome == Outcome::NeedsReboot));
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [8, 8, 8]);

    // The same config again: refused on the asked host, which passes it
    // on (a host that was down would take it); the others refuse it too,
    // each saying it holds this very config (so `ftctl apply` succeeds).
    let (_, hosts) = c.apply(0, &dev_key(), &next);
    let digest = c.id_on_disk(0).short_digest();
    let same = |n: &str| {
        format!(
            "{n}: refused: generation 8 is not newer than this host's generation 8: this host \
             already holds this very config (digest {digest})"
        )
    };
    assert_eq!(lines(&hosts), NAMES.map(same));
    assert!(hosts
        .iter()
        .all(|h| h.outcome == Outcome::Refused && h.holds));
    // Older: refused with both generations, and not passed on.
    let (g, hosts) = c.apply(2, &dev_key(), &config(6));
    assert_eq!(g, 6);
    assert_eq!(
        lines(&hosts),
        [
            "host-c: refused: generation 6 is not newer than this host's generation 8 \
          (sign a config with a higher cluster.generation)"
        ]
    );
    assert!(!hosts[0].holds);
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [8, 8, 8]);

    // A config signed by another key: refused, disk unchanged.
    let stranger = Cluster::new(11);
    let r = apply::apply(
        c.addr(0),
        &dev_key(),
        &client::HostKeys::of(&config(7)),
        &stranger.signed(&config(9)),
        T,
    )
    .unwrap();
    let Reply::Applied { hosts, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(hosts.len(), 1);
    assert!(
        hosts[0].line.starts_with("host-a: refused: bad signature"),
        "{hosts:?}"
    );
    assert_eq!(c.on_disk(0), 8);
}

#[test]
fn only_listed_operators_may_apply_and_a_new_operator_is_live_at_once() {
    let c = Cluster::new(12);
    (0..3).for_each(|i| c.start(i));
    let carol = other_key();
    let r = apply::apply(
        c.addr(0),
        &carol,
        &client::HostKeys::of(&config(7)),
        &c.signed(&config(8)),
        T,
    )
    .unwrap();
    let Reply::Refused { reason } = r else {
        panic!("{r:?}")
    };
    assert!(
        reason.contains("is not an operator of this cluster"),
        "{reason}"
    );
    assert_eq!(c.on_disk(0), 7);
    // Carol may not query yet; a config listing her is live at once.
    let q = client::query(
        c.addr(1),
        &carol,
        &client::HostKeys::of(&config(7)),
        OperatorRequest::HostStatus,
        T,
    )
    .unwrap();
    assert!(matches!(q, Reply::Refused { .. }));
    let mut next = config(8);
    next.operators.push(Operator {
        name: "carol".into(),
        public_key: carol.public_hex(),
    });
    let (_, hosts) = c.apply(0, &dev_key(), &next);
    assert_eq!(
        lines(&hosts),
        NAMES.map(|n| format!("{n}: generation 8 persisted (was 7); live: operators[carol] added"))
    );
    assert!(hosts.iter().all(|h| h.outcome == Outcome::Applied));
    let Reply::Host { report } = client::query(
        c.addr(1),
        &carol,
        &client::HostKeys::of(&config(7)),
        OperatorRequest::HostStatus,
        T,
    )
    .unwrap() else {
        panic!("carol's query answered")
    };
    // Status keeps the generation the daemons booted and pair under, and
    // says what was persisted since.
    assert_eq!(report.config_generation, 7);
    assert_eq!(report.config_digest, Some("1a".repeat(32)));
    // The persisted config's digest is that of the config applied.
    let digest = config_schema::config_id::ConfigId::of_config(&next).digest;
    assert_eq!(
        report.heartbeat["applied_config"],
        serde_json::json!({"generation": 8, "digest": hex::encode(digest),
                           "changes": "live: operators[carol] added"})
    );
    // Carol applies the next one herself.
    let mut third = next.clone();
    third.cluster.generation = 9;
    let (_, hosts) = c.apply(2, &carol, &third);
    assert!(
        hosts.iter().all(|h| h.outcome == Outcome::Applied),
        "{hosts:?}"
    );
}

#[test]
fn concurrent_applies_converge_on_the_highest_generation() {
    let c = Cluster::new(13);
    (0..3).for_each(|i| c.start(i));
    for round in 0..3u64 {
        let (lo, hi) = (8 + 2 * round, 9 + 2 * round);
        std::thread::scope(|s| {
            let a = s.spawn(|| c.apply(0, &dev_key(), &config(lo)));
            let b = s.spawn(|| c.apply(2, &dev_key(), &config(hi)));
            a.join().unwrap();
            b.join().unwrap();
        });
        assert_eq!(
            [c.on_disk(0), c.on_disk(1), c.on_disk(2)],
            [hi, hi, hi],
            "round {round}"
        );
    }
}

#[test]
fn a_host_that_was_down_is_unreachable_then_catches_up_on_a_second_apply() {
    let c = Cluster::new(14);
    c.start(0);
    c.start(1);
    let (_, hosts) = c.apply(0, &dev_key(), &config(8));
    assert_eq!(hosts[2].outcome, Outcome::Unreachable);
    assert!(
        hosts[2]
            .line
            .starts_with("host-c: unreachable: cannot connect to 127.79.14.3"),
        "{hosts:?}"
    );
    assert!(
        hosts[2].line.ends_with(
            "; if it has not taken generation 8 yet, it does at its next catch-up (every 30 s) \
             from a host that holds it; `ftctl status --cluster` shows each host's config"
        ),
        "{hosts:?}"
    );
    assert_eq!(c.on_disk(2), 7);
    c.start(2);
    let (_, hosts) = c.apply(1, &dev_key(), &config(8));
    assert_eq!(
        hosts.iter().map(|h| h.outcome).collect::<Vec<_>>(),
        [Outcome::Refused, Outcome::Refused, Outcome::Applied]
    );
    assert_eq!(c.on_disk(2), 8);
}

#[test]
fn a_power_change_is_live_and_each_hosts_ftvmm_is_told_in_order() {
    let mut c = Cluster::new(18);
    c.ftvmm = vec![0, 1];
    (0..3).for_each(|i| c.start(i));
    let mut off = config(8);
    off.vms[0].power = Power::Off;
    let (_, hosts) = c.apply(0, &dev_key(), &off);
    let live = |n: &str, g: u64| {
        format!(
            "{n}: generation {g} persisted (was {}); live: vms[kv].power",
            g - 1
        )
    };
    assert_eq!(lines(&hosts)[..2], [live("host-a", 8), live("host-b", 8)]);
    // host-c has no ftvmm here: persisted, live, and says it was not told.
    assert!(
        hosts[2].line.starts_with(&live("host-c", 8))
            && hosts[2]
                .line
                .contains("; ftvmm not told yet (cannot reach ")
            && hosts[2]
                .line
                .ends_with("): told again every catch-up round"),
        "{}",
        hosts[2].line
    );
    assert!(
        hosts.iter().all(|h| h.outcome == Outcome::Applied),
        "{hosts:?}"
    );
    let told = |g: u64, power: Power| Request::ConfigApplied {
        generation: g,
        vms: vec![VmPower {
            vm: "kv".into(),
            power,
            // Resolved: the example's `rack-1` group and host-c.
            allowed: Some(vec!["host-a".into(), "host-b".into(), "host-c".into()]),
        }],
        timing: Some(config(7).timing),
        config: Some(Box::new({
            let mut c = config(g);
            c.vms[0].power = power;
            c
        })),
    };
    let mut seen = c.told.lock().unwrap().clone();
    seen.sort_by_key(|(i, _)| *i);
    assert_eq!(seen, [(0, told(8, Power::Off)), (1, told(8, Power::Off))]);
    // The cluster report shows the power taken live.
    let power = |i: usize| match client::query(
        c.addr(i),
        &dev_key(),
        &client::HostKeys::of(&config(7)),
        OperatorRequest::ClusterStatus,
        T,
    ) {
        Ok(Reply::Cluster { report }) => report.vms[0].power.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(power(2), "off");
    // Back on: live again (compared with the power taken live, not the
    // booted one), and told after the power-off.
    let (_, hosts) = c.apply(1, &dev_key(), &config(9));
    assert_eq!(lines(&hosts)[..2], [live("host-a", 9), live("host-b", 9)]);
    let seen = c.told.lock().unwrap().clone();
    for host in [0, 1] {
        let mine: Vec<&Request> = (seen.iter())
            .filter(|(i, _)| *i == host)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(mine, [&told(8, Power::Off), &told(9, Power::On)]);
    }
    assert_eq!(power(0), "on");
    // Nothing else changed: a power change alone needs no reboot.
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [9, 9, 9]);
}

#[test]
fn a_timing_change_is_live_in_heartbeat_and_passed_to_ftvmm() {
    let mut c = Cluster::new(19);
    c.ftvmm = vec![0, 1, 2];
    (0..3).for_each(|i| c.start(i));
    let mut faster = config(8);
    faster.timing.heartbeat_interval_ms = 50;
    faster.timing.failure_timeout_ms = 2500;
    faster.timing.lag_limit_ms = 300;
    let (_, hosts) = c.apply(2, &dev_key(), &faster);
    for (h, name) in hosts.iter().zip(NAMES) {
        assert_eq!(h.outcome, Outcome::Applied, "{h:?}");
        assert_eq!(
            h.line,
            format!(
                "{name}: generation 8 persisted (was 7); live: timing.failure_timeout_ms \
                 1000 -> 2500 ms, timing.heartbeat_interval_ms 100 -> 50 ms, \
                 timing.lag_limit_ms 500 -> 300 ms"
            )
        );
    }
    let timings = c.timings.lock().unwrap().clone();
    assert_eq!(timings.len(), 3);
    for (_, t) in &timings {
        assert_eq!((t.interval_ms(), t.failure_timeout_ms()), (50, 2500));
    }
    let seen = c.told.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (_, r) in &seen {
        match r {
            Request::ConfigApplied {
                generation, timing, ..
            } => {
                assert_eq!((*generation, timing.as_ref()), (8, Some(&faster.timing)))
            }
            other => panic!("{other:?}"),
        }
    }
    // An interval that moves fencing's lease renewal: persisted, the rest
    // live, the interval kept until reboot, with the reason on every line.
    let mut slow = faster.clone();
    slow.cluster.generation = 9;
    slow.timing.heartbeat_interval_ms = 400;
    slow.timing.failure_timeout_ms = 4000;
    let (_, hosts) = c.apply(0, &dev_key(), &slow);
    for h in &hosts {
        assert_eq!(h.outcome, Outcome::NeedsReboot, "{h:?}");
        assert!(
            h.line.contains(
                "live: timing.failure_timeout_ms 2500 -> 4000 ms; needs reboot: \
                 timing.heartbeat_interval_ms 50 -> 400 ms (fencing's lease renewal goes from \
                 500 to 2000 ms"
            ),
            "{}",
            h.line
        );
    }
    for (_, t) in &timings {
        assert_eq!((t.interval_ms(), t.failure_timeout_ms()), (50, 4000));
    }
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [9, 9, 9]);
}

#[test]
fn a_host_that_was_down_catches_up_by_itself() {
    let mut c = Cluster::new(15);
    c.catch_up_every = Some(Duration::from_millis(200));
    c.start(0);
    c.start(1);
    let (_, hosts) = c.apply(0, &dev_key(), &config(8));
    assert_eq!(hosts[2].outcome, Outcome::Unreachable);
    // host-c comes back booted with generation 7 and asks the others.
    c.start(2);
    let t0 = std::time::Instant::now();
    while c.settled_on_disk(2) != Some(8) {
        assert!(t0.elapsed() < T, "host-c did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing older is taken: a peer offering less changes nothing.
    assert_eq!([c.on_disk(0), c.on_disk(1)], [8, 8]);
}

#[test]
fn a_config_passed_on_by_an_impostor_host_is_refused() {
    let c = Cluster::new(16);
    c.start(0);
    let (s, hello) = client::connect(c.addr(0), T).unwrap();
    let mut s = s;
    let forged = [0x77u8; 32]; // not host-b's key
    let body = c.signed(&config(8)).encode();
    let e = heartbeat::status_service::noise::ask_with(
        &mut s,
        &hello,
        ("host-b", &forged),
        &keys::host_public_key(&host_key(0)),
        heartbeat::status_service::noise::Kind::Apply,
        &body,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("static key is not host host-b's key"), "{e}");
    assert_eq!(c.on_disk(0), 7);
}

#[test]
fn hosts_find_their_config_disk_among_block_devices() {
    let c = Cluster::with_scan(17, true);
    (0..3).for_each(|i| c.start(i));
    let (_, hosts) = c.apply(0, &dev_key(), &config(8));
    assert!(
        hosts.iter().all(|h| h.outcome == Outcome::Applied),
        "{hosts:?}"
    );
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [8, 8, 8]);
    let (_, hosts) = c.apply(1, &dev_key(), &config(9));
    assert!(hosts.iter().all(|h| h.outcome == Outcome::Applied));
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [9, 9, 9]);
}
