//! The consoles init writes to: `/dev/console` (fds 0-2, where the daemons'
//! output goes too), every other console the kernel prints to (read from
//! `/proc/consoles`), and the serial ports the kernel cannot print to. A
//! server has a screen (`tty0`) and one or two serial ports for
//! serial-over-LAN (`ttyS0`, `ttyS1`): every init line, and so every
//! console-contract line (`appliance ready`, `config refused`), reaches each
//! of them.
//!
//! Why init and not the kernel writes to ttyS1: Linux binds one console per
//! console driver, and the 8250 driver's is one serial port. With
//! `console=ttyS1 console=ttyS0` the kernel takes the first it can (ttyS1)
//! and never makes ttyS0 a console, so on a machine without COM2 nothing at
//! all came out (seen in QEMU, stop 22). The command line therefore names
//! `tty0` and `ttyS0` only, and init adds the other serial ports that have a
//! UART.
//!
//! Rule: `/dev/console` is the console marked `C` (the last `console=` of the
//! command line); the others are opened once, write-only and non-blocking,
//! and a console that cannot be opened is left out (and named in the log).

/// The serial ports init writes to when the machine has them (COM1, COM2).
pub const SERIAL_PORTS: [&str; 2] = ["ttyS0", "ttyS1"];

/// One line of `/proc/consoles`: `ttyS0   -W- (EC p a)    4:64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConsole {
    pub name: String,
    /// `C`: the console `/dev/console` is.
    pub is_dev_console: bool,
    /// `E`: enabled.
    pub enabled: bool,
}

/// Parses `/proc/consoles`.
pub fn parse_proc_consoles(text: &str) -> Vec<KernelConsole> {
    text.lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?.to_string();
            let flags = l.split_once('(')?.1.split_once(')')?.0;
            Some(KernelConsole {
                name,
                is_dev_console: flags.contains('C'),
                enabled: flags.contains('E'),
            })
        })
        .collect()
}

/// The `/dev` nodes init writes to besides `/dev/console`: the enabled
/// kernel consoles, then the serial ports in `serial_present` (those with a
/// UART, [`SERIAL_PORTS`]) that are not already among them.
pub fn others(consoles: &[KernelConsole], serial_present: &[&str]) -> Vec<String> {
    let mut names: Vec<&str> = consoles
        .iter()
        .filter(|c| c.enabled && !c.is_dev_console)
        .map(|c| c.name.as_str())
        .collect();
    for port in serial_present {
        let is_console = consoles.iter().any(|c| c.name == *port);
        if !is_console && !names.contains(port) {
            names.push(port);
        }
    }
    names.dedup();
    names.into_iter().map(|n| format!("/dev/{n}")).collect()
}

/// Whether a serial port has a UART, from `/sys/class/tty/<port>/type`
/// (`0` is `PORT_UNKNOWN`: the legacy port was probed and nothing answered).
pub fn uart_present(sys_type: &str) -> bool {
    sys_type.trim().parse::<u32>().is_ok_and(|t| t != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `console=tty0 console=ttyS0,115200` on a QEMU PC (what the image's
    /// command line gives).
    const TWO: &str = "\
ttyS0                -W- (EC p a)    4:64
tty0                 -WU (E  p  )    4:7
";

    #[test]
    fn every_console_but_dev_console_is_written_too() {
        let c = parse_proc_consoles(TWO);
        assert_eq!(c.len(), 2);
        assert!(c[0].is_dev_console && !c[1].is_dev_console);
        assert_eq!(others(&c, &[]), ["/dev/tty0"]);
        // A server with COM2: init writes there as well.
        assert_eq!(others(&c, &["ttyS0", "ttyS1"]), ["/dev/tty0", "/dev/ttyS1"]);
    }

    #[test]
    fn a_serial_port_that_is_dev_console_is_not_opened_twice() {
        // Booted with console=ttyS1 (an operator's own command line): ttyS1
        // is /dev/console, ttyS0 is written by init.
        let c = parse_proc_consoles("ttyS1 -W- (EC p a) 4:65\n");
        assert_eq!(others(&c, &["ttyS0", "ttyS1"]), ["/dev/ttyS0"]);
    }

    #[test]
    fn disabled_or_odd_lines_are_left_out() {
        let c = parse_proc_consoles("ttyS0 -W- (EC p a) 4:64\nnetcon0 -W- ( ) 0:0\ngarbage\n");
        assert_eq!(c.len(), 2);
        assert!(others(&c, &[]).is_empty());
        assert!(parse_proc_consoles("").is_empty());
    }

    #[test]
    fn only_a_probed_uart_counts() {
        assert!(uart_present("4\n")); // PORT_16550A
        assert!(!uart_present("0\n")); // PORT_UNKNOWN: no COM2 here
        assert!(!uart_present(""));
        assert!(!uart_present("x"));
    }
}
