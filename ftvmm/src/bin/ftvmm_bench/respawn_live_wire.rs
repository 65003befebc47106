//! The in-process link of `respawn_live_xfer.rs`: what the sender sends is encoded with the
//! real codec, counted, decoded and handed at once to the real [`Receiver`], which writes into a
//! second VM's memory (`target.rs`'s `VmMemory`) and restores that VM (`target.rs`'s
//! `restore`); its answers wait in a queue for the sender. Also the sender's page reading per
//! round, as `source.rs`'s `send_pages`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ftvmm::lockstep::respawn::pagehash::PageHashes;
use ftvmm::lockstep::respawn::source::read_pages;
use ftvmm::lockstep::respawn::target::{restore, VmMemory};
use ftvmm::lockstep::respawn::PAGE_SIZE;
use ftvmm::lockstep::transfer::message::{decode, encode, pages_per_message, Message};
use ftvmm::lockstep::transfer::receiver::{Receiver, RxAction};
use ftvmm::Vm;
use vm_memory::GuestMemoryMmap;

/// What one round sent.
#[derive(Debug, Clone, Default)]
pub struct RoundSent {
    pub round: u32,
    pub pages: u64,
    /// Pages that were not all zeros (the others travel as no bytes).
    pub nonzero: u64,
    /// Encoded `Pages` messages.
    pub bytes: u64,
    pub time: Duration,
}

/// The receiver's end, in process: encoded messages in, its answers queued for the sender.
pub struct Wire {
    rx: Receiver<VmMemory>,
    /// The receiver's VM (built, never run).
    pub dst: Vm,
    replies: VecDeque<Message>,
    /// Every encoded message from the sender.
    pub bytes_sent: u64,
}

impl Wire {
    /// Sender -> receiver: encode (counted), decode, and perform the receiver's actions as
    /// `target.rs` does; a failed restore aborts like there.
    pub fn send(&mut self, m: &Message) -> Result<(), String> {
        let bytes = encode(m).map_err(|e| format!("cannot encode {m:?}: {e}"))?;
        self.bytes_sent += bytes.len() as u64;
        let m = decode(&bytes).map_err(|e| format!("bad transfer message: {e}"))?;
        for a in self.rx.on_message(m) {
            match a {
                RxAction::Send(reply) => self.reply(&reply)?,
                RxAction::Restore {
                    state,
                    log_start_exit,
                    ..
                } => {
                    if let Err(reason) = restore(&mut self.dst, &state, log_start_exit) {
                        self.reply(&Message::Abort { reason })?;
                        break;
                    }
                }
                RxAction::Done => {}
                RxAction::Failed(e) | RxAction::Rejected(e) => {
                    tracing::warn!("bench receiver: {e}");
                }
            }
        }
        Ok(())
    }

    fn reply(&mut self, m: &Message) -> Result<(), String> {
        let bytes = encode(m).map_err(|e| format!("cannot encode {m:?}: {e}"))?;
        let m = decode(&bytes).map_err(|e| format!("bad transfer message: {e}"))?;
        self.replies.push_back(m);
        Ok(())
    }

    pub fn recv(&mut self) -> Result<Message, String> {
        self.replies
            .pop_front()
            .ok_or_else(|| "the receiver has not answered (nothing queued)".into())
    }
}

/// The sender's I/O: the wire, the page hashes of what went out, the rounds.
pub struct Io {
    pub wire: Wire,
    /// The last version of every page sent (the Switch's digest).
    pub sent: PageHashes,
    pub rounds: Vec<RoundSent>,
}

impl Io {
    /// A sender's I/O towards `rx`, which receives into `dst`; `memory_bytes` of guest memory.
    pub fn new(rx: Receiver<VmMemory>, dst: Vm, memory_bytes: u64) -> Io {
        Io {
            wire: Wire {
                rx,
                dst,
                replies: VecDeque::new(),
                bytes_sent: 0,
            },
            sent: PageHashes::new(memory_bytes / u64::from(PAGE_SIZE), PAGE_SIZE),
            rounds: Vec::new(),
        }
    }

    /// As `source.rs`'s `send_pages`: one `Pages` message per chunk, read now.
    pub fn send_pages(
        &mut self,
        mem: &GuestMemoryMmap,
        round: u32,
        gfns: &[u64],
    ) -> Result<(), String> {
        let t = Instant::now();
        let before = self.wire.bytes_sent;
        let mut r = RoundSent {
            round,
            pages: gfns.len() as u64,
            ..RoundSent::default()
        };
        for chunk in gfns.chunks(pages_per_message(PAGE_SIZE)) {
            let pages = read_pages(mem, chunk, &mut self.sent)?;
            r.nonzero += pages.iter().filter(|p| !p.bytes.is_empty()).count() as u64;
            self.wire.send(&Message::Pages { round, pages })?;
        }
        r.bytes = self.wire.bytes_sent - before;
        r.time = t.elapsed();
        self.rounds.push(r);
        Ok(())
    }
}
