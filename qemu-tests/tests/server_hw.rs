//! The appliance on emulated server hardware (issue 16): two hosts on QEMU's
//! q35 chipset booting the shipped ISO under UEFI (OVMF in pflash, then the
//! ISO's GRUB), with e1000e NICs, the config disk on the chipset's AHCI and
//! the ICH9 TCO watchdog instead of the virtio devices and the i6300esb of
//! the other tests (`qemu_tests::Machine::ServerQ35`).
//!
//! What it proves, from each host's console: the firmware was UEFI; init
//! loaded e1000e, ahci and iTCO_wdt (with lpc_ich, which creates the TCO
//! device) by the machine's modaliases and never i6300esb; the config came
//! from an AHCI disk (`/dev/sdX`); init and fencing both name iTCO_wdt, a
//! chipset timer, as the watchdog in use; the FT and VM networks are on the
//! NICs with the config's MACs. Then the pair on these hosts serves the
//! reference guest, and when the Primary's QEMU is killed the Secondary goes
//! live and the client's one TCP connection carries on with every
//! acknowledged PUT readable (the same check as `failover.rs`). A second
//! test cuts the Primary's storage path (as `storage_failover.rs` does): it
//! hands the VM over, asks fencing for a reset, fencing stops feeding the
//! watchdog, and the ICH9 TCO resets the machine (the QEMU process ends:
//! hosts run with `-no-reboot`); the time from the request to the reset is
//! printed. A third is its control: the same cut with the chipset's
//! no-reboot strap left as QEMU sets it (`ICH9-LPC.noreboot=on`): iTCO_wdt
//! still loads and fencing still arms it (QEMU's strap does not show in the
//! NO_REBOOT bit the driver checks), but the host is not reset — so the
//! reset of the second test is the TCO's.
//!
//! What it does not prove: anything about a real board's firmware, NIC, disk
//! controller or TCO strap beyond what QEMU emulates (QEMU's ICH9 TCO is
//! only allowed to reset because the harness sets `ICH9-LPC.noreboot=off`;
//! a board whose firmware sets NO_REBOOT and locks it leaves iTCO_wdt
//! without a device).
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64, the `ovmf`
//! package and root; FAILS with a clear message when one is missing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{all_on_disk, no_overlap, pair_on_server_hw, survive, wait, wait_line, VM};
use qemu_tests::{Cluster, Host, Pattern};

/// Modules init must have loaded because of the machine's devices.
const SERVER_DRIVERS: [&str; 4] = ["e1000e", "ahci", "lpc_ich", "iTCO_wdt"];

/// Every module the hardware passes of init loaded (its `hardware pass N:
/// ... loading a b c` lines).
fn loaded_by_device(host: &Host) -> BTreeSet<String> {
    host.console()
        .lines()
        .into_iter()
        .filter(|l| l.text.contains("hardware pass "))
        .filter_map(|l| l.text.split_once(", loading ").map(|(_, m)| m.to_owned()))
        .flat_map(|m| m.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// The server hardware is what `host` found and uses (see the module doc).
fn uses_the_server_hardware(cluster: &Cluster, name: &str) {
    let host = cluster.host(name).unwrap();
    let now = Duration::ZERO;
    host.wait_for("BdsDxe: loading Boot", now)
        .unwrap_or_else(|e| panic!("{name}: no sign of the UEFI firmware booting: {e}"));
    let loaded = loaded_by_device(host);
    for m in SERVER_DRIVERS {
        assert!(
            loaded.contains(m),
            "{name}: init did not load {m} by device; loaded: {loaded:?}"
        );
    }
    assert!(
        !loaded.contains("i6300esb"),
        "{name}: i6300esb loaded on a machine without one: {loaded:?}"
    );
    host.wait_for(
        Pattern::regex(r"config accepted from /dev/sd[a-z]+: ").unwrap(),
        now,
    )
    .unwrap_or_else(|e| panic!("{name}: config not read from the AHCI disk: {e}"));
    let itco = r#"/dev/watchdog\d+ \("iTCO_wdt", chipset timer\)"#;
    for who in ["init: watchdog: ", "fencing: watchdog "] {
        let line = host
            .wait_for(Pattern::regex(&format!("{who}{itco}")).unwrap(), now)
            .unwrap_or_else(|e| panic!("{name}: {who}does not name iTCO_wdt: {e}"));
        eprintln!("  [{name}] {line}");
    }
    assert_eq!(
        host.console().count("refusing go-live"),
        0,
        "{name}: fencing refused go-live with a chipset watchdog"
    );
    let h = cluster
        .config()
        .hosts
        .iter()
        .find(|h| h.name == name)
        .unwrap();
    for (net, iface) in [("FT", &h.ft), ("VM", &h.vm)] {
        let line = host
            .wait_for(format!("net: {net} network "), Duration::from_secs(0))
            .unwrap();
        assert!(
            line.contains(&format!("({})", iface.mac)) && line.contains(&iface.addr),
            "{name}: {net} network not on the NIC with the config's MAC {} and {}: {line}",
            iface.mac,
            iface.addr
        );
    }
}

/// Both hosts came up on the server hardware; prints boot-to-ready.
fn both_use_the_server_hardware(cluster: &Cluster) {
    for h in ["host-a", "host-b"] {
        let ready = cluster
            .host(h)
            .unwrap()
            .wait_for_line("appliance ready: ", Duration::ZERO)
            .unwrap();
        eprintln!(
            "boot-to-ready (ISO, q35 + OVMF, {h}): {:.1} s",
            ready.at.as_secs_f64()
        );
        uses_the_server_hardware(cluster, h);
        contract_line_on_com2(cluster, h);
    }
}

/// init's contract line reached the host's second serial port (ttyS1,
/// COM2) as well as the first: serial-over-LAN on many servers is COM2.
fn contract_line_on_com2(cluster: &Cluster, h: &str) {
    let host = cluster.host(h).unwrap();
    let line = host
        .wait_for_com2(
            &format!("appliance ready: host={h} "),
            Duration::from_secs(10),
        )
        .unwrap();
    eprintln!("{h}: ttyS1 has {line:?}");
}

#[test]
fn a_pair_on_q35_uefi_hosts_uses_itco_and_e1000e_and_fails_over() {
    let mut cluster = pair_on_server_hw("server-hw-failover", false, true);
    both_use_the_server_hardware(&cluster);
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    survive(
        &cluster,
        "primary host (q35) killed",
        || a.kill().unwrap(),
        || {
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    cluster.pass();
}

/// Cuts host-a's (the Primary's) storage path: host-b goes live on the
/// client's connection, host-a's disk requests hang and it asks fencing for
/// a reset; then the path fails them (`sever`, as in storage_failover.rs:
/// QEMU carries out a reset only once its in-flight requests end). Returns
/// the `fencing: reset requested` line.
fn cut_the_primarys_storage_until_it_asks_for_a_reset(
    cluster: &Cluster,
    what: &str,
) -> qemu_tests::ConsoleLine {
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let path_a = cluster.storage_path("host-a").unwrap();
    cluster.vm.start_capture();
    let (_, acked) = survive(
        cluster,
        what,
        || path_a.cut(),
        || {
            wait(a, "fencing: lease renewal failing".into());
            wait(
                b,
                format!("ftvmm: vm {VM}: won generation 2; live as primary"),
            );
        },
    );
    let frames = cluster.vm.stop_capture();
    no_overlap(&frames);
    all_on_disk(cluster, &acked, what);
    let asked = wait_line(a, "fencing: reset requested");
    path_a.sever();
    b.assert_absent("lockstep divergence", Duration::ZERO)
        .unwrap();
    asked
}

#[test]
fn the_q35_tco_resets_a_primary_whose_storage_path_is_cut() {
    let mut cluster = pair_on_server_hw("server-hw-tco-reset", true, true);
    both_use_the_server_hardware(&cluster);
    let asked = cut_the_primarys_storage_until_it_asks_for_a_reset(
        &cluster,
        "primary's (q35) storage path cut",
    );
    let a = cluster.host("host-a").unwrap();
    assert!(
        a.wait_stopped(Duration::from_secs(60)),
        "host-a was not reset by the TCO within 60 s of asking for it"
    );
    let reset_after = a.spawned_at().elapsed().saturating_sub(asked.at);
    a.assert_absent("Kernel panic", Duration::ZERO).unwrap();
    eprintln!(
        "tco reset: host-a reset by iTCO {:.1} s after fencing stopped feeding it",
        reset_after.as_secs_f64()
    );
    // Fencing announces when its watchdog resets at the latest (a TCO
    // resets at the second expiry: `expiries_to_reset`); the reset must come
    // by then (plus a 0.6 s tick and the console's and QEMU's delays).
    let armed = a
        .wait_for_line("fencing: watchdog /dev/watchdog0 armed", Duration::ZERO)
        .unwrap_or_else(|e| panic!("{e}"));
    let bound_s: f64 = announced_reset_bound(&armed.text)
        .unwrap_or_else(|| panic!("no reset bound in {:?}", armed.text));
    eprintln!("tco reset: fencing announced: {}", armed.text);
    // And that bound fits the planned W the lease timeout counts on, so
    // this host may take part in go-live (docs/hardware.md).
    assert!(
        armed.text.contains("within the planned"),
        "the q35 TCO does not fit the plan: {}",
        armed.text
    );
    assert!(
        reset_after.as_secs_f64() <= bound_s + 1.5,
        "the TCO reset {:.1} s after the last feed, later than the {bound_s} s fencing announced",
        reset_after.as_secs_f64()
    );
    cluster.pass();
}

/// The latest reset fencing's `armed` line announces, in seconds: `resets
/// up to N s`, or `timeout N s` for a watchdog that resets at its first expiry.
fn announced_reset_bound(line: &str) -> Option<f64> {
    let after = line
        .split("resets up to ")
        .nth(1)
        .or_else(|| line.split("timeout ").nth(1))?;
    after.split(' ').next()?.parse().ok()
}

/// How long the control waits for a reset that must not come: more than
/// twice the 9.6 s the TCO takes when it may reset.
const NO_RESET_WINDOW: Duration = Duration::from_secs(25);

#[test]
fn control_with_the_no_reboot_strap_itco_is_armed_but_never_resets() {
    let mut cluster = pair_on_server_hw("server-hw-tco-strap", true, false);
    both_use_the_server_hardware(&cluster);
    cut_the_primarys_storage_until_it_asks_for_a_reset(
        &cluster,
        "primary's (q35, no-reboot strap) storage path cut",
    );
    let a = cluster.host("host-a").unwrap();
    std::thread::sleep(NO_RESET_WINDOW);
    assert!(
        a.is_running(),
        "host-a was reset although QEMU's no-reboot strap was on: the reset \
         of the_q35_tco_resets_a_primary_whose_storage_path_is_cut may not be the TCO's"
    );
    eprintln!(
        "control: host-a still running {} s after asking for a reset (TCO strapped no-reboot)",
        NO_RESET_WINDOW.as_secs()
    );
    cluster.pass();
}
