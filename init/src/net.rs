//! Network bring-up over rtnetlink (synchronous `netlink-sys` socket, messages
//! from `netlink-packet-route`): `lo` up, the FT NIC (found by MAC) with its
//! address, the bridge `ftbr0` enslaving the VM-network NIC and holding
//! the host's VM-network address, so ftvmm can add guest TAPs to it, and,
//! when the host has one, the management NIC (found by MAC) with its address,
//! brought up exactly as the FT NIC.
//!
//! [`plan`] is pure (config + link list -> steps) and unit-tested; [`Netlink`]
//! talks to the kernel.

use std::net::Ipv4Addr;

use config_schema::Host;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Name of the VM-network bridge ftvmm attaches guest TAPs to.
pub const BRIDGE: &str = "ftbr0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad MAC {0:?} (want aa:bb:cc:dd:ee:ff)")]
    BadMac(String),
    #[error("bad address {0:?} (want a.b.c.d/prefix)")]
    BadAddr(String),
    #[error("no interface with MAC {mac} ({role} network); present: [{present}]")]
    NoSuchMac {
        mac: String,
        role: &'static str,
        present: String,
    },
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink {what}: {errno}")]
    Kernel {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("netlink {what}: cannot decode the answer: {detail}")]
    Decode { what: String, detail: String },
}

/// An interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

/// An IPv4 address with prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(NetError::BadMac(s.into()));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(NetError::BadMac(s.into()));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| NetError::BadMac(s.into()))?;
    }
    Ok(mac)
}

pub fn parse_cidr(s: &str) -> Result<Cidr, NetError> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| NetError::BadAddr(s.into()))?;
    let addr = a.parse().map_err(|_| NetError::BadAddr(s.into()))?;
    let prefix: u8 = p.parse().map_err(|_| NetError::BadAddr(s.into()))?;
    if prefix > 32 {
        return Err(NetError::BadAddr(s.into()));
    }
    Ok(Cidr { addr, prefix })
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What to configure, resolved against the links present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ft: Link,
    pub ft_addr: Cidr,
    /// The VM-network NIC, enslaved to [`BRIDGE`].
    pub vm: Link,
    /// Goes on the bridge, not on the NIC.
    pub vm_addr: Cidr,
    /// The management NIC and its address (`hosts[].mgmt`), if configured.
    pub mgmt: Option<(Link, Cidr)>,
    /// The storage-network NIC (`hosts[].storage`: the one that reaches an
    /// iSCSI portal), if configured.
    pub storage: Option<(Link, Cidr)>,
}

/// Matches the host's configured NICs (by MAC) to the kernel's links.
pub fn plan(host: &Host, links: &[Link]) -> Result<Plan, NetError> {
    let find = |mac_text: &str, role: &'static str| -> Result<Link, NetError> {
        let mac = parse_mac(mac_text)?;
        links
            .iter()
            .find(|l| l.mac == Some(mac))
            .cloned()
            .ok_or_else(|| NetError::NoSuchMac {
                mac: mac_text.to_string(),
                role,
                present: links
                    .iter()
                    .map(|l| match &l.mac {
                        Some(m) => format!("{}={}", l.name, fmt_mac(m)),
                        None => l.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    };
    let mgmt = match &host.mgmt {
        Some(m) => Some((find(&m.mac, "management")?, parse_cidr(&m.addr)?)),
        None => None,
    };
    let storage = match &host.storage {
        Some(m) => Some((find(&m.mac, "storage")?, parse_cidr(&m.addr)?)),
        None => None,
    };
    Ok(Plan {
        ft_addr: parse_cidr(&host.ft.addr)?,
        vm_addr: parse_cidr(&host.vm.addr)?,
        ft: find(&host.ft.mac, "FT")?,
        vm: find(&host.vm.mac, "VM")?,
        mgmt,
        storage,
    })
}

/// A synchronous rtnetlink connection.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetError::Socket)?;
        socket.bind_auto().map_err(NetError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetError::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends one request and collects the answers until the ACK / DONE.
    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        self.socket.send(&buf, 0).map_err(NetError::Socket)?;

        let decode = |detail: String| NetError::Decode {
            what: what.to_string(),
            detail,
        };
        let mut answers = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rx[..], 0)
                .map_err(NetError::Socket)?;
            let mut off = 0;
            while off < n {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[off..n]).map_err(|e| decode(e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(decode("zero-length message".into()));
                }
                off += len;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(NetError::Kernel {
                                what: what.to_string(),
                                errno: nix::errno::Errno::from_raw(-code.get()),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// All links with their MACs.
    pub fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let answers = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links = Vec::new();
        for a in answers {
            if let RouteNetlinkMessage::NewLink(m) = a {
                let mut link = Link {
                    index: m.header.index,
                    name: String::new(),
                    mac: None,
                };
                for attr in m.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::Address(a) if a.len() == 6 => {
                            let mut mac = [0u8; 6];
                            mac.copy_from_slice(&a);
                            link.mac = Some(mac);
                        }
                        _ => {}
                    }
                }
                links.push(link);
            }
        }
        Ok(links)
    }

    /// Sets a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("set link {index} up"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// Adds an IPv4 address; one already present is fine.
    pub fn add_address(&mut self, index: u32, cidr: Cidr) -> Result<(), NetError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = cidr.prefix;
        m.header.index = index;
        m.attributes = vec![
            AddressAttribute::Local(cidr.addr.into()),
            AddressAttribute::Address(cidr.addr.into()),
        ];
        match self.request(
            &format!("add {cidr} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(NetError::Kernel {
                errno: nix::errno::Errno::EEXIST,
                ..
            }) => Ok(()),
            r => r.map(drop),
        }
    }

    /// Creates a bridge (an existing one is fine) and returns its index.
    pub fn ensure_bridge(&mut self, name: &str) -> Result<u32, NetError> {
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        match self.request(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_)
            | Err(NetError::Kernel {
                errno: nix::errno::Errno::EEXIST,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| NetError::Decode {
                what: format!("create bridge {name}"),
                detail: "created but not listed".into(),
            })
    }

    /// Enslaves `index` to the bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes = vec![LinkAttribute::Controller(master)];
        self.request(
            &format!("enslave link {index} to {master}"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )
        .map(drop)
    }
}

/// Brings the network up as configured for `host`. Each step is logged; the
/// first failure is returned (init logs it and carries on).
pub fn bring_up(host: &Host) -> Result<Plan, NetError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        nl.set_up(lo.index)?;
        tracing::info!("net: lo up");
    }
    let p = plan(host, &links)?;
    up_with_address(&mut nl, "FT", (&p.ft, &host.ft.mac), p.ft_addr)?;
    let br = nl.ensure_bridge(BRIDGE)?;
    nl.set_master(p.vm.index, br)?;
    nl.set_up(p.vm.index)?;
    nl.add_address(br, p.vm_addr)?;
    nl.set_up(br)?;
    tracing::info!(
        "net: VM network {} ({}) in bridge {BRIDGE} = {} up",
        p.vm.name,
        host.vm.mac,
        p.vm_addr
    );
    if let (Some((link, cidr)), Some(m)) = (&p.mgmt, &host.mgmt) {
        up_with_address(&mut nl, "management", (link, &m.mac), *cidr)?;
    }
    if let (Some((link, cidr)), Some(m)) = (&p.storage, &host.storage) {
        up_with_address(&mut nl, "storage", (link, &m.mac), *cidr)?;
    }
    Ok(p)
}

/// A NIC of its own network (FT, management): `cidr` on it, then up; says so
/// as `net: <network> network <name> (<mac>) = <cidr> up`.
fn up_with_address(
    nl: &mut Netlink,
    network: &str,
    (link, mac): (&Link, &str),
    cidr: Cidr,
) -> Result<(), NetError> {
    nl.add_address(link.index, cidr)?;
    nl.set_up(link.index)?;
    tracing::info!("net: {network} network {} ({mac}) = {cidr} up", link.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use config_schema::Interface;

    fn host() -> Host {
        Host {
            id: 1,
            name: "host-a".into(),
            ft: Interface {
                mac: "52:54:00:f7:00:01".into(),
                addr: "192.0.2.1/24".into(),
            },
            vm: Interface {
                mac: "52:54:00:F8:00:01".into(),
                addr: "198.51.100.1/24".into(),
            },
            public_key: String::new(),
            mgmt: None,
            storage: None,
        }
    }

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some([0; 6]),
            },
            Link {
                index: 2,
                name: "ens3".into(),
                mac: Some([0x52, 0x54, 0, 0xf8, 0, 1]),
            },
            Link {
                index: 3,
                name: "ens4".into(),
                mac: Some([0x52, 0x54, 0, 0xf7, 0, 1]),
            },
        ]
    }

    #[test]
    fn nics_are_matched_by_mac_not_by_order() {
        let p = plan(&host(), &links()).unwrap();
        assert_eq!(p.ft.name, "ens4");
        assert_eq!(p.vm.name, "ens3");
        assert_eq!(p.ft_addr.to_string(), "192.0.2.1/24");
        assert_eq!(
            p.vm_addr,
            Cidr {
                addr: Ipv4Addr::new(198, 51, 100, 1),
                prefix: 24
            }
        );
    }

    #[test]
    fn a_missing_nic_names_what_is_present() {
        let mut l = links();
        l.remove(2);
        let e = plan(&host(), &l).unwrap_err().to_string();
        assert!(e.contains("52:54:00:f7:00:01 (FT network)"), "{e}");
        assert!(e.contains("ens3=52:54:00:f8:00:01"), "{e}");
    }

    fn with_mgmt() -> (Host, Vec<Link>) {
        let mut h = host();
        h.mgmt = Some(Interface {
            mac: "52:54:00:f9:00:01".into(),
            addr: "203.0.113.1/24".into(),
        });
        let mut l = links();
        l.push(Link {
            index: 4,
            name: "ens5".into(),
            mac: Some([0x52, 0x54, 0, 0xf9, 0, 1]),
        });
        (h, l)
    }

    #[test]
    fn the_management_nic_is_matched_by_mac_too() {
        assert_eq!(plan(&host(), &links()).unwrap().mgmt, None);
        let (h, mut l) = with_mgmt();
        l.rotate_left(2); // order does not matter
        let p = plan(&h, &l).unwrap();
        let (link, cidr) = p.mgmt.unwrap();
        assert_eq!((link.index, link.name.as_str()), (4, "ens5"));
        assert_eq!(cidr.to_string(), "203.0.113.1/24");
        assert_eq!(p.ft.name, "ens4");
    }

    #[test]
    fn the_storage_nic_is_matched_by_mac_and_named_when_missing() {
        let mut h = host();
        h.storage = Some(Interface {
            mac: "52:54:00:fa:00:01".into(),
            addr: "10.0.2.21/24".into(),
        });
        let mut l = links();
        let e = plan(&h, &l).unwrap_err().to_string();
        assert!(
            e.starts_with("no interface with MAC 52:54:00:fa:00:01 (storage network)"),
            "{e}"
        );
        l.push(Link {
            index: 5,
            name: "ens6".into(),
            mac: Some([0x52, 0x54, 0, 0xfa, 0, 1]),
        });
        let (link, cidr) = plan(&h, &l).unwrap().storage.unwrap();
        assert_eq!((link.index, cidr.to_string().as_str()), (5, "10.0.2.21/24"));
        assert_eq!(plan(&host(), &l).unwrap().storage, None);
    }

    #[test]
    fn a_missing_management_nic_is_refused_like_a_missing_ft_nic() {
        let (h, mut l) = with_mgmt();
        l.pop();
        let e = plan(&h, &l).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "no interface with MAC 52:54:00:f9:00:01 (management network); present: ["
            ),
            "{e}"
        );
        assert!(e.contains("ens4=52:54:00:f7:00:01"), "{e}");
    }

    #[test]
    fn malformed_mac_and_address_are_refused() {
        assert!(parse_mac("52:54:00:f7:00").is_err());
        assert!(parse_mac("52:54:00:f7:00:zz").is_err());
        assert!(parse_mac("525:4:00:f7:00:01").is_err());
        assert!(parse_cidr("192.0.2.1").is_err());
        assert!(parse_cidr("192.0.2.1/33").is_err());
        assert!(parse_cidr("192.0.2/24").is_err());
    }
}
