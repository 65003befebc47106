//! A client of the reference guest's KV service (guest/README.md): one TCP
//! connection from a test client's network namespace, line requests sent in
//! windows and one line reply each; and what the guest's disk holds (the log
//! replayed, the slots decoded) read out of the shared storage image.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::guest_disk::GuestDisk;
use crate::NetnsTap;
use ftguest_kvlog::SlotState;

/// The guest's KV address in `examples/cluster.toml`.
pub const GUEST: &str = "198.51.100.10:7000";
/// One reply of the guest (a PUT waits for its disk write and flush).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests sent before their replies are read (one connection, pipelined).
pub const WINDOW: usize = 25;

/// One KV connection with line replies.
pub struct Kv {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Kv {
    /// Connects from `client` to [`GUEST`] (panics with the reason if it can't).
    /// A refused connection is retried for up to 20 s and reported on stderr:
    /// once (1 run in ~10) the first SYN to a pair's freshly listening guest
    /// was answered with a reset, because the guest announced `listening`
    /// before its sockets listened (fixed in guest/src/kv.rs). The retry
    /// stays as a guard, visible if it ever fires again. "No route to host"
    /// (the guest's ARP reply did not come within the client kernel's 3 s)
    /// is retried the same way: a checkpoint Primary holds every frame,
    /// ARP replies too, until its epoch is acknowledged, which takes seconds
    /// while a Linux guest boots on the TCG hosts.
    pub fn connect(client: &NetnsTap) -> Kv {
        Kv::connect_to(client, GUEST.parse().expect("valid address"))
    }

    /// [`Kv::connect`] to the guest at `addr` (a cluster with several VMs).
    pub fn connect_to(client: &NetnsTap, addr: SocketAddr) -> Kv {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut refused = 0;
        let stream = loop {
            match client.tcp_connect(addr, Duration::from_secs(60)) {
                Ok(s) => break s,
                Err(e)
                    if (e.to_string().contains("refused")
                        || e.to_string().contains("No route to host"))
                        && std::time::Instant::now() < deadline =>
                {
                    refused += 1;
                    eprintln!("kv client: connection to {addr} refused ({refused}); retrying: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("cannot connect to the guest at {addr}: {e}"),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Kv {
            writer: stream,
            reader,
        }
    }

    /// Sends `requests` in windows of [`WINDOW`] and returns one reply per request.
    pub fn exchange(&mut self, requests: &[String]) -> Vec<String> {
        let mut replies = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(WINDOW) {
            let mut batch = String::new();
            for r in chunk {
                batch.push_str(r);
                batch.push('\n');
            }
            self.writer
                .write_all(batch.as_bytes())
                .unwrap_or_else(|e| panic!("send to the guest failed: {e}"));
            for r in chunk {
                let mut line = String::new();
                match self.reader.read_line(&mut line) {
                    Ok(0) => panic!("the guest closed the connection; request {r:?}"),
                    Ok(_) => replies.push(line.trim_end().to_string()),
                    Err(e) => panic!("no reply to {r:?} within {REPLY_TIMEOUT:?}: {e}"),
                }
            }
        }
        replies
    }

    pub fn one(&mut self, request: &str) -> String {
        self.exchange(&[request.to_string()]).remove(0)
    }

    /// `SET <slot> <value>`: the version the guest gave it, or the reply
    /// that was not `OK <version>`.
    pub fn set(&mut self, slot: usize, value: &str) -> Result<u64, String> {
        parse_set_reply(&self.one(&format!("SET {slot} {value}")))
    }

    /// `SLOT <slot>`: `Some((version, value))`, `None` for a slot never set,
    /// or the reply that was neither.
    pub fn slot(&mut self, slot: usize) -> Result<Option<(u64, String)>, String> {
        parse_slot_reply(&self.one(&format!("SLOT {slot}")))
    }
}

/// Parses a reply to `SET`: `OK <version>`.
pub fn parse_set_reply(reply: &str) -> Result<u64, String> {
    reply
        .strip_prefix("OK ")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| reply.to_string())
}

/// Parses a reply to `SLOT`: `VALUE <version> <value>` or `NONE`.
pub fn parse_slot_reply(reply: &str) -> Result<Option<(u64, String)>, String> {
    if reply == "NONE" {
        return Ok(None);
    }
    let rest = reply
        .strip_prefix("VALUE ")
        .ok_or_else(|| reply.to_string())?;
    let (version, value) = rest.split_once(' ').ok_or_else(|| reply.to_string())?;
    let version = version.parse().map_err(|_| reply.to_string())?;
    Ok(Some((version, value.to_string())))
}

pub fn key(i: usize) -> String {
    format!("key-{i:05}")
}

pub fn value(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(i % 50))
}

/// PUTs keys `0..keys` and checks every reply is `OK`.
pub fn put_all(kv: &mut Kv, keys: usize) {
    let puts: Vec<String> = (0..keys)
        .map(|i| format!("PUT {} {}", key(i), value(i)))
        .collect();
    for (i, r) in kv.exchange(&puts).iter().enumerate() {
        assert_eq!(r, "OK", "reply to PUT {}", key(i));
    }
}

/// GETs keys `0..keys` and checks every value.
pub fn get_all(kv: &mut Kv, keys: usize) {
    let gets: Vec<String> = (0..keys).map(|i| format!("GET {}", key(i))).collect();
    for (i, r) in kv.exchange(&gets).iter().enumerate() {
        assert_eq!(*r, format!("VALUE {}", value(i)), "reply to GET {}", key(i));
    }
}

/// The KV table as the guest's on-disk log holds it: the log part of the
/// VM's disk region of the shared storage file (it stops before the slot
/// area), replayed with the guest's own code (`ftguest-kvlog`), plus how the
/// log ended.
pub fn on_disk(
    shared: &std::path::Path,
    config: &config_schema::ClusterConfig,
    vm: &str,
) -> std::io::Result<(std::collections::BTreeMap<String, String>, String)> {
    let mut disk = GuestDisk::open(shared, config, vm)?;
    let log_sectors = disk.layout()?.log_sectors;
    let mut table = std::collections::BTreeMap::new();
    let outcome = ftguest_kvlog::replay(&mut disk, log_sectors, |rec| {
        table.insert(
            String::from_utf8_lossy(rec.key).into_owned(),
            String::from_utf8_lossy(rec.value).into_owned(),
        );
    })?;
    let end = format!(
        "{} records, next sector {}, end {:?}",
        outcome.records, outcome.next_sector, outcome.end
    );
    Ok((table, end))
}

/// Every slot of `vm`'s slot area in the shared storage file, decoded with
/// the guest's own code: CRC, slot number and fields checked; a sector that
/// fails any check is `SlotState::Damaged` with the reason.
pub fn slots_on_disk(
    shared: &std::path::Path,
    config: &config_schema::ClusterConfig,
    vm: &str,
) -> std::io::Result<Vec<SlotState>> {
    GuestDisk::open(shared, config, vm)?.slots()
}

/// What a client sent to the guest's slots and what the guest acknowledged,
/// to judge later what a slot may hold: its last acknowledged version, or a
/// later one carrying a value sent after that (a SET whose reply was not
/// read). Never an older version, never a value nobody sent. Values must be
/// unique per slot (give them a counter).
#[derive(Debug, Default, Clone)]
pub struct SlotLedger {
    sent: BTreeMap<usize, Vec<String>>,
    acked: BTreeMap<usize, (u64, String)>,
}

impl SlotLedger {
    /// Records a SET about to be sent (before it is: its sector may land
    /// even if its reply never comes).
    pub fn sent(&mut self, slot: usize, value: &str) {
        self.sent.entry(slot).or_default().push(value.to_string());
    }

    /// Records the guest's `OK <version>` to the last SET of `slot`; a
    /// version that does not grow is an error naming both.
    pub fn acked(&mut self, slot: usize, version: u64) -> Result<(), String> {
        let value = self
            .sent
            .get(&slot)
            .and_then(|v| v.last())
            .ok_or_else(|| format!("slot {slot}: acknowledgement of a SET never sent"))?
            .clone();
        if let Some((prev, prev_value)) = self.acked.get(&slot) {
            if version <= *prev {
                return Err(format!(
                    "slot {slot}: SET {value} acknowledged as version {version}, after {prev_value} was acknowledged as {prev}"
                ));
            }
        }
        self.acked.insert(slot, (version, value));
        Ok(())
    }

    /// The last acknowledged `(version, value)` of `slot`.
    pub fn last_acked(&self, slot: usize) -> Option<&(u64, String)> {
        self.acked.get(&slot)
    }

    /// Slots with at least one acknowledged SET.
    pub fn acked_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.acked.keys().copied()
    }

    /// SETs sent in all (acknowledged or not).
    pub fn sets_sent(&self) -> usize {
        self.sent.values().map(Vec::len).sum()
    }

    /// Checks what `slot` holds (`seen` says where: "disk", "guest") against
    /// the ledger; the error names the slot, what it holds and what it
    /// should.
    pub fn check(&self, slot: usize, holds: &SlotState, seen: &str) -> Result<(), String> {
        let Some((version, value)) = self.acked.get(&slot) else {
            return Ok(());
        };
        let (v, val) = match holds {
            SlotState::Held { version, value } => (*version, String::from_utf8_lossy(value)),
            other => {
                return Err(format!(
                    "slot {slot}: {seen} holds {other:?}, but version {version} ({value}) was acknowledged"
                ))
            }
        };
        let sent = &self.sent[&slot];
        let acked_at = sent
            .iter()
            .rposition(|s| s == value)
            .expect("acked value was sent");
        let ok = match v.cmp(version) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => val == value.as_str(),
            std::cmp::Ordering::Greater => sent[acked_at + 1..].iter().any(|s| *s == val),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "slot {slot}: {seen} holds version {v} ({val}), but version {version} ({value}) was the last acknowledged: {}",
                if v < *version { "an older write landed after a newer one was acknowledged" } else { "a value that was not sent after it" }
            ))
        }
    }

    /// [`SlotLedger::check`] for every acknowledged slot of `slots` (indexed by slot).
    pub fn check_all(&self, slots: &[SlotState], seen: &str) -> Result<(), String> {
        let errors: Vec<String> = self
            .acked_slots()
            .filter_map(|s| match slots.get(s) {
                Some(h) => self.check(s, h, seen).err(),
                None => Some(format!("slot {s}: {seen} has no such slot")),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_replies_parse_strictly() {
        assert_eq!(parse_set_reply("OK 17"), Ok(17));
        for bad in ["OK", "OK x", "ERR slot 3 damaged (bad crc)", "OK 1 2", ""] {
            assert_eq!(parse_set_reply(bad), Err(bad.to_string()));
        }
        assert_eq!(parse_slot_reply("NONE"), Ok(None));
        assert_eq!(
            parse_slot_reply("VALUE 4 page-4"),
            Ok(Some((4, "page-4".into())))
        );
        assert_eq!(parse_slot_reply("VALUE 4 "), Ok(Some((4, String::new()))));
        for bad in ["VALUE 4", "VALUE x y", "NOTFOUND", "ERR bad slot"] {
            assert_eq!(parse_slot_reply(bad), Err(bad.to_string()));
        }
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::*;

    fn held(version: u64, value: &str) -> SlotState {
        SlotState::Held {
            version,
            value: value.as_bytes().to_vec(),
        }
    }

    fn ledger() -> SlotLedger {
        let mut l = SlotLedger::default();
        for (i, v) in ["a1", "a2", "a3"].iter().enumerate() {
            l.sent(0, v);
            l.acked(0, i as u64 + 1).unwrap();
        }
        // Sent, reply never read.
        l.sent(0, "a4");
        l
    }

    #[test]
    fn the_last_acknowledged_or_a_later_sent_value_passes() {
        let l = ledger();
        assert_eq!(l.last_acked(0), Some(&(3, "a3".to_string())));
        assert_eq!(l.check(0, &held(3, "a3"), "disk"), Ok(()));
        assert_eq!(l.check(0, &held(4, "a4"), "disk"), Ok(()));
        // Slots nobody set are not judged.
        assert_eq!(l.check(7, &SlotState::Empty, "disk"), Ok(()));
    }

    #[test]
    fn a_rolled_back_slot_fails() {
        // The case of issue 13: the old Primary's queued write of version 2
        // lands after the new Primary's version 3 was acknowledged.
        let l = ledger();
        let e = l.check(0, &held(2, "a2"), "disk").unwrap_err();
        assert!(e.contains("an older write landed"), "{e}");
        let all = vec![held(2, "a2")];
        assert!(l.check_all(&all, "disk").is_err());
        assert!(l.check(0, &SlotState::Empty, "disk").is_err());
        assert!(l
            .check(
                0,
                &SlotState::Damaged(ftguest_kvlog::SlotDecodeError::ZeroVersion),
                "disk"
            )
            .is_err());
    }

    #[test]
    fn wrong_values_fail() {
        let l = ledger();
        // The acknowledged version with another value.
        assert!(l.check(0, &held(3, "a2"), "disk").is_err());
        // A later version with a value sent before the acknowledged one, or never.
        assert!(l.check(0, &held(4, "a1"), "disk").is_err());
        assert!(l.check(0, &held(4, "zz"), "guest").is_err());
    }

    #[test]
    fn versions_must_grow() {
        let mut l = ledger();
        l.sent(0, "a5");
        let e = l.acked(0, 3).unwrap_err();
        assert!(e.contains("version 3, after a3"), "{e}");
        assert!(SlotLedger::default().acked(1, 1).is_err());
    }
}
