//! Hardware discovery: which of the image's modules this machine needs, from
//! the modaliases of its devices matched against the image's `modules.alias`
//! (as udev + modprobe do, without either).
//!
//! Rules:
//! - A module is loaded when some `/sys/bus/*/devices/*/modalias` matches one
//!   of its `alias` patterns (shell globs: `*`, `?`, `[...]`).
//! - Loading a driver can add devices (lpc_ich adds the `platform:iTCO_wdt`
//!   device, virtio_pci the virtio devices, an HBA its SCSI disks), so the
//!   scan repeats until a pass loads nothing new, at most [`MAX_PASSES`] times.
//! - [`ALWAYS`] are loaded on every machine: services and class drivers
//!   whose devices appear later or have no alias.
//! - The watchdog: see `config_schema::watchdog` (which one is best) and
//!   `system::load_watchdog` (ipmi_watchdog only without a chipset one,
//!   softdog only without any that keeps real time).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Loaded on every machine, before discovery: VM networking (tun, bridge),
/// the power button (button, evdev), SCSI disks behind any HBA (sd_mod) and
/// USB sticks (usb_storage, uas: USB devices enumerate after discovery ran).
pub const ALWAYS: &[&str] = &[
    "tun",
    "bridge",
    "button",
    "evdev",
    "sd_mod",
    "usb_storage",
    "uas",
];

/// Discovery passes at most (each pass may add devices for the next).
pub const MAX_PASSES: usize = 5;

/// `modules.alias`: `alias <pattern> <module>` lines, in file order.
#[derive(Debug, Default, Clone)]
pub struct AliasIndex {
    aliases: Vec<(String, String)>,
}

impl AliasIndex {
    /// Parses depmod's `modules.alias`; other lines (comments) are skipped.
    pub fn parse(text: &str) -> Self {
        let aliases = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_string(), crate::modules::normalize(module)))
                    }
                    _ => None,
                }
            })
            .collect();
        AliasIndex { aliases }
    }

    pub fn len(&self) -> usize {
        self.aliases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// The modules with an alias matching `modalias`.
    pub fn modules_for(&self, modalias: &str) -> BTreeSet<&str> {
        self.aliases
            .iter()
            .filter(|(p, _)| glob(p.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.as_str())
            .collect()
    }

    /// The modules any of `modaliases` needs.
    pub fn wanted<S: AsRef<str>>(&self, modaliases: &[S]) -> BTreeSet<String> {
        modaliases
            .iter()
            .flat_map(|m| self.modules_for(m.as_ref()))
            .map(str::to_string)
            .collect()
    }
}

/// fnmatch(3) without flags over bytes: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`/`[^x]`.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, s[i]),
            Some(&c) => (c == s[i]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at `pattern[open]`; the index
/// after it if `c` is in it. An unclosed `[` is a literal.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut j = open + 1;
    let negate = matches!(pattern.get(j), Some(b'!' | b'^'));
    if negate {
        j += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        match pattern.get(j) {
            None => return (c == b'[').then_some(open + 1),
            Some(b']') if !first => break,
            Some(&lo) => {
                if pattern.get(j + 1) == Some(&b'-')
                    && pattern.get(j + 2).is_some_and(|&h| h != b']')
                {
                    hit |= (lo..=pattern[j + 2]).contains(&c);
                    j += 3;
                } else {
                    hit |= lo == c;
                    j += 1;
                }
            }
        }
        first = false;
    }
    (hit != negate).then_some(j + 1)
}

/// Every `sys/bus/*/devices/*/modalias` below `root`, sorted, without duplicates.
pub fn read_modaliases(root: &Path) -> Vec<String> {
    let mut out = BTreeSet::new();
    let Ok(buses) = fs::read_dir(root.join("sys/bus")) else {
        return Vec::new();
    };
    for bus in buses.filter_map(Result::ok) {
        let Ok(devices) = fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.filter_map(Result::ok) {
            if let Ok(alias) = fs::read_to_string(dev.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.insert(alias.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of the image's real modules.alias (Debian 6.1.0-56).
    const ALIAS: &str = "\
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d00002918sv*sd*bc*sc*i* lpc_ich
alias platform:iTCO_wdt iTCO_wdt
alias pci:v00008086d000025ABsv*sd*bc*sc*i* i6300esb
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias pci:v00001022d0000790Bsv*sd*bc*sc*i* sp5100_tco
alias platform:dmi-ipmi-si ipmi_si
alias acpi*:IPI0001:* ipmi_si
alias scsi:t-0x00* sd_mod
alias cpu:type:x86,ven*fam*mod*:feature:*0058* kvm_intel
";

    #[test]
    fn q35_devices_pick_their_drivers_and_nothing_else() {
        let idx = AliasIndex::parse(ALIAS);
        assert_eq!(idx.len(), 14);
        // What `-M q35 -device e1000e -device nvme` shows in /sys/bus/*/devices/*/modalias.
        let q35 = [
            "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00", // host bridge
            "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00", // ICH9 LPC
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", // ICH9 AHCI
            "pci:v00008086d00002930sv00001AF4sd00001100bc0Csc05i00", // ICH9 SMBus
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", // e1000e
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", // nvme
            "acpi:PNP0501:",
            "platform:serial8250",
        ];
        let got = idx.wanted(&q35);
        let want: BTreeSet<String> = ["lpc_ich", "ahci", "e1000e", "nvme"]
            .map(String::from)
            .into();
        assert_eq!(got, want);
        // The next pass: lpc_ich added the TCO device.
        assert_eq!(
            idx.wanted(&["platform:iTCO_wdt"]),
            BTreeSet::from(["iTCO_wdt".to_string()])
        );
    }

    #[test]
    fn virtio_and_ipmi_and_amd_devices_match() {
        let idx = AliasIndex::parse(ALIAS);
        let m = |a: &str| idx.modules_for(a).into_iter().collect::<Vec<_>>();
        assert_eq!(
            m("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(m("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(m("virtio:d00000012v00001AF4"), Vec::<&str>::new());
        assert_eq!(m("platform:dmi-ipmi-si"), ["ipmi_si"]);
        assert_eq!(m("acpi:IPI0001:"), ["ipmi_si"]);
        assert_eq!(
            m("pci:v00001022d0000790Bsv00001022sd0000790Bbc0Csc05i00"),
            ["sp5100_tco"]
        );
        assert_eq!(m("scsi:t-0x00"), ["sd_mod"]);
        assert_eq!(
            m("platform:iTCO_wdtX"),
            Vec::<&str>::new(),
            "no implicit trailing *"
        );
        assert_eq!(
            m("cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001,0058,0080"),
            ["kvm_intel"]
        );
    }

    #[test]
    fn glob_follows_fnmatch() {
        let g = |p: &str, s: &str| glob(p.as_bytes(), s.as_bytes());
        assert!(g("a*b*c", "aXXbYYc"));
        assert!(g("a*b*c", "abc"));
        assert!(!g("a*b*c", "abcd"));
        assert!(g("*", ""));
        assert!(g("a?c", "abc") && !g("a?c", "ac"));
        assert!(g("t-0x0[0-7E]*", "t-0x0E") && g("t-0x0[0-7E]*", "t-0x05x"));
        assert!(!g("t-0x0[0-7E]*", "t-0x0F"));
        assert!(g("x[!a]", "xb") && !g("x[!a]", "xa") && g("x[^a]", "xb"));
        assert!(g("[]]", "]"), "a leading ] is literal");
        assert!(g("a[b", "a[b"), "an unclosed [ is literal");
        assert!(g("*:feature:*0058*", "cpu:x:feature:,0001,0058,0080"));
    }

    #[test]
    fn modaliases_are_read_from_every_bus() {
        let dir = tempfile::tempdir().unwrap();
        for (bus, dev, alias) in [
            (
                "pci",
                "0000:00:1f.0",
                "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00\n",
            ),
            ("platform", "iTCO_wdt", "platform:iTCO_wdt\n"),
            ("platform", "empty", ""),
            ("virtio", "virtio0", "virtio:d00000001v00001AF4\n"),
        ] {
            let d = dir
                .path()
                .join("sys/bus")
                .join(bus)
                .join("devices")
                .join(dev);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("modalias"), alias).unwrap();
        }
        let nodev = dir.path().join("sys/bus/cpu/devices/cpu0");
        fs::create_dir_all(nodev).unwrap();
        assert_eq!(
            read_modaliases(dir.path()),
            [
                "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00",
                "platform:iTCO_wdt",
                "virtio:d00000001v00001AF4"
            ]
        );
        let idx = AliasIndex::parse(ALIAS);
        let want: BTreeSet<String> = ["lpc_ich", "iTCO_wdt", "virtio_net"]
            .map(String::from)
            .into();
        assert_eq!(idx.wanted(&read_modaliases(dir.path())), want);
    }
}
