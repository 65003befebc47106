//! The new Secondary's side of a live state transfer as a pure state machine:
//! it checks the Offer against what it expects, writes pages into a
//! [`GuestMemoryImage`], acknowledges rounds, and on Switch checks the memory
//! digest and hands the vCPU + device state to the driver.
//!
//! ```text
//! AwaitOffer --Offer ok--> Receiving{0} --Pages{r}*, RoundEnd{r}--> Receiving{r+1}
//! Receiving{r} --Pages{r}*, Switch{r}, digest ok--> Done   (Restored; Restore the state)
//! AwaitOffer --Offer wrong--> Failed (Refuse)
//! Receiving --bad message / digest mismatch--> Failed (Abort)
//! any non-final --Abort / cut--> Failed
//! ```
//!
//! A page of no bytes is a page of zeros. Refused: an out-of-range gfn, a
//! page of another size, a message of another
//! round, a RoundEnd whose count differs from the pages received, anything
//! after Switch. Done and Failed are final; a message after them is
//! [`RxAction::Rejected`] and changes nothing. Building the VM from the
//! state (snapshot.rs), the channel, and starting replay at the log start exit
//! are left to the integration.

pub use super::memory::{sha256, VecMemory};
use super::message::{Message, Page};

/// The memory a transfer writes into.
pub trait GuestMemoryImage {
    /// Writes one page; `bytes` is exactly one page.
    fn write_page(&mut self, gfn: u64, bytes: &[u8]) -> Result<(), MemoryImageError>;
    /// SHA-256 of all memory from GPA 0 (as `digest::memory_sha256`).
    fn sha256(&self) -> [u8; 32];
}

/// A page the memory image could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write guest page {gfn}: {detail}")]
pub struct MemoryImageError {
    pub gfn: u64,
    pub detail: String,
}

/// What the receiver expects to be offered (from its own config and host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub vm: String,
    pub memory_bytes: u64,
    pub page_size: u32,
    pub platform_sha256: [u8; 32],
}

/// Why the receiver refused or aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error("offer does not match: {0}")]
    Offer(String),
    #[error("{what} in {state}")]
    Unexpected { what: String, state: String },
    #[error("page {gfn} of round {round} is outside guest memory ({pages} pages)")]
    GfnOutOfRange { gfn: u64, round: u32, pages: u64 },
    #[error("page {gfn} is {len} bytes, the page size is {page_size}")]
    PageSize {
        gfn: u64,
        len: usize,
        page_size: u32,
    },
    #[error("round {round} ended with {claimed} pages, {received} were received")]
    PageCount {
        round: u32,
        claimed: u64,
        received: u64,
    },
    #[error(transparent)]
    Memory(#[from] MemoryImageError),
    #[error("memory digest mismatch")]
    DigestMismatch,
    #[error("sender aborted: {0}")]
    PeerAborted(String),
    #[error("link lost: {0}")]
    LinkLost(String),
}

/// What the receiver asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxAction {
    Send(Message),
    /// Build the VM from `state` over the received memory and replay the
    /// lockstep log from `log_start_exit`.
    Restore {
        generation: u64,
        state: Vec<u8>,
        log_start_exit: u64,
    },
    Done,
    Failed(ReceiveError),
    /// A message after the end; nothing changed.
    Rejected(ReceiveError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitOffer,
    Receiving {
        generation: u64,
        round: u32,
        pages_this_round: u64,
    },
    Done,
    Failed,
}

/// The receiver state machine; see the module doc.
pub struct Receiver<M> {
    expected: Expected,
    memory: M,
    state: State,
}

impl<M: GuestMemoryImage> Receiver<M> {
    pub fn new(expected: Expected, memory: M) -> Self {
        assert!(expected.page_size > 0, "page size 0");
        Receiver {
            expected,
            memory,
            state: State::AwaitOffer,
        }
    }

    pub fn memory(&self) -> &M {
        &self.memory
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    fn pages(&self) -> u64 {
        self.expected.memory_bytes / u64::from(self.expected.page_size)
    }

    /// The only writer of the state.
    pub fn on_message(&mut self, m: Message) -> Vec<RxAction> {
        if matches!(self.state, State::Done | State::Failed) {
            return vec![RxAction::Rejected(ReceiveError::Unexpected {
                what: kind(&m).into(),
                state: format!("{:?}", self.state),
            })];
        }
        let r = match m {
            Message::Offer {
                vm,
                generation,
                memory_bytes,
                page_size,
                platform_sha256,
            } if self.state == State::AwaitOffer => {
                return self.on_offer(&vm, generation, memory_bytes, page_size, platform_sha256)
            }
            Message::Pages { round, pages } => self.on_pages(round, pages),
            Message::RoundEnd {
                round, pages_sent, ..
            } => self.on_round_end(round, pages_sent),
            Message::Switch {
                round,
                state,
                memory_sha256,
                log_start_exit,
            } => self.on_switch(round, state, memory_sha256, log_start_exit),
            Message::Abort { reason } => {
                self.state = State::Failed;
                return vec![RxAction::Failed(ReceiveError::PeerAborted(reason))];
            }
            other => Err(self.unexpected(kind(&other))),
        };
        r.unwrap_or_else(|e| self.abort(e))
    }

    /// The connection broke (or the driver gave up): final unless done.
    pub fn on_cut(&mut self, detail: &str) -> Vec<RxAction> {
        if matches!(self.state, State::Done | State::Failed) {
            return Vec::new();
        }
        self.state = State::Failed;
        vec![RxAction::Failed(ReceiveError::LinkLost(detail.into()))]
    }

    // AwaitOffer ---- Offer ----> Receiving{0} | Failed
    fn on_offer(
        &mut self,
        vm: &str,
        generation: u64,
        memory_bytes: u64,
        page_size: u32,
        platform: [u8; 32],
    ) -> Vec<RxAction> {
        let e = &self.expected;
        let wrong = if vm != e.vm {
            Some(format!("vm {vm:?}, this host expects {:?}", e.vm))
        } else if memory_bytes != e.memory_bytes {
            Some(format!(
                "memory {memory_bytes} bytes, expected {}",
                e.memory_bytes
            ))
        } else if page_size != e.page_size {
            Some(format!("page size {page_size}, expected {}", e.page_size))
        } else if platform != e.platform_sha256 {
            Some("platform differs from this host's".to_string())
        } else {
            None
        };
        if let Some(reason) = wrong {
            self.state = State::Failed;
            return vec![
                RxAction::Send(Message::Refuse {
                    reason: reason.clone(),
                }),
                RxAction::Failed(ReceiveError::Offer(reason)),
            ];
        }
        self.state = State::Receiving {
            generation,
            round: 0,
            pages_this_round: 0,
        };
        vec![RxAction::Send(Message::Accept)]
    }

    fn on_pages(&mut self, r: u32, pages: Vec<Page>) -> Result<Vec<RxAction>, ReceiveError> {
        let (total, page_size) = (self.pages(), self.expected.page_size);
        let State::Receiving { round, .. } = self.state else {
            return Err(self.unexpected("Pages"));
        };
        if r != round {
            return Err(self.unexpected(&format!("Pages of round {r}")));
        }
        for p in &pages {
            if p.gfn >= total {
                return Err(ReceiveError::GfnOutOfRange {
                    gfn: p.gfn,
                    round,
                    pages: total,
                });
            }
            if !p.bytes.is_empty() && p.bytes.len() != page_size as usize {
                return Err(ReceiveError::PageSize {
                    gfn: p.gfn,
                    len: p.bytes.len(),
                    page_size,
                });
            }
        }
        let zeros = vec![0u8; page_size as usize];
        for p in &pages {
            let bytes = if p.bytes.is_empty() { &zeros } else { &p.bytes };
            self.memory.write_page(p.gfn, bytes)?;
        }
        if let State::Receiving {
            pages_this_round, ..
        } = &mut self.state
        {
            *pages_this_round += pages.len() as u64;
        }
        Ok(Vec::new())
    }

    // Receiving{r} ---- RoundEnd{r} ----> Receiving{r+1}
    fn on_round_end(&mut self, r: u32, claimed: u64) -> Result<Vec<RxAction>, ReceiveError> {
        let State::Receiving {
            generation,
            round,
            pages_this_round,
        } = self.state
        else {
            return Err(self.unexpected("RoundEnd"));
        };
        if r != round {
            return Err(self.unexpected(&format!("RoundEnd of round {r}")));
        }
        if claimed != pages_this_round {
            return Err(ReceiveError::PageCount {
                round,
                claimed,
                received: pages_this_round,
            });
        }
        let next = round
            .checked_add(1)
            .ok_or_else(|| self.unexpected("round 2^32"))?;
        self.state = State::Receiving {
            generation,
            round: next,
            pages_this_round: 0,
        };
        Ok(vec![RxAction::Send(Message::RoundAck { round })])
    }

    // Receiving{r} ---- Switch{r} ----> Done
    fn on_switch(
        &mut self,
        r: u32,
        state: Vec<u8>,
        memory_sha256: [u8; 32],
        log_start_exit: u64,
    ) -> Result<Vec<RxAction>, ReceiveError> {
        let State::Receiving {
            generation, round, ..
        } = self.state
        else {
            return Err(self.unexpected("Switch"));
        };
        if r != round {
            return Err(self.unexpected(&format!("Switch of round {r}")));
        }
        let ours = self.memory.sha256();
        if ours != memory_sha256 {
            return Err(ReceiveError::DigestMismatch);
        }
        self.state = State::Done;
        Ok(vec![
            RxAction::Restore {
                generation,
                state,
                log_start_exit,
            },
            RxAction::Send(Message::Restored {
                memory_sha256: ours,
            }),
            RxAction::Done,
        ])
    }

    fn unexpected(&self, what: &str) -> ReceiveError {
        let state = match self.state {
            State::Receiving { round, .. } => format!("round {round}"),
            ref s => format!("{s:?}"),
        };
        ReceiveError::Unexpected {
            what: what.into(),
            state,
        }
    }

    /// Receiving ---- error ----> Failed, telling the sender.
    fn abort(&mut self, e: ReceiveError) -> Vec<RxAction> {
        tracing::warn!("transfer: receiver aborts: {e}");
        self.state = State::Failed;
        vec![
            RxAction::Send(Message::Abort {
                reason: e.to_string(),
            }),
            RxAction::Failed(e),
        ]
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Offer { .. } => "Offer",
        Message::Accept => "Accept",
        Message::Refuse { .. } => "Refuse",
        Message::Pages { .. } => "Pages",
        Message::RoundEnd { .. } => "RoundEnd",
        Message::RoundAck { .. } => "RoundAck",
        Message::Switch { .. } => "Switch",
        Message::Restored { .. } => "Restored",
        Message::Abort { .. } => "Abort",
        Message::Paired { .. } => "Paired",
    }
}
