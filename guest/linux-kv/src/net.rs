//! Network bring-up of the guest over rtnetlink: `lo` up, the virtio-net interface with the
//! `mac=`, `ip=` and `gw=` of the command line.
//!
//! The request/answer loop follows init/src/net.rs (synchronous `netlink-sys` socket, messages
//! from `netlink-packet-route`, no async runtime). [`pick_link`] is pure and unit-tested.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A failure while configuring the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel refused a request.
    #[error("netlink {what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An answer did not decode.
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

/// The interface to configure: the one with `mac`, else the first that is not loopback.
pub fn pick_link(links: &[Link], mac: [u8; 6]) -> Option<&Link> {
    links
        .iter()
        .find(|l| l.mac == Some(mac))
        .or_else(|| links.iter().find(|l| l.name != "lo"))
}

/// A synchronous rtnetlink connection.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens and binds the socket.
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
                                source: std::io::Error::from_raw_os_error(-code.get()),
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
                        LinkAttribute::Address(a) => link.mac = a.try_into().ok(),
                        _ => {}
                    }
                }
                links.push(link);
            }
        }
        Ok(links)
    }

    /// Sets the MAC of a link (done while it is down).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes = vec![LinkAttribute::Address(mac.to_vec())];
        self.request(
            &format!("set the MAC of link {index}"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )
        .map(drop)
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

    /// Adds an IPv4 address with its prefix.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes = vec![
            AddressAttribute::Local(ip.into()),
            AddressAttribute::Address(ip.into()),
        ];
        self.request(
            &format!("add {ip}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds the default route via `gw`.
    pub fn add_default_route(&mut self, gw: Ipv4Addr) -> Result<(), NetError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gw))];
        self.request(
            &format!("add default route via {gw}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, mac: Option<[u8; 6]>) -> Link {
        Link {
            index,
            name: name.into(),
            mac,
        }
    }

    #[test]
    fn picks_by_mac_then_first_non_loopback() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let links = [
            link(1, "lo", Some([0; 6])),
            link(2, "eth0", Some([2, 0, 0, 0, 0, 1])),
            link(3, "eth1", Some(mac)),
        ];
        assert_eq!(pick_link(&links, mac).map(|l| l.index), Some(3));
        assert_eq!(pick_link(&links, [9; 6]).map(|l| l.index), Some(2));
        assert_eq!(pick_link(&links[..1], mac), None);
    }
}
