//! Why a key's history is not linearizable, for a person reading a failed
//! run: the longest linearizable prefix the search found, the value the key
//! held after it, the op that could not be placed next, and (for a GET) the
//! PUTs that wrote the value it read.

use super::model::{Op, OpKind, Outcome};

/// Prefix ops shown in full; earlier ones are counted.
const SHOWN: usize = 20;

/// The deepest point of the search of one key (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub key: String,
    /// The longest linearizable prefix found, in linearization order.
    pub prefix: Vec<Op>,
    /// The key's value after `prefix` (`None`: absent).
    pub state: Option<String>,
    /// The op whose completion the search reached without being able to
    /// linearize it (nor any order of the ops still pending) after `prefix`.
    pub stuck: Op,
    /// If `stuck` is a GET that read a value: every PUT of that value on
    /// the key (failed and unknown ones too), in history order.
    pub writers: Vec<Op>,
}

impl Explanation {
    pub(crate) fn new(
        key: &str,
        prefix: Vec<Op>,
        state: Option<String>,
        stuck: Op,
        ops: &[&Op],
    ) -> Explanation {
        let writers = match (&stuck.kind, &stuck.outcome) {
            (OpKind::Get, Outcome::Read(Some(read))) => ops
                .iter()
                .filter(|op| matches!(&op.kind, OpKind::Put { value } if value == read))
                .map(|&op| op.clone())
                .collect(),
            _ => Vec::new(),
        };
        Explanation {
            key: key.to_string(),
            prefix,
            state,
            stuck,
            writers,
        }
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "key {:?} is not linearizable (times in ns).", self.key)?;
        let n = self.prefix.len();
        let skip = n.saturating_sub(SHOWN);
        writeln!(f, "Longest linearizable prefix found: {n} ops")?;
        if skip > 0 {
            writeln!(f, "  ... {skip} earlier ops")?;
        }
        for (i, op) in self.prefix.iter().enumerate().skip(skip) {
            writeln!(f, "  {:>4}. {op}", i + 1)?;
        }
        match &self.state {
            Some(v) => writeln!(f, "after which the key holds {v:?}.")?,
            None => writeln!(f, "after which the key is absent.")?,
        }
        let by = self.stuck.complete.unwrap_or(self.stuck.invoke);
        write!(
            f,
            "Cannot place: {} (it replied, so it took effect by {by}, \
             but neither it nor any order of the ops pending then fits).",
            self.stuck
        )?;
        if let (OpKind::Get, Outcome::Read(Some(read))) = (&self.stuck.kind, &self.stuck.outcome) {
            if self.writers.is_empty() {
                write!(f, "\nNo PUT on this key wrote {read:?}.")?;
            } else {
                write!(f, "\nPUTs of {read:?} on this key:")?;
                for op in &self.writers {
                    write!(f, "\n  {op}")?;
                }
            }
        }
        Ok(())
    }
}
