//! The on-disk layout of the fencing region (`storage.fencing` on the shared
//! device) and the codecs of its three kinds of sector.
//!
//! Everything is a 512-byte sector; every write the agent makes is exactly one
//! sector, so it relies on nothing but atomic single-sector reads and writes.
//! All integers are little-endian. Every sector ends with a CRC-32C (Castagnoli)
//! of its bytes `0..508`, stored at `508..512`.
//!
//! With `N` hosts (config order; host *index* = position in `hosts`, 0-based),
//! `M` VMs (config order) and a ring of `K` Disk Paxos instances per VM, the
//! region holds `1 + N + M*K*N` sectors:
//!
//! | sector                         | content                                  |
//! |--------------------------------|------------------------------------------|
//! | `0`                            | header                                   |
//! | `1 + h`                        | delta lease of host `h`                  |
//! | `1 + N + ((v*K + s) * N) + h`  | Disk Paxos block of host `h` for VM `v`, ring slot `s = generation mod K` |
//!
//! **Header** (sector 0):
//!
//! | bytes     | field                                                           |
//! |-----------|-----------------------------------------------------------------|
//! | `0..8`    | magic `FTFENCE\0`                                               |
//! | `8..12`   | layout version (`1`)                                            |
//! | `12..16`  | host count `N`                                                  |
//! | `16..20`  | VM count `M`                                                    |
//! | `20..24`  | ring size `K`                                                   |
//! | `24..28`  | names digest: CRC-32C of every host name then every VM name, each followed by a NUL byte, a `0x01` byte between the two lists |
//! | `28..508` | zero                                                            |
//! | `508..512`| CRC-32C of `0..508`                                             |
//!
//! **Delta lease** (sector `1 + h`):
//!
//! | bytes     | field                                                           |
//! |-----------|-----------------------------------------------------------------|
//! | `0..8`    | magic `FTLEASE\0`                                               |
//! | `8..12`   | host index `h`                                                  |
//! | `12..16`  | zero                                                            |
//! | `16..24`  | renewal counter (incremented by every renewal)                  |
//! | `24..32`  | incarnation (random per agent start; a change also counts as movement) |
//! | `32..508` | zero                                                            |
//! | `508..512`| CRC-32C of `0..508`                                             |
//!
//! **Disk Paxos block** (one per host per instance; written only by its host):
//!
//! | bytes     | field                                                           |
//! |-----------|-----------------------------------------------------------------|
//! | `0..8`    | magic `FTPAXOS\0`                                               |
//! | `8..12`   | host index `h` (the writer)                                     |
//! | `12..16`  | VM index `v`                                                    |
//! | `16..24`  | generation this block is about                                  |
//! | `24..32`  | `mbal`: highest ballot the host started                         |
//! | `32..40`  | `bal`: ballot of the value it last accepted (0 = none)          |
//! | `40..48`  | `inp`: that value, a host index + 1 (0 = none)                  |
//! | `48..56`  | `owner`: the decided owner, host index + 1 (0 = not known)      |
//! | `56..508` | zero                                                            |
//! | `508..512`| CRC-32C of `0..508`                                             |
//!
//! A Paxos block that fails its CRC, has the wrong magic, names another writer
//! or VM than its position, or names another generation reads as *empty* (all
//! zero) for the generation asked about. Blank sectors (all zero) fail the CRC
//! check and therefore read as empty too.

use serde::Serialize;

/// Bytes per sector; each write of the agent is one sector.
pub const SECTOR: usize = 512;
/// The layout version written in the header.
pub const VERSION: u32 = 1;
/// Default number of Disk Paxos instances kept per VM.
pub const DEFAULT_RING: u32 = 16;

const HEADER_MAGIC: &[u8; 8] = b"FTFENCE\0";
const LEASE_MAGIC: &[u8; 8] = b"FTLEASE\0";
const PAXOS_MAGIC: &[u8; 8] = b"FTPAXOS\0";
const CRC_AT: usize = SECTOR - 4;

/// One sector's bytes.
pub type Sector = [u8; SECTOR];

/// Why a sector does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("sector is {0} bytes, not 512")]
    Length(usize),
    #[error("sector is blank (all zero)")]
    Blank,
    #[error("bad checksum")]
    Crc,
    #[error("bad magic")]
    Magic,
    #[error("nonzero reserved bytes")]
    Reserved,
}

/// The shape of the region, from the config (and the header on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Geometry {
    pub hosts: u32,
    pub vms: u32,
    pub ring: u32,
    pub names_digest: u32,
}

impl Geometry {
    /// The geometry for these host and VM names (config order).
    pub fn new<'a>(
        hosts: impl IntoIterator<Item = &'a str>,
        vms: impl IntoIterator<Item = &'a str>,
        ring: u32,
    ) -> Self {
        let mut bytes = Vec::new();
        let mut h = 0u32;
        for n in hosts {
            bytes.extend_from_slice(n.as_bytes());
            bytes.push(0);
            h += 1;
        }
        bytes.push(1);
        let mut v = 0u32;
        for n in vms {
            bytes.extend_from_slice(n.as_bytes());
            bytes.push(0);
            v += 1;
        }
        assert!(ring > 0, "ring size must be positive");
        Geometry {
            hosts: h,
            vms: v,
            ring,
            names_digest: crc32c::crc32c(&bytes),
        }
    }

    /// The geometry of a cluster config (ring of [`DEFAULT_RING`]).
    pub fn of_config(c: &config_schema::ClusterConfig) -> Self {
        Geometry::new(
            c.hosts.iter().map(|h| h.name.as_str()),
            c.vms.iter().map(|v| v.name.as_str()),
            DEFAULT_RING,
        )
    }

    /// Sectors the region needs.
    pub fn sectors(&self) -> u64 {
        1 + u64::from(self.hosts)
            + u64::from(self.vms) * u64::from(self.ring) * u64::from(self.hosts)
    }

    /// Sector of host `h`'s lease.
    pub fn lease_sector(&self, h: u32) -> u64 {
        assert!(h < self.hosts, "host index {h} out of range");
        1 + u64::from(h)
    }

    /// Ring slot of a generation.
    pub fn slot(&self, generation: u64) -> u32 {
        (generation % u64::from(self.ring)) as u32
    }

    /// Sector of host `h`'s Paxos block for (VM `v`, `generation`).
    pub fn paxos_sector(&self, v: u32, generation: u64, h: u32) -> u64 {
        assert!(h < self.hosts && v < self.vms, "index out of range");
        let n = u64::from(self.hosts);
        let instance = u64::from(v) * u64::from(self.ring) + u64::from(self.slot(generation));
        1 + n + instance * n + u64::from(h)
    }

    /// The header sector for this geometry.
    pub fn encode_header(&self) -> Sector {
        let mut s = [0u8; SECTOR];
        s[0..8].copy_from_slice(HEADER_MAGIC);
        s[8..12].copy_from_slice(&VERSION.to_le_bytes());
        s[12..16].copy_from_slice(&self.hosts.to_le_bytes());
        s[16..20].copy_from_slice(&self.vms.to_le_bytes());
        s[20..24].copy_from_slice(&self.ring.to_le_bytes());
        s[24..28].copy_from_slice(&self.names_digest.to_le_bytes());
        seal(&mut s);
        s
    }
}

/// What the header sector says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub geometry: Geometry,
}

/// Decodes a header sector (any version).
pub fn decode_header(b: &[u8]) -> Result<Header, DecodeError> {
    let s = checked(b, HEADER_MAGIC)?;
    reserved_zero(&s[28..CRC_AT])?;
    Ok(Header {
        version: u32_at(s, 8),
        geometry: Geometry {
            hosts: u32_at(s, 12),
            vms: u32_at(s, 16),
            ring: u32_at(s, 20),
            names_digest: u32_at(s, 24),
        },
    })
}

/// One host's delta lease record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    pub host: u32,
    pub counter: u64,
    pub incarnation: u64,
}

impl LeaseRecord {
    pub fn encode(&self) -> Sector {
        let mut s = [0u8; SECTOR];
        s[0..8].copy_from_slice(LEASE_MAGIC);
        s[8..12].copy_from_slice(&self.host.to_le_bytes());
        s[16..24].copy_from_slice(&self.counter.to_le_bytes());
        s[24..32].copy_from_slice(&self.incarnation.to_le_bytes());
        seal(&mut s);
        s
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let s = checked(b, LEASE_MAGIC)?;
        reserved_zero(&s[12..16])?;
        reserved_zero(&s[32..CRC_AT])?;
        Ok(LeaseRecord {
            host: u32_at(s, 8),
            counter: u64_at(s, 16),
            incarnation: u64_at(s, 24),
        })
    }
}

/// One host's Disk Paxos block (the paper's `dblock`) plus its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PaxosBlock {
    pub host: u32,
    pub vm: u32,
    pub generation: u64,
    pub mbal: u64,
    pub bal: u64,
    /// Host index + 1 of the accepted value; 0 = none.
    pub inp: u64,
    /// Host index + 1 of the decided owner; 0 = not known.
    pub owner: u64,
}

impl PaxosBlock {
    /// The empty block of `host` for (`vm`, `generation`).
    pub fn empty(host: u32, vm: u32, generation: u64) -> Self {
        PaxosBlock {
            host,
            vm,
            generation,
            ..Default::default()
        }
    }

    pub fn encode(&self) -> Sector {
        let mut s = [0u8; SECTOR];
        s[0..8].copy_from_slice(PAXOS_MAGIC);
        s[8..12].copy_from_slice(&self.host.to_le_bytes());
        s[12..16].copy_from_slice(&self.vm.to_le_bytes());
        for (at, v) in [
            (16, self.generation),
            (24, self.mbal),
            (32, self.bal),
            (40, self.inp),
            (48, self.owner),
        ] {
            s[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        seal(&mut s);
        s
    }

    /// Decodes a block as it is on disk, whatever generation it names.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let s = checked(b, PAXOS_MAGIC)?;
        reserved_zero(&s[56..CRC_AT])?;
        Ok(PaxosBlock {
            host: u32_at(s, 8),
            vm: u32_at(s, 12),
            generation: u64_at(s, 16),
            mbal: u64_at(s, 24),
            bal: u64_at(s, 32),
            inp: u64_at(s, 40),
            owner: u64_at(s, 48),
        })
    }
}

/// How a Paxos sector reads for one (host, VM, generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotView {
    /// A valid block about this generation.
    Block(PaxosBlock),
    /// Garbage, blank, misplaced or an older generation: empty for this one.
    Empty,
    /// A valid block about a later generation in the same ring slot: the
    /// generation asked about is superseded.
    Later(u64),
}

/// Reads sector bytes `b` as host `host`'s block for (`vm`, `generation`).
pub fn view_paxos(b: &[u8], host: u32, vm: u32, generation: u64) -> SlotView {
    match PaxosBlock::decode(b) {
        Ok(p) if p.host != host || p.vm != vm => SlotView::Empty,
        Ok(p) if p.generation == generation => SlotView::Block(p),
        Ok(p) if p.generation > generation => SlotView::Later(p.generation),
        _ => SlotView::Empty,
    }
}

fn seal(s: &mut Sector) {
    let crc = crc32c::crc32c(&s[..CRC_AT]);
    s[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
}

fn checked<'a>(b: &'a [u8], magic: &[u8; 8]) -> Result<&'a [u8], DecodeError> {
    if b.len() != SECTOR {
        return Err(DecodeError::Length(b.len()));
    }
    if b.iter().all(|&x| x == 0) {
        return Err(DecodeError::Blank);
    }
    if crc32c::crc32c(&b[..CRC_AT]) != u32_at(b, CRC_AT) {
        return Err(DecodeError::Crc);
    }
    if &b[0..8] != magic {
        return Err(DecodeError::Magic);
    }
    Ok(b)
}

fn reserved_zero(b: &[u8]) -> Result<(), DecodeError> {
    if b.iter().all(|&x| x == 0) {
        Ok(())
    } else {
        Err(DecodeError::Reserved)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::new(["a", "b", "c"], ["kv", "cpu"], 4)
    }

    #[test]
    fn header_round_trips_and_names_matter() {
        let g = geo();
        let h = decode_header(&g.encode_header()).unwrap();
        assert_eq!(h.version, VERSION);
        assert_eq!(h.geometry, g);
        assert_ne!(
            Geometry::new(["a", "b", "x"], ["kv", "cpu"], 4).names_digest,
            g.names_digest
        );
        // Moving a name from one list to the other changes the digest.
        assert_ne!(
            Geometry::new(["a", "b"], ["c", "kv", "cpu"], 4).names_digest,
            Geometry::new(["a", "b", "c"], ["kv", "cpu"], 4).names_digest
        );
    }

    #[test]
    fn sectors_are_disjoint_and_in_range() {
        let g = geo();
        let mut seen = std::collections::BTreeSet::new();
        seen.insert(0u64);
        for h in 0..g.hosts {
            assert!(seen.insert(g.lease_sector(h)));
        }
        for v in 0..g.vms {
            for gen in 0..u64::from(g.ring) {
                for h in 0..g.hosts {
                    let s = g.paxos_sector(v, gen, h);
                    assert!(s < g.sectors());
                    assert!(seen.insert(s), "sector {s} used twice");
                }
            }
        }
        assert_eq!(seen.len() as u64, g.sectors());
        assert_eq!(g.paxos_sector(1, 7, 2), g.paxos_sector(1, 3, 2));
    }

    #[test]
    fn lease_and_paxos_round_trip() {
        let l = LeaseRecord {
            host: 2,
            counter: 99,
            incarnation: 0xdead_beef,
        };
        assert_eq!(LeaseRecord::decode(&l.encode()).unwrap(), l);
        let p = PaxosBlock {
            host: 1,
            vm: 0,
            generation: 7,
            mbal: 12,
            bal: 9,
            inp: 3,
            owner: 3,
        };
        let s = p.encode();
        assert_eq!(PaxosBlock::decode(&s).unwrap(), p);
        assert_eq!(view_paxos(&s, 1, 0, 7), SlotView::Block(p));
        assert_eq!(view_paxos(&s, 1, 0, 3), SlotView::Later(7));
        assert_eq!(view_paxos(&s, 1, 0, 11), SlotView::Empty);
        assert_eq!(view_paxos(&s, 2, 0, 7), SlotView::Empty);
        assert_eq!(view_paxos(&s, 1, 1, 7), SlotView::Empty);
    }

    #[test]
    fn damaged_blank_and_foreign_sectors_read_as_errors_or_empty() {
        let p = PaxosBlock::empty(0, 0, 1).encode();
        for i in [0, 17, 300, 508, 511] {
            let mut bad = p;
            bad[i] ^= 0x40;
            assert!(PaxosBlock::decode(&bad).is_err(), "flip at {i}");
            assert_eq!(view_paxos(&bad, 0, 0, 1), SlotView::Empty);
        }
        assert_eq!(PaxosBlock::decode(&[0u8; SECTOR]), Err(DecodeError::Blank));
        assert_eq!(PaxosBlock::decode(&p[..100]), Err(DecodeError::Length(100)));
        let lease = LeaseRecord {
            host: 0,
            counter: 1,
            incarnation: 1,
        }
        .encode();
        assert_eq!(PaxosBlock::decode(&lease), Err(DecodeError::Magic));
        assert_eq!(view_paxos(&lease, 0, 0, 1), SlotView::Empty);
        assert_eq!(decode_header(&lease), Err(DecodeError::Magic));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut s = [0u8; SECTOR];
            for b in s.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // Half the time, make the CRC right so the field checks run.
            if x & 1 == 0 {
                s[..8].copy_from_slice(PAXOS_MAGIC);
                seal(&mut s);
            }
            let _ = PaxosBlock::decode(&s);
            let _ = LeaseRecord::decode(&s);
            let _ = decode_header(&s);
            let _ = view_paxos(&s, 0, 0, x);
        }
    }
}
