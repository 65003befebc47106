//! The consoles init writes to: `/dev/console` (fds 0-2, where the daemons'
//! output goes too) and every other console the kernel prints to, read from
//! `/proc/consoles`. A server has a screen (`tty0`) and one or two serial ports
//! for serial-over-LAN (`ttyS0`, `ttyS1`); the image's kernel command line
//! names all three, so every init line, and so every console-contract line
//! (`appliance ready`, `config refused`), reaches each of them.
//!
//! Rule: `/dev/console` is the console marked `C` (the last `console=` of the
//! command line); the others are opened once, write-only, and a console that
//! cannot be opened (a serial port the machine lacks) is left out.

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

/// The `/dev` nodes init writes to besides `/dev/console`.
pub fn others(consoles: &[KernelConsole]) -> Vec<String> {
    let mut out: Vec<String> = consoles
        .iter()
        .filter(|c| c.enabled && !c.is_dev_console)
        .map(|c| format!("/dev/{}", c.name))
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `console=tty0 console=ttyS1,115200 console=ttyS0,115200` on a q35 QEMU.
    const THREE: &str = "\
ttyS0                -W- (EC p a)    4:64
ttyS1                -W- (E  p a)    4:65
tty0                 -WU (E  p  )    4:7
";

    #[test]
    fn every_console_but_dev_console_is_written_too() {
        let c = parse_proc_consoles(THREE);
        assert_eq!(c.len(), 3);
        assert!(c[0].is_dev_console && !c[1].is_dev_console);
        assert_eq!(others(&c), ["/dev/ttyS1", "/dev/tty0"]);
    }

    #[test]
    fn disabled_or_odd_lines_are_left_out() {
        let c = parse_proc_consoles("ttyS0 -W- (EC p a) 4:64\nnetcon0 -W- ( ) 0:0\ngarbage\n");
        assert_eq!(c.len(), 2);
        assert!(others(&c).is_empty());
        assert!(parse_proc_consoles("").is_empty());
    }
}
