//! A stock Linux guest with 2 vCPUs under `ftvmm linux` (checkpoint-mode VM,
//! issue 11), inside a QEMU TCG host with nested KVM (NESTED-KVM.md).
//!
//! The L1 host boots the pinned Debian kernel with an initramfs made here:
//! busybox, the kvm modules (irqbypass, ccp, kvm, kvm-amd), the static
//! ftvmm of `make image`, and, as the guest, the same pinned vmlinuz with a
//! tiny initramfs (busybox, virtio + virtio_ring + virtio_mmio + virtio_blk
//! from the same .deb). L1's init makes an 8 MiB disk file starting with a
//! marker and runs `ftvmm linux --vcpus 2 --disk`. The guest prints how many
//! CPUs are online, loads the virtio modules, finds /dev/vda (announced by
//! ACPI), reads L1's marker, writes its own and powers itself off
//! (`poweroff -f`: ACPI S5); L1 then prints what the disk file holds.
//!
//! L1 runs on the pinned QEMU 10 of `qemu-tests/nested-qemu.lock`, not the
//! system's 7.2, whose TCG emulation of AMD SVM broke this test bed far more
//! often (the lock's header and [`retry_on_test_bed_failure`] have stop 37's
//! counts; [`boot_loop_counts_guest_faults`] measures it).
//!
//! Needs: `make image` (it leaves the kernel in `build/kernel/<release>/`
//! and the static ftvmm in `$FT_TARGET_DIR`, default `build/target`),
//! `make nested-qemu` (L1's QEMU) and busybox-static (`make prereqs`). FAILS
//! with a clear message when one is missing, and when L1 has no /dev/kvm.
//! `QEMU_TESTS_ECHO=1` echoes the console; `FT_LINUX_VM_VERBOSE=1` boots
//! the guest without `loglevel=4`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::archive::{FileSource, Node};
use image::Archive;
use qemu_tests::paths::workspace_root;
use qemu_tests::{Boot, Host, HostSpec};

const BUSYBOX: &str = "/bin/busybox";
/// Debian's package for it.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The kvm modules, in load order (NESTED-KVM.md).
const L1_MODULES: &[&str] = &[
    "virt/lib/irqbypass.ko",
    "drivers/crypto/ccp/ccp.ko",
    "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/kvm-amd.ko",
];
/// The guest's virtio modules, in load order (Debian builds them as modules;
/// `virtio_mmio` without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so the devices
/// come from the VMM's ACPI DSDT).
const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
];
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

#[path = "linux_vm/bench.rs"]
mod bench;

/// What the test needs from the build, or a message saying what to do.
struct Inputs {
    vmlinuz: PathBuf,
    moddir: PathBuf,
    ftvmm: PathBuf,
    /// L1's QEMU (`qemu-tests/nested-qemu.lock`; `None`: the system's).
    qemu: Option<qemu_tests::paths::QemuBuild>,
}

fn kernel_release(root: &Path) -> String {
    let lock = root.join("image/kernel.lock");
    let text = std::fs::read_to_string(&lock)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", lock.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("KERNEL_RELEASE="))
        .unwrap_or_else(|| panic!("{} has no KERNEL_RELEASE=", lock.display()))
        .trim()
        .to_string()
}

fn inputs() -> Inputs {
    let root = workspace_root();
    let release = kernel_release(&root);
    let kdir = root.join("build/kernel").join(&release);
    let vmlinuz = kdir.join(format!("boot/vmlinuz-{release}"));
    let moddir = kdir.join(format!("lib/modules/{release}/kernel"));
    let target = std::env::var_os("FT_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("build/target"));
    let ftvmm = target.join("x86_64-unknown-linux-gnu/release/ftvmm");
    for (what, p) in [
        ("the pinned kernel", &vmlinuz),
        ("the kernel's modules", &moddir),
        ("the static ftvmm", &ftvmm),
    ] {
        assert!(
            p.exists(),
            "{what} is missing at {}: run `make image` first (it extracts the kernel from \
             build/cache and builds the static binaries; FT_TARGET_DIR as for image/build.sh)",
            p.display()
        );
    }
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: `make prereqs` or `apt-get install {BUSYBOX_PACKAGE}`"
    );
    // `FT_L1_QEMU=system`: the system's QEMU instead, to compare the two
    // (boot_loop_counts_guest_faults).
    let qemu = qemu_tests::paths::l1_qemu().unwrap_or_else(|e| panic!("{e}"));
    Inputs {
        vmlinuz,
        moddir,
        ftvmm,
        qemu,
    }
}

fn file(path: &Path, mode: u32) -> Node {
    Node::File {
        mode,
        source: FileSource::Path(path.to_path_buf()),
    }
}

fn script(text: String) -> Node {
    Node::File {
        mode: 0o755,
        source: FileSource::Bytes(text.into_bytes()),
    }
}

fn base_archive() -> Archive {
    let mut a = Archive::new();
    for d in ["/dev", "/proc", "/sys", "/tmp"] {
        a.insert(d, Node::Dir { mode: 0o755 }).unwrap();
    }
    a.insert(
        "/dev/console",
        Node::Device {
            kind: image::archive::DeviceKind::Char,
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )
    .unwrap();
    a.insert("/bin/busybox", file(Path::new(BUSYBOX), 0o755))
        .unwrap();
    a
}

fn write_archive(a: &Archive, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    a.write_newc(0, std::io::BufWriter::new(f)).unwrap();
}

const PRELUDE: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
";

fn verbose() -> bool {
    std::env::var_os("FT_LINUX_VM_VERBOSE").is_some_and(|v| v == "1")
}

/// The guest's init. `say` prints a line on the console twice: through the
/// tty (the 8250's interrupt-driven TX path) and through /dev/kmsg (printk's
/// polled console writes). Known gap: under `ftvmm linux` the tty copy does
/// not appear yet (the guest registers no handler for IRQ 4; see the
/// verbose run's `serial` lines), so the test reads the printk copies.
const GUEST_INIT: &str = r#"
say() { echo "$*"; echo "<2>$*" > /dev/kmsg; }
irqs() { grep -E 'ttyS|serial|virtio|^ *4:' /proc/interrupts | tr -s ' ' | tr '\n' '|'; }
if [ -n "$VERBOSE" ]; then
  say "linux-guest: interrupts $(irqs)"
  say "linux-guest: serial $(tr '\n' '|' < /proc/tty/driver/serial)"
  say "linux-guest: fds $(ls -l /proc/self/fd/ | tr -s ' ' | tr '\n' '|')"
fi
say "linux-guest: $(grep -c ^processor /proc/cpuinfo) cpus online ($(cat /sys/devices/system/cpu/online))"
echo "linux-guest: userspace writes reach ttyS0"
for m in $MODULES; do
  insmod /lib/modules/$m.ko || say "linux-guest: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -b /dev/vda ]; then
  say "virtio-blk: vda present, $(cat /sys/block/vda/size) sectors"
  say "virtio-blk: read $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 9)"
  printf 'linux-guest-wrote-vda' | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null
  sync
else
  say "virtio-blk: no /dev/vda; platform devices: $(ls /sys/bus/platform/devices | tr '\n' ' ')"
fi
[ -n "$VERBOSE" ] && say "linux-guest: interrupts $(irqs)"
say 'linux-guest: powering off'
poweroff -f
sleep 10
"#;

fn guest_initrd(inp: &Inputs, body: &str, out: &Path) {
    let mut a = base_archive();
    let mut names = Vec::new();
    for m in GUEST_MODULES {
        let name = Path::new(m).file_stem().unwrap().to_str().unwrap();
        a.insert(
            &format!("/lib/modules/{name}.ko"),
            file(&inp.moddir.join(m), 0o644),
        )
        .unwrap();
        names.push(name);
    }
    let verbose = if verbose() { "1" } else { "" };
    let init = format!(
        "{PRELUDE}VERBOSE={verbose}\nMODULES='{}'\n{body}",
        names.join(" ")
    );
    a.insert("/init", script(init)).unwrap();
    write_archive(&a, out);
}

fn guest_cmdline() -> String {
    let level = if verbose() { "" } else { " loglevel=4" };
    format!("console=ttyS0 reboot=k panic=-1 pci=off no_timer_check{level}")
}

/// A temporary directory named `prefix…` holding the guest's initramfs
/// (`guest_init`) and L1's (`run`, [`l1_initrd`]); the directory and L1's
/// initramfs, to boot with [`boot_l1`].
fn initrds(
    inp: &Inputs,
    prefix: &str,
    guest_init: &str,
    run: &str,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let guest = dir.path().join("guest-initrd.img");
    guest_initrd(inp, guest_init, &guest);
    let l1 = dir.path().join("l1-initrd.img");
    l1_initrd(inp, &guest, run, &l1);
    (dir, l1)
}

/// L1's init: load kvm, make an 8 MiB disk file starting with a marker,
/// then `run` (which starts ftvmm on /guest/vmlinuz and /guest/initrd.img).
fn l1_initrd(inp: &Inputs, guest_initrd: &Path, run: &str, out: &Path) {
    l1_initrd_with(inp, guest_initrd, run, out, Vec::new())
}

/// [`l1_initrd`] with more files in L1 (path in L1, file).
fn l1_initrd_with(
    inp: &Inputs,
    guest_initrd: &Path,
    run: &str,
    out: &Path,
    extra: Vec<(String, Node)>,
) {
    let mut a = base_archive();
    for (path, node) in extra {
        a.insert(&path, node).unwrap();
    }
    let mut init = PRELUDE.to_string();
    for m in L1_MODULES {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        a.insert(
            &format!("/lib/modules/{name}"),
            file(&inp.moddir.join(m), 0o644),
        )
        .unwrap();
        init += &format!("insmod /lib/modules/{name} || echo \"l1: insmod {name} failed\"\n");
    }
    a.insert("/bin/ftvmm", file(&inp.ftvmm, 0o755)).unwrap();
    a.insert("/guest/vmlinuz", file(&inp.vmlinuz, 0o644))
        .unwrap();
    a.insert("/guest/initrd.img", file(guest_initrd, 0o644))
        .unwrap();
    init += "if [ -c /dev/kvm ]; then echo 'l1: /dev/kvm ok'; else echo 'l1: NO /dev/kvm after loading kvm-amd'; poweroff -f; fi
dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
printf 'l1-marker' | dd of=/tmp/disk.img conv=notrunc 2>/dev/null
";
    init += run;
    a.insert("/init", script(init)).unwrap();
    write_archive(&a, out);
}

fn boot_l1(inp: &Inputs, l1: PathBuf, dir: &Path) -> Host {
    let mut spec = HostSpec::new(
        "l1",
        Boot::Kernel {
            kernel: inp.vmlinuz.clone(),
            initrd: l1,
            append: "console=ttyS0 panic=-1 loglevel=4".into(),
        },
        dir,
    );
    spec.memory_mib = 1536;
    spec.cpus = 2;
    spec.watchdog = false;
    spec.qemu = inp.qemu.clone();
    Host::spawn(spec).unwrap()
}

fn step(host: &Host, what: &str, pattern: &str, from: Instant) -> String {
    step_within(host, what, pattern, from, STEP_TIMEOUT)
}

/// [`step`] waiting up to `timeout`.
fn step_within(host: &Host, what: &str, pattern: &str, from: Instant, timeout: Duration) -> String {
    let line = host
        .wait_for_next(pattern, timeout)
        .unwrap_or_else(|e| fail(host, what, e));
    eprintln!("linux_vm: {what} at {:.1} s", from.elapsed().as_secs_f64());
    line
}

/// [`step`] for a line whose order against the previous steps' is not
/// defined. (Until stop 30 the checkpoint pair's ftvmm reached the console
/// through `tail -f /tmp/console`, so "l1: ftvmm exit 0" could come before,
/// or inside, the guest's last line; it goes through `tee` now, finished
/// before the script's next `echo`, and the steps after ftvmm's end keep
/// this looser wait.)
fn step_any(host: &Host, what: &str, pattern: &str, from: Instant) -> String {
    let line = host
        .wait_for(pattern, STEP_TIMEOUT)
        .unwrap_or_else(|e| fail(host, what, e));
    eprintln!("linux_vm: {what} at {:.1} s", from.elapsed().as_secs_f64());
    line
}

/// Marks the panic of a step that failed because L1's own kernel died inside
/// KVM's SVM entry/exit path (see [`retry_on_test_bed_failure`]).
const L1_SVM_CRASH: &str = "L1 KERNEL CRASHED IN NESTED SVM";

/// Marks the panic of a step that failed because the guest triple-faulted
/// before any take-over (see [`retry_on_test_bed_failure`]).
const GUEST_FAULT: &str = "GUEST TRIPLE FAULT BEFORE ANY TAKE-OVER";

/// Marks the panic of a step that failed because L1 itself died or hung:
/// its CPU triple-faulted (QEMU logged it), its kernel oopsed or panicked
/// (stop 37: the stack guard page hit by `exc_page_fault` recursing in a
/// vCPU thread, with no `svm_vcpu_run` left in the trace), or it found one
/// of its CPUs stuck in a vCPU thread for over 20 s (a soft lockup: the
/// emulated VMRUN never came back to it). Not what runs on L1.
const L1_DIED: &str = "L1 DIED OR LOCKED UP";

/// A step failed: says whether it was the test bed's (a marker the retry
/// wrapper recognises) or not.
fn fail(host: &Host, what: &str, e: impl std::fmt::Display) -> ! {
    if qemu_tests::testbed::l1_svm_crashed(host.console()) {
        panic!("{L1_SVM_CRASH}: {what}: {e}");
    }
    let e = e.to_string();
    if e.contains("QEMU logged a triple fault of the host's CPU")
        || qemu_tests::testbed::l1_kernel_died(host.console())
    {
        panic!("{L1_DIED}: {what}: {e}");
    }
    // The guest's triple fault, with no take-over before it (the
    // Secondary's resumed guest faulting is never retried).
    let lines = host.console().lines();
    let at = |p: &str| lines.iter().position(|l| l.text.contains(p));
    if let Some(fault) = at("ftvmm linux: guest ended: guest triple fault") {
        if at("checkpoint: took over at epoch").is_none_or(|t| t > fault) {
            panic!("{GUEST_FAULT}: {what}: {e}");
        }
    }
    panic!("{what}: {e}")
}

/// Runs a nested-KVM test body up to three times in all while it fails
/// for the test bed's reasons only: L1's *kernel* died inside KVM's SVM VM
/// entry/exit (`svm_vcpu_run` in the oops, then "Kernel panic"), L1's CPU
/// triple-faulted or locked up ([`L1_DIED`]), or the guest triple-faulted
/// before any take-over ([`GUEST_FAULT`]). Any other failure fails at once,
/// and so does a fault of the guest the Secondary resumed. Each retry is
/// printed with the failure.
///
/// Why: L1 is QEMU TCG emulating AMD SVM (NESTED-KVM.md), and that
/// emulation now and then corrupts L1's own state around VMRUN/#VMEXIT (an
/// oops in `svm_vcpu_enter_exit`, `exc_page_fault` recursing until L1's
/// stack overflowed: CI at stop 25), triple-faults L1's CPU, or faults the
/// guest — with no epochs at all too (plain `ftvmm linux`, stop 30: 1 of
/// 12 runs). A userspace VMM cannot crash, triple-fault or lock up its
/// host's kernel. Stop 37 measured it ([`boot_loop_counts_guest_faults`]:
/// boots of this guest to "cpus online" as the checkpoint Primary): with
/// Debian 12's QEMU 7.2, 9 guest faults and 4 L1 deaths in 40 boots (CI
/// had failed both attempts of the checkpoint test so); with the QEMU 10
/// of `nested-qemu.lock`, 1 in 24, and up to one in four with capture
/// orders it did not keep (`linux/vcpus.rs`). A run is longer than a boot,
/// so two failures in a row were too likely for a test CI runs once.
/// Stop 48: with the capture order `linux/vcpus.rs` keeps since stop 46
/// (every vCPU parked before any is captured, for the IPIs), the boot loop
/// counted 6 guest faults in 20 boots, and `make test`'s one-process pair
/// needed its third attempt (two guest faults, 0 in the 4 full runs
/// before): four attempts, so that the bed alone fails a run about once in
/// a few hundred rather than a few dozen.
fn retry_on_test_bed_failure(name: &str, body: impl Fn()) {
    qemu_tests::testbed::retry_on(
        &format!("linux_vm: {name}"),
        &[L1_SVM_CRASH, L1_DIED, GUEST_FAULT],
        4,
        body,
    )
}

#[test]
fn stock_linux_boots_with_two_vcpus_and_a_virtio_disk_under_ftvmm() {
    retry_on_test_bed_failure("stock_linux_boots", stock_linux_boots_once);
}

fn stock_linux_boots_once() {
    let inp = inputs();
    let run = format!(
        "echo 'l1: starting ftvmm linux'
ftvmm linux --kernel /guest/vmlinuz --initrd /guest/initrd.img --vcpus 2 --mem-mib 256 \\
  --disk /tmp/disk.img --cmdline '{}'
echo \"l1: ftvmm exit $?\"
echo \"l1: disk holds $(dd if=/tmp/disk.img bs=21 count=1 2>/dev/null)\"
poweroff -f
",
        guest_cmdline()
    );
    let (dir, l1) = initrds(&inp, "ft-linux-vm-", GUEST_INIT, &run);

    let t = Instant::now();
    let host = boot_l1(&inp, l1, dir.path());
    step(&host, "L1 has /dev/kvm", "l1: /dev/kvm ok", t);
    step(&host, "ftvmm started", "l1: starting ftvmm linux", t);
    let vm_start = Instant::now();
    step(
        &host,
        "guest userspace, 2 CPUs",
        "linux-guest: 2 cpus online (0-1)",
        t,
    );
    // Only through the tty (interrupt-driven 8250), not /dev/kmsg: lost
    // before COM1 was in the DSDT (acpi.rs, `aml_com1_device`).
    step_any(
        &host,
        "a userspace console write",
        "linux-guest: userspace writes reach ttyS0",
        t,
    );
    let vda = step(
        &host,
        "guest found the virtio disk",
        "virtio-blk: vda present",
        t,
    );
    assert!(vda.contains("16384 sectors"), "8 MiB disk: {vda}");
    step(
        &host,
        "guest read L1's marker",
        "virtio-blk: read l1-marker",
        t,
    );
    let end = step(
        &host,
        "ftvmm reports the end",
        "ftvmm linux: guest ended:",
        t,
    );
    // The guest's `poweroff` (ACPI S5 through the FADT's sleep register)
    // ends the VM; before the register existed it halted the vCPUs.
    assert!(end.contains("guest power-off (ACPI S5)"), "{end}");
    step_any(&host, "ftvmm exit status", "l1: ftvmm exit 0", t);
    eprintln!(
        "linux_vm: ftvmm start to guest end {:.1} s",
        vm_start.elapsed().as_secs_f64()
    );
    step(
        &host,
        "the guest's write is in the disk file",
        "l1: disk holds linux-guest-wrote-vda",
        t,
    );
    host.assert_absent("insmod", Duration::ZERO)
        .unwrap_or_else(|e| panic!("a module did not load: {e}"));
    eprintln!("linux_vm: total {:.1} s", t.elapsed().as_secs_f64());
}

/// The guest of the checkpoint test: writes a counter to sector 1 of its
/// disk (fsync'd) and says so, sleeping 50 ms between writes (so its timers
/// must work after a take-over), up to `LAST_WRITE`, then resets.
const CKPT_GUEST_INIT: &str = r#"
say() { echo "<2>$*" > /dev/kmsg; }
say "linux-guest: $(grep -c ^processor /proc/cpuinfo) cpus online ($(cat /sys/devices/system/cpu/online))"
for m in $MODULES; do
  insmod /lib/modules/$m.ko || say "linux-guest: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
i=1
while [ $i -le 120 ]; do
  printf '%08d' $i | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
  say "ckpt-guest: wrote $i"
  sleep 0.05
  i=$((i+1))
done
say 'ckpt-guest: done'
reboot -f
sleep 10
"#;

const LAST_WRITE: u32 = 120;
const TAKE_OVER_AFTER: u32 = 40;

/// The numbers of the guest's "wrote N" lines, in console order.
fn writes(host: &Host) -> Vec<(u32, Duration)> {
    host.console()
        .lines()
        .iter()
        .filter_map(|l| {
            let n = l.text.split("ckpt-guest: wrote ").nth(1)?;
            Some((n.trim().parse().ok()?, l.at))
        })
        .collect()
}

/// The control of the checkpoint test below: the same guest (a 2-vCPU
/// stock Linux writing a counter to its disk every 50 ms, 120 times) under
/// plain `ftvmm linux`, no epochs. It must run to its end without a fault:
/// if nested KVM on TCG cannot run this guest for that long, the checkpoint
/// test's crashes say nothing about the epochs. Not in `make test` (it
/// repeats what the boot test above shows, for minutes); run with
/// `--ignored` beside the checkpoint test.
#[test]
#[ignore = "control run for the checkpoint test (issue 11), minutes long: run with --ignored"]
fn a_control_the_counter_guest_runs_to_its_end_without_epochs() {
    let inp = inputs();
    let run = format!(
        "echo 'l1: starting ftvmm linux without epochs'
ftvmm linux --kernel /guest/vmlinuz --initrd /guest/initrd.img --vcpus 2 --mem-mib 128 \\
  --disk /tmp/disk.img --cmdline '{}'
echo \"l1: ftvmm exit $?\"
echo \"l1: disk holds $(dd if=/tmp/disk.img bs=512 skip=1 count=1 2>/dev/null | head -c 8)\"
sleep 1
poweroff -f
",
        guest_cmdline()
    );
    let (dir, l1) = initrds(&inp, "ft-linux-ctl-", CKPT_GUEST_INIT, &run);
    let t = Instant::now();
    let host = boot_l1(&inp, l1, dir.path());
    step(&host, "L1 has /dev/kvm", "l1: /dev/kvm ok", t);
    step(
        &host,
        "guest userspace, 2 CPUs",
        "linux-guest: 2 cpus online (0-1)",
        t,
    );
    step(&host, "the guest writes its disk", "ckpt-guest: wrote 1", t);
    step(&host, "the guest finishes", "ckpt-guest: done", t);
    let end = step(
        &host,
        "ftvmm reports the end",
        "ftvmm linux: guest ended:",
        t,
    );
    assert!(end.contains("guest reset"), "the guest reset itself: {end}");
    step_any(&host, "ftvmm exit status", "l1: ftvmm exit 0", t);
    let disk = step_any(&host, "the disk's last write", "l1: disk holds", t);
    assert!(
        disk.contains(&format!("{LAST_WRITE:08}")),
        "the guest's last write is on the disk: {disk}"
    );
    // Strictly increasing: no rewind, no reboot (a console line cut by the
    // serial path may be missing; a repeated or smaller number may not).
    let nums: Vec<u32> = writes(&host).iter().map(|(n, _)| *n).collect();
    assert!(
        nums.windows(2).all(|p| p[1] > p[0]) && nums.last() == Some(&LAST_WRITE),
        "the count only goes up, to {LAST_WRITE}: {nums:?}"
    );
    eprintln!(
        "linux_vm: control ran to its end in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A stock Linux guest with 2 vCPUs as a checkpoint pair in one ftvmm
/// process (`--local-secondary`, 20 ms epochs) inside a QEMU-TCG host with
/// nested KVM: epochs run while it boots and writes its disk, the trigger
/// abandons the Primary mid-epoch, the Secondary resumes the last complete
/// epoch (its unfinished writes rewritten, the guest clock continuous), and
/// the guest's count goes on to its end with no reboot (a rewind only at the take-over).
/// History: at stop 22 the Primary triple-faulted within 2–60 s of running
/// epochs (7 of 7 runs), bisected to vCPU-state capture and
/// `KVM_GET_DIRTY_LOG` from the epoch thread; since the capture runs on each
/// vCPU's own thread (as QEMU does) it has passed every run (stop 25: 3 of 3,
/// take-over in 109–125 ms at epochs 314–489), so it is in `make test`.
/// `FT_CKPT_L1_ENV` puts environment (e.g. `RUST_LOG=debug `) before ftvmm,
/// `FT_CKPT_L1_ARGS` more options after it (e.g. `--clear-dirty-log`).
#[test]
fn a_checkpoint_pair_in_one_process_takes_over_a_running_linux_guest() {
    retry_on_test_bed_failure("checkpoint_pair_takes_over", checkpoint_pair_once);
}

fn checkpoint_pair_once() {
    let inp = inputs();
    let run = format!(
        "echo 'l1: starting ftvmm linux with a local secondary'
( {debug}ftvmm linux --kernel /guest/vmlinuz --initrd /guest/initrd.img --vcpus 2 --mem-mib 128 \\
  --disk /tmp/disk.img --cmdline '{cmdline}' --local-secondary --epoch-ms 20 \\
  --take-over-on /tmp/take-over {args}2>&1; echo $? > /tmp/ftvmm-rc ) | tee /tmp/console &
PID=$!
until grep -q 'ckpt-guest: wrote {TAKE_OVER_AFTER}' /tmp/console; do
  kill -0 $PID 2>/dev/null || break
  sleep 0.05
done
echo 'l1: take-over triggered'
touch /tmp/take-over
wait $PID
echo \"l1: ftvmm exit $(cat /tmp/ftvmm-rc)\"
echo \"l1: disk holds $(dd if=/tmp/disk.img bs=512 skip=1 count=1 2>/dev/null | head -c 8)\"
sleep 1
poweroff -f
",
        cmdline = guest_cmdline(),
        debug = std::env::var("FT_CKPT_L1_ENV").unwrap_or_default(),
        args = std::env::var("FT_CKPT_L1_ARGS")
            .map(|a| format!("{a} "))
            .unwrap_or_default()
    );
    let (dir, l1) = initrds(&inp, "ft-linux-ckpt-", CKPT_GUEST_INIT, &run);
    let t = Instant::now();
    let host = boot_l1(&inp, l1, dir.path());
    step(&host, "L1 has /dev/kvm", "l1: /dev/kvm ok", t);
    step(&host, "the first (full) epoch", "checkpoint: epoch 1:", t);
    step(
        &host,
        "guest userspace, 2 CPUs",
        "linux-guest: 2 cpus online (0-1)",
        t,
    );
    step(&host, "the guest writes its disk", "ckpt-guest: wrote 1", t);
    step(&host, "take-over triggered", "l1: take-over triggered", t);
    let abandoned = step(
        &host,
        "the Primary is abandoned",
        "checkpoint: primary abandoned",
        t,
    );
    let took = step(
        &host,
        "the Secondary took over",
        "checkpoint: took over at epoch",
        t,
    );
    eprintln!("linux_vm: {abandoned}\nlinux_vm: {took}");
    step(&host, "the guest finishes", "ckpt-guest: done", t);
    step_any(&host, "ftvmm exit status", "l1: ftvmm exit 0", t);
    let disk = step_any(&host, "the disk's last write", "l1: disk holds", t);
    assert!(
        disk.contains(&format!("{LAST_WRITE:08}")),
        "the guest's last write is on the disk: {disk}"
    );
    assert_eq!(
        host.console().count("cpus online"),
        1,
        "the guest did not boot again after the take-over"
    );
    host.assert_absent("insmod", Duration::ZERO)
        .unwrap_or_else(|e| panic!("a module did not load: {e}"));
    // The guest's count goes on from the epoch it was resumed at: it may
    // repeat the numbers it wrote after that epoch, never goes back before it, and
    // reaches the end.
    let w = writes(&host);
    let nums: Vec<u32> = w.iter().map(|(n, _)| *n).collect();
    // A number more than one ahead is a console line lost on the serial
    // path (seen: 10 -> 12 in a run that took over at 40 -> 40; the control
    // without epochs loses lines too), not a skipped write: the console
    // cannot tell the two apart, the disk's last value is checked above.
    let rewinds: Vec<(u32, u32)> = nums
        .windows(2)
        .filter(|p| p[1] <= p[0])
        .map(|p| (p[0], p[1]))
        .collect();
    let lost_lines = nums.windows(2).filter(|p| p[1] > p[0] + 1).count();
    assert!(
        lost_lines <= 3,
        "{lost_lines} gaps in the count: more than a lost line now and then: {nums:?}"
    );
    assert!(
        rewinds.len() <= 1,
        "one take-over, one rewind at most: {rewinds:?}"
    );
    for (before, after) in &rewinds {
        assert!(
            after <= before && *before >= TAKE_OVER_AFTER,
            "after the take-over the count resumes at or before where it was: {before} -> {after}"
        );
    }
    assert_eq!(nums.first(), Some(&1));
    assert_eq!(nums.last(), Some(&LAST_WRITE));
    // The longest gap between two writes: the take-over as the guest saw it.
    let gap = w
        .windows(2)
        .map(|p| p[1].1.saturating_sub(p[0].1))
        .max()
        .unwrap_or_default();
    eprintln!(
        "linux_vm: {} writes seen, rewinds {rewinds:?}, {lost_lines} console lines lost, longest gap between two writes {} ms; total {:.1} s",
        nums.len(),
        gap.as_millis(),
        t.elapsed().as_secs_f64()
    );
}

/// A measurement of the test bed, not in `make test`: boots the checkpoint
/// test's guest `FT_BOOTLOOP_N` times (default 20) in one L1, each up to
/// "cpus online" (where issue 11's triple faults came), and counts how each
/// boot ended. `FT_BOOTLOOP_MODE=plain` boots under plain `ftvmm linux`
/// (no epochs), otherwise as the checkpoint test's Primary (20 ms epochs,
/// a local Secondary); `FT_BOOTLOOP_CMDLINE` adds to the guest's command
/// line (e.g. `no5lvl`). Fails if any boot did not reach "cpus online".
#[test]
#[ignore = "a fault-rate measurement of the nested test bed (issue 11), minutes long: run with --ignored"]
fn boot_loop_counts_guest_faults() {
    let n: u32 = std::env::var("FT_BOOTLOOP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let checkpoint = std::env::var("FT_BOOTLOOP_MODE").as_deref() != Ok("plain");
    let extra = std::env::var("FT_BOOTLOOP_CMDLINE").unwrap_or_default();
    let inp = inputs();
    let mode = if checkpoint {
        "--local-secondary --epoch-ms 20 --take-over-on /tmp/never"
    } else {
        ""
    };
    let run = format!(
        "i=0
while [ $i -lt {n} ]; do
  i=$((i+1))
  ftvmm linux --kernel /guest/vmlinuz --initrd /guest/initrd.img --vcpus 2 --mem-mib 128 \\
    --disk /tmp/disk.img --cmdline '{cmdline} {extra}' {mode} > /tmp/c 2>&1 &
  PID=$!
  w=0
  until grep -q 'cpus online' /tmp/c; do
    kill -0 $PID 2>/dev/null || break
    w=$((w+1)); [ $w -gt 1600 ] && break
    sleep 0.05
  done
  if grep -q 'cpus online' /tmp/c; then echo \"l1: boot $i ok\"
  elif grep -q 'guest triple fault' /tmp/c; then
    grep -E 'the fault:|vcpu [0-9]:' /tmp/c
    echo \"l1: boot $i fault\"
  else
    tail -n 3 /tmp/c
    echo \"l1: boot $i other\"
  fi
  kill -9 $PID 2>/dev/null; wait $PID 2>/dev/null
done
echo 'l1: boots done'
poweroff -f
",
        cmdline = guest_cmdline(),
    );
    let (dir, l1) = initrds(&inp, "ft-linux-loop-", CKPT_GUEST_INIT, &run);
    let t = Instant::now();
    let host = boot_l1(&inp, l1, dir.path());
    step(&host, "L1 has /dev/kvm", "l1: /dev/kvm ok", t);
    let mut ends = Vec::new();
    for i in 1..=n {
        let line = step(&host, &format!("boot {i}"), &format!("l1: boot {i} "), t);
        let end = line.rsplit(' ').next().unwrap_or("").to_string();
        if end != "ok" {
            // What L1 printed of this boot's end (the fault's registers).
            let lines = host.console().lines();
            let to = lines
                .iter()
                .rposition(|l| l.text.contains(&format!("l1: boot {i} ")));
            let from = lines
                .iter()
                .rposition(|l| l.text.contains(&format!("l1: boot {} ", i - 1)));
            for l in &lines[from.map_or(0, |f| f + 1)..to.unwrap_or(0)] {
                eprintln!("linux_vm:   {}", l.text);
            }
        }
        ends.push(end);
    }
    let count = |k: &str| ends.iter().filter(|e| *e == k).count();
    eprintln!(
        "linux_vm: boot loop, {} mode, cmdline extra '{extra}': {n} boots, {} ok, {} triple faults, {} other, {:.0} s",
        if checkpoint { "checkpoint" } else { "plain" },
        count("ok"),
        count("fault"),
        count("other"),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        count("ok"),
        n as usize,
        "every boot reached 'cpus online': {ends:?}"
    );
}
