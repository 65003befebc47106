//! The guest's kernel command line (space-separated `key=value` pairs, see README.md).
//!
//! Keys: `virtio_mmio=0xd0000000@5,0xd0001000@6`, `mode=kv|cpu`, `ip=198.51.100.10/24`,
//! `gw=198.51.100.1` (optional default route), `mac=52:54:00:12:34:56`, `port=7000`,
//! `cpu_iters=N`, `cpu_yield=N` (CPU mode: a VM exit every N rounds, 0 = none),
//! `dirty_mib=N` and `dirty_rate=N` (dirty mode: working set in MiB, at least 1; pages written
//! per millisecond, 0 = idle). Unknown keys are collected so the guest can warn about them.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// One virtio-mmio device window and its IRQ line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Guest-physical base address of the 4 KiB register window.
    pub base: u64,
    /// PIC IRQ line (0..=15).
    pub irq: u8,
}

/// What the guest does after boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The durable KV service over TCP.
    Kv,
    /// The fixed CPU-bound computation, then exit.
    Cpu,
    /// Writes guest memory forever at a paced rate (live state transfer benchmarks).
    Dirty,
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// virtio-mmio devices in command-line order.
    pub virtio_mmio: Vec<VirtioMmio>,
    /// Mode (default `kv`).
    pub mode: Mode,
    /// IPv4 address (default 198.51.100.10).
    pub ip: [u8; 4],
    /// Prefix length (default 24).
    pub prefix_len: u8,
    /// Optional default gateway.
    pub gateway: Option<[u8; 4]>,
    /// MAC address (default 52:54:00:12:34:56).
    pub mac: [u8; 6],
    /// KV TCP port (default 7000).
    pub port: u16,
    /// CPU mode work size (default 1,000,000).
    pub cpu_iters: u64,
    /// CPU mode: rounds between two deliberate VM exits (a read of COM1's LSR), giving a VMM that
    /// injects interrupts only at exits a chance to deliver timer ticks; 0 (default) = none.
    pub cpu_yield: u64,
    /// Dirty mode: the working set in MiB (default 16, at least 1).
    pub dirty_mib: u64,
    /// Dirty mode: pages of the working set written per millisecond (default 1000; 0 = the
    /// guest only idles).
    pub dirty_rate: u64,
    /// Keys that were not recognised.
    pub unknown: Vec<String>,
}

impl Default for BootArgs {
    fn default() -> Self {
        Self {
            virtio_mmio: Vec::new(),
            mode: Mode::Kv,
            ip: [198, 51, 100, 10],
            prefix_len: 24,
            gateway: None,
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            port: 7000,
            cpu_iters: 1_000_000,
            cpu_yield: 0,
            dirty_mib: 16,
            dirty_rate: 1000,
            unknown: Vec::new(),
        }
    }
}

/// A malformed command-line value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad value for {key}: {value:?}")]
pub struct BootArgsError {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_mmio_list(s: &str) -> Option<Vec<VirtioMmio>> {
    s.split(',')
        .map(|dev| {
            let (base, irq) = dev.split_once('@')?;
            let irq = u8::try_from(parse_u64(irq)?).ok().filter(|&i| i < 16)?;
            Some(VirtioMmio {
                base: parse_u64(base)?,
                irq,
            })
        })
        .collect()
}

impl BootArgs {
    /// Parses a command line; the first malformed value is an error.
    pub fn parse(cmdline: &str) -> Result<Self, BootArgsError> {
        let mut args = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            let bad = || BootArgsError {
                key: key.to_string(),
                value: value.to_string(),
            };
            match key {
                "virtio_mmio" => args.virtio_mmio = parse_mmio_list(value).ok_or_else(bad)?,
                "mode" => {
                    args.mode = match value {
                        "kv" => Mode::Kv,
                        "cpu" => Mode::Cpu,
                        "dirty" => Mode::Dirty,
                        _ => return Err(bad()),
                    }
                }
                "ip" => {
                    let (ip, prefix) = value.split_once('/').unwrap_or((value, "24"));
                    args.ip = parse_ipv4(ip).ok_or_else(bad)?;
                    args.prefix_len = prefix.parse().ok().filter(|&p| p <= 32).ok_or_else(bad)?;
                }
                "gw" => args.gateway = Some(parse_ipv4(value).ok_or_else(bad)?),
                "mac" => args.mac = parse_mac(value).ok_or_else(bad)?,
                "port" => {
                    args.port = value.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
                }
                "cpu_iters" => args.cpu_iters = parse_u64(value).ok_or_else(bad)?,
                "cpu_yield" => args.cpu_yield = parse_u64(value).ok_or_else(bad)?,
                "dirty_mib" => {
                    args.dirty_mib = parse_u64(value).filter(|&m| m > 0).ok_or_else(bad)?;
                }
                "dirty_rate" => args.dirty_rate = parse_u64(value).ok_or_else(bad)?,
                _ => args.unknown.push(word.to_string()),
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let a = BootArgs::parse(
            "virtio_mmio=0xd0000000@5,0xd0001000@6 mode=cpu ip=10.0.0.2/16 gw=10.0.0.1 \
             mac=02:00:00:aa:bb:cc port=7001 cpu_iters=5000 cpu_yield=0x100 extra",
        )
        .unwrap();
        assert_eq!(
            a.virtio_mmio,
            [
                VirtioMmio {
                    base: 0xd000_0000,
                    irq: 5
                },
                VirtioMmio {
                    base: 0xd000_1000,
                    irq: 6
                }
            ]
        );
        assert_eq!(a.mode, Mode::Cpu);
        assert_eq!((a.ip, a.prefix_len), ([10, 0, 0, 2], 16));
        assert_eq!(a.gateway, Some([10, 0, 0, 1]));
        assert_eq!(a.mac, [2, 0, 0, 0xaa, 0xbb, 0xcc]);
        assert_eq!((a.port, a.cpu_iters, a.cpu_yield), (7001, 5000, 256));
        assert_eq!(a.unknown, ["extra"]);
    }

    #[test]
    fn defaults() {
        let a = BootArgs::parse("").unwrap();
        assert_eq!(a, BootArgs::default());
        assert_eq!(a.port, 7000);
        assert_eq!(a.mode, Mode::Kv);
        assert_eq!((a.dirty_mib, a.dirty_rate), (16, 1000));
    }

    #[test]
    fn dirty_mode() {
        let a = BootArgs::parse("mode=dirty dirty_mib=0x20 dirty_rate=0").unwrap();
        assert_eq!(a.mode, Mode::Dirty);
        assert_eq!((a.dirty_mib, a.dirty_rate), (32, 0));
        assert!(a.unknown.is_empty());
        let a = BootArgs::parse("mode=dirty").unwrap();
        assert_eq!((a.dirty_mib, a.dirty_rate), (16, 1000));
    }

    #[test]
    fn bad_values() {
        for line in [
            "mode=fast",
            "ip=1.2.3",
            "ip=1.2.3.4/33",
            "ip=1.2.3.400",
            "mac=52:54:00:12:34",
            "mac=5254:00:12:34:56:78",
            "port=0",
            "port=70000",
            "cpu_iters=-1",
            "cpu_yield=x",
            "dirty_mib=0",
            "dirty_mib=-1",
            "dirty_rate=fast",
            "virtio_mmio=0xd0000000",
            "virtio_mmio=0xd0000000@16",
            "virtio_mmio=zz@5",
        ] {
            assert!(BootArgs::parse(line).is_err(), "{line} accepted");
        }
    }
}
