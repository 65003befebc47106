//! The recent events of one daemon: a bounded in-memory ring that each daemon
//! fills where the event happens (a failover, a new Secondary, a fencing
//! decision, a peer suspected) and shows under `"events"` in its `Status`.
//!
//! Rules:
//! - One ring per process ([`record`], [`recent`]); at most [`CAPACITY`]
//!   events, the oldest dropped first (counted in [`dropped`]).
//! - Times are this host's wall clock (`unix_ms`); a reader compares them with
//!   the same host's clock (`HostReport::unix_ms`), never with another host's.
//! - Recording never blocks on anything but the ring's own lock and never
//!   fails: it is called from the daemons' decision paths.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Events kept per process.
pub const CAPACITY: usize = 64;

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A Secondary went live (ftvmm).
    Failover,
    /// A new Secondary joined, or a try failed (ftvmm).
    Respawn,
    /// A generation was decided on shared storage (fencing).
    Fencing,
    /// A config was refused.
    ConfigRefused,
    /// A config applied over the network was persisted (`ftctl apply`).
    ConfigApplied,
    /// A peer came up or was suspected (heartbeat).
    Membership,
    /// A VM's protection changed: not protected, with the reason, or
    /// protected again (ftvmm).
    Protection,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::Respawn => "respawn",
            EventKind::Fencing => "fencing",
            EventKind::ConfigRefused => "config refused",
            EventKind::ConfigApplied => "config applied",
            EventKind::Membership => "membership",
            EventKind::Protection => "protection",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// This host's wall clock when it happened, ms since the Unix epoch.
    pub unix_ms: u64,
    pub kind: EventKind,
    /// The VM it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// How long the guest (or the service) paused, when the event has one:
    /// failover: from suspicion to live; respawn: the stop-and-copy pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    /// The console line.
    pub text: String,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Failover,
        EventKind::Respawn,
        EventKind::Fencing,
        EventKind::ConfigRefused,
        EventKind::Membership,
        EventKind::ConfigApplied,
        EventKind::Protection,
    ];

    fn index(self) -> usize {
        EventKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("ALL lists every kind")
    }
}

/// A bounded ring of events, and how many of each kind ever happened.
#[derive(Debug, Default)]
pub struct EventRing {
    events: VecDeque<Event>,
    dropped: u64,
    /// Events of each kind since the process started, in [`EventKind::ALL`]
    /// order; never decreases (the metrics' counters).
    counts: [u64; EventKind::ALL.len()],
}

impl EventRing {
    pub fn push(&mut self, e: Event) {
        self.counts[e.kind.index()] += 1;
        if self.events.len() == CAPACITY {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(e);
        debug_assert!(self.events.len() <= CAPACITY);
    }

    /// Oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.events.iter().cloned().collect()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// `{kind name: count}` for every kind.
    pub fn counts(&self) -> serde_json::Map<String, serde_json::Value> {
        EventKind::ALL
            .iter()
            .map(|k| (k.name().replace(' ', "_"), self.counts[k.index()].into()))
            .collect()
    }
}

static RING: Mutex<EventRing> = Mutex::new(EventRing {
    events: VecDeque::new(),
    dropped: 0,
    counts: [0; EventKind::ALL.len()],
});

fn ring() -> std::sync::MutexGuard<'static, EventRing> {
    RING.lock().unwrap_or_else(|p| p.into_inner())
}

/// This host's wall clock in ms since the Unix epoch (0 if it is before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Records an event of this process now.
pub fn record(kind: EventKind, vm: Option<&str>, pause_ms: Option<u64>, text: &str) {
    ring().push(Event {
        unix_ms: unix_ms_now(),
        kind,
        vm: vm.map(str::to_string),
        pause_ms,
        text: text.to_string(),
    });
}

/// This process's recent events, oldest first.
pub fn recent() -> Vec<Event> {
    ring().events()
}

/// Events this process dropped from its ring (older than the last [`CAPACITY`]).
pub fn dropped() -> u64 {
    ring().dropped()
}

/// The `"events"`, `"events_dropped"` and `"event_counts"` fields a daemon
/// adds to its status.
pub fn status_fields(status: &mut serde_json::Value) {
    let r = ring();
    if let Some(m) = status.as_object_mut() {
        m.insert("events".into(), serde_json::json!(r.events()));
        m.insert("events_dropped".into(), serde_json::json!(r.dropped()));
        m.insert("event_counts".into(), serde_json::Value::Object(r.counts()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> Event {
        Event {
            unix_ms: i,
            kind: EventKind::Fencing,
            vm: None,
            pause_ms: None,
            text: format!("e{i}"),
        }
    }

    #[test]
    fn the_ring_keeps_the_last_capacity_events_and_counts_the_rest() {
        let mut r = EventRing::default();
        for i in 0..CAPACITY as u64 + 5 {
            r.push(ev(i));
        }
        let got = r.events();
        assert_eq!(got.len(), CAPACITY);
        assert_eq!(got[0].unix_ms, 5);
        assert_eq!(got.last().unwrap().unix_ms, CAPACITY as u64 + 4);
        assert_eq!(r.dropped(), 5);
        assert_eq!(r.counts()["fencing"], CAPACITY as u64 + 5);
        assert_eq!(r.counts()["config_refused"], 0);
    }

    #[test]
    fn every_kind_is_counted_under_its_own_name() {
        let mut r = EventRing::default();
        for k in EventKind::ALL {
            r.push(Event { kind: k, ..ev(0) });
        }
        let counts = r.counts();
        assert_eq!(counts.len(), EventKind::ALL.len());
        assert_eq!(counts["protection"], 1);
        assert!(counts.values().all(|n| *n == 1), "{counts:?}");
        let json = serde_json::to_value(EventKind::Protection).unwrap();
        assert_eq!(json, "protection");
    }

    #[test]
    fn recorded_events_show_in_status_fields() {
        record(EventKind::Failover, Some("kv"), Some(120), "went live");
        let mut s = serde_json::json!({"daemon": "x"});
        status_fields(&mut s);
        let evs: Vec<Event> = serde_json::from_value(s["events"].clone()).unwrap();
        let e = evs.iter().find(|e| e.text == "went live").unwrap();
        assert_eq!(
            (e.kind, e.vm.as_deref(), e.pause_ms),
            (EventKind::Failover, Some("kv"), Some(120))
        );
        assert!(e.unix_ms > 1_600_000_000_000);
    }
}
