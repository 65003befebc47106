use super::*;

fn window(fault: Fault, start_ms: u64, end_ms: u64) -> Window {
    Window {
        fault,
        start_ms,
        end_ms,
    }
}

fn said(host: &str, at_ms: u64, text: &str) -> Said {
    Said {
        host: host.into(),
        at_ms,
        text: text.into(),
    }
}

/// Seed 111: host-b (Secondary) killed and host-a (Primary) slowed at 8 s;
/// host-c started the VM at 58 s.
const SEED_111: &str = "ftvmm: vm kv: won generation 3 to start: after host-a (generation 1): \
                        lease expired; host-b: lease expired";

fn seed_111_windows() -> Vec<Window> {
    vec![
        window(
            Fault::KillHost {
                host: "host-b".into(),
            },
            8_000,
            16_585,
        ),
        window(
            Fault::SlowHost {
                host: "host-a".into(),
                factor: 4,
            },
            8_000,
            62_500,
        ),
    ]
}

#[test]
fn a_start_line_parses_into_the_owner_and_every_other_lease() {
    let c = parse("host-c", 58_000, "kv", SEED_111).unwrap();
    assert_eq!(c.generation, 3);
    assert_eq!(
        c.previous,
        Previous::Owner("host-a".into(), Seen::LeaseExpired)
    );
    assert_eq!(c.others, vec![("host-b".into(), Seen::LeaseExpired)]);
    // An older line without reasons, or another VM's, or not a start.
    let bare = parse("host-c", 1, "kv", "ftvmm: vm kv: won generation 2 to start").unwrap();
    assert_eq!((bare.previous, bare.others.len()), (Previous::None, 0));
    assert_eq!(parse("host-c", 1, "db", SEED_111), None);
    assert_eq!(
        parse(
            "host-c",
            1,
            "kv",
            "ftvmm: vm kv: won generation 3; live as primary"
        ),
        None
    );
    let own = parse(
        "host-a",
        1,
        "kv",
        "ftvmm: vm kv: won generation 4 to start: after this host (generation 3); host-b: \
         renewing, does not publish the VM",
    )
    .unwrap();
    assert_eq!(own.previous, Previous::ThisHost);
    assert_eq!(own.others, vec![("host-b".into(), Seen::Renewing)]);
}

#[test]
fn a_cold_start_after_both_members_were_faulted_is_a_double_fault() {
    let c = parse("host-c", 58_000, "kv", SEED_111).unwrap();
    // host-b was rebooted at 16.6 s, 41 s before the start: its kill is
    // not recent. Its lease expired with nothing in the schedule to explain
    // it now.
    let why = judge(&c, &seed_111_windows(), &[]).unwrap_err();
    assert!(why.contains("host-b's lease expired"), "{why}");
    let c = ColdStart { at_ms: 30_000, ..c };
    let ok = judge(&c, &seed_111_windows(), &[]).unwrap();
    assert!(ok.contains("host-a expired under slow"), "{ok}");
    assert!(ok.contains("host-b expired under kill"), "{ok}");
}

#[test]
fn an_expired_lease_that_no_fault_explains_is_not_a_double_fault() {
    let c = parse("host-c", 40_000, "kv", SEED_111).unwrap();
    let only_b = &seed_111_windows()[..1];
    let why = judge(&c, only_b, &[]).unwrap_err();
    assert!(
        why.contains("host-a's lease expired in host-c's view"),
        "{why}"
    );
    // A fault on another host, or one that ended long before, explains
    // nothing either.
    let elsewhere = [
        only_b[0].clone(),
        window(
            Fault::SlowHost {
                host: "host-c".into(),
                factor: 4,
            },
            8_000,
            30_000,
        ),
        window(
            Fault::FreezeHost {
                host: "host-a".into(),
                for_ms: 100,
            },
            100,
            200,
        ),
    ];
    assert!(judge(&c, &elsewhere, &[]).is_err());
}

#[test]
fn a_renewing_host_with_an_open_claim_makes_the_cold_start_wrong() {
    // Seed 105's shape: host-a's storage cut, host-b racing for the next
    // generation while host-c starts the VM from its disk.
    let line = "ftvmm: vm kv: won generation 3 to start: after host-a (generation 2): lease \
                expired; host-b: renewing, does not publish the VM";
    let c = parse("host-c", 40_000, "kv", line).unwrap();
    let cut = [window(
        Fault::CutStorage {
            host: "host-a".into(),
        },
        20_000,
        60_000,
    )];
    let asking = said(
        "host-b",
        31_000,
        "ftvmm: vm kv: primary host-a lost (x); replayed every record up to exit 9; asking for \
         generation 3",
    );
    let why = judge(&c, &cut, std::slice::from_ref(&asking)).unwrap_err();
    assert!(
        why.contains("host-b renewed and claimed the VM at 31000 ms"),
        "{why}"
    );
    // Draining (before it asks) is a claim too.
    let draining = said(
        "host-b",
        30_000,
        "ftvmm: vm kv: primary host-a suspected (x); replaying what the log holds, then asking \
         for generation 3",
    );
    assert!(judge(&c, &cut, std::slice::from_ref(&draining)).is_err());
    // The claim ended (it lost) before the start: no state left there.
    let lost = said(
        "host-b",
        35_000,
        "ftvmm: vm kv: lost generation 3 to host-x; halting the VM",
    );
    assert!(judge(&c, &cut, &[asking.clone(), lost.clone()]).is_ok());
    // Lines come by process, not in time order: the latest decides.
    assert!(judge(&c, &cut, &[lost, asking.clone()]).is_ok());
    // A claim long before the start is not open.
    let old = Said {
        at_ms: 5_000,
        ..asking
    };
    assert!(judge(&c, &cut, &[old]).is_ok());
}

#[test]
fn an_owner_alive_or_unnamed_is_never_a_double_fault() {
    let alive = "ftvmm: vm kv: won generation 3 to start: after host-a (generation 2): alive, not \
                 publishing the VM";
    let c = parse("host-c", 30_000, "kv", alive).unwrap();
    assert!(judge(&c, &seed_111_windows(), &[]).is_err());
    let bare = parse(
        "host-c",
        30_000,
        "kv",
        "ftvmm: vm kv: won generation 3 to start",
    )
    .unwrap();
    assert!(judge(&bare, &seed_111_windows(), &[]).is_err());
}

#[test]
fn an_undecided_highest_generation_is_judged_by_the_leases_named() {
    // Seed 111's replay: host-a (slowed) began re-winning generation 3 and
    // was reset by its watchdog before a decision; host-b killed.
    let line = "ftvmm: vm kv: won generation 4 to start: after generation 3 (no owner recorded); \
                host-a: lease expired; host-b: lease expired";
    let c = parse("host-c", 30_000, "kv", line).unwrap();
    assert_eq!(c.previous, Previous::Undecided);
    assert!(judge(&c, &seed_111_windows(), &[]).is_ok());
    // Nobody named expired: nobody held the state it lost.
    let line = "ftvmm: vm kv: won generation 4 to start: after generation 3 (no owner recorded); \
                host-a: renewing, does not publish the VM";
    let c = parse("host-c", 30_000, "kv", line).unwrap();
    assert!(judge(&c, &seed_111_windows(), &[]).is_err());
}
