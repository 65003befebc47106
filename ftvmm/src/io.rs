//! The two doors through which non-determinism enters and effects leave the VM.
//!
//! Devices are deterministic state machines. Everything whose value or timing the
//! guest cannot predict reaches them only through [`Inputs`], and everything the
//! outside world can observe leaves only through [`Outputs`]. Both are called by
//! the vCPU loop at *deterministic exits*, each tagged with the exit index `n`
//! (docs/architecture.md §4): the count of `KVM_RUN` returns caused by the guest itself.
//!
//! Without replication (`Live*` impls in the VMM) inputs come straight from the
//! real backends (TAP, disk thread, timer, console) and outputs go straight to
//! them. With lockstep, the Primary records every [`InputEvent`]/[`TimeRead`]
//! with its `n` and holds outputs under the Output Rule; the Secondary takes the
//! same events from the log at the same `n` and drops its outputs. Keeping these
//! types small and exhaustive is what makes record/replay checkable.

use serde::{Deserialize, Serialize};

/// Index of a deterministic exit: advances on every `KVM_RUN` return the guest
/// caused (I/O, MMIO, HLT, interrupt window, debug), not on host-caused ones.
pub type ExitIndex = u64;

/// A request a block device hands to its backend. The `id` is chosen by the
/// device (deterministically) and comes back in [`InputEvent::BlockDone`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockOp {
    Read { sector: u64, len: u32 },
    Write { sector: u64, data: Vec<u8> },
    Flush,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// Which block device (index among the VM's block devices).
    pub dev: u8,
    pub id: u64,
    pub op: BlockOp,
}

/// Outcome of a block request, as the virtio-blk status byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockStatus {
    Ok,
    IoError,
    Unsupported,
}

/// An asynchronous, non-deterministic event delivered to the devices at a
/// deterministic exit. (Its byte vectors serialize as byte strings: the same
/// postcard bytes as a sequence, written in one copy — see [`bytes`].)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputEvent {
    /// One period of the host timer elapsed (drives PIT channel 0's interrupt).
    TimerTick,
    /// A frame received for NIC `dev`.
    Frame {
        dev: u8,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Completion of a [`BlockRequest`]; `data` holds what a read returned.
    BlockDone {
        dev: u8,
        id: u64,
        status: BlockStatus,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Bytes typed on the serial console.
    ConsoleIn(#[serde(with = "bytes")] Vec<u8>),
}

/// Serde of a `Vec<u8>` as one byte string. In postcard a byte string and a
/// sequence of `u8` are the same bytes (a varint length, then the bytes), so
/// the lockstep log's format does not change; but a 16 MiB disk read is
/// written and read in one copy instead of sixteen million calls. Formats
/// that write bytes as a sequence (JSON) read either.
pub mod bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    /// postcard output appending to a `Vec` one slice at a time (postcard's
    /// own `to_extend` goes byte by byte, which unoptimized builds feel on a
    /// 16 MiB read); give it the capacity (`serialized_size`) to copy once.
    pub struct Append(pub Vec<u8>);

    impl postcard::ser_flavors::Flavor for Append {
        type Output = Vec<u8>;

        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            self.0.push(data);
            Ok(())
        }
        fn finalize(self) -> postcard::Result<Vec<u8>> {
            Ok(self.0)
        }
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

/// Which clock a synchronous time read asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSource {
    /// Nanoseconds of a monotonic host clock (used e.g. for PIT counter latches).
    MonotonicNs,
}

/// A synchronous time read and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRead {
    pub source: TimeSource,
    pub value: u64,
}

/// How the guest programmed the timer that produces [`InputEvent::TimerTick`]
/// (PIT channel 0). Derived from guest state, so it is deterministic: a live
/// backend follows it, a replaying one may ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerProgram {
    /// No ticks.
    Off,
    /// One tick every `period_ns`.
    Periodic { period_ns: u64 },
    /// One tick `after_ns` from now, then none.
    OneShot { after_ns: u64 },
}

/// Everything observable that the VM emits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputEvent {
    /// A frame transmitted on NIC `dev`.
    Frame { dev: u8, data: Vec<u8> },
    /// A block request (writes are externally visible; reads and flushes are
    /// issued here too so that one backend sees all I/O in order).
    Block(BlockRequest),
    /// Bytes written to the serial console.
    Console(Vec<u8>),
}

/// Source of non-determinism.
pub trait Inputs {
    /// The asynchronous events to deliver at deterministic exit `n`, in order.
    /// Called once per deterministic exit; usually returns nothing.
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>);
    /// A synchronous time read happening at exit `n`.
    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64;
    /// The vCPU halted (HLT exit `n`) and nothing it can take is pending: wait
    /// for events and return them, like [`Inputs::events_at`]. It may return
    /// nothing (e.g. after a bounded wait) and is then called again with the
    /// same `n`, so the loop can check for a stop request in between; it is
    /// also called again with the same `n` when the events delivered did not
    /// make an interrupt deliverable. The default does not block.
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        self.events_at(n, out)
    }
    /// The guest reprogrammed the tick source at exit `n` (see [`TimerProgram`]).
    fn program_timer(&mut self, n: ExitIndex, program: TimerProgram) {
        let _ = (n, program);
    }
    /// Divergence checks (lockstep): the loop calls [`Inputs::check`] after
    /// every deterministic exit whose index is a multiple of this, before
    /// `events_at`. 0 (the default) turns checks off.
    fn check_interval(&self) -> u64 {
        0
    }
    /// The vCPU's RIP and a hash of its general registers after exit `n`.
    fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) {
        let _ = (n, rip, gpr_hash);
    }
    /// An exit index at which the run must return with `ExitLimit` (lockstep
    /// uses it to stop both sides at the same point, e.g. for a memory digest).
    fn pause_at(&self) -> Option<ExitIndex> {
        None
    }
}

/// Sink of everything observable.
pub trait Outputs {
    /// An output produced at exit `n`.
    fn emit(&mut self, n: ExitIndex, event: OutputEvent);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `InputEvent` as it serialized before its byte vectors became byte
    /// strings (`io::bytes`).
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum SeqEvent {
        TimerTick,
        Frame {
            dev: u8,
            data: Vec<u8>,
        },
        BlockDone {
            dev: u8,
            id: u64,
            status: BlockStatus,
            data: Vec<u8>,
        },
        ConsoleIn(Vec<u8>),
    }

    #[test]
    fn byte_strings_encode_as_the_byte_sequences_did() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let now = vec![
            InputEvent::TimerTick,
            InputEvent::Frame {
                dev: 1,
                data: data[..1500].to_vec(),
            },
            InputEvent::BlockDone {
                dev: 0,
                id: 9,
                status: BlockStatus::Ok,
                data: data[..300].to_vec(),
            },
            InputEvent::BlockDone {
                dev: 0,
                id: u64::MAX,
                status: BlockStatus::IoError,
                data: data.clone(),
            },
            InputEvent::ConsoleIn(b"ok".to_vec()),
        ];
        let before = vec![
            SeqEvent::TimerTick,
            SeqEvent::Frame {
                dev: 1,
                data: data[..1500].to_vec(),
            },
            SeqEvent::BlockDone {
                dev: 0,
                id: 9,
                status: BlockStatus::Ok,
                data: data[..300].to_vec(),
            },
            SeqEvent::BlockDone {
                dev: 0,
                id: u64::MAX,
                status: BlockStatus::IoError,
                data,
            },
            SeqEvent::ConsoleIn(b"ok".to_vec()),
        ];
        let a = postcard::to_allocvec(&now).unwrap();
        let b = postcard::to_allocvec(&before).unwrap();
        assert_eq!(a, b);
        assert_eq!(postcard::from_bytes::<Vec<InputEvent>>(&b).unwrap(), now);
        assert_eq!(postcard::from_bytes::<Vec<SeqEvent>>(&a).unwrap(), before);
        let json = serde_json::to_string(&now).unwrap();
        assert_eq!(json, serde_json::to_string(&before).unwrap());
        assert_eq!(serde_json::from_str::<Vec<InputEvent>>(&json).unwrap(), now);
    }
}
