//! The history model: operations that clients of a key/value store invoked
//! and what became of them, and a [`Recorder`] that several client threads
//! append to while a run goes on.
//!
//! An operation's interval is `[invoke, complete]` in nanoseconds of one
//! clock shared by all clients (the recorder's). What an outcome means:
//! - [`Outcome::Written`] / [`Outcome::Read`]: the store replied; the op took
//!   effect at one instant inside its interval.
//! - [`Outcome::Fail`]: the op definitely did not take effect (e.g. the
//!   request was refused before it was sent). The checker drops it.
//! - [`Outcome::Unknown`]: the op may or may not have taken effect, at any
//!   instant after its invoke (e.g. the connection broke before the reply).
//!   Its `complete` time, if recorded, is when the client gave up; the
//!   checker treats its response as never arriving.
//! - [`Outcome::Pending`]: not completed yet (a history still being
//!   recorded); checked like `Unknown`.
//!
//! NOTICE: [`History`] is saved as JSON with a run; changes to these types
//! must keep old files readable (add fields with `#[serde(default)]`).

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Set the key's value.
    Put { value: String },
    /// Read the key's value.
    Get,
}

/// What became of an operation (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No reply yet: checked as [`Outcome::Unknown`].
    Pending,
    /// A PUT was acknowledged.
    Written,
    /// A GET replied: the value read, `None` when the key was absent.
    Read(Option<String>),
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect.
    Unknown,
}

/// One operation of one client on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: u32,
    pub key: String,
    pub kind: OpKind,
    /// When the client sent the request (ns).
    pub invoke: u64,
    /// When the client got the reply or gave up (ns); `None` while pending.
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    /// A completed op with an explicit interval (for hand-written histories).
    pub fn new(
        client: u32,
        key: &str,
        kind: OpKind,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
    ) -> Op {
        Op {
            client,
            key: key.to_string(),
            kind,
            invoke,
            complete: Some(complete),
            outcome,
        }
    }

    /// Whether the checker must place this op (it replied) rather than may.
    pub fn is_definite(&self) -> bool {
        matches!(self.outcome, Outcome::Written | Outcome::Read(_))
    }
}

impl std::fmt::Display for Op {
    /// `c3 GET "k" -> "v" [120, 180]`, times in ns; `?` for no completion.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{} ", self.client)?;
        match &self.kind {
            OpKind::Put { value } => write!(f, "PUT {:?}={:?}", self.key, value)?,
            OpKind::Get => write!(f, "GET {:?}", self.key)?,
        }
        match &self.outcome {
            Outcome::Pending => write!(f, " pending")?,
            Outcome::Written => write!(f, " ok")?,
            Outcome::Read(Some(v)) => write!(f, " -> {v:?}")?,
            Outcome::Read(None) => write!(f, " -> absent")?,
            Outcome::Fail => write!(f, " failed")?,
            Outcome::Unknown => write!(f, " unknown")?,
        }
        match self.complete {
            Some(c) => write!(f, " [{}, {}]", self.invoke, c),
            None => write!(f, " [{}, ?]", self.invoke),
        }
    }
}

/// A whole run's operations, in invoke order as recorded. Plain data: save
/// it with [`History::to_json`], load it with [`History::from_json`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn from_ops(ops: Vec<Op>) -> History {
        History { ops }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a history always serializes")
    }

    pub fn from_json(text: &str) -> Result<History, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Index of an op in its recorder, returned by [`Recorder::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(pub usize);

/// Appends ops from several threads (share it by reference or `Arc`).
/// Times are ns since the recorder was made, from one monotonic clock, so
/// intervals of different clients compare.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// When the recorder was made: time zero of [`Recorder::now`].
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Nanoseconds since the recorder was made.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records that `client` sent `kind` on `key` now; call this right
    /// before sending, so the interval contains the op's effect.
    pub fn invoke(&self, client: u32, key: &str, kind: OpKind) -> OpId {
        let at = self.now();
        self.invoke_at(client, key, kind, at)
    }

    /// [`Recorder::invoke`] at an explicit time (simulations, tests).
    pub fn invoke_at(&self, client: u32, key: &str, kind: OpKind, at: u64) -> OpId {
        let mut ops = self.lock();
        ops.push(Op {
            client,
            key: key.to_string(),
            kind,
            invoke: at,
            complete: None,
            outcome: Outcome::Pending,
        });
        OpId(ops.len() - 1)
    }

    /// A PUT was acknowledged now.
    pub fn written(&self, id: OpId) {
        self.complete(id, Outcome::Written, self.now());
    }

    /// A GET replied now with `value` (`None`: the key was absent).
    pub fn read(&self, id: OpId, value: Option<String>) {
        self.complete(id, Outcome::Read(value), self.now());
    }

    /// The op definitely did not take effect.
    pub fn fail(&self, id: OpId) {
        self.complete(id, Outcome::Fail, self.now());
    }

    /// The op may or may not have taken effect (the client gave up now).
    pub fn unknown(&self, id: OpId) {
        self.complete(id, Outcome::Unknown, self.now());
    }

    /// Completes `id` with `outcome` at `at`. Completing an op twice or an
    /// id this recorder did not return is a bug of the caller: it panics.
    pub fn complete(&self, id: OpId, outcome: Outcome, at: u64) {
        let mut ops = self.lock();
        let op = ops.get_mut(id.0).expect("an OpId from this recorder");
        assert_eq!(op.outcome, Outcome::Pending, "op {} completed twice", id.0);
        op.complete = Some(at);
        op.outcome = outcome;
    }

    /// The ops so far (pending ones included, as pending).
    pub fn snapshot(&self) -> History {
        History::from_ops(self.lock().clone())
    }

    /// The recorded history.
    pub fn finish(self) -> History {
        History::from_ops(self.ops.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // A client thread that panicked holding the lock left whole ops.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}
