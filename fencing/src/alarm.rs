//! Alarms: corrupt blocks found in the fencing region.
//!
//! A corrupt Disk Paxos block is never read as empty (it may hide the accepted
//! value of a decision); the ballot over it is abandoned and an alarm is
//! raised. Every alarm is counted and the last one is kept for `Status`; the
//! console gets one line per distinct (block, reason), so a caller that keeps
//! asking does not flood it:
//!
//! ```text
//! fencing: ALARM: corrupt Disk Paxos block of host host-b for vm kv generation 7 (block 42 of the fencing region, device byte 172032): bad checksum; nothing is decided over it
//! ```

use std::collections::BTreeSet;

use serde::Serialize;

/// One corrupt block, as reported.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Alarm {
    pub vm: String,
    /// The generation asked about (`None`: a scan of every generation).
    pub generation: Option<u64>,
    /// The ring slot of the block.
    pub slot: u32,
    /// The host whose block it is.
    pub host: String,
    /// The block's index in the fencing region.
    pub block: u64,
    /// Its byte offset on the device.
    pub device_offset: u64,
    pub reason: String,
}

impl Alarm {
    /// The console line.
    pub fn line(&self) -> String {
        let which = match self.generation {
            Some(g) => format!("generation {g}"),
            None => format!("ring slot {}", self.slot),
        };
        format!(
            "fencing: ALARM: corrupt Disk Paxos block of host {} for vm {} {which} \
             (block {} of the fencing region, device byte {}): {}; nothing is decided over it",
            self.host, self.vm, self.block, self.device_offset, self.reason
        )
    }
}

/// Alarms raised so far.
#[derive(Debug, Default)]
pub struct Alarms {
    count: u64,
    last: Option<Alarm>,
    said: BTreeSet<Alarm>,
}

impl Alarms {
    /// Records `a`; returns its console line if this (block, reason) was not
    /// reported before.
    pub fn raise(&mut self, a: Alarm) -> Option<String> {
        self.count += 1;
        self.last = Some(a.clone());
        let line = a.line();
        self.said.insert(a).then_some(line)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `Status` fields.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({ "count": self.count, "last": self.last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_block_and_reason_is_said_once_and_every_one_counted() {
        let a = Alarm {
            vm: "kv".into(),
            generation: Some(7),
            slot: 7,
            host: "host-b".into(),
            block: 42,
            device_offset: 172032,
            reason: "bad checksum".into(),
        };
        let mut al = Alarms::default();
        assert_eq!(al.raise(a.clone()).as_deref(), Some(a.line().as_str()));
        assert!(a.line().contains(
            "host host-b for vm kv generation 7 (block 42 of the fencing region, device byte 172032)"
        ));
        assert_eq!(al.raise(a.clone()), None);
        let b = Alarm {
            reason: "bad magic".into(),
            ..a
        };
        assert!(al.raise(b.clone()).is_some());
        let scan = Alarm {
            generation: None,
            ..b
        };
        assert!(scan.line().contains("for vm kv ring slot 7 (block 42"));
        assert_eq!(al.count(), 3);
        assert_eq!(al.status()["last"]["reason"], "bad magic");
    }
}
