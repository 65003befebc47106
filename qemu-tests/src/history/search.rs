//! The search of one key's sub-history: Wing & Gong's backtracking over the
//! ops in real-time order, with Lowe's memoisation of configurations
//! (set of linearized ops, register value), as Porcupine's `checkSingle`.
//!
//! Entries (an op's call at its invoke, its return at its completion) sit in
//! one doubly linked list in time order, calls before returns at equal
//! times (touching intervals count as concurrent). Walking from the head:
//! a call whose op the register accepts in the current state is linearized
//! (its call and return are lifted out of the list, the walk restarts at the
//! head) unless that configuration was explored before; a return reached
//! means its op was not linearized before it completed, so the last
//! linearization is undone and the walk continues after it. Optional ops
//! (unknown outcome) have no return entry: they never force a backtrack, and
//! the search succeeds once every definite op is linearized.

use std::collections::HashSet;

/// One op of a key, prepared for the search: values are interned as ids.
#[derive(Clone, Debug)]
pub(crate) struct SearchOp {
    /// `Some(v)`: a PUT of value id `v`; `None`: a GET.
    pub put: Option<u32>,
    /// For a GET: the value id it read (`None`: absent).
    pub read: Option<u32>,
    pub invoke: u64,
    /// `None`: optional (no response; may be linearized anywhere after
    /// `invoke`, or not at all).
    pub ret: Option<u64>,
}

/// What the search found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Linearizable,
    /// The longest linearizable prefix found (op indices in order), the
    /// register value after it, and the op whose return was reached there.
    Stuck {
        prefix: Vec<usize>,
        state: Option<u32>,
        stuck: usize,
    },
    /// The step budget ran out after this many steps.
    TimedOut {
        steps: u64,
    },
}

const HEAD: usize = 0;

/// The entry list: node 0 is the head, node 1 the tail, then entries.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per node: (op index, is a call).
    what: Vec<(usize, bool)>,
    /// Per op: its return node, if it has one.
    ret_node: Vec<Option<usize>>,
}

const TAIL: usize = 1;

impl List {
    fn new(ops: &[SearchOp]) -> List {
        // (time, 0 = call / 1 = return, op): calls first at equal times.
        let mut entries: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            entries.push((op.invoke, 0, i));
            if let Some(r) = op.ret {
                entries.push((r.max(op.invoke), 1, i));
            }
        }
        entries.sort_unstable();
        let n = entries.len() + 2;
        let mut list = List {
            next: vec![TAIL; n],
            prev: vec![HEAD; n],
            what: vec![(usize::MAX, false); n],
            ret_node: vec![None; ops.len()],
        };
        let mut last = HEAD;
        for (k, &(_, kind, op)) in entries.iter().enumerate() {
            let node = k + 2;
            list.what[node] = (op, kind == 0);
            if kind == 1 {
                list.ret_node[op] = Some(node);
            }
            list.next[last] = node;
            list.prev[node] = last;
            last = node;
        }
        list.next[last] = TAIL;
        list.prev[TAIL] = last;
        list
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes [`List::unlink`]; valid only in reverse order of unlinking.
    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Some(r) = self.ret_node[self.what[call].0] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, call: usize) {
        if let Some(r) = self.ret_node[self.what[call].0] {
            self.relink(r);
        }
        self.relink(call);
    }
}

/// A fixed-size set of op indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The register: a PUT always applies; a GET applies iff it read `state`.
fn step(state: Option<u32>, op: &SearchOp) -> Option<Option<u32>> {
    match op.put {
        Some(v) => Some(Some(v)),
        None => (op.read == state).then_some(state),
    }
}

/// Searches for a linearization of `ops` from `initial`, giving up after
/// `budget` steps (one step: one list entry visited).
pub(crate) fn search(ops: &[SearchOp], initial: Option<u32>, budget: u64) -> Found {
    let mut list = List::new(ops);
    let mut remaining = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut state = initial;
    let mut linearized = Bits(vec![0; ops.len().div_ceil(64)]);
    let mut seen: HashSet<(Bits, Option<u32>)> = HashSet::new();
    // Linearized calls, innermost last, with the state before each.
    let mut calls: Vec<(usize, Option<u32>)> = Vec::new();
    let mut best: Option<(Vec<usize>, Option<u32>, usize)> = None;
    let mut entry = list.next[HEAD];
    let mut steps = 0u64;
    while remaining > 0 {
        steps += 1;
        if steps > budget {
            return Found::TimedOut { steps: budget };
        }
        // A definite op is unlinearized, so its return is still ahead.
        assert_ne!(
            entry, TAIL,
            "walked past every return with {remaining} definite ops left"
        );
        let (op, is_call) = list.what[entry];
        if is_call {
            if let Some(next_state) = step(state, &ops[op]) {
                linearized.set(op);
                if seen.insert((linearized.clone(), next_state)) {
                    calls.push((entry, state));
                    state = next_state;
                    list.lift(entry);
                    if ops[op].ret.is_some() {
                        remaining -= 1;
                    }
                    entry = list.next[HEAD];
                    continue;
                }
                linearized.clear(op);
            }
            entry = list.next[entry];
        } else {
            if best.as_ref().is_none_or(|b| calls.len() > b.0.len()) {
                let prefix = calls.iter().map(|&(c, _)| list.what[c].0).collect();
                best = Some((prefix, state, op));
            }
            let Some((call, before)) = calls.pop() else {
                let (prefix, state, stuck) = best.expect("set just above");
                return Found::Stuck {
                    prefix,
                    state,
                    stuck,
                };
            };
            let undone = list.what[call].0;
            state = before;
            linearized.clear(undone);
            if ops[undone].ret.is_some() {
                remaining += 1;
            }
            list.unlift(call);
            entry = list.next[call];
        }
    }
    Found::Linearizable
}
