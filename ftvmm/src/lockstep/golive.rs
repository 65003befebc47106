//! Go-live (DESIGN §4): what a pair member does when it loses its peer.
//!
//! The peer is *suspected* when the logging channel has been silent for the
//! failure timeout **and** the heartbeat daemon does not see it alive either
//! (heartbeats and channel traffic both silent). Then:
//!
//! - the Secondary replays every record it holds, asks the fencing agent who
//!   owns generation g+1, and only if it won switches its devices to the real
//!   backends (re-issuing in-flight disk I/O, announcing the guest's MAC with
//!   a gratuitous ARP) and continues as Primary; a loser halts its VM;
//! - the Primary holds every output from the moment it suspects the peer,
//!   asks for g+1 as well, releases output and runs unprotected if it won,
//!   halts if it lost.
//!
//! While the fencing agent cannot answer (storage unreachable), both wait,
//! holding output, and say so.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};

use super::pair::PairHandle;

/// What the fencing agent decided for (vm, generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub owner: String,
    pub won: bool,
}

/// True if the heartbeat daemon at `socket` sees `host` alive. An unreachable
/// heartbeat daemon counts as "not alive": the channel is then the only path.
pub fn heartbeat_sees(socket: &Path, host: &str) -> bool {
    match ctl::query(socket, &Request::Peers) {
        Ok(Response::Peers { peers }) => peers.iter().any(|p| p.host == host && p.alive),
        _ => false,
    }
}

/// Asks the fencing agent at `socket`, until it answers or `stop`, who owns
/// `generation` of `vm`. Prints once when storage does not answer.
pub fn acquire(
    socket: &Path,
    vm: &str,
    generation: u64,
    stop: &AtomicBool,
    on_waiting: impl Fn(&str),
) -> Option<Decision> {
    let mut said = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let req = Request::Acquire {
            vm: vm.to_string(),
            generation,
        };
        let why = match ctl::query(socket, &req) {
            Ok(Response::Decided { owner, won, .. }) => return Some(Decision { owner, won }),
            Ok(Response::Error { message }) => message,
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => e.to_string(),
        };
        if !said {
            on_waiting(&why);
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How a race for the next generation ended (see [`race`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raced {
    Won,
    /// Another host owns it: the caller must stop the VM.
    Lost,
    /// Given up (the member is stopping) while storage did not answer.
    Cancelled,
}

/// Races for generation `next` of `vm` through the fencing agent at
/// `fencing`, for every member that needs a new generation (a Primary that
/// lost its Secondary, a Secondary going live, a Primary re-checking after a
/// fencing hold). Won: the handle's generation becomes `next`. Lost: the role
/// becomes `halted` and the console says who won. While storage does not
/// answer it says so once, ending the line with `while_waiting`.
pub fn race(
    handle: &PairHandle,
    fencing: &Path,
    vm: &str,
    next: u64,
    cancel: &AtomicBool,
    while_waiting: &str,
) -> Raced {
    let waiting =
        |w: &str| println!("ftvmm: vm {vm}: storage does not answer ({w}); {while_waiting}");
    match acquire(fencing, vm, next, cancel, waiting) {
        Some(d) if d.won => {
            handle.generation.store(next, Ordering::SeqCst);
            Raced::Won
        }
        Some(d) => {
            handle.set_role("halted");
            println!(
                "ftvmm: vm {vm}: lost generation {next} to {}; halting the VM",
                d.owner
            );
            Raced::Lost
        }
        None => Raced::Cancelled,
    }
}

/// A gratuitous ARP request announcing `ip` at `mac` (so switches and
/// neighbours learn the guest's new port at once).
pub fn gratuitous_arp(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip);
    f
}

/// The guest's IPv4 address from a `ip=a.b.c.d/len` command-line word.
pub fn cmdline_ip(cmdline: &str) -> Option<[u8; 4]> {
    let v = crate::runner::cmdline_value(cmdline, "ip")?;
    let ip: std::net::Ipv4Addr = v.split('/').next()?.parse().ok()?;
    Some(ip.octets())
}

/// Watches a link: calls `suspect` once when the channel has been silent for
/// `timeout` and the heartbeat daemon does not see `peer` either.
pub struct Monitor {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    pub fn start(
        peer: String,
        timeout: Duration,
        heartbeat_socket: std::path::PathBuf,
        silent_for: impl Fn() -> Duration + Send + 'static,
        suspect: impl FnOnce(String) + Send + 'static,
    ) -> Monitor {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = std::sync::Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lockstep-monitor".into())
            .spawn(move || {
                let started = Instant::now();
                while !s2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    let silent = silent_for();
                    if silent < timeout || started.elapsed() < timeout {
                        continue;
                    }
                    if heartbeat_sees(&heartbeat_socket, &peer) {
                        continue;
                    }
                    suspect(format!(
                        "{peer} silent on the logging channel for {} ms and not seen by heartbeat",
                        silent.as_millis()
                    ));
                    return;
                }
            })
            .expect("spawn monitor thread");
        Monitor {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Not joined: the thread may sit in a daemon query for a few seconds;
        // it sees the flag and ends on its own.
        self.stop.store(true, Ordering::SeqCst);
        drop(self.thread.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_announces_the_guest() {
        let f = gratuitous_arp([0x52, 0x54, 0, 0x12, 0x34, 0x56], [198, 51, 100, 10]);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[198, 51, 100, 10]);
        assert_eq!(&f[38..42], &[198, 51, 100, 10]);
        assert_eq!(
            cmdline_ip("mode=kv ip=198.51.100.10/24 mac=x"),
            Some([198, 51, 100, 10])
        );
        assert_eq!(cmdline_ip("mode=kv"), None);
    }

    #[test]
    fn unreachable_daemons_mean_not_alive_and_acquire_waits_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        assert!(!heartbeat_sees(&sock, "host-b"));
        let stop = AtomicBool::new(false);
        let waited = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::SeqCst);
            });
            let d = acquire(&sock, "kv", 2, &stop, |w| {
                waited.lock().unwrap().push(w.to_string())
            });
            assert_eq!(d, None);
        });
        assert_eq!(waited.lock().unwrap().len(), 1, "says once that it waits");
    }
}
