//! `cluster.vm_witness`: an address outside the appliance on the VM network
//! that every host's heartbeat pings from its VM-network address (the
//! clients' router, say; `heartbeat/README.md`, The VM witness).
//!
//! It must be a plain unicast IPv4 address (no prefix), inside every
//! host's VM subnet: init adds no route, so only a directly connected
//! witness is pinged through the VM bridge (a routed one would be pinged
//! through whatever NIC the kernel picks, or not at all, and then say
//! nothing about the VM network). It must not be an appliance host's
//! address (that host is a peer, heard already) nor a protected VM's: a VM
//! answers from whichever host runs it, so a Primary would always hear its
//! own guest and never see its VM network cut.

use std::net::Ipv4Addr;

use super::net::{contains, network};
use super::{parse_cidr, ConfigError, Warning};
use crate::model::ClusterConfig;

const PATH: &str = "cluster.vm_witness";

/// Refuses a witness that could not show a host's VM network (module doc),
/// and warns about a two-host cluster without one. Addresses elsewhere in
/// the config that do not parse are skipped: their own checks refuse them
/// first.
pub(super) fn check_vm_witness(
    c: &ClusterConfig,
    warnings: &mut Vec<Warning>,
) -> Result<(), ConfigError> {
    let Some(text) = &c.cluster.vm_witness else {
        if c.hosts.len() == 2 {
            warnings.push(Warning {
                path: PATH.into(),
                message: "two hosts and no VM witness: when the VM network is cut on one \
                          side, neither host can tell which, so a Primary cut from it keeps \
                          the VM there, unreachable until the cut heals; name an address \
                          outside the appliance on the VM network (the clients' router) as \
                          [cluster] vm_witness"
                    .into(),
            });
        }
        return Ok(());
    };
    let bad = |problem: String| Err(ConfigError::at(PATH, problem));
    let Ok(ip) = text.parse::<Ipv4Addr>() else {
        return bad(format!(
            "{text:?} is not an IPv4 address (a.b.c.d, without a prefix)"
        ));
    };
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return bad(format!(
            "{ip} is not one host's unicast address: nothing could answer a ping from it as \
             the witness"
        ));
    }
    for (i, h) in c.hosts.iter().enumerate() {
        let nics = [("ft", Some(&h.ft)), ("vm", Some(&h.vm))]
            .into_iter()
            .chain([("mgmt", h.mgmt.as_ref()), ("storage", h.storage.as_ref())]);
        for (field, nic) in nics {
            let Some((nip, _)) = nic.and_then(|n| parse_cidr(&n.addr)) else {
                continue;
            };
            if nip == ip {
                return bad(format!(
                    "{ip} is host {}'s own address (hosts[{i}].{field}.addr): the witness \
                     must be outside the appliance",
                    h.name
                ));
            }
        }
    }
    if let Some((i, vm)) = (c.vms.iter().enumerate())
        .find(|(_, vm)| parse_cidr(&vm.ip).is_some_and(|(vip, _)| vip == ip))
    {
        return bad(format!(
            "{ip} is VM {}'s address (vms[{i}].ip): a VM answers from whichever host runs \
             it, so its Primary would always hear it",
            vm.name
        ));
    }
    for (i, h) in c.hosts.iter().enumerate() {
        let Some((vip, vp)) = parse_cidr(&h.vm.addr) else {
            continue;
        };
        if !contains(vip, vp, ip) {
            return bad(format!(
                "{ip} is outside host {}'s VM subnet ({}, hosts[{i}].vm.addr): init adds \
                 no route, so the witness must be on the VM network itself",
                h.name, h.vm.addr
            ));
        }
        if vp < 31 && ip == network(vip, vp) {
            return bad(format!(
                "{ip} is the network address of host {}'s VM subnet ({})",
                h.name, h.vm.addr
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::validate::{parse, ConfigError};

    const EXAMPLE: &str = include_str!("../../examples/cluster.toml");

    /// The example with `vm_witness = <w>` in `[cluster]`.
    fn with(w: &str) -> Result<crate::validate::Validated, ConfigError> {
        let text = EXAMPLE.replacen(
            "[cluster]\n",
            &format!("[cluster]\nvm_witness = {w:?}\n"),
            1,
        );
        assert_ne!(text, EXAMPLE, "the example has a [cluster] table");
        parse(&text)
    }

    fn refused(w: &str) -> String {
        let e = with(w).expect_err(w);
        assert_eq!(e.path(), Some("cluster.vm_witness"), "{e}");
        e.to_string()
    }

    #[test]
    fn two_hosts_without_a_witness_are_warned_about() {
        let three = parse(EXAMPLE).unwrap();
        assert!(three
            .warnings
            .iter()
            .all(|w| w.path != "cluster.vm_witness"));
        // host-c's entry removed (and the VM affinity naming it).
        let at = EXAMPLE.find("[[hosts]]\nid = 3").unwrap();
        let end = at + EXAMPLE[at..].find("\n\n").unwrap();
        let two =
            format!("{}{}", &EXAMPLE[..at], &EXAMPLE[end..]).replace(r#", hosts = ["host-c"]"#, "");
        let v = parse(&two).unwrap_or_else(|e| panic!("{e}\n{two}"));
        assert_eq!(v.config.hosts.len(), 2);
        let w: Vec<_> = v
            .warnings
            .iter()
            .filter(|w| w.path == "cluster.vm_witness")
            .collect();
        assert_eq!(w.len(), 1, "{:?}", v.warnings);
        assert!(
            w[0].message.contains("two hosts and no VM witness"),
            "{}",
            w[0]
        );
        let with = two.replacen(
            "[cluster]\n",
            "[cluster]\nvm_witness = \"198.51.100.254\"\n",
            1,
        );
        let v = parse(&with).unwrap();
        assert!(v.warnings.iter().all(|w| w.path != "cluster.vm_witness"));
    }

    #[test]
    fn an_address_on_every_hosts_vm_subnet_is_taken() {
        let v = with("198.51.100.254").unwrap();
        assert_eq!(
            v.config.cluster.vm_witness.as_deref(),
            Some("198.51.100.254")
        );
        assert!(parse(EXAMPLE).unwrap().config.cluster.vm_witness.is_none());
    }

    #[test]
    fn what_could_not_show_a_hosts_vm_network_is_refused_by_name() {
        let e = refused("198.51.100.254/24");
        assert!(
            e.contains("is not an IPv4 address (a.b.c.d, without a prefix)"),
            "{e}"
        );
        assert!(refused("witness.example").contains("is not an IPv4 address"));
        assert!(refused("255.255.255.255").contains("is not one host's unicast address"));
        assert!(refused("224.0.0.1").contains("is not one host's unicast address"));
        let e = refused("198.51.100.2");
        assert!(
            e.contains("is host host-b's own address (hosts[1].vm.addr)"),
            "{e}"
        );
        let e = refused("192.0.2.3");
        assert!(e.contains("host-c's own address (hosts[2].ft.addr)"), "{e}");
        let e = refused("203.0.113.1");
        assert!(e.contains("outside host"), "{e}");
        assert!(
            e.contains("VM subnet (198.51.100.1/24, hosts[0].vm.addr)"),
            "{e}"
        );
        let e = refused("198.51.100.10");
        assert!(
            e.contains("(vms[0].ip)") && e.contains("answers from whichever host runs it"),
            "{e}"
        );
        assert!(refused("198.51.100.0").contains("network address"));
    }
}
