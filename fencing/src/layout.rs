//! The on-disk layout of the fencing region (`storage.fencing` on the shared
//! device), version 2, and the codecs of its three kinds of block.
//!
//! # Rules
//!
//! The region is an array of **blocks** of `B` bytes, `B` the device's
//! physical block size (at least 512, a power of two up to 64 KiB), recorded
//! in the header. Every read and write of the agent is exactly one whole block
//! at a multiple of `B` (with `O_DIRECT`, see [`crate::io`]), and each host
//! writes only its own blocks. So on a 512e device (512-byte logical, 4096-byte
//! physical sectors) no write is a read-modify-write of a physical sector that
//! holds another host's data — a torn write can damage only the writer's own
//! block — and on a 4Kn device no I/O is smaller than a logical block (which
//! would fail). Layout version 1 packed every record into 512-byte sectors,
//! eight hosts' records to one 4 KiB physical sector.
//!
//! All integers are little-endian. Every block ends with a CRC-32C
//! (Castagnoli) of its bytes `0..B-4`, stored at `B-4..B`; bytes not named
//! below are zero.
//!
//! With `N` hosts (config order; host *index* = position in `hosts`, 0-based),
//! room for `S` VM rings (*slots*) and a ring of `K` Disk Paxos instances
//! per VM, the region holds `1 + N + S*K*N` blocks:
//!
//! | block                          | content                                  |
//! |--------------------------------|------------------------------------------|
//! | `0`                            | header                                   |
//! | `1 + h`                        | delta lease of host `h`                  |
//! | `1 + N + ((v*K + s) * N) + h`  | Disk Paxos block of host `h` for the VM in slot `v`, ring slot `s = generation mod K` |
//!
//! A VM's slot is `vms[].slot` in the config, or its position in `vms`
//! (`ClusterConfig::vm_slot`); a running VM keeps it for life
//! (`config_schema::changes::transition_errors`). `S` is what the
//! configured region holds, at most 256 ([`Geometry::of_config`]; the
//! header records the count of the host that laid the region out, and a
//! host whose config gives the area another size reads it all the same:
//! [`Geometry::same_layout`]), so the layout does not depend on which VMs
//! the config has: adding or removing
//! a VM leaves the header and every other VM's blocks (its durable
//! generations) as they are. Version 2 had `S` = the number of VMs and their
//! names in the digest, so adding a VM made every host refuse the region
//! until it was zeroed; a version 2 header that matches the config is
//! rewritten as version 3 (the blocks are where they were,
//! [`Geometry::upgrades_v2`]).
//!
//! **Header** (block 0):
//!
//! | bytes     | field                                                           |
//! |-----------|-----------------------------------------------------------------|
//! | `0..8`    | magic `FTFENCE\0`                                               |
//! | `8..12`   | layout version (`3`)                                            |
//! | `12..16`  | block size `B`                                                  |
//! | `16..20`  | host count `N`                                                  |
//! | `20..24`  | slot count `S` (version 2: the VM count)                        |
//! | `24..28`  | ring size `K`                                                   |
//! | `28..32`  | names digest: CRC-32C of every host name, each followed by a NUL byte, then a `0x01` byte (version 2: then every VM name, each followed by a NUL) |
//! | `32..B-4` | zero                                                            |
//! | `B-4..B`  | CRC-32C of `0..B-4`                                             |
//!
//! **Delta lease** (block `1 + h`):
//!
//! | bytes       | field                                                         |
//! |-------------|---------------------------------------------------------------|
//! | `0..8`      | magic `FTLEASE\0`                                             |
//! | `8..12`     | host index `h`                                                |
//! | `12..16`    | `n`: entries in the running list (at most `(B - 36) / 16`: 29 with 512-byte blocks, 253 with 4 KiB) |
//! | `16..24`    | renewal counter (incremented by every renewal)                |
//! | `24..32`    | incarnation (random per agent start; a change also counts as movement) |
//! | `32..32+16n`| running list: per entry the VM index (`u32`), 4 zero bytes, the generation (`u64`) this host runs the VM in as Primary or is acquiring (sorted, no duplicates) |
//! | `..B-4`     | zero                                                          |
//! | `B-4..B`    | CRC-32C of `0..B-4`                                           |
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
//! | `56..64`  | config generation proposed with `inp` (part of the value; 0 with no value) |
//! | `64..72`  | config generation of the decided owner (0 when not known)       |
//! | `72..B-4` | zero                                                            |
//! | `B-4..B`  | CRC-32C of `0..B-4`                                             |
//!
//! # Blank, valid, corrupt
//!
//! A blank block (all zero: never written) reads as *empty*, and so does a
//! valid Paxos block about an older generation of the ring slot. Anything else
//! that does not decode as the block of its position — a bad CRC or magic,
//! nonzero reserved bytes, another writer or VM than its position, generation
//! 0, a generation of another ring slot — is *corrupt*: it may hide an
//! accepted value, so it is never read as empty (Disk Paxos aborts over it and
//! raises an alarm, see [`crate::paxos`]).

use serde::Serialize;

/// The layout version written in the header.
pub const VERSION: u32 = 3;
/// The version before slots, read only to upgrade it ([`Geometry::upgrades_v2`]).
pub const VERSION_2: u32 = 2;
/// Most VM slots a region holds (`config_schema::model::MAX_SLOT` + 1).
pub const MAX_SLOTS: u32 = config_schema::model::MAX_SLOT + 1;
/// Smallest and largest block size.
pub const MIN_BLOCK: u32 = 512;
pub const MAX_BLOCK: u32 = 64 << 10;
/// Default number of Disk Paxos instances kept per VM.
pub const DEFAULT_RING: u32 = config_schema::model::FENCING_RING;

const HEADER_MAGIC: &[u8; 8] = b"FTFENCE\0";
const LEASE_MAGIC: &[u8; 8] = b"FTLEASE\0";
const PAXOS_MAGIC: &[u8; 8] = b"FTPAXOS\0";
const LEASE_ENTRIES_AT: usize = 32;
const LEASE_ENTRY: usize = 16;
const PAXOS_END: usize = 72;

/// One block's bytes (as long as the region's block size).
pub type Block = Box<[u8]>;

/// Why a block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("block is {0} bytes, not a power of two from 512 to 65536")]
    Length(usize),
    #[error("block is blank (all zero)")]
    Blank,
    #[error("bad checksum")]
    Crc,
    #[error("bad magic")]
    Magic,
    #[error("nonzero reserved bytes")]
    Reserved,
    #[error("names layout version {0}, this build reads version {VERSION}")]
    Version(u32),
    #[error("names block size {recorded}, read as {read}-byte block")]
    BlockSize { recorded: u32, read: usize },
    #[error("{0}")]
    Field(String),
}

/// The digest input of host names (each then a NUL, then `0x01`) and
/// their count.
fn host_names<'a>(hosts: impl IntoIterator<Item = &'a str>) -> (Vec<u8>, u32) {
    let mut bytes = Vec::new();
    let mut h = 0u32;
    for n in hosts {
        bytes.extend_from_slice(n.as_bytes());
        bytes.push(0);
        h += 1;
    }
    bytes.push(1);
    (bytes, h)
}

/// Whether `b` is a valid block size.
pub fn valid_block_size(b: u64) -> bool {
    b.is_power_of_two() && (u64::from(MIN_BLOCK)..=u64::from(MAX_BLOCK)).contains(&b)
}

/// The shape of the region, from the config and the device (and the header on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Geometry {
    /// Bytes per block.
    pub block: u32,
    pub hosts: u32,
    /// VM rings the region holds (slots `0..vms`).
    pub vms: u32,
    pub ring: u32,
    pub names_digest: u32,
}

impl Geometry {
    /// The geometry for these host names (config order) with room for
    /// `slots` VM rings of `ring` instances, blocks of `block` bytes.
    pub fn new<'a>(
        hosts: impl IntoIterator<Item = &'a str>,
        slots: u32,
        ring: u32,
        block: u32,
    ) -> Self {
        let (bytes, h) = host_names(hosts);
        assert!(ring > 0, "ring size must be positive");
        assert!(
            valid_block_size(u64::from(block)),
            "block size {block} is not a power of two from 512 to 65536"
        );
        Geometry {
            block,
            hosts: h,
            vms: slots,
            ring,
            names_digest: crc32c::crc32c(&bytes),
        }
    }

    /// The geometry of a cluster config (ring of [`DEFAULT_RING`]): as many
    /// slots as its fencing region holds with blocks of `block` bytes, at
    /// most [`MAX_SLOTS`] (0 if it cannot even hold the leases).
    pub fn of_config(c: &config_schema::ClusterConfig, block: u32) -> Self {
        Geometry::new(
            c.hosts.iter().map(|h| h.name.as_str()),
            c.fencing_slots(block),
            DEFAULT_RING,
            block,
        )
    }

    /// Whether a region laid out as `other` has its blocks where this
    /// geometry reads them: the same block size, hosts, ring and names. The
    /// slot count is not compared: no block's position depends on it (a
    /// host whose config gives `storage.fencing` another size, or whose
    /// device has another block size limit, only allows other slots), so
    /// the header keeps the count of the host that laid the region out.
    pub fn same_layout(&self, other: &Geometry) -> bool {
        Geometry { vms: 0, ..*self } == Geometry { vms: 0, ..*other }
    }

    /// Whether a version 2 header with geometry `v2` laid the region out
    /// as this version 3 geometry does for config `c`: same block size,
    /// hosts and ring, the digest of version 2 over `c`'s host and VM names,
    /// every VM in the slot of its position (where version 2 put it), and
    /// room for them. Then every block version 2 wrote is where version 3
    /// reads it, and writing this geometry's header keeps them all.
    pub fn upgrades_v2(&self, c: &config_schema::ClusterConfig, v2: &Geometry) -> bool {
        let (mut bytes, _) = host_names(c.hosts.iter().map(|h| h.name.as_str()));
        for vm in &c.vms {
            bytes.extend_from_slice(vm.name.as_bytes());
            bytes.push(0);
        }
        (v2.block, v2.hosts, v2.ring) == (self.block, self.hosts, self.ring)
            && v2.names_digest == crc32c::crc32c(&bytes)
            && v2.vms as usize == c.vms.len()
            && v2.vms <= self.vms
            && (0..c.vms.len()).all(|i| c.vm_slot(i) == i as u32)
    }

    /// Blocks the region needs.
    pub fn blocks(&self) -> u64 {
        1 + u64::from(self.hosts)
            + u64::from(self.vms) * u64::from(self.ring) * u64::from(self.hosts)
    }

    /// Bytes the region needs.
    pub fn bytes(&self) -> u64 {
        self.blocks() * u64::from(self.block)
    }

    /// Block size as a length.
    pub fn block_len(&self) -> usize {
        self.block as usize
    }

    /// Block of host `h`'s lease.
    pub fn lease_block(&self, h: u32) -> u64 {
        assert!(h < self.hosts, "host index {h} out of range");
        1 + u64::from(h)
    }

    /// Ring slot of a generation.
    pub fn slot(&self, generation: u64) -> u32 {
        (generation % u64::from(self.ring)) as u32
    }

    /// Block of host `h`'s Paxos block for (VM `v`, `generation`).
    pub fn paxos_block(&self, v: u32, generation: u64, h: u32) -> u64 {
        assert!(h < self.hosts && v < self.vms, "index out of range");
        let n = u64::from(self.hosts);
        let instance = u64::from(v) * u64::from(self.ring) + u64::from(self.slot(generation));
        1 + n + instance * n + u64::from(h)
    }

    /// (VM, ring slot, host) of the Paxos block at index `block`, if it is one.
    pub fn paxos_position(&self, block: u64) -> Option<(u32, u32, u32)> {
        let n = u64::from(self.hosts);
        let i = block.checked_sub(1 + n).filter(|_| block < self.blocks())?;
        let instance = i / n;
        let ring = u64::from(self.ring);
        Some((
            (instance / ring) as u32,
            (instance % ring) as u32,
            (i % n) as u32,
        ))
    }

    /// The header block for this geometry.
    pub fn encode_header(&self) -> Block {
        let mut s = blank(self.block_len());
        s[0..8].copy_from_slice(HEADER_MAGIC);
        for (at, v) in [
            (8, VERSION),
            (12, self.block),
            (16, self.hosts),
            (20, self.vms),
            (24, self.ring),
            (28, self.names_digest),
        ] {
            s[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        seal(&mut s);
        s
    }
}

/// What the header block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub geometry: Geometry,
}

/// Decodes a header block (this version or [`VERSION_2`], which
/// [`Header::version`] tells apart). A header of another version or block
/// size is reported as such (from its first 16 bytes, before the checksum
/// can be checked: it sits at the end of a block of another size).
pub fn decode_header(b: &[u8]) -> Result<Header, DecodeError> {
    length(b)?;
    if b.iter().all(|&x| x == 0) {
        return Err(DecodeError::Blank);
    }
    let mut version = VERSION;
    if &b[0..8] == HEADER_MAGIC {
        version = match u32_at(b, 8) {
            v @ (VERSION | VERSION_2) => v,
            v => return Err(DecodeError::Version(v)),
        };
        let recorded = u32_at(b, 12);
        if recorded as usize != b.len() {
            return Err(DecodeError::BlockSize {
                recorded,
                read: b.len(),
            });
        }
    }
    let s = checked(b, HEADER_MAGIC)?;
    reserved_zero(&s[32..crc_at(s)])?;
    let ring = u32_at(s, 24);
    if ring == 0 {
        return Err(DecodeError::Field("ring size 0".into()));
    }
    Ok(Header {
        version,
        geometry: Geometry {
            block: u32_at(s, 12),
            hosts: u32_at(s, 16),
            vms: u32_at(s, 20),
            ring,
            names_digest: u32_at(s, 28),
        },
    })
}

/// One VM a host publishes as running (or being acquired) as Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Running {
    pub vm: u32,
    pub generation: u64,
}

/// One host's delta lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    pub host: u32,
    pub counter: u64,
    pub incarnation: u64,
    /// Sorted, no duplicates, at most [`LeaseRecord::capacity`] entries.
    pub running: Vec<Running>,
}

impl LeaseRecord {
    /// Running-list entries a lease block of `block` bytes holds.
    pub fn capacity(block: usize) -> usize {
        (block - 4 - LEASE_ENTRIES_AT) / LEASE_ENTRY
    }

    /// The block of `block` bytes. The running list must be sorted and fit.
    pub fn encode(&self, block: usize) -> Block {
        assert!(
            self.running.len() <= Self::capacity(block),
            "running list of {} entries does not fit a {block}-byte lease block",
            self.running.len()
        );
        assert!(
            self.running.windows(2).all(|w| w[0] < w[1]),
            "running list must be sorted without duplicates"
        );
        let mut s = blank(block);
        s[0..8].copy_from_slice(LEASE_MAGIC);
        s[8..12].copy_from_slice(&self.host.to_le_bytes());
        s[12..16].copy_from_slice(&(self.running.len() as u32).to_le_bytes());
        s[16..24].copy_from_slice(&self.counter.to_le_bytes());
        s[24..32].copy_from_slice(&self.incarnation.to_le_bytes());
        for (i, r) in self.running.iter().enumerate() {
            let at = LEASE_ENTRIES_AT + i * LEASE_ENTRY;
            s[at..at + 4].copy_from_slice(&r.vm.to_le_bytes());
            s[at + 8..at + 16].copy_from_slice(&r.generation.to_le_bytes());
        }
        seal(&mut s);
        s
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let s = checked(b, LEASE_MAGIC)?;
        let n = u32_at(s, 12) as usize;
        let cap = Self::capacity(s.len());
        if n > cap {
            return Err(DecodeError::Field(format!(
                "running list of {n} entries, a {}-byte block holds {cap}",
                s.len()
            )));
        }
        let end = LEASE_ENTRIES_AT + n * LEASE_ENTRY;
        reserved_zero(&s[end..crc_at(s)])?;
        let mut running = Vec::with_capacity(n);
        for i in 0..n {
            let at = LEASE_ENTRIES_AT + i * LEASE_ENTRY;
            reserved_zero(&s[at + 4..at + 8])?;
            running.push(Running {
                vm: u32_at(s, at),
                generation: u64_at(s, at + 8),
            });
        }
        if !running.windows(2).all(|w| w[0] < w[1]) {
            return Err(DecodeError::Field(
                "running list not sorted or with duplicates".into(),
            ));
        }
        Ok(LeaseRecord {
            host: u32_at(s, 8),
            counter: u64_at(s, 16),
            incarnation: u64_at(s, 24),
            running,
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
    /// Config generation proposed with `inp` (0 without a value).
    pub inp_config: u64,
    /// Config generation of the decided owner (0 when not known).
    pub owner_config: u64,
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

    pub fn encode(&self, block: usize) -> Block {
        let mut s = blank(block);
        s[0..8].copy_from_slice(PAXOS_MAGIC);
        s[8..12].copy_from_slice(&self.host.to_le_bytes());
        s[12..16].copy_from_slice(&self.vm.to_le_bytes());
        for (at, v) in [
            (16, self.generation),
            (24, self.mbal),
            (32, self.bal),
            (40, self.inp),
            (48, self.owner),
            (56, self.inp_config),
            (64, self.owner_config),
        ] {
            s[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        seal(&mut s);
        s
    }

    /// Decodes a block as it is on disk, whatever generation it names.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let s = checked(b, PAXOS_MAGIC)?;
        reserved_zero(&s[PAXOS_END..crc_at(s)])?;
        Ok(PaxosBlock {
            host: u32_at(s, 8),
            vm: u32_at(s, 12),
            generation: u64_at(s, 16),
            mbal: u64_at(s, 24),
            bal: u64_at(s, 32),
            inp: u64_at(s, 40),
            owner: u64_at(s, 48),
            inp_config: u64_at(s, 56),
            owner_config: u64_at(s, 64),
        })
    }
}

/// How a Paxos block reads for one (host, VM, generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotView {
    /// A valid block about this generation.
    Block(PaxosBlock),
    /// Blank (never written) or a valid block about an older generation of
    /// the ring slot: empty for this one.
    Empty,
    /// A valid block about a later generation in the same ring slot: the
    /// generation asked about is superseded.
    Later(u64),
    /// Written but unreadable: bad checksum or magic, nonzero reserved bytes,
    /// another writer or VM than its position, or values the algorithm never
    /// writes. Never empty: it may hide an accepted value.
    Corrupt(String),
}

/// Reads block bytes `b` as host `host`'s block for (`vm`, `generation`) in
/// a ring of `ring` slots. Only an all-zero block is empty; anything else
/// that does not decode as this position's block is [`SlotView::Corrupt`].
pub fn view_paxos(b: &[u8], host: u32, vm: u32, generation: u64, ring: u32) -> SlotView {
    let ring = u64::from(ring.max(1));
    match PaxosBlock::decode(b) {
        Err(DecodeError::Blank) => SlotView::Empty,
        Err(e) => SlotView::Corrupt(e.to_string()),
        Ok(p) if p.host != host => {
            SlotView::Corrupt(format!("names writer host index {}, not {host}", p.host))
        }
        Ok(p) if p.vm != vm => SlotView::Corrupt(format!("names vm index {}, not {vm}", p.vm)),
        Ok(p) if p.generation == 0 => SlotView::Corrupt("names generation 0".into()),
        Ok(p) if p.generation % ring != generation % ring => SlotView::Corrupt(format!(
            "names generation {}, which is not of this ring slot",
            p.generation
        )),
        Ok(p) if p.generation == generation => SlotView::Block(p),
        Ok(p) if p.generation > generation => SlotView::Later(p.generation),
        Ok(_) => SlotView::Empty,
    }
}

fn blank(len: usize) -> Block {
    assert!(
        valid_block_size(len as u64),
        "block size {len} is not a power of two from 512 to 65536"
    );
    vec![0u8; len].into_boxed_slice()
}

fn crc_at(b: &[u8]) -> usize {
    b.len() - 4
}

fn seal(s: &mut [u8]) {
    let at = crc_at(s);
    let crc = crc32c::crc32c(&s[..at]);
    s[at..].copy_from_slice(&crc.to_le_bytes());
}

fn length(b: &[u8]) -> Result<(), DecodeError> {
    if valid_block_size(b.len() as u64) {
        Ok(())
    } else {
        Err(DecodeError::Length(b.len()))
    }
}

fn checked<'a>(b: &'a [u8], magic: &[u8; 8]) -> Result<&'a [u8], DecodeError> {
    length(b)?;
    if b.iter().all(|&x| x == 0) {
        return Err(DecodeError::Blank);
    }
    if crc32c::crc32c(&b[..crc_at(b)]) != u32_at(b, crc_at(b)) {
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
#[path = "layout_tests.rs"]
mod tests;
