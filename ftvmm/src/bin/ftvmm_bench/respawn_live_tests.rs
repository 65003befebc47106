//! The live-transfer bench's console parsing and rate arithmetic, without KVM.

use super::*;

#[test]
fn the_counter_address_comes_from_the_guest_line() {
    let line = "dirty: working set 16 MiB at 0x40e000, 1000 pages/ms, counter at 0x2c1f08";
    assert_eq!(counter_address(line).unwrap(), 0x2c1f08);
    assert!(counter_address("dirty: working set 16 MiB").is_err());
    assert!(counter_address("dirty: counter at 0xzz").is_err());
}

#[test]
fn rate_is_pages_per_millisecond() {
    let t = Instant::now();
    let later = t + Duration::from_millis(20);
    assert_eq!(rate((100, t), (2100, later)), 100.0);
    // A counter that did not move, and no time at all.
    assert_eq!(rate((5, t), (5, later)), 0.0);
    assert!(rate((0, t), (9, t)).is_nan());
}

#[test]
fn the_guest_command_line_asks_for_dirty_mode() {
    let s = spec(Path::new("k"), 100);
    assert_eq!(s.mem_mib, MEM_MIB);
    assert_eq!(s.cmdline, "mode=dirty dirty_mib=16 dirty_rate=100");
}
