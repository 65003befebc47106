//! Gathering a cluster report: this host's report and every other host's,
//! asked in parallel. It answers within about [`PEER_REPORT_DEADLINE`] even
//! while a host is failing, which is when operators look: the hosts
//! heartbeat already knows are down are not waited for at all.
//!
//! Rules:
//! - One snapshot of this host's heartbeat status decides and is shown: it
//!   is this host's report's `heartbeat`, so the reason below and the
//!   `heartbeat: … as seen by <this host>` line under the host agree.
//! - A host that heartbeat does not hear (`alive` false: not heard within
//!   the failure timeout, or never) is **not asked**: its entry says
//!   `not asked: down as seen by <this host>'s heartbeat, last heard N ms
//!   ago` (or `never heard`). Nothing is sent to it.
//! - Every other host (heard, or heartbeat has no view yet: not running,
//!   or its status lists no such peer) is asked with
//!   [`PEER_REPORT_DEADLINE`] for connecting and the whole report; past it,
//!   `<addr>: no report within 1500 ms`.
//! - Each host's own daemons get [`DAEMON_BUDGET`] for their `Status`, this
//!   host's as a host asked by another, so one busy daemon costs its own
//!   entry (`no answer on <socket> within 1000 ms`), not the host's report.

use std::time::Duration;

use config_schema::remote::report::{digest_hex, ClusterReport, HostEntry, HostReport, VmConfig};
use serde_json::Value;

use super::{noise, AskError, Patience, Service};
use crate::node::PeerConf;

/// How long the asked host waits for the report of a host its heartbeat
/// hears, connecting included. A live host's report takes milliseconds: a
/// TCP connect across the FT network, one Noise IK handshake (a few X25519
/// operations), its daemons' `Status` from memory over local sockets, some
/// kilobytes of JSON back. 1.5 s leaves a loaded host (the service's threads
/// run under the normal scheduler, beside guests that may keep every core
/// busy) two orders of magnitude of slack, and room for one lost SYN (Linux
/// retransmits the first after 1 s). It is short relative to the failure
/// timeout (1 s in the examples): a host that died less than a failure
/// timeout ago is still heard and holds an answer up to 1.5 s; once its
/// heartbeat has been silent for the failure timeout it is not asked at all.
pub const PEER_REPORT_DEADLINE: Duration = Duration::from_millis(1500);

/// How long a host gathering a cluster report, or asked for its report by
/// another host, gives each of its own daemons (fencing, ftvmm) to answer
/// `Status`. They answer from memory at once unless busy (ftvmm answers
/// under the lock its VM starts and stops take); one busy for longer is
/// said in its place, and the host's report still arrives within
/// [`PEER_REPORT_DEADLINE`], which keeps 500 ms for the rest of the exchange.
pub const DAEMON_BUDGET: Duration = Duration::from_millis(1000);

impl Patience {
    /// A report: everything within [`PEER_REPORT_DEADLINE`].
    const REPORT: Patience = Patience {
        connect: PEER_REPORT_DEADLINE,
        total: PEER_REPORT_DEADLINE,
    };
}

/// A peer as this host's heartbeat status lists it (`peers[]` of
/// `view::Membership::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    /// Heard within the failure timeout.
    alive: bool,
    /// Milliseconds since last heard; `None`: never.
    last_seen_ms: Option<u64>,
}

/// How heartbeat's status `hb` lists `host`; `None` when it does not (not
/// running yet, an error, no such peer, no `alive`).
fn heard(hb: &Value, host: &str) -> Option<Heard> {
    let p = (hb["peers"].as_array()?.iter()).find(|p| p["name"] == host)?;
    Some(Heard {
        alive: p["alive"].as_bool()?,
        last_seen_ms: p["last_seen_ms"].as_u64(),
    })
}

/// Why `host`, as heartbeat's status `hb` on host `me` lists it, is not
/// asked; `None`: ask it.
fn not_asked(hb: &Value, me: &str, host: &str) -> Option<String> {
    let h = heard(hb, host).filter(|h| !h.alive)?;
    let last = match h.last_seen_ms {
        Some(ms) => format!("last heard {ms} ms ago"),
        None => "never heard".into(),
    };
    Some(format!(
        "not asked: down as seen by {me}'s heartbeat, {last}"
    ))
}

impl Service {
    /// The cluster report, gathered by the rules above.
    pub(super) fn gather(&self) -> ClusterReport {
        let me = &self.cfg.node.name;
        let hb = (self.heartbeat_status)();
        let (own, others) = std::thread::scope(|s| {
            let own = s.spawn(|| self.report_with(hb.clone(), DAEMON_BUDGET));
            let asks: Vec<_> = (self.cfg.node.peers.iter())
                .map(|p| match not_asked(&hb, me, &p.name) {
                    Some(why) => {
                        tracing::debug!("status: {}: {why}", p.name);
                        (p, Err(why))
                    }
                    None => (p, Ok(s.spawn(move || self.ask_report(p)))),
                })
                .collect();
            let others: Vec<HostEntry> = (asks.into_iter())
                .map(|(p, ask)| {
                    let r = ask.and_then(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("gathering thread panicked".into()))
                    });
                    HostEntry {
                        host: p.name.clone(),
                        addr: self.cfg.peer_addr(p).to_string(),
                        unreachable: r.as_ref().err().cloned(),
                        report: r.ok(),
                    }
                })
                .collect();
            let own = HostEntry {
                host: me.clone(),
                addr: self.cfg.ft_addr().to_string(),
                unreachable: None,
                report: own.join().ok(),
            };
            (own, others)
        });
        let mut hosts = others;
        hosts.push(own);
        let order = |h: &HostEntry| self.cfg.host_order.iter().position(|n| *n == h.host);
        hosts.sort_by_key(order);
        ClusterReport {
            cluster: self.cfg.cluster.clone(),
            config_generation: self.cfg.config_generation,
            config_digest: digest_hex(&self.cfg.config_id()),
            queried: me.clone(),
            // The VMs' power as applied configs changed it live.
            vms: match self.live().running {
                Some(r) => VmConfig::all(&r),
                None => self.cfg.vms.clone(),
            },
            hosts,
        }
    }

    /// Peer `p`'s report within [`PEER_REPORT_DEADLINE`], or why not.
    fn ask_report(&self, p: &PeerConf) -> Result<HostReport, String> {
        let addr = self.cfg.peer_addr(p);
        let not_p = |h: &_| self.not_p(addr, h, p);
        let bytes = self
            .ask_host_within(p, noise::Kind::Status, &[], not_p, Patience::REPORT)
            .map_err(|e| match e {
                AskError::Late(_) => format!(
                    "{addr}: no report within {} ms",
                    PEER_REPORT_DEADLINE.as_millis()
                ),
                e => e.to_string(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{addr}: malformed report: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::view::Membership;

    #[test]
    fn a_peer_heartbeat_does_not_hear_is_not_asked_and_one_it_hears_is() {
        let hb = json!({"peers": [
            {"name": "host-a", "alive": true, "last_seen_ms": 12},
            {"name": "host-c", "alive": false, "last_seen_ms": 4200},
            {"name": "host-d", "alive": false, "last_seen_ms": null},
        ]});
        assert_eq!(not_asked(&hb, "host-b", "host-a"), None);
        assert_eq!(
            not_asked(&hb, "host-b", "host-c").unwrap(),
            "not asked: down as seen by host-b's heartbeat, last heard 4200 ms ago"
        );
        assert_eq!(
            not_asked(&hb, "host-b", "host-d").unwrap(),
            "not asked: down as seen by host-b's heartbeat, never heard"
        );
        // No view, or none of this peer: asked.
        for hb in [
            json!({"daemon": "heartbeat", "running": false, "reason": "bind: in use"}),
            json!({"error": "status thread panicked"}),
            json!({"peers": [{"name": "host-c", "state": "suspected"}]}),
        ] {
            assert_eq!(not_asked(&hb, "host-b", "host-c"), None, "{hb}");
        }
    }

    #[test]
    fn the_decision_reads_the_status_heartbeat_really_reports() {
        // The fields `heard` reads, as the membership view writes them: a
        // rename there must fail here, not silently ask every host.
        let mut m = Membership::new(1, vec![(2, "host-b".into())], 7, 1000, 0);
        let hb = m.status(5000);
        let h = heard(&hb, "host-b").expect("listed with `alive`");
        assert_eq!(
            h,
            Heard {
                alive: false,
                last_seen_ms: None
            }
        );
        m.on_peer_alive(5000, "host-b").unwrap();
        let h = heard(&m.status(5300), "host-b").unwrap();
        assert_eq!(
            h,
            Heard {
                alive: true,
                last_seen_ms: Some(300)
            }
        );
        assert!(!heard(&m.status(6000), "host-b").unwrap().alive);
    }
}
