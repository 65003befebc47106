//! Test histories that are linearizable by construction: each client runs
//! its ops one after another; each op that takes effect gets a point inside
//! its interval; the ops are applied to a map of registers in point order,
//! which gives the GETs their results. Failed ops do not take effect;
//! unknown ones may.

use std::collections::BTreeMap;

use super::model::{History, Op, OpKind, Outcome};

/// What becomes of a generated op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Replied.
    None,
    /// Did not take effect; recorded as `Fail`.
    Fail,
    /// Took effect; recorded as `Unknown` (the reply was lost).
    UnknownApplied,
    /// Did not take effect; recorded as `Unknown`.
    UnknownLost,
}

/// One op to generate.
#[derive(Clone, Copy, Debug)]
pub struct OpSpec {
    pub client: u32,
    pub key: u32,
    pub put: bool,
    /// Time from the client's previous completion to this invoke.
    pub gap: u64,
    /// Length of the interval.
    pub dur: u64,
    /// Where in the interval it takes effect, in thousandths.
    pub at: u64,
    pub fault: Fault,
}

pub fn key(k: u32) -> String {
    format!("k{k}")
}

/// The history of `specs` (op `i` of the history is spec `i`; PUT `i`
/// writes the unique value `v{i}`).
pub fn build(specs: &[OpSpec]) -> History {
    let mut clock: BTreeMap<u32, u64> = BTreeMap::new();
    let mut ops = Vec::with_capacity(specs.len());
    let mut points = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let t = clock.entry(s.client).or_insert(0);
        let invoke = *t + s.gap;
        let complete = invoke + s.dur;
        *t = complete + 1;
        if matches!(s.fault, Fault::None | Fault::UnknownApplied) {
            points.push((invoke + s.dur * s.at.min(1000) / 1000, i));
        }
        let kind = if s.put {
            OpKind::Put {
                value: format!("v{i}"),
            }
        } else {
            OpKind::Get
        };
        let outcome = match (s.fault, s.put) {
            (Fault::None, true) => Outcome::Written,
            (Fault::None, false) => Outcome::Read(None), // set below
            (Fault::Fail, _) => Outcome::Fail,
            (Fault::UnknownApplied | Fault::UnknownLost, _) => Outcome::Unknown,
        };
        ops.push(Op::new(
            s.client,
            &key(s.key),
            kind,
            invoke,
            complete,
            outcome,
        ));
    }
    points.sort_unstable();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (_, i) in points {
        let op = &mut ops[i];
        match &op.kind {
            OpKind::Put { value } => {
                map.insert(op.key.clone(), value.clone());
            }
            OpKind::Get => {
                if let Outcome::Read(r) = &mut op.outcome {
                    *r = map.get(&op.key).cloned();
                }
            }
        }
    }
    History::from_ops(ops)
}

/// SplitMix64, for seeded test data without a rand dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` seeded specs: `clients` clients on `keys` keys, half PUTs, 1 in 20
/// failed and 1 in 20 unknown (half of those applied).
pub fn random_specs(seed: u64, n: usize, clients: u32, keys: u32) -> Vec<OpSpec> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| OpSpec {
            client: rng.below(u64::from(clients)) as u32,
            key: rng.below(u64::from(keys)) as u32,
            put: rng.below(2) == 0,
            gap: rng.below(500),
            dur: rng.below(2000),
            at: rng.below(1001),
            fault: match rng.below(40) {
                0 | 1 => Fault::Fail,
                2 => Fault::UnknownApplied,
                3 => Fault::UnknownLost,
                _ => Fault::None,
            },
        })
        .collect()
}
