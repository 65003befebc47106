//! Client histories of a key/value store and a linearizability checker for
//! them: each key is a register (PUT sets its value, GET returns its value
//! or "absent"), and the checker decides whether the recorded operations
//! could have happened one at a time, each at one instant inside its
//! real-time interval `[invoke, complete]`, in an order that the register
//! semantics accept.
//!
//! Recording: clients share one [`Recorder`]; `invoke` before sending a
//! request returns an [`OpId`], and `written`/`read`/`fail`/`unknown`
//! complete it. [`Recorder::finish`] gives a [`History`], plain data that
//! saves as JSON ([`History::to_json`]) to be checked again later.
//!
//! Outcomes and how the checker treats them:
//! - replied (`Written`, `Read`): must be linearized inside its interval;
//! - `Fail`: definitely did not take effect; removed before checking;
//! - `Unknown` (and `Pending`): may have taken effect at any instant after
//!   its invoke, or not at all: its response time is +infinity and the op is
//!   optional. An unknown GET tells nothing and is removed; an unknown PUT
//!   whose value no GET of the key read is removed too (leaving it out never
//!   changes what a GET sees, so this is exact and keeps the search small).
//! - Keys start absent, or at [`CheckOptions::initial`].
//!
//! Algorithm: Wing & Gong's search for a linearization with Lowe's
//! memoisation of configurations (set of linearized ops, register value), as
//! in Porcupine and Knossos, applied to each key alone: a history of a map
//! of registers is linearizable iff each key's sub-history is (locality,
//! Herlihy & Wing; Porcupine calls this P-compositionality). The search
//! backtracks only when it reaches the completion of an op it has not
//! linearized yet (see the module doc of `search.rs`).
//!
//! Complexity: per key with n ops and V values, at most 2^n·(V+1)
//! configurations, each costing O(n/64) to hash; so exponential in the
//! worst case (the problem is NP-complete, Gibbons & Korach 1997). With
//! memoisation the configurations actually reached are roughly those whose
//! linearized set is "every op completed before some instant, plus a subset
//! of the ops concurrent with it": about n·2^w·(V+1) for w ops concurrent at
//! once (≈ the number of clients, plus unknown PUTs that were read, which
//! stay concurrent with everything after their invoke). Each key's search is
//! bounded by [`CheckOptions::step_budget`]; past it the verdict is
//! [`Verdict::TimedOut`] rather than a hang.
//!
//! References:
//! - J. M. Wing, C. Gong, "Testing and verifying concurrent objects",
//!   J. Parallel Distrib. Comput. 17 (1993).
//! - G. Lowe, "Testing for linearizability", Concurrency and Computation:
//!   Practice and Experience 29 (2017).
//! - M. Herlihy, J. Wing, "Linearizability: a correctness condition for
//!   concurrent objects", TOPLAS 12 (1990).
//! - A. Athalye, Porcupine, <https://github.com/anishathalye/porcupine>;
//!   K. Kingsbury, Knossos, <https://github.com/jepsen-io/knossos>.

mod check;
mod explain;
mod model;
mod search;

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod gen;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod prop_tests;

pub use check::{check, check_key, CheckOptions, HistoryError, Verdict, DEFAULT_STEP_BUDGET};
pub use explain::Explanation;
pub use model::{History, Op, OpId, OpKind, Outcome, Recorder};
