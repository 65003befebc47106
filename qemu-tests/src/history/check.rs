//! The checker's entry points: splits a history by key, prepares each key's
//! ops for the search (drops failed ops, unanswered GETs and unknown PUTs
//! that nothing read), and turns what the search found into a [`Verdict`].

use std::collections::{BTreeMap, HashMap};

use super::explain::Explanation;
use super::model::{History, Op, OpKind, Outcome};
use super::search::{search, Found, SearchOp};

/// Steps per key before the checker gives up (see [`CheckOptions`]). A
/// failing 2,000-op key with 10 clients took ~2 million steps (~3 s in a
/// debug build).
pub const DEFAULT_STEP_BUDGET: u64 = 5_000_000;

/// How to check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Values the keys held before the history (others start absent).
    pub initial: BTreeMap<String, String>,
    /// Search steps allowed per key (one step: one call or return entry
    /// visited); past it that key's verdict is [`Verdict::TimedOut`]. It
    /// bounds memory too: at most one memoised configuration per step, each
    /// about n/8 + 50 bytes for a key of n ops.
    pub step_budget: u64,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            initial: BTreeMap::new(),
            step_budget: DEFAULT_STEP_BUDGET,
        }
    }
}

/// What the checker concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's sub-history is linearizable.
    Linearizable,
    /// This key's sub-history is not (the first such key in key order).
    NotLinearizable {
        key: String,
        explanation: Box<Explanation>,
    },
    /// No key is known to be non-linearizable, but the search of this key
    /// (the first in key order) ran out of its step budget.
    TimedOut { key: String, steps: u64 },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { explanation, .. } => write!(f, "{explanation}"),
            Verdict::TimedOut { key, steps } => {
                write!(
                    f,
                    "key {key:?}: no verdict after {steps} search steps (budget spent)"
                )
            }
        }
    }
}

/// A history the checker cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("op {index} ({op}): a {outcome} outcome on a {kind}")]
    OutcomeMismatch {
        index: usize,
        op: String,
        outcome: &'static str,
        kind: &'static str,
    },
    #[error("op {index} ({op}): replied but has no completion time")]
    NoCompletion { index: usize, op: String },
    #[error("op {index} ({op}): completes before it is invoked")]
    CompletesBeforeInvoke { index: usize, op: String },
}

/// Checks that `history` is linearizable as a map of registers: each key's
/// sub-history is checked alone (linearizability is compositional), in key
/// order, stopping at the first key that is not linearizable.
pub fn check(history: &History, options: &CheckOptions) -> Result<Verdict, HistoryError> {
    for (index, op) in history.ops.iter().enumerate() {
        validate(index, op)?;
    }
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut timed_out = None;
    for (key, ops) in by_key {
        let initial = options.initial.get(key).map(String::as_str);
        match check_key_ops(key, &ops, initial, options.step_budget) {
            Verdict::Linearizable => {}
            Verdict::TimedOut { key, steps } => {
                timed_out.get_or_insert(Verdict::TimedOut { key, steps });
            }
            not => return Ok(not),
        }
    }
    Ok(timed_out.unwrap_or(Verdict::Linearizable))
}

/// Checks the ops of `history` on `key` alone, the key starting at
/// `initial` (`None`: absent).
pub fn check_key(
    history: &History,
    key: &str,
    initial: Option<&str>,
    step_budget: u64,
) -> Result<Verdict, HistoryError> {
    let mut ops = Vec::new();
    for (index, op) in history.ops.iter().enumerate() {
        if op.key == key {
            validate(index, op)?;
            ops.push(op);
        }
    }
    Ok(check_key_ops(key, &ops, initial, step_budget))
}

fn validate(index: usize, op: &Op) -> Result<(), HistoryError> {
    let mismatch = |outcome, kind| HistoryError::OutcomeMismatch {
        index,
        op: op.to_string(),
        outcome,
        kind,
    };
    match (&op.kind, &op.outcome) {
        (OpKind::Put { .. }, Outcome::Read(_)) => return Err(mismatch("read", "PUT")),
        (OpKind::Get, Outcome::Written) => return Err(mismatch("written", "GET")),
        _ => {}
    }
    match op.complete {
        None if op.is_definite() => Err(HistoryError::NoCompletion {
            index,
            op: op.to_string(),
        }),
        Some(c) if c < op.invoke => Err(HistoryError::CompletesBeforeInvoke {
            index,
            op: op.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Checks one key's (validated) ops.
fn check_key_ops(key: &str, ops: &[&Op], initial: Option<&str>, budget: u64) -> Verdict {
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &str| -> u32 {
        if let Some(&id) = values.get(v) {
            return id;
        }
        let id = values.len() as u32;
        values.insert(v.to_string(), id);
        id
    };
    let initial_id = initial.map(&mut intern);
    // Values some GET read: an optional PUT of any other value can always
    // be left out (no GET could tell), so it is dropped before the search.
    let read: std::collections::HashSet<&str> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Read(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let mut kept: Vec<&Op> = Vec::new();
    let mut search_ops = Vec::new();
    for &op in ops {
        let ret = match op.outcome {
            Outcome::Fail => continue,
            Outcome::Written | Outcome::Read(_) => op.complete,
            Outcome::Unknown | Outcome::Pending => None,
        };
        let (put, got) = match (&op.kind, &op.outcome) {
            (OpKind::Put { value }, _) if ret.is_none() && !read.contains(value.as_str()) => {
                continue
            }
            (OpKind::Put { value }, _) => (Some(intern(value)), None),
            (OpKind::Get, Outcome::Read(v)) => (None, v.as_deref().map(&mut intern)),
            // A GET without a reply tells nothing.
            (OpKind::Get, _) => continue,
        };
        kept.push(op);
        search_ops.push(SearchOp {
            put,
            read: got,
            invoke: op.invoke,
            ret,
        });
    }
    match search(&search_ops, initial_id, budget) {
        Found::Linearizable => Verdict::Linearizable,
        Found::TimedOut { steps } => Verdict::TimedOut {
            key: key.to_string(),
            steps,
        },
        Found::Stuck {
            prefix,
            state,
            stuck,
        } => {
            let names: HashMap<u32, &str> =
                values.iter().map(|(s, id)| (*id, s.as_str())).collect();
            let explanation = Explanation::new(
                key,
                prefix.iter().map(|&i| kept[i].clone()).collect(),
                state.map(|id| names[&id].to_string()),
                kept[stuck].clone(),
                ops,
            );
            Verdict::NotLinearizable {
                key: key.to_string(),
                explanation: Box::new(explanation),
            }
        }
    }
}
