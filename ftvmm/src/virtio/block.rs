//! virtio-blk request handling (virtio 1.x §5.2): parse request chains, hand
//! reads/writes/flushes to the backend as `OutputEvent::Block`, finish them when
//! the matching `InputEvent::BlockDone` arrives.
//!
//! Requests the device can judge alone are finished at once, deterministically:
//! GET_ID, unknown types (UNSUPP), malformed or out-of-range requests (IOERR).

use std::collections::BTreeMap;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::chain::{self, Chain, Desc};
use super::mmio::Env;
use super::state::{BlockDeviceState, PendingBlockKind, PendingBlockState};
use super::{DeviceStats, GuestMemoryMmap, QUEUE_MAX_SIZE};
use crate::io::{BlockOp, BlockRequest, BlockStatus, OutputEvent};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer of one request; larger ones get IOERR (bounds host
/// memory a hostile guest can make us allocate). A read of this size is one
/// completion that the lockstep log carries as one body, split into records
/// (`lockstep::log::MAX_BODY`, asserted there at compile time).
pub const MAX_REQUEST_BYTES: u64 = 16 << 20;
/// Prefix of the GET_ID answer; the device index follows (`ftvmm-blk0`).
pub const BLOCK_ID: &str = "ftvmm-blk";
/// Size of `struct virtio_blk_outhdr` (type, reserved/ioprio, sector).
const HEADER_LEN: u64 = 16;

/// The 20-byte serial number GET_ID returns for block device `dev`.
pub fn block_id(dev: u8) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
    let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    let s = format!("{BLOCK_ID}{dev}");
    let n = s.len().min(id.len());
    id[..n].copy_from_slice(&s.as_bytes()[..n]);
    id
}

pub(crate) struct Block {
    dev: u8,
    capacity_sectors: u64,
    next_id: u64,
    pending: BTreeMap<u64, PendingBlockState>,
    pub stats: DeviceStats,
}

impl Block {
    pub fn new(dev: u8, capacity_sectors: u64) -> Self {
        Block {
            dev,
            capacity_sectors,
            next_id: 0,
            pending: BTreeMap::new(),
            stats: DeviceStats::default(),
        }
    }

    pub fn features() -> u64 {
        (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_BLK_SIZE)
    }

    /// `struct virtio_blk_config` up to `blk_size`.
    pub fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 24];
        c[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        // size_max (8..12) unused: no VIRTIO_BLK_F_SIZE_MAX.
        let seg_max = u32::from(QUEUE_MAX_SIZE) - 2;
        c[12..16].copy_from_slice(&seg_max.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Device reset: forget in-flight requests; their completions become stale.
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    pub fn pending_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }

    /// Handle a QueueNotify: consume every available chain.
    pub fn process_queue(&mut self, q: &mut Queue, env: &mut Env<'_>) {
        loop {
            match chain::pop_chain(q, env.mem) {
                Ok(None) => return,
                Ok(Some(c)) => self.handle(c, q, env),
                Err(e) => env.fault(format!("block request queue: {e}")),
            }
            if env.fault.is_some() {
                return;
            }
        }
    }

    fn handle(&mut self, c: Chain, q: &mut Queue, env: &mut Env<'_>) {
        self.stats.requests += 1;
        if self.pending.values().any(|p| p.head == c.head) {
            env.fault(format!(
                "block request head {} reused while in flight",
                c.head
            ));
            return;
        }
        let status_addr = match c.descs.last() {
            Some(d) if d.writable && d.len > 0 => d.addr + u64::from(d.len) - 1,
            _ => {
                env.fault(format!(
                    "block request at head {} has no writable status byte",
                    c.head
                ));
                return;
            }
        };
        // Device-readable buffers must all precede device-writable ones.
        let first_w = c.descs.iter().position(|d| d.writable).unwrap_or(0);
        if c.descs[first_w..].iter().any(|d| !d.writable) {
            return self.reject(
                c.head,
                status_addr,
                q,
                env,
                "readable buffer after writable",
            );
        }
        let readable = c.readable_len();
        let data_w = c.writable_len() - 1;
        if readable < HEADER_LEN {
            return self.reject(c.head, status_addr, q, env, "request header too short");
        }
        let hdr = match chain::gather(env.mem, c.readable(), 0, HEADER_LEN as usize) {
            Ok(h) => h,
            Err(e) => return env.fault(format!("block header unreadable: {e}")),
        };
        let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
        match rtype {
            VIRTIO_BLK_T_IN => {
                if readable != HEADER_LEN {
                    return self.reject(c.head, status_addr, q, env, "read into read-only buffer");
                }
                if let Err(why) = self.check_range(sector, data_w) {
                    return self.reject(c.head, status_addr, q, env, why);
                }
                if data_w == 0 {
                    return self.finish(c.head, status_addr, VIRTIO_BLK_S_OK, 1, q, env);
                }
                let segs = data_segments(c.writable(), 0, data_w);
                let id = self.submit(
                    c.head,
                    PendingBlockKind::Read,
                    sector,
                    status_addr,
                    segs,
                    data_w,
                );
                env.out.emit(
                    env.n,
                    OutputEvent::Block(BlockRequest {
                        dev: self.dev,
                        id,
                        op: BlockOp::Read {
                            sector,
                            len: data_w as u32,
                        },
                    }),
                );
            }
            VIRTIO_BLK_T_OUT => {
                if data_w != 0 {
                    return self.reject(
                        c.head,
                        status_addr,
                        q,
                        env,
                        "write request has writable data",
                    );
                }
                let len = readable - HEADER_LEN;
                if let Err(why) = self.check_range(sector, len) {
                    return self.reject(c.head, status_addr, q, env, why);
                }
                if len == 0 {
                    return self.finish(c.head, status_addr, VIRTIO_BLK_S_OK, 1, q, env);
                }
                let data = match chain::gather(env.mem, c.readable(), HEADER_LEN, len as usize) {
                    Ok(d) => d,
                    Err(e) => return env.fault(format!("block write data unreadable: {e}")),
                };
                let segs = data_segments(c.readable(), HEADER_LEN, len);
                let id = self.submit(
                    c.head,
                    PendingBlockKind::Write,
                    sector,
                    status_addr,
                    segs,
                    len,
                );
                env.out.emit(
                    env.n,
                    OutputEvent::Block(BlockRequest {
                        dev: self.dev,
                        id,
                        op: BlockOp::Write { sector, data },
                    }),
                );
            }
            VIRTIO_BLK_T_FLUSH => {
                let id = self.submit(
                    c.head,
                    PendingBlockKind::Flush,
                    0,
                    status_addr,
                    Vec::new(),
                    0,
                );
                env.out.emit(
                    env.n,
                    OutputEvent::Block(BlockRequest {
                        dev: self.dev,
                        id,
                        op: BlockOp::Flush,
                    }),
                );
            }
            VIRTIO_BLK_T_GET_ID => {
                let id = block_id(self.dev);
                let n = (data_w as usize).min(id.len());
                let descs = seg_descs(&data_segments(c.writable(), 0, n as u64), true);
                if let Err(e) = chain::scatter(env.mem, descs.iter(), &id[..n], env.dirty) {
                    return env.fault(format!("GET_ID buffer unwritable: {e}"));
                }
                self.finish(c.head, status_addr, VIRTIO_BLK_S_OK, n as u32 + 1, q, env);
            }
            other => {
                debug!(
                    dev = self.dev,
                    rtype = other,
                    "virtio-blk: unsupported request type"
                );
                self.stats.rejected += 1;
                self.finish(c.head, status_addr, VIRTIO_BLK_S_UNSUPP, 1, q, env);
            }
        }
    }

    fn check_range(&self, sector: u64, len: u64) -> Result<(), &'static str> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err("data length not a multiple of 512");
        }
        if len > MAX_REQUEST_BYTES {
            return Err("request larger than the device limit");
        }
        match sector.checked_add(len / SECTOR_SIZE) {
            Some(end) if end <= self.capacity_sectors => Ok(()),
            _ => Err("request beyond the end of the disk"),
        }
    }

    fn submit(
        &mut self,
        head: u16,
        kind: PendingBlockKind,
        sector: u64,
        status_addr: u64,
        data_segs: Vec<(u64, u32)>,
        len: u64,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            PendingBlockState {
                id,
                head,
                kind,
                sector,
                status_addr,
                data_segs,
                len: len as u32,
            },
        );
        id
    }

    /// The backend requests of every pending request, in id order, rebuilt
    /// from device state and guest memory (write data is re-read from the
    /// guest's buffers, which the driver may not touch while in flight).
    pub fn in_flight(&self, mem: &GuestMemoryMmap) -> Vec<BlockRequest> {
        let mut v = Vec::with_capacity(self.pending.len());
        for p in self.pending.values() {
            let op = match p.kind {
                PendingBlockKind::Read => BlockOp::Read {
                    sector: p.sector,
                    len: p.len,
                },
                PendingBlockKind::Flush => BlockOp::Flush,
                PendingBlockKind::Write => {
                    let descs = seg_descs(&p.data_segs, false);
                    match chain::gather(mem, descs.iter(), 0, p.len as usize) {
                        Ok(data) if data.len() == p.len as usize => BlockOp::Write {
                            sector: p.sector,
                            data,
                        },
                        _ => {
                            warn!(
                                dev = self.dev,
                                id = p.id,
                                "virtio-blk: in-flight write data unreadable, not re-issued"
                            );
                            continue;
                        }
                    }
                }
            };
            v.push(BlockRequest {
                dev: self.dev,
                id: p.id,
                op,
            });
        }
        v
    }

    fn reject(&mut self, head: u16, status_addr: u64, q: &mut Queue, env: &mut Env<'_>, why: &str) {
        warn!(
            dev = self.dev,
            head, why, "virtio-blk: malformed request, IOERR"
        );
        self.stats.rejected += 1;
        self.finish(head, status_addr, VIRTIO_BLK_S_IOERR, 1, q, env);
    }

    /// Write the status byte and return the chain to the driver.
    fn finish(
        &mut self,
        head: u16,
        status_addr: u64,
        status: u32,
        used_len: u32,
        q: &mut Queue,
        env: &mut Env<'_>,
    ) {
        if let Err(e) = env.mem.write_obj(status as u8, GuestAddress(status_addr)) {
            return env.fault(format!("block status byte unwritable: {e}"));
        }
        env.dirty.mark(status_addr, 1);
        self.stats.completed += 1;
        env.add_used(q, head, used_len);
    }

    /// Handle `InputEvent::BlockDone` for request `id`.
    pub fn complete(
        &mut self,
        id: u64,
        status: BlockStatus,
        data: &[u8],
        q: &mut Queue,
        env: &mut Env<'_>,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            debug!(
                dev = self.dev,
                id, "virtio-blk: completion for no pending request"
            );
            self.stats.stale_completions += 1;
            return;
        };
        let mut st = match status {
            BlockStatus::Ok => VIRTIO_BLK_S_OK,
            BlockStatus::IoError => VIRTIO_BLK_S_IOERR,
            BlockStatus::Unsupported => VIRTIO_BLK_S_UNSUPP,
        };
        let mut used_len = 1u32;
        if p.kind == PendingBlockKind::Read && st == VIRTIO_BLK_S_OK {
            if data.len() != p.len as usize {
                warn!(
                    dev = self.dev,
                    id,
                    got = data.len(),
                    want = p.len,
                    "virtio-blk: backend returned a short read, IOERR"
                );
                st = VIRTIO_BLK_S_IOERR;
            } else {
                let descs = seg_descs(&p.data_segs, true);
                match chain::scatter(env.mem, descs.iter(), data, env.dirty) {
                    Ok(n) => used_len += n as u32,
                    Err(e) => {
                        warn!(dev = self.dev, id, error = %e, "virtio-blk: read buffer unwritable");
                        st = VIRTIO_BLK_S_IOERR;
                    }
                }
            }
        }
        self.finish(p.head, p.status_addr, st, used_len, q, env);
    }

    pub fn save(&self) -> BlockDeviceState {
        BlockDeviceState {
            capacity_sectors: self.capacity_sectors,
            next_id: self.next_id,
            pending: self.pending.values().cloned().collect(),
            stats: self.stats.clone(),
        }
    }

    /// Checks a snapshot against this device and a queue size; applies it.
    pub fn restore(&mut self, s: BlockDeviceState, queue_size: u16) -> Result<(), String> {
        if s.capacity_sectors != self.capacity_sectors {
            return Err(format!(
                "snapshot disk has {} sectors, this device {}",
                s.capacity_sectors, self.capacity_sectors
            ));
        }
        let mut pending = BTreeMap::new();
        for p in s.pending {
            if p.id >= s.next_id {
                return Err(format!(
                    "pending id {} not below next_id {}",
                    p.id, s.next_id
                ));
            }
            if p.head >= queue_size {
                return Err(format!(
                    "pending head {} beyond queue size {queue_size}",
                    p.head
                ));
            }
            if pending.insert(p.id, p).is_some() {
                return Err("duplicate pending id".into());
            }
        }
        self.next_id = s.next_id;
        self.pending = pending;
        self.stats = s.stats;
        Ok(())
    }
}

/// The buffers holding `len` data bytes that start `skip` bytes into the
/// concatenation of `descs`, as (address, length).
fn data_segments<'a>(
    descs: impl Iterator<Item = &'a Desc>,
    mut skip: u64,
    len: u64,
) -> Vec<(u64, u32)> {
    let mut left = len;
    let mut segs = Vec::new();
    for d in descs {
        if left == 0 {
            break;
        }
        let dlen = u64::from(d.len);
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let n = (dlen - skip).min(left);
        segs.push((d.addr + skip, n as u32));
        left -= n;
        skip = 0;
    }
    segs
}

fn seg_descs(segs: &[(u64, u32)], writable: bool) -> Vec<Desc> {
    segs.iter()
        .map(|&(addr, len)| Desc {
            addr,
            len,
            writable,
        })
        .collect()
}
