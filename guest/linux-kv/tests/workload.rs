//! `mode=cpu` of the Linux guest prints the reference guest's checksum line.

use std::process::Command;

#[test]
fn cpu_mode_prints_the_reference_checksum() {
    let out = Command::new(env!("CARGO_BIN_EXE_ftguest-linux-kv"))
        .args(["--cmdline", "console=ttyS0 mode=cpu cpu_iters=200000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().next().unwrap();
    let want = format!("cpu: checksum={:016x} ", ftguest_cpuwork::run(200_000));
    assert!(line.starts_with(&want), "{line:?}, want {want:?}");
    assert!(line.ends_with(" iters=200000"), "{line:?}");
    // The value ftvmm's bench tests pin for the unikernel.
    assert!(
        line.starts_with("cpu: checksum=49fff6e82ffcff77 "),
        "{line:?}"
    );
}
