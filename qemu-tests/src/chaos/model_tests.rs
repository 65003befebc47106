//! Tests of the cluster model's rules on hand-made schedules, through
//! `Schedule::check` (what is refused) and `Schedule::windows` (when each
//! fault ends).

use super::*;

const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];

fn step(at_ms: u64, fault: Fault) -> Step {
    Step::new(at_ms, fault)
}

fn hand(steps: Vec<Step>) -> Schedule {
    Schedule {
        seed: 0,
        hosts: HOSTS.iter().map(|h| h.to_string()).collect(),
        duration_ms: 100_000,
        params: Params::default(),
        steps,
    }
}

#[test]
fn check_refuses_broken_schedules() {
    let a = || "host-a".to_string();
    let b = || "host-b".to_string();
    let c = || "host-c".to_string();
    let bad = [
        vec![step(1, Fault::RebootHost { host: a() })],
        vec![
            step(1, Fault::KillHost { host: a() }),
            step(2, Fault::KillHost { host: b() }),
            step(3, Fault::KillHost { host: c() }),
        ],
        vec![
            step(1, Fault::KillHost { host: a() }),
            step(2, Fault::CutStorage { host: b() }),
            step(3, Fault::CutVmNet { host: c() }),
        ],
        vec![step(1, Fault::CutVmNet { host: a() })], // never healed
        vec![step(5, Fault::Heal), step(4, Fault::Heal)],
        vec![step(
            1,
            Fault::CutVmNet {
                host: "host-z".into(),
            },
        )],
    ];
    for steps in bad {
        let s = hand(steps.clone());
        assert!(
            matches!(s.check(), Err(ChaosError::Invalid { .. })),
            "{steps:?} passed"
        );
    }
    let good = hand(vec![
        step(1, Fault::KillHost { host: a() }),
        step(2, Fault::KillHost { host: b() }),
        step(
            3,
            Fault::SlowHost {
                host: c(),
                factor: 2,
            },
        ),
        step(20, Fault::RebootHost { host: a() }),
        step(20, Fault::RebootHost { host: b() }),
        step(20, Fault::Heal),
    ]);
    good.check().unwrap();
    // The last healthy host may not be frozen.
    let mut frozen = good.clone();
    frozen.steps[2] = step(
        3,
        Fault::FreezeHost {
            host: c(),
            for_ms: 10,
        },
    );
    assert!(frozen.check().is_err());
}

#[test]
fn windows_end_at_heal_reboot_expiry_or_kill() {
    let a = || "host-a".to_string();
    let b = || "host-b".to_string();
    let s = hand(vec![
        step(
            1_000,
            Fault::FreezeHost {
                host: a(),
                for_ms: 500,
            },
        ),
        step(
            2_000,
            Fault::SlowHost {
                host: b(),
                factor: 3,
            },
        ),
        step(
            2_000,
            Fault::FreezeHost {
                host: a(),
                for_ms: 9_000,
            },
        ),
        step(4_000, Fault::KillHost { host: b() }),
        step(6_000, Fault::Heal),
        step(8_000, Fault::RebootHost { host: b() }),
    ]);
    s.check().unwrap();
    let got: Vec<(FaultKind, u64, u64)> = s
        .windows()
        .iter()
        .map(|w| (w.fault.kind(), w.start_ms, w.end_ms))
        .collect();
    assert_eq!(
        got,
        vec![
            (FaultKind::FreezeHost, 1_000, 1_500),
            (FaultKind::SlowHost, 2_000, 4_000),
            (FaultKind::FreezeHost, 2_000, 6_000),
            (FaultKind::KillHost, 4_000, 8_000),
        ]
    );
}

#[test]
fn reboot_windows_last_until_the_next_injected_fault() {
    let a = || "host-a".to_string();
    let b = || "host-b".to_string();
    let s = hand(vec![
        step(1_000, Fault::KillHost { host: a() }),
        step(5_000, Fault::RebootHost { host: a() }),
        step(9_000, Fault::Heal),
        step(12_000, Fault::KillHost { host: b() }),
        step(20_000, Fault::RebootHost { host: b() }),
    ]);
    s.check().unwrap();
    let w = s.reboot_windows();
    assert_eq!(
        w,
        vec![
            Window {
                fault: Fault::RebootHost { host: a() },
                start_ms: 5_000,
                end_ms: 12_000,
            },
            Window {
                fault: Fault::RebootHost { host: b() },
                start_ms: 20_000,
                end_ms: 100_000,
            },
        ]
    );
    // The kills' windows end at their reboots.
    let kills: Vec<(u64, u64)> = (s.windows().iter())
        .filter(|w| w.fault.kind() == FaultKind::KillHost)
        .map(|w| (w.start_ms, w.end_ms))
        .collect();
    assert_eq!(kills, vec![(1_000, 5_000), (12_000, 20_000)]);
}

#[test]
fn a_slowdown_lasts_until_the_heal_or_its_hosts_kill() {
    let a = || "host-a".to_string();
    let b = || "host-b".to_string();
    let s = hand(vec![
        step(
            1_000,
            Fault::SlowHost {
                host: a(),
                factor: 3,
            },
        ),
        step(
            1_000,
            Fault::SlowHost {
                host: b(),
                factor: 2,
            },
        ),
        step(4_000, Fault::KillHost { host: b() }),
        step(7_000, Fault::Heal),
        step(8_000, Fault::RebootHost { host: b() }),
    ]);
    s.check().unwrap();
    let slow: Vec<(String, u64, u64)> = (s.windows().iter())
        .filter(|w| w.fault.kind() == FaultKind::SlowHost)
        .map(|w| (w.fault.to_string(), w.start_ms, w.end_ms))
        .collect();
    assert_eq!(
        slow,
        vec![
            ("slow host-b x2".to_string(), 1_000, 4_000),
            ("slow host-a x3".to_string(), 1_000, 7_000),
        ]
    );
    assert_eq!(slow_stopped_ms(2), 50);
    assert_eq!(slow_stopped_ms(3), 67);
    assert_eq!(slow_stopped_ms(4), 75);
    assert_eq!(slow_stopped_ms(1), 0);
    assert!((2..=100).all(|f| slow_stopped_ms(f) < SLOW_PERIOD_MS));
}
