//! Reading captured frames after a failure: a one-line description of a
//! frame (ARP, IPv4 TCP/UDP/ICMP with the fields a TCP stall is read from)
//! and a pcap file of a capture for `tcpdump -r` / Wireshark.
//!
//! Diagnostics only: a test fails on what it asserts, and prints these to
//! say what the network carried when it did.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use super::CapturedFrame;

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const IP_ICMP: u8 = 1;
const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ip4(b: &[u8], at: usize) -> Option<String> {
    let a = b.get(at..at + 4)?;
    Some(format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]))
}

fn mac(b: &[u8], at: usize) -> Option<String> {
    let m = b.get(at..at + 6)?;
    Some(format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    ))
}

/// `tcpdump`-like flags of a TCP header's flag byte.
fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(0x02, 'S'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    s
}

/// One line saying what `frame` (Ethernet) is; "short frame" or the
/// EtherType when it is something this does not read.
pub fn describe(frame: &[u8]) -> String {
    describe_inner(frame)
        .unwrap_or_else(|| format!("short or malformed frame ({} bytes)", frame.len()))
}

fn describe_inner(f: &[u8]) -> Option<String> {
    let src = mac(f, 6)?;
    match be16(f, 12)? {
        ETH_ARP => {
            let op = be16(f, 20)?;
            let (sha, spa, tpa) = (mac(f, 22)?, ip4(f, 28)?, ip4(f, 38)?);
            Some(match op {
                1 => format!("ARP who-has {tpa} tell {spa} ({sha})"),
                2 => format!("ARP {spa} is-at {sha}"),
                n => format!("ARP op {n} {spa} -> {tpa}"),
            })
        }
        ETH_IPV4 => {
            let ip = f.get(14..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            let (proto, s, d) = (*ip.get(9)?, ip4(ip, 12)?, ip4(ip, 16)?);
            let l4 = ip.get(ihl..total.min(ip.len()))?;
            Some(match proto {
                IP_TCP => {
                    let off = usize::from(l4.get(12)? >> 4) * 4;
                    let len = l4.len().saturating_sub(off);
                    format!(
                        "TCP {s}.{} > {d}.{} [{}] seq {} ack {} win {} len {len}",
                        be16(l4, 0)?,
                        be16(l4, 2)?,
                        tcp_flags(*l4.get(13)?),
                        be32(l4, 4)?,
                        be32(l4, 8)?,
                        be16(l4, 14)?,
                    )
                }
                IP_UDP => format!(
                    "UDP {s}.{} > {d}.{} len {}",
                    be16(l4, 0)?,
                    be16(l4, 2)?,
                    l4.len().saturating_sub(8)
                ),
                IP_ICMP => format!("ICMP {s} > {d} type {}", l4.first()?),
                p => format!("IPv4 {s} > {d} proto {p}"),
            })
        }
        t => Some(format!("ethertype {t:#06x} from {src}")),
    }
}

/// `frames` as lines "+seconds port: description", times from `origin`
/// (negative before it).
pub fn timeline(frames: &[CapturedFrame], origin: Instant) -> Vec<String> {
    frames
        .iter()
        .map(|c| {
            let t = if c.at >= origin {
                (c.at - origin).as_secs_f64()
            } else {
                -(origin - c.at).as_secs_f64()
            };
            format!("{t:+9.3} {:<8} {}", c.from, describe(&c.data))
        })
        .collect()
}

/// Writes `frames` as a pcap file (Ethernet link type), times relative to
/// the first frame.
pub fn write_pcap(path: &Path, frames: &[CapturedFrame]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    // Global header: magic, version 2.4, GMT offset 0, accuracy 0,
    // snaplen, link type 1 (Ethernet).
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&0i32.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(super::MAX_FRAME as u32).to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?;
    let Some(first) = frames.first().map(|f| f.at) else {
        return out.flush();
    };
    for f in frames {
        let t = f.at.saturating_duration_since(first);
        let len = f.data.len() as u32;
        out.write_all(&(t.as_secs() as u32).to_le_bytes())?;
        out.write_all(&t.subsec_micros().to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&f.data)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_tcp_segment_reads_like_tcpdump() {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, IP_TCP, 0, 0];
        ip.extend_from_slice(&[198, 51, 100, 10, 198, 51, 100, 200]);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&7000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&55152u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&503u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&1011u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp[14..16].copy_from_slice(&4037u16.to_be_bytes());
        tcp.extend_from_slice(&[b'x'; 28]);
        ip.extend_from_slice(&tcp);
        let total = ip.len() as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        assert_eq!(
            describe(&eth(ETH_IPV4, &ip)),
            "TCP 198.51.100.10.7000 > 198.51.100.200.55152 [P.] seq 503 ack 1011 win 4037 len 28"
        );
    }

    #[test]
    fn an_arp_request_and_garbage() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 198, 51, 100, 10]);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&[198, 51, 100, 10]);
        assert_eq!(
            describe(&eth(ETH_ARP, &arp)),
            "ARP who-has 198.51.100.10 tell 198.51.100.10 (52:54:00:12:34:56)"
        );
        assert_eq!(describe(&[1, 2, 3]), "short or malformed frame (3 bytes)");
        assert_eq!(
            describe(&eth(ETH_IPV4, &[0x45, 0, 0, 60])),
            "short or malformed frame (18 bytes)"
        );
    }

    #[test]
    fn a_pcap_has_its_header_and_every_frame() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pcap");
        let now = Instant::now();
        let frames: Vec<CapturedFrame> = (0..3)
            .map(|i| CapturedFrame {
                at: now,
                from: "host-a".into(),
                data: vec![i; 60],
            })
            .collect();
        write_pcap(&p, &frames).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 24 + 3 * (16 + 60));
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
    }
}
