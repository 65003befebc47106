//! Subnets of the hosts' networks: hosts whose FT addresses are not on one
//! subnet (a warning), and management subnets that overlap the FT or VM
//! network (an error).
//!
//! Each host's `ft.addr` is `a.b.c.d/prefix`; init gives the FT NIC exactly
//! that address and adds no route. Two hosts reach each other on the FT
//! network (heartbeats, logging channel) without a router only if each
//! address lies in the other's subnet (address and prefix as written). When
//! they do not, that is a [`Warning`], not an error: a network may route
//! between the subnets (proxy ARP) and the config cannot know.
//!
//! A host's `mgmt.addr` goes on its own NIC, beside the FT NIC and the VM
//! bridge. If its subnet overlapped one of theirs, the kernel would have two
//! routes for the same addresses and answer an operator (or send
//! heartbeats) through whichever NIC its routing picks: so a management
//! subnet that overlaps any host's FT or VM subnet is refused, naming both.
//! The same holds for a storage subnet (`hosts[].storage`, the NIC to an
//! iSCSI portal), which must not overlap a management subnet either.

use std::net::Ipv4Addr;

use super::{parse_cidr, ConfigError, Warning};
use crate::model::ClusterConfig;

/// The network of `ip/prefix`: `ip` with the host bits cleared.
pub(super) fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// Whether `other` lies in the subnet `ip/prefix`.
pub(super) fn contains(ip: Ipv4Addr, prefix: u8, other: Ipv4Addr) -> bool {
    network(ip, prefix) == network(other, prefix)
}

/// Whether the subnets `a/pa` and `b/pb` share an address: one contains
/// the other.
fn overlap((a, pa): (Ipv4Addr, u8), (b, pb): (Ipv4Addr, u8)) -> bool {
    let p = pa.min(pb);
    network(a, p) == network(b, p)
}

/// Refuses a host's management or storage subnet that overlaps the FT or
/// VM subnet of any host (its own first), and a storage subnet that
/// overlaps any host's management subnet, at `hosts[i].mgmt.addr` or
/// `hosts[i].storage.addr`. Addresses that do not parse are skipped:
/// `check_hosts` refuses them first.
pub(super) fn check_mgmt_subnets(c: &ClusterConfig) -> Result<(), ConfigError> {
    for (i, h) in c.hosts.iter().enumerate() {
        let own = [
            ("mgmt", "management", h.mgmt.as_ref()),
            ("storage", "storage", h.storage.as_ref()),
        ];
        for (field, what, nic) in own {
            let Some(m) = nic else { continue };
            let Some((mip, mp)) = parse_cidr(&m.addr) else {
                continue;
            };
            let own_first = std::iter::once((i, h)).chain(c.hosts.iter().enumerate());
            for (j, o) in own_first {
                let mut others = vec![("FT", Some(&o.ft.addr)), ("VM", Some(&o.vm.addr))];
                if field == "storage" {
                    others.push(("management", o.mgmt.as_ref().map(|n| &n.addr)));
                }
                for (net, addr) in others {
                    let Some(addr) = addr else { continue };
                    let Some((oip, op)) = parse_cidr(addr) else {
                        continue;
                    };
                    if !overlap((mip, mp), (oip, op)) {
                        continue;
                    }
                    let whose = match j == i {
                        true => "its own".to_string(),
                        false => format!("{}'s (hosts[{j}])", o.name),
                    };
                    return Err(ConfigError::at(
                        format!("hosts[{i}].{field}.addr"),
                        format!(
                            "host {}: {what} subnet {}/{mp} ({}) overlaps {whose} {net} subnet \
                             {}/{op} ({addr}): the {what} network needs a subnet of its own",
                            h.name,
                            network(mip, mp),
                            m.addr,
                            network(oip, op),
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One warning for each host whose FT address is not on one subnet with an
/// earlier host's (the first such host is named), at `hosts[j].ft.addr`.
/// Addresses that do not parse are skipped: `check_hosts` refuses them first.
pub(super) fn check_ft_subnets(c: &ClusterConfig, warnings: &mut Vec<Warning>) {
    let addrs: Vec<Option<(Ipv4Addr, u8)>> =
        c.hosts.iter().map(|h| parse_cidr(&h.ft.addr)).collect();
    for (j, b) in c.hosts.iter().enumerate() {
        let Some((bip, bp)) = addrs[j] else { continue };
        let other = c.hosts[..j].iter().zip(&addrs).find_map(|(a, aa)| {
            let (aip, ap) = (*aa)?;
            let same = contains(aip, ap, bip) && contains(bip, bp, aip);
            (!same).then_some((a, aip, ap))
        });
        let Some((a, aip, ap)) = other else { continue };
        warnings.push(Warning {
            path: format!("hosts[{j}].ft.addr"),
            message: format!(
                "FT addresses of {} ({}, subnet {}/{ap}) and {} ({}, subnet {}/{bp}) are not \
                 in one subnet and init adds no route: heartbeats and the logging channel \
                 between them work only if the FT network answers for the other subnet \
                 (e.g. proxy ARP)",
                a.name,
                a.ft.addr,
                network(aip, ap),
                b.name,
                b.ft.addr,
                network(bip, bp),
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_containment() {
        assert_eq!(network(ip("192.0.2.77"), 24), ip("192.0.2.0"));
        assert_eq!(network(ip("192.0.2.77"), 32), ip("192.0.2.77"));
        assert_eq!(network(ip("192.0.2.77"), 0), ip("0.0.0.0"));
        assert!(contains(ip("10.1.2.3"), 16, ip("10.1.200.1")));
        assert!(!contains(ip("10.1.2.3"), 24, ip("10.1.200.1")));
    }

    #[test]
    fn subnets_overlap_when_one_contains_the_other() {
        assert!(overlap((ip("10.1.2.3"), 16), (ip("10.1.200.1"), 24)));
        assert!(overlap((ip("10.1.200.1"), 24), (ip("10.1.2.3"), 16)));
        assert!(!overlap((ip("10.1.2.3"), 24), (ip("10.1.200.1"), 24)));
        assert!(overlap((ip("192.0.2.1"), 0), (ip("203.0.113.1"), 24)));
        assert!(!overlap((ip("192.0.2.1"), 32), (ip("192.0.2.2"), 32)));
    }
}
