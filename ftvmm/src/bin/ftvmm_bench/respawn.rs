//! Respawn's stop-and-copy on this host's KVM (issue 10): per guest memory size, the reference
//! guest (CPU mode, a VM exit every round) is booted on a source VM and a second VM is built
//! the same way as the receiver. Each run measures, on the real code paths of
//! `lockstep/respawn/source.rs` and `target.rs` but with no channel in between:
//! the dirty log (start, and one read after some guest exits), `save_state` and the encoded
//! `SwitchState`, round 0 on the sender (read every page, zero check, `PageHashes::set`,
//! encode `Pages` messages) and on the receiver (decode, `Receiver` writes into the second
//! VM's memory and hashes), the Switch digest (`PageHashes::digest`) next to the full-memory
//! SHA-256 it replaced, and `load_state`. Every transfer ends with a real `Switch` the
//! receiver checks, and the first run of each row also compares both VMs' full memory.
//!
//! Two rows per size: "booted" (the guest as it runs, memory mostly zero pages) and "filled"
//! (every zero page above [`FILL_FROM`] then written with pseudo-random bytes by the bench,
//! like a guest that has used all its memory; that is free heap the guest never reads).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ftvmm::io::{ExitIndex, OutputEvent, Outputs};
use ftvmm::lockstep::digest::memory_sha256;
use ftvmm::lockstep::respawn::pagehash::{is_zero, PageHashes};
use ftvmm::lockstep::respawn::{SwitchState, PAGE_SIZE};
use ftvmm::lockstep::transfer::message::{decode, encode, pages_per_message, Message, Page};
use ftvmm::lockstep::transfer::receiver::{
    Expected, GuestMemoryImage, MemoryImageError, Receiver, RxAction,
};
use ftvmm::runner::{build_vm, VmSpec};
use ftvmm::{RunOutcome, Vm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::exits::NoInputs;

/// Guest memory sizes measured by default (3072 MiB is the config maximum).
pub const SIZES_MIB: [u64; 3] = [64, 512, 3072];
/// Exits the guest runs after boot before anything is measured.
const WARMUP_EXITS: u64 = 5_000;
/// Exits the guest runs between starting the dirty log and reading it.
pub const DIRTY_EXITS: u64 = 2_000;
/// Pages of the measured final round (the top of memory, sent a second time).
pub const FINAL_PAGES: u64 = 4096;
/// The "filled" rows write zero pages from this address up (the guest's free heap).
pub const FILL_FROM: u64 = 16 << 20;
/// The estimate's link: 10 GbE as 1.25 GB/s of payload, and one round trip.
pub const LINK_BYTES_PER_SEC: f64 = 1.25e9;
pub const RTT: Duration = Duration::from_micros(50);

/// One run's measurements.
pub struct Run {
    pub dirty_start: Duration,
    pub dirty_read: Duration,
    pub dirty_pages: usize,
    pub save_state: Duration,
    pub state_encode: Duration,
    pub state_bytes: usize,
    pub send: Duration,
    pub bytes_sent: u64,
    pub nonzero_pages: u64,
    /// Sender and receiver time of a final round of [`FINAL_PAGES`] pages.
    pub final_send: Duration,
    pub final_receive: Duration,
    pub digest: Duration,
    pub full_sha: Duration,
    pub receive: Duration,
    /// The receiver's handling of the Switch (its digest of the received pages).
    pub switch_rx: Duration,
    pub state_decode: Duration,
    pub load_state: Duration,
}

/// The runs of one size and memory content, or why the size was skipped.
pub struct Row {
    pub mib: u64,
    pub variant: &'static str,
    pub runs: Vec<Run>,
}

/// The received pages go into the second VM's memory, hashed as `target.rs`'s `VmMemory`.
struct VmMemory {
    mem: GuestMemoryMmap,
    received: PageHashes,
}

impl GuestMemoryImage for VmMemory {
    fn write_page(&mut self, gfn: u64, bytes: &[u8]) -> Result<(), MemoryImageError> {
        self.mem
            .write_slice(bytes, GuestAddress(gfn * u64::from(PAGE_SIZE)))
            .map_err(|e| MemoryImageError {
                gfn,
                detail: e.to_string(),
            })?;
        self.received.set(gfn, bytes);
        Ok(())
    }

    fn sha256(&self) -> [u8; 32] {
        self.received.digest()
    }
}

/// Keeps the guest's console bytes (to see that it booted and did not panic).
#[derive(Default)]
struct Console(Vec<u8>);

impl Outputs for Console {
    fn emit(&mut self, _n: ExitIndex, event: OutputEvent) {
        if let OutputEvent::Console(b) = event {
            self.0.extend_from_slice(&b);
        }
    }
}

fn spec(kernel: &Path, mib: u64) -> VmSpec {
    VmSpec {
        kernel: kernel.to_path_buf(),
        mem_mib: mib,
        disk: None,
        tap: None,
        cmdline: format!("mode=cpu cpu_iters={} cpu_yield=1", u64::MAX),
        restore: None,
        snapshot_on_exit: None,
        stdin: false,
        bridge: None,
        cpu: Default::default(),
    }
}

/// Runs the guest `exits` more exits; it must still be running.
fn advance(vm: &mut Vm, exits: u64, console: &mut Console) -> Result<()> {
    let until = vm.exit_index() + exits;
    let outcome = vm.run(&mut NoInputs, console, Some(until))?;
    let text = String::from_utf8_lossy(&console.0);
    if outcome != RunOutcome::ExitLimit || text.contains("panic") {
        bail!("the guest stopped early ({outcome:?}); console: {text}");
    }
    Ok(())
}

/// Every size in `sizes_mib`, `runs` times each, in both rows. Each run receives into a
/// freshly built VM, as a new Secondary does (its memory is not backed yet). A size whose VMs
/// cannot be built (memory) is skipped with a note on stderr and in the returned notes.
pub fn run(kernel: &Path, sizes_mib: &[u64], runs: usize) -> Result<(Vec<Row>, Vec<String>)> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut skip = |mib: u64, e: &dyn std::fmt::Display| {
        let note = format!("{mib} MiB skipped: cannot build a VM of that size: {e}");
        eprintln!("ftvmm-bench: respawn: {note}");
        notes.push(note);
    };
    'sizes: for &mib in sizes_mib {
        let mut src = match build_vm(&spec(kernel, mib), None, false) {
            Ok(vm) => vm,
            Err(e) => {
                skip(mib, &e);
                continue;
            }
        };
        let mut console = Console::default();
        advance(&mut src, WARMUP_EXITS, &mut console)?;
        ensure!(
            String::from_utf8_lossy(&console.0).contains("guest: mem="),
            "the guest did not boot: {:?}",
            String::from_utf8_lossy(&console.0)
        );
        let mut size_rows = Vec::new();
        for variant in ["booted", "filled"] {
            if variant == "filled" {
                fill(src.memory(), FILL_FROM, src.mem_size())?;
            }
            let mut row = Row {
                mib,
                variant,
                runs: Vec::new(),
            };
            for r in 0..runs {
                eprintln!(
                    "ftvmm-bench: respawn {mib} MiB {variant}, run {}/{runs}",
                    r + 1
                );
                let mut dst = match build_vm(&spec(kernel, mib), None, false) {
                    Ok(vm) => vm,
                    Err(e) => {
                        skip(mib, &e);
                        continue 'sizes;
                    }
                };
                let one = one_run(&mut src, &mut dst, &mut console, r == 0)
                    .with_context(|| format!("respawn bench, {mib} MiB {variant}"))?;
                row.runs.push(one);
            }
            size_rows.push(row);
        }
        rows.extend(size_rows);
    }
    Ok((rows, notes))
}

/// Writes pseudo-random bytes into every all-zero page of `[from, end)`.
fn fill(mem: &GuestMemoryMmap, from: u64, end: u64) -> Result<()> {
    let ps = u64::from(PAGE_SIZE);
    let mut page = vec![0u8; ps as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for gpa in (from..end).step_by(ps as usize) {
        mem.read_slice(&mut page, GuestAddress(gpa))?;
        if !is_zero(&page) {
            continue;
        }
        for w in page.chunks_exact_mut(8) {
            // xorshift64: cheap, every page different.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        mem.write_slice(&page, GuestAddress(gpa))?;
    }
    Ok(())
}

/// One message's pages of `round` on the sender, as `source.rs`'s `send_pages` (plus the
/// encoding its `to_channel` does): the encoded message.
fn send_chunk(
    mem: &GuestMemoryMmap,
    round: u32,
    gfns: &[u64],
    sent: &mut PageHashes,
    nonzero: &mut u64,
) -> Result<Vec<u8>> {
    let mut pages = Vec::with_capacity(gfns.len());
    for &gfn in gfns {
        let mut bytes = vec![0u8; PAGE_SIZE as usize];
        mem.read_slice(&mut bytes, GuestAddress(gfn * u64::from(PAGE_SIZE)))?;
        if is_zero(&bytes) {
            bytes = Vec::new();
        } else {
            *nonzero += 1;
        }
        sent.set(gfn, &bytes);
        pages.push(Page { gfn, bytes });
    }
    Ok(encode(&Message::Pages { round, pages })?)
}

/// What one round cost on each side, and what it sent.
#[derive(Default)]
struct RoundCost {
    send: Duration,
    receive: Duration,
    bytes: u64,
    nonzero: u64,
}

/// Sends `gfns` of `src` in `round`, one message at a time: sender, then receiver.
fn round_trip(
    src: &GuestMemoryMmap,
    round: u32,
    gfns: &[u64],
    sent: &mut PageHashes,
    rx: &mut Receiver<VmMemory>,
) -> Result<RoundCost> {
    let mut c = RoundCost::default();
    for chunk in gfns.chunks(pages_per_message(PAGE_SIZE)) {
        let t = Instant::now();
        let msg = send_chunk(src, round, chunk, sent, &mut c.nonzero)?;
        c.send += t.elapsed();
        c.bytes += msg.len() as u64;
        let t = Instant::now();
        let m = decode(&msg)?;
        deliver(rx, m)?;
        c.receive += t.elapsed();
    }
    Ok(c)
}

/// Hands `m` to the receiver; anything failed or rejected is an error.
fn deliver(rx: &mut Receiver<VmMemory>, m: Message) -> Result<Vec<RxAction>> {
    let actions = rx.on_message(m);
    for a in &actions {
        if let RxAction::Failed(e) | RxAction::Rejected(e) = a {
            bail!("the receiver refused: {e}");
        }
    }
    Ok(actions)
}

fn one_run(src: &mut Vm, dst: &mut Vm, console: &mut Console, verify: bool) -> Result<Run> {
    // (a) The dirty log: started, the guest runs, read once (source.rs does both between
    // two exits on the vCPU thread).
    src.stop_dirty_tracking()?;
    let t = Instant::now();
    src.start_dirty_tracking()?;
    let dirty_start = t.elapsed();
    advance(src, DIRTY_EXITS, console)?;
    let t = Instant::now();
    let dirty = src.dirty_pages_since_last_call()?;
    let dirty_read = t.elapsed();
    src.stop_dirty_tracking()?;

    // (b) The vCPU and device state, and the SwitchState that carries it.
    let t = Instant::now();
    let state = src.save_state()?;
    let save_state = t.elapsed();
    let t = Instant::now();
    let sw = SwitchState {
        vm: state,
        first_seq: 0,
        last_time: None,
    };
    let state = postcard::to_allocvec(&sw).context("cannot encode the switch state")?;
    let state_encode = t.elapsed();

    // (c) + (e) Round 0, one message at a time: sender, then receiver.
    let mem_bytes = src.mem_size();
    let pages = mem_bytes / u64::from(PAGE_SIZE);
    let mut sent = PageHashes::new(pages, PAGE_SIZE);
    let expected = Expected {
        vm: "bench".into(),
        memory_bytes: dst.mem_size(),
        page_size: PAGE_SIZE,
        platform_sha256: [0; 32],
    };
    let memory = VmMemory {
        mem: dst.memory().clone(),
        received: PageHashes::new(pages, PAGE_SIZE),
    };
    let mut rx = Receiver::new(expected.clone(), memory);
    let offer = Message::Offer {
        vm: expected.vm,
        generation: 1,
        memory_bytes: mem_bytes,
        page_size: PAGE_SIZE,
        platform_sha256: [0; 32],
    };
    ensure!(deliver(&mut rx, offer)? == vec![RxAction::Send(Message::Accept)]);
    let gfns: Vec<u64> = (0..pages).collect();
    let round0 = round_trip(src.memory(), 0, &gfns, &mut sent, &mut rx)?;
    let end = Message::RoundEnd {
        round: 0,
        pages_sent: pages,
        dirty_left: FINAL_PAGES,
    };
    ensure!(deliver(&mut rx, end)? == vec![RxAction::Send(Message::RoundAck { round: 0 })]);
    // The final round: the top FINAL_PAGES pages again, into memory already written once
    // (what the stop-and-copy sends of the last dirty pages).
    let last = &gfns[gfns.len().saturating_sub(FINAL_PAGES as usize)..];
    let last_round = round_trip(src.memory(), 1, last, &mut sent, &mut rx)?;

    // (d) What the pause pays for the digest now, and what it paid before.
    let t = Instant::now();
    let digest = sent.digest();
    let digest_t = t.elapsed();
    let t = Instant::now();
    let full = memory_sha256(src.memory());
    let full_sha = t.elapsed();

    // The Switch: the receiver checks the digest of what it received against the sender's.
    let switch = Message::Switch {
        round: 1,
        state,
        memory_sha256: digest,
        log_start_exit: src.exit_index(),
    };
    let t = Instant::now();
    let actions = deliver(&mut rx, switch)?;
    let switch_rx = t.elapsed();
    let state = actions
        .into_iter()
        .find_map(|a| match a {
            RxAction::Restore { state, .. } => Some(state),
            _ => None,
        })
        .context("the switch restored nothing")?;
    let state_bytes = state.len();

    // (e) The receiver's restore, as target.rs's `restore`.
    let t = Instant::now();
    let sw: SwitchState = postcard::from_bytes(&state).context("undecodable switch state")?;
    let state_decode = t.elapsed();
    let t = Instant::now();
    dst.load_state(sw.vm)?;
    let load_state = t.elapsed();
    ensure!(
        dst.exit_index() == src.exit_index(),
        "restored at another exit"
    );
    if verify {
        ensure!(
            memory_sha256(dst.memory()) == full,
            "the receiving VM's memory differs from the sender's"
        );
    }
    Ok(Run {
        dirty_start,
        dirty_read,
        dirty_pages: dirty.len(),
        save_state,
        state_encode,
        state_bytes,
        send: round0.send,
        bytes_sent: round0.bytes,
        nonzero_pages: round0.nonzero,
        final_send: last_round.send,
        final_receive: last_round.receive,
        digest: digest_t,
        full_sha,
        receive: round0.receive,
        switch_rx,
        state_decode,
        load_state,
    })
}

#[cfg(test)]
#[path = "respawn_tests.rs"]
mod tests;
