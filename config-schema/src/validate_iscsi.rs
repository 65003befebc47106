//! An iSCSI shared device (`storage.device = { iscsi = {...} }`) and the
//! hosts' storage NICs (`hosts[].storage`).
//!
//! Each host's init logs in to the portal itself, as
//! `<initiator_prefix>:<host name>`, through its storage NIC, whose address
//! it sets as written and without a route. So:
//!
//! - The portal is `a.b.c.d:port` (IPv4, non-zero port), an address a NIC can
//!   have, and no host's or VM's address.
//! - The target is an iSCSI name (RFC 3720 §3.2.6.3): an IQN
//!   `iqn.yyyy-mm.reversed.domain[:unique]` or `eui.` + 16 hex digits, of
//!   `a-z 0-9 - . :` (hex digits of an EUI name in either case), at most 223
//!   bytes. The initiator prefix is an IQN without the `:unique` part, and
//!   every initiator name it makes with a host name is a valid IQN too (host
//!   names may otherwise use `A-Z` and `_`).
//! - The LUN is at most 16383: the 14 bits of SAM's peripheral and flat
//!   space addressing, which is how Linux numbers a target's LUNs below
//!   16384.
//! - CHAP (one-way, optional): a user of 1–255 and a secret of 12–255
//!   printable ASCII bytes without spaces (RFC 3720 §8.2.1 asks for at least
//!   12 bytes of secret; open-iscsi takes at most 256). No message shows the
//!   secret.
//! - Every host has a storage NIC; none has one without an iSCSI device. The
//!   NIC's MAC and address follow the rules of the other NICs (`check_hosts`
//!   checks them with the FT, VM and management NICs), and the portal lies
//!   inside each host's storage subnet (init adds no route).

use super::{parse_cidr, ConfigError};
use crate::model::{ClusterConfig, DeviceLocator, IscsiLun};

/// Longest iSCSI name (RFC 3720 §3.2.6.1).
pub const MAX_ISCSI_NAME: usize = 223;
/// Highest LUN of peripheral/flat space addressing (14 bits).
pub const MAX_LUN: u32 = 16383;
/// Shortest CHAP secret (RFC 3720 §8.2.1).
pub const MIN_CHAP_SECRET: usize = 12;
/// Longest CHAP user and secret (open-iscsi's buffers hold 256 bytes with the NUL).
pub const MAX_CHAP: usize = 255;

/// Why `name` is not an iSCSI name (IQN or EUI), or `None` if it is one.
pub fn iscsi_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_ISCSI_NAME {
        return Some(format!(
            "is {} bytes, longer than iSCSI names may be ({MAX_ISCSI_NAME})",
            name.len()
        ));
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        let ok = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        return (!ok).then(|| "is not eui. followed by 16 hex digits".into());
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return Some(
            "is neither an IQN (iqn.yyyy-mm.reversed.domain[:unique]) nor an EUI name \
             (eui. + 16 hex digits)"
                .into(),
        );
    };
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b);
    if !rest.bytes().all(ok_char) {
        return Some("may use only a-z 0-9 - . : (an IQN is lowercase)".into());
    }
    let date = rest.as_bytes().get(..8);
    let date_ok = date.is_some_and(|d| {
        let digits = |r: std::ops::Range<usize>| d[r].iter().all(u8::is_ascii_digit);
        digits(0..4)
            && d[4] == b'-'
            && digits(5..7)
            && d[7] == b'.'
            && (1..=12).contains(&((d[5] - b'0') * 10 + (d[6] - b'0')))
    });
    if !date_ok {
        return Some("does not go on with a date yyyy-mm and a '.' after iqn.".into());
    }
    let (domain, unique) = match rest[8..].split_once(':') {
        Some((d, u)) => (d, Some(u)),
        None => (&rest[8..], None),
    };
    if domain.split('.').any(|label| label.is_empty()) {
        return Some(format!(
            "has no reversed domain name after the date ({domain:?}: empty label)"
        ));
    }
    if unique == Some("") {
        return Some("has an empty unique part after ':'".into());
    }
    None
}

/// `storage.device.iscsi`: every field on its own.
pub(super) fn check_lun(lun: &IscsiLun) -> Result<(), ConfigError> {
    const P: &str = "storage.device.iscsi";
    let portal = lun
        .portal_addr()
        .map_err(|e| ConfigError::at(format!("{P}.portal"), e.to_string()))?;
    let ip = portal.ip();
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(ConfigError::at(
            format!("{P}.portal"),
            format!("{ip} cannot be a portal's address"),
        ));
    }
    if let Some(problem) = iscsi_name_problem(&lun.target) {
        return Err(ConfigError::at(
            format!("{P}.target"),
            format!("{:?} {problem}", lun.target),
        ));
    }
    if lun.lun > MAX_LUN {
        return Err(ConfigError::at(
            format!("{P}.lun"),
            format!(
                "{} is above {MAX_LUN}: LUNs are addressed with the 14 bits of peripheral/flat \
                 space addressing",
                lun.lun
            ),
        ));
    }
    let prefix = &lun.initiator_prefix;
    let prefix_path = format!("{P}.initiator_prefix");
    if !prefix.starts_with("iqn.") {
        return Err(ConfigError::at(
            prefix_path,
            format!("{prefix:?} is not an IQN (iqn.yyyy-mm.reversed.domain): each host appends :<host name>"),
        ));
    }
    if prefix.contains(':') {
        return Err(ConfigError::at(
            prefix_path,
            format!("{prefix:?} has a ':': each host appends :<host name> itself"),
        ));
    }
    if let Some(problem) = iscsi_name_problem(prefix) {
        return Err(ConfigError::at(
            prefix_path,
            format!("{prefix:?} {problem}"),
        ));
    }
    if let Some(chap) = &lun.chap {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        let user_path = format!("{P}.chap.user");
        if chap.user.is_empty() || chap.user.len() > MAX_CHAP {
            return Err(ConfigError::at(
                user_path,
                format!("is {} bytes, not 1..={MAX_CHAP}", chap.user.len()),
            ));
        }
        if !printable(&chap.user) {
            return Err(ConfigError::at(
                user_path,
                format!(
                    "{:?} may use only printable ASCII without spaces",
                    chap.user
                ),
            ));
        }
        // Never show the secret, only its length.
        let secret_path = format!("{P}.chap.secret");
        let n = chap.secret.len();
        if !(MIN_CHAP_SECRET..=MAX_CHAP).contains(&n) {
            return Err(ConfigError::at(
                secret_path,
                format!(
                    "is {n} bytes, not {MIN_CHAP_SECRET}..={MAX_CHAP} (RFC 3720 §8.2.1 asks for \
                     at least {MIN_CHAP_SECRET})"
                ),
            ));
        }
        if !printable(&chap.secret) {
            return Err(ConfigError::at(
                secret_path,
                "may use only printable ASCII without spaces",
            ));
        }
    }
    Ok(())
}

/// Every host has a storage NIC with an iSCSI device, none without one.
/// Runs before the NICs' MACs and addresses are checked, so a storage NIC
/// that should not be there is refused for that, not for its address.
pub(super) fn check_storage_nics_present(c: &ClusterConfig) -> Result<(), ConfigError> {
    let iscsi = matches!(c.storage.device, DeviceLocator::Iscsi(_));
    for (i, h) in c.hosts.iter().enumerate() {
        match (iscsi, &h.storage) {
            (true, None) => {
                return Err(ConfigError::at(
                    format!("hosts[{i}].storage"),
                    format!(
                        "host {} has no storage NIC: with an iSCSI shared device \
                         (storage.device.iscsi) every host needs storage = {{ mac, addr }}, the \
                         NIC that reaches the portal",
                        h.name
                    ),
                ))
            }
            (false, Some(_)) => {
                return Err(ConfigError::at(
                    format!("hosts[{i}].storage"),
                    "only used with an iSCSI shared device",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// With an iSCSI device: the initiator names the hosts log in with, and the
/// portal against the hosts' addresses and storage subnets. Addresses that
/// do not parse are skipped: `check_hosts` refuses them first.
pub(super) fn check_portal_reach(c: &ClusterConfig) -> Result<(), ConfigError> {
    let DeviceLocator::Iscsi(lun) = &c.storage.device else {
        return Ok(());
    };
    for (i, h) in c.hosts.iter().enumerate() {
        let name = lun.initiator_name(&h.name);
        if let Some(problem) = iscsi_name_problem(&name) {
            return Err(ConfigError::at(
                format!("hosts[{i}].name"),
                format!(
                    "host {:?} logs in to the iSCSI target as {name:?}, which {problem}: with \
                     an iSCSI device, host names may use only a-z 0-9 - . and the initiator \
                     name may have at most {MAX_ISCSI_NAME} bytes",
                    h.name
                ),
            ));
        }
    }
    let Ok(portal) = lun.portal_addr() else {
        return Ok(());
    };
    let portal = *portal.ip();
    let mut addrs: Vec<(String, &str)> = Vec::new();
    for (i, h) in c.hosts.iter().enumerate() {
        let nics = [("ft", Some(&h.ft)), ("vm", Some(&h.vm))]
            .into_iter()
            .chain([("mgmt", h.mgmt.as_ref()), ("storage", h.storage.as_ref())]);
        for (nic, iface) in nics {
            if let Some(iface) = iface {
                addrs.push((format!("hosts[{i}].{nic}.addr"), &iface.addr));
            }
        }
    }
    for (i, vm) in c.vms.iter().enumerate() {
        addrs.push((format!("vms[{i}].ip"), &vm.ip));
    }
    for (path, addr) in &addrs {
        if parse_cidr(addr).is_some_and(|(ip, _)| ip == portal) {
            return Err(ConfigError::at(
                "storage.device.iscsi.portal",
                format!(
                    "{portal} is the address of {path}: the portal is the iSCSI target's \
                     address, not one of the cluster's"
                ),
            ));
        }
    }
    for (i, h) in c.hosts.iter().enumerate() {
        let Some(s) = &h.storage else { continue };
        let path = format!("hosts[{i}].storage.addr");
        let Some((ip, prefix)) = parse_cidr(&s.addr) else {
            continue;
        };
        if !super::net::contains(ip, prefix, portal) {
            return Err(ConfigError::at(
                path,
                format!(
                    "host {}: the iSCSI portal {portal} is not in its storage subnet {}/{prefix} \
                     ({}), and init adds no route",
                    h.name,
                    super::net::network(ip, prefix),
                    s.addr
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names() {
        for ok in [
            "iqn.2026-01.test.ftappliance:shared",
            "iqn.2026-01.test.ftappliance",
            "iqn.1992-01.com.example:storage:diskarrays-sn-a8675309",
            "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
            "eui.02004567A425678D",
            "eui.02004567a425678d",
        ] {
            assert_eq!(iscsi_name_problem(ok), None, "{ok}");
        }
        for (bad, words) in [
            ("naa.52004567ba64678d", "neither an IQN"),
            ("iqn.2026-01.Test.ftappliance", "only a-z 0-9"),
            ("iqn.2026-01.test_ftappliance", "only a-z 0-9"),
            ("iqn.2026-13.test", "date yyyy-mm"),
            ("iqn.26-01.test", "date yyyy-mm"),
            ("iqn.2026-01", "date yyyy-mm"),
            ("iqn.2026-01.", "empty label"),
            ("iqn.2026-01.test..x", "empty label"),
            ("iqn.2026-01.:x", "empty label"),
            ("iqn.2026-01.test:", "empty unique part"),
            ("eui.02004567A425678", "16 hex digits"),
            ("eui.02004567A425678G", "16 hex digits"),
        ] {
            let p = iscsi_name_problem(bad).unwrap_or_default();
            assert!(p.contains(words), "{bad}: {p:?} lacks {words:?}");
        }
        let long = format!("iqn.2026-01.test:{}", "x".repeat(MAX_ISCSI_NAME - 17));
        assert_eq!(long.len(), MAX_ISCSI_NAME);
        assert_eq!(iscsi_name_problem(&long), None);
        let p = iscsi_name_problem(&format!("{long}x")).unwrap();
        assert!(p.contains("224 bytes"), "{p}");
    }

    #[test]
    fn a_month_digit_that_is_not_one_is_no_date() {
        // `(d[5] - b'0')` on a byte below '0' must not overflow.
        assert!(iscsi_name_problem("iqn.2026-.1.test").is_some());
        assert!(iscsi_name_problem("iqn.2026-00.test").is_some());
    }
}
