//! The cost model of issue 17, from the measured numbers: the FT cost of a
//! request (pair median latency minus unprotected median latency, one
//! client) = k × FT-link RTT + the rest, where k is the number of FT-link
//! round trips a request waits for by design (the Output Rule holds each
//! output until the Secondary acknowledged the log up to it: a PUT's disk
//! write and then its reply, k = 2; a GET's reply, k = 1), the FT-link RTT
//! is the median ICMP echo time to the hosts on the FT network, and the
//! rest is everything else (CPU contention, wake-ups, batching, the
//! channel's processing). The prediction keeps the rest as measured and
//! puts a 50 µs RTT (two hosts on 10 GbE) in place of the link's.

use super::load::{Load, Op};
use super::{Mode, Run};

/// The RTT the prediction assumes (µs).
pub const REAL_RTT_US: f64 = 50.0;

/// One operation's model inputs and prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub op: Op,
    pub unprotected_p50_us: f64,
    pub pair_p50_us: f64,
    pub ft_cost_us: f64,
    pub k: u32,
    pub link_rtt_us: f64,
    /// The channel's own ack round trip (timeline `frame out: sent -> acked`), if reported.
    pub channel_rtt_us: Option<f64>,
    /// Time the request's outputs were held (timeline medians), if reported.
    pub held_us: Option<f64>,
    pub rest_us: f64,
    pub measured_ratio: f64,
    pub predicted_cost_us: f64,
    pub predicted_ratio: f64,
}

/// Round trips a request of `op` waits for by design.
pub fn k(op: Op) -> u32 {
    match op {
        Op::Put => 2,
        Op::Get => 1,
    }
}

fn one_client(run: &Run, op: Op) -> Option<&Load> {
    run.loads.iter().find(|l| l.op == op && l.clients == 1)
}

/// The predictions for PUT and GET, when both runs have one-client phases and pings.
pub fn predict(runs: &[Run]) -> Vec<Prediction> {
    let alone = runs.iter().find(|r| r.mode == Mode::Unprotected);
    let pair = runs.iter().find(|r| r.mode == Mode::Pair);
    let (Some(alone), Some(pair)) = (alone, pair) else {
        return Vec::new();
    };
    let host_rtts: Vec<f64> = pair
        .pings
        .iter()
        .filter(|p| p.target.starts_with("192.0.2."))
        .filter_map(|p| p.rtt.map(|s| s.p50_us as f64))
        .collect();
    if host_rtts.is_empty() {
        return Vec::new();
    }
    let link = host_rtts.iter().sum::<f64>() / host_rtts.len() as f64;
    let seg = |name: &str| {
        pair.metrics
            .as_ref()
            .and_then(|m| m.p50(name))
            .map(|v| v as f64)
    };
    let channel = seg("frame out: sent -> acked");
    let reply_held = seg("frame out: produced -> released (held)");
    let write_held = seg("disk write: produced -> released (held)");
    let mut out = Vec::new();
    for op in [Op::Put, Op::Get] {
        let (Some(u), Some(p)) = (one_client(alone, op), one_client(pair, op)) else {
            continue;
        };
        let (Some(us), Some(ps)) = (u.latency, p.latency) else {
            continue;
        };
        let held = match op {
            Op::Put => reply_held.zip(write_held).map(|(a, b)| a + b),
            Op::Get => reply_held,
        };
        out.push(model(
            op,
            us.p50_us as f64,
            ps.p50_us as f64,
            link,
            channel,
            held,
        ));
    }
    out
}

/// The model for one operation from its inputs.
pub fn model(
    op: Op,
    unprotected: f64,
    pair: f64,
    link: f64,
    channel: Option<f64>,
    held: Option<f64>,
) -> Prediction {
    let k = k(op);
    let cost = pair - unprotected;
    let rest = cost - f64::from(k) * link;
    let predicted_cost = (f64::from(k) * REAL_RTT_US + rest).max(0.0);
    Prediction {
        op,
        unprotected_p50_us: unprotected,
        pair_p50_us: pair,
        ft_cost_us: cost,
        k,
        link_rtt_us: link,
        channel_rtt_us: channel,
        held_us: held,
        rest_us: rest,
        measured_ratio: unprotected / pair,
        predicted_cost_us: predicted_cost,
        predicted_ratio: unprotected / (unprotected + predicted_cost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_part_is_replaced_and_the_rest_kept() {
        // Unprotected 4 ms, pair 20 ms, link 2 ms: cost 16 = 2 × 2 + 12.
        let p = model(Op::Put, 4000.0, 20_000.0, 2000.0, Some(5000.0), None);
        assert_eq!((p.k, p.ft_cost_us, p.rest_us), (2, 16_000.0, 12_000.0));
        assert_eq!(p.predicted_cost_us, 12_100.0);
        assert!((p.measured_ratio - 0.2).abs() < 1e-9);
        assert!((p.predicted_ratio - 4000.0 / 16_100.0).abs() < 1e-9);
        let g = model(Op::Get, 4000.0, 4000.0, 2000.0, None, None);
        assert_eq!(g.rest_us, -2000.0);
        assert_eq!(g.predicted_cost_us, 0.0, "a cost never goes below zero");
    }
}
