//! `refinit`: the reference PID 1 for boot-time benchmarks. It prints one line
//! on the console and powers the machine off, so "kernel + refinit" measures
//! what the kernel alone costs, next to the appliance's own init.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout();
    // With no /dev/console node stdout may be closed; the power-off still happens.
    let _ = writeln!(out, "refinit: reached /init, powering off");
    let _ = out.flush();
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        let _ = writeln!(out, "refinit: power off failed: {e}");
    }
    // PID 1 must not exit; wait for the power-off to take effect.
    loop {
        std::thread::park();
    }
}
