//! Tests of live affinity: what a config's allowed hosts change, the
//! placement by them, and the steps each host plans.

use super::*;

fn config() -> ClusterConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cluster.toml"
    ))
    .unwrap();
    toml::from_str(&text).expect("example config parses")
}

fn rc(host: &str) -> RuntimeConfig {
    RuntimeConfig {
        host_name: host.into(),
        config: config(),
        host_private_key: "00".repeat(32),
    }
}

fn on(vm: &str, allowed: &[&str]) -> VmPower {
    VmPower {
        vm: vm.into(),
        power: Power::On,
        allowed: Some(allowed.iter().map(|h| h.to_string()).collect()),
    }
}

fn names(l: &[&str]) -> Vec<String> {
    l.iter().map(|h| h.to_string()).collect()
}

#[test]
fn until_a_config_is_taken_the_booted_rule_counts() {
    let (c, live) = (config(), LiveAffinity::default());
    assert_eq!(
        live.allowed(&c, "kv"),
        names(&["host-a", "host-b", "host-c"])
    );
    assert!(live.allows(&c, "kv", "host-b"));
    assert!(!live.allows(&c, "nope", "host-a"), "a VM not in the config");
    assert_eq!(live.generation(), 0);
    assert_eq!(live.apply(&rc("host-a")).config, c);
}

#[test]
fn a_config_moves_a_vm_and_says_from_where_to_where() {
    let (c, live) = (config(), LiveAffinity::default());
    // Listed out of order: taken in the config's hosts order.
    let moved = live.adopt(&c, 2, &[on("kv", &["host-c", "host-a"])]);
    assert_eq!(
        moved,
        [Moved {
            vm: "kv".into(),
            before: names(&["host-a", "host-b", "host-c"]),
            after: names(&["host-a", "host-c"]),
        }]
    );
    assert!(!live.allows(&c, "kv", "host-b"));
    assert_eq!(live.generation(), 2);
    // The same config again changes nothing.
    assert!(live
        .adopt(&c, 2, &[on("kv", &["host-a", "host-c"])])
        .is_empty());
    // The placement functions read the live rule.
    let r = live.apply(&rc("host-b"));
    assert_eq!(
        crate::lockstep::placement::role(&r, &r.config.vms[0]),
        crate::lockstep::placement::Role::None
    );
    let r = live.apply(&rc("host-c"));
    assert_eq!(
        crate::lockstep::placement::role(&r, &r.config.vms[0]),
        crate::lockstep::placement::Role::Secondary {
            primary: "host-a".into()
        }
    );
    // A power-on pair's Hellos name the Primary by the rule in force
    // (`placement::run_member` sets it from this).
    assert_eq!(
        crate::lockstep::placement::pair_hosts(&r.config, &r.config.vms[0]),
        names(&["host-a", "host-c"])
    );
    live.adopt(&c, 3, &[on("kv", &["host-b", "host-c"])]);
    let r = live.apply(&rc("host-c"));
    assert_eq!(
        crate::lockstep::placement::pair_hosts(&r.config, &r.config.vms[0]),
        names(&["host-b", "host-c"])
    );
}

#[test]
fn older_configs_unknown_hosts_and_vms_and_empty_rules_are_not_taken() {
    let (c, live) = (config(), LiveAffinity::default());
    live.adopt(&c, 3, &[on("kv", &["host-b", "host-c"])]);
    assert!(live.adopt(&c, 2, &[on("kv", &["host-a"])]).is_empty());
    assert_eq!(live.allowed(&c, "kv"), names(&["host-b", "host-c"]));
    // A VM added needs a reboot; a host not in the booted config is no host.
    assert!(live
        .adopt(&c, 4, &[on("extra", &["host-a"]), on("kv", &["host-z"])])
        .is_empty());
    assert!(live.adopt(&c, 4, &[on("kv", &[])]).is_empty());
    let mut absent = on("kv", &[]);
    absent.allowed = None;
    assert!(
        live.adopt(&c, 5, &[absent]).is_empty(),
        "an older heartbeat"
    );
    assert_eq!(live.allowed(&c, "kv"), names(&["host-b", "host-c"]));
}

#[test]
fn each_host_plans_its_own_part_of_a_move() {
    let vms = [on("kv", &["host-a", "host-c"])];
    let moved = [Moved {
        vm: "kv".into(),
        before: names(&["host-a", "host-b"]),
        after: names(&["host-a", "host-c"]),
    }];
    let allowed = |_: &str| names(&["host-a", "host-c"]);
    let plan_on =
        |here: &str, m: MemberHere, moved: &[Moved]| plan(here, &vms, moved, allowed, |_| m);
    // host-b's Secondary stops; found again later (a join accepted
    // meanwhile), it is stopped again although nothing moved this time.
    let leave = Step::Leave {
        vm: "kv".into(),
        allowed: names(&["host-a", "host-c"]),
    };
    assert_eq!(
        plan_on("host-b", MemberHere::Passive, &moved),
        std::slice::from_ref(&leave)
    );
    assert_eq!(plan_on("host-b", MemberHere::Passive, &[]), [leave]);
    assert!(plan_on("host-b", MemberHere::None, &moved).is_empty());
    // host-c, newly allowed, waits as a standby (once).
    assert_eq!(
        plan_on("host-c", MemberHere::None, &moved),
        [Step::Join { vm: "kv".into() }]
    );
    assert!(plan_on("host-c", MemberHere::None, &[]).is_empty());
    assert!(plan_on("host-c", MemberHere::Passive, &moved).is_empty());
    // host-a, allowed before and after: nothing.
    assert!(plan_on("host-a", MemberHere::Acting, &moved).is_empty());
}

#[test]
fn a_primary_off_its_rule_is_moved_by_its_keeper_and_a_powered_off_vm_by_nobody() {
    let moved = [Moved {
        vm: "kv".into(),
        before: names(&["host-a", "host-b"]),
        after: names(&["host-b", "host-c"]),
    }];
    let allowed = |_: &str| names(&["host-b", "host-c"]);
    let vms = [on("kv", &["host-b", "host-c"])];
    assert_eq!(
        plan("host-a", &vms, &moved, allowed, |_| MemberHere::Acting),
        [Step::MoveOff {
            vm: "kv".into(),
            allowed: names(&["host-b", "host-c"]),
        }]
    );
    // Said once, when the config moved it.
    assert!(plan("host-a", &vms, &[], allowed, |_| MemberHere::Acting).is_empty());
    let mut off = vms.clone();
    off[0].power = Power::Off;
    for m in [MemberHere::Acting, MemberHere::Passive, MemberHere::None] {
        assert!(plan("host-a", &off, &moved, allowed, |_| m).is_empty());
        assert!(plan("host-c", &off, &moved, allowed, |_| m).is_empty());
    }
}
