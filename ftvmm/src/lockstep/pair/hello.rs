//! Pair start (docs/architecture.md §5, docs/design.md §1): the Primary connects to the
//! Secondary's listener, proves its identity (Noise IK with the host keys from
//! the config) and proposes a [`Hello`]: VM name, the generation it won,
//! config generation, image SHA-256, memory size and start exit 0. The
//! Secondary accepts only an identical proposal from the host the config
//! makes this VM's Primary, for the generation fencing says that host owns.
//!
//! The Secondary handshakes every incoming connection on a thread of its own
//! with a short timeout, so an idle or slow connection (a port scan, a half
//! open socket, an old Primary) never blocks the real Primary from pairing.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::lockstep::channel::{self, Channel, ChannelError, Hello, Identity, Message};
use crate::lockstep::respawn::JOIN_BY_TRANSFER;
use crate::lockstep::spec::{channel_port, PairError, PairSpec};

/// How long one incoming connection may take to authenticate and say hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes the Secondary runs at once; more connections wait in the
/// listen backlog.
const MAX_HANDSHAKES: usize = 8;

/// Maps an initiator's static key to an allowed host name.
pub type Allowed = Arc<dyn Fn(&[u8; 32]) -> Option<String> + Send + Sync>;
/// The Secondary's last check of a proposal (fencing: is the offered
/// generation owned by the proposer?); `Err` is the refusal reason.
pub type Verify<'a> = &'a dyn Fn(&Hello) -> Result<(), String>;

/// Connects to the Secondary (retrying until `stop`) and agrees on the pair.
pub fn primary_handshake(
    spec: &PairSpec,
    addr: SocketAddr,
    peer_public: &[u8; 32],
    peer_name: &str,
    stop: &AtomicBool,
) -> Result<Channel, PairError> {
    let mut announced = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(PairError::Stopped);
        }
        match channel::connect(
            addr,
            &spec.identity,
            peer_public,
            peer_name,
            HANDSHAKE_TIMEOUT,
        ) {
            Ok(mut ch) => {
                ch.send(&Message::Hello(spec.hello.clone()))?;
                ch.set_read_timeout(Some(Duration::from_secs(30)))
                    .map_err(ChannelError::Io)?;
                return match ch.recv()? {
                    Message::HelloReply { accepted: true, .. } => {
                        ch.set_read_timeout(Some(Duration::from_millis(200)))
                            .map_err(ChannelError::Io)?;
                        Ok(ch)
                    }
                    Message::HelloReply { reason, .. } => Err(PairError::Refused(reason)),
                    other => Err(PairError::Protocol(format!(
                        "expected a hello reply, got {other:?}"
                    ))),
                };
            }
            Err(e) => {
                if !announced {
                    println!(
                        "ftvmm: vm {}: waiting for secondary {peer_name} at {addr} ({e})",
                        spec.hello.vm
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Accepts the Primary's connection on `listener` and checks its proposal
/// against ours (`expected`: everything but what the Primary may choose) and
/// with `verify`. Each connection handshakes on its own thread.
pub fn secondary_handshake(
    listener: &TcpListener,
    identity: &Identity,
    allowed: Allowed,
    expected: &Hello,
    verify: Verify<'_>,
    stop: &AtomicBool,
) -> Result<(Channel, Hello), PairError> {
    listener.set_nonblocking(true).map_err(ChannelError::Io)?;
    let (tx, rx) = mpsc::channel::<(Channel, Hello)>();
    let running = Arc::new(AtomicUsize::new(0));
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(PairError::Stopped);
        }
        while let Ok((mut ch, hello)) = rx.try_recv() {
            let mismatch =
                hello_mismatch(expected, &hello, ch.peer()).or_else(|| verify(&hello).err());
            let reply = Message::HelloReply {
                accepted: mismatch.is_none(),
                reason: mismatch.clone().unwrap_or_default(),
            };
            if ch.send(&reply).is_err() {
                continue;
            }
            match mismatch {
                None => {
                    ch.set_read_timeout(Some(Duration::from_millis(200)))
                        .map_err(ChannelError::Io)?;
                    return Ok((ch, hello));
                }
                Some(why) => println!(
                    "ftvmm: vm {}: refused pair from {}: {why}",
                    expected.vm,
                    ch.peer()
                ),
            }
        }
        match listener.accept() {
            Ok((stream, from)) => {
                if running.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
                    tracing::warn!(
                        "channel: too many handshakes at once; dropped connection from {from}"
                    );
                    continue;
                }
                running.fetch_add(1, Ordering::SeqCst);
                let (tx, running) = (tx.clone(), Arc::clone(&running));
                let (identity, allowed) = (identity.clone(), Arc::clone(&allowed));
                let spawned = std::thread::Builder::new()
                    .name("pair-handshake".into())
                    .spawn(move || {
                        if let Some(got) = handshake_one(stream, &identity, &*allowed) {
                            let _ = tx.send(got);
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    tracing::warn!("channel: cannot start a handshake thread for {from}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(ChannelError::Io(e).into()),
        }
    }
}

/// Authenticates one connection and reads its hello, within
/// [`HANDSHAKE_TIMEOUT`]; `None` (logged) if it does not.
fn handshake_one(
    stream: std::net::TcpStream,
    identity: &Identity,
    allowed: &dyn Fn(&[u8; 32]) -> Option<String>,
) -> Option<(Channel, Hello)> {
    stream.set_nonblocking(false).ok()?;
    let mut ch = channel::accept(stream, identity, allowed, HANDSHAKE_TIMEOUT).ok()?;
    ch.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).ok()?;
    match ch.recv() {
        Ok(Message::Hello(h)) => Some((ch, h)),
        Ok(other) => {
            tracing::warn!(
                "channel: refused message from {}: expected hello, got {other:?}",
                ch.peer()
            );
            None
        }
        Err(e) => {
            tracing::warn!("channel: no hello from {}: {e}", ch.peer());
            None
        }
    }
}

/// What differs between our expectation and the proposal, if anything.
pub fn hello_mismatch(ours: &Hello, theirs: &Hello, peer: &str) -> Option<String> {
    if theirs.vm != ours.vm {
        return Some(format!("vm {:?}, expected {:?}", theirs.vm, ours.vm));
    }
    // A power-on pair comes from the host the config makes the Primary; a
    // join by live transfer from whichever host runs the VM now (the
    // caller's `verify` checks with fencing that it owns the generation).
    let join = theirs.start_exit == JOIN_BY_TRANSFER;
    if theirs.primary_host != peer || (!join && peer != ours.primary_host) {
        return Some(format!(
            "primary {:?} authenticated as {peer:?}; the config makes {:?} the primary",
            theirs.primary_host, ours.primary_host
        ));
    }
    if theirs.replication != ours.replication {
        return Some(format!(
            "replication {}, ours is {}",
            theirs.replication, ours.replication
        ));
    }
    if theirs.config_generation != ours.config_generation {
        return Some(format!(
            "config generation {}, ours is {}",
            theirs.config_generation, ours.config_generation
        ));
    }
    if theirs.image_sha256 != ours.image_sha256 {
        return Some("guest image differs".into());
    }
    if theirs.mem_mib != ours.mem_mib {
        return Some(format!(
            "memory {} MiB, ours {} MiB",
            theirs.mem_mib, ours.mem_mib
        ));
    }
    if theirs.start_exit != 0 && !join {
        return Some(format!(
            "start exit {} (only 0, or a join by transfer)",
            theirs.start_exit
        ));
    }
    if theirs.generation == 0 {
        return Some("generation 0".into());
    }
    crate::platform::mismatch(&ours.platform, &theirs.platform)
        .or_else(|| config_mismatch(ours, theirs))
}

/// Different configs of one generation (last: a difference named above,
/// such as another image, is the clearer reason).
fn config_mismatch(ours: &Hello, theirs: &Hello) -> Option<String> {
    if theirs.config_digest != ours.config_digest {
        Some(format!(
            "config generation {g} with digest {}, ours is generation {g} with digest {} \
             (two different configs of one generation: every host converges on the higher \
             digest; the pair forms once both hosts booted the same one)",
            short_digest(&theirs.config_digest),
            short_digest(&ours.config_digest),
            g = ours.config_generation,
        ))
    } else {
        None
    }
}

/// The first 4 bytes of a config digest in hex, as `ftctl verify` shows it.
fn short_digest(d: &[u8; 32]) -> String {
    format!("{}…", hex::encode(&d[..4]))
}

/// Binds the Secondary's listener for the VM in fencing slot `index` on `ip`.
pub fn listen(ip: std::net::IpAddr, index: usize) -> Result<TcpListener, PairError> {
    let addr = SocketAddr::new(ip, channel_port(index));
    TcpListener::bind(addr).map_err(|source| PairError::Listen { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockstep::channel::PairMode;
    use std::net::{Ipv4Addr, TcpStream};
    use std::time::Instant;

    fn hello() -> Hello {
        Hello {
            vm: "kv".into(),
            generation: 3,
            config_generation: 1,
            config_digest: [0x1a; 32],
            image_sha256: [7; 32],
            mem_mib: 64,
            start_exit: 0,
            primary_host: "host-a".into(),
            replication: PairMode::Lockstep,
            platform: Box::new(crate::platform::Platform {
                baseline: "x86-64-v1, 39-bit physical addresses".into(),
                cpuid: Vec::new(),
                cpuid_overrides: Vec::new(),
                msrs: crate::platform::MsrPolicy::Unfiltered,
                pv_features_enforced: true,
                vmm: "ftvmm test".into(),
            }),
        }
    }

    fn identity(byte: u8) -> Identity {
        Identity {
            private_key: [byte; 32],
        }
    }

    /// Idle or silent connections (a scanner, a half-open socket) must not
    /// delay the real Primary: each handshake runs on its own thread.
    #[test]
    fn idle_connections_do_not_block_the_primary_from_pairing() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (primary, secondary) = (identity(1), identity(2));
        let primary_pub = primary.public_key();
        let secondary_pub = secondary.public_key();
        // Three connections that never say anything, opened first.
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let stop = AtomicBool::new(false);
        let allowed: Allowed =
            Arc::new(move |k: &[u8; 32]| (*k == primary_pub).then(|| "host-a".to_string()));
        let t0 = Instant::now();
        let client = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut ch =
                channel::connect(addr, &primary, &secondary_pub, "host-b", HANDSHAKE_TIMEOUT)
                    .unwrap();
            ch.send(&Message::Hello(hello())).unwrap();
            ch.recv().unwrap()
        });
        let verify = |_: &Hello| Ok(());
        let (_ch, got) =
            secondary_handshake(&listener, &secondary, allowed, &hello(), &verify, &stop).unwrap();
        assert_eq!(got, hello());
        assert!(
            matches!(
                client.join().unwrap(),
                Message::HelloReply { accepted: true, .. }
            ),
            "the primary was not accepted"
        );
        assert!(
            t0.elapsed() < HANDSHAKE_TIMEOUT,
            "pairing waited for the idle connections ({:?})",
            t0.elapsed()
        );
        drop(idle);
    }

    #[test]
    fn a_proposal_fencing_does_not_back_is_refused_with_its_reason() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (primary, secondary) = (identity(3), identity(4));
        let primary_pub = primary.public_key();
        let secondary_pub = secondary.public_key();
        let stop = Arc::new(AtomicBool::new(false));
        let allowed: Allowed =
            Arc::new(move |k: &[u8; 32]| (*k == primary_pub).then(|| "host-a".to_string()));
        let s2 = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let verify = |h: &Hello| Err(format!("generation {} is not host-a's", h.generation));
            secondary_handshake(&listener, &secondary, allowed, &hello(), &verify, &s2)
        });
        let mut ch =
            channel::connect(addr, &primary, &secondary_pub, "host-b", HANDSHAKE_TIMEOUT).unwrap();
        ch.send(&Message::Hello(hello())).unwrap();
        match ch.recv().unwrap() {
            Message::HelloReply { accepted, reason } => {
                assert!(!accepted);
                assert_eq!(reason, "generation 3 is not host-a's");
            }
            other => panic!("unexpected {other:?}"),
        }
        stop.store(true, Ordering::SeqCst);
        assert!(matches!(server.join().unwrap(), Err(PairError::Stopped)));
    }

    /// Two hosts that booted different configs of one generation do not
    /// pair: the refusal names both digests.
    #[test]
    fn a_peer_that_booted_another_config_of_the_generation_is_refused_naming_both() {
        let ours = hello();
        let mut theirs = hello();
        theirs.config_digest = [0x3c; 32];
        assert_eq!(
            hello_mismatch(&ours, &theirs, "host-a").as_deref(),
            Some(
                "config generation 1 with digest 3c3c3c3c…, ours is generation 1 with digest \
                 1a1a1a1a… (two different configs of one generation: every host converges on \
                 the higher digest; the pair forms once both hosts booted the same one)"
            )
        );
        // Another generation is said as before.
        theirs.config_generation = 2;
        assert_eq!(
            hello_mismatch(&ours, &theirs, "host-a").as_deref(),
            Some("config generation 2, ours is 1")
        );
        assert_eq!(hello_mismatch(&ours, &hello(), "host-a"), None);
    }

    /// Both sides must run the VM in the same mode, and a checkpoint VM
    /// with the same vCPUs and epoch: the refusal names both.
    #[test]
    fn a_peer_in_another_replication_mode_is_refused_naming_both() {
        let ours = hello();
        let mut theirs = hello();
        theirs.replication = PairMode::Checkpoint {
            vcpus: 2,
            epoch_ms: 20,
        };
        assert_eq!(
            hello_mismatch(&ours, &theirs, "host-a").as_deref(),
            Some("replication checkpoint (2 vCPUs, 20 ms epochs), ours is lockstep")
        );
        let mut ours = theirs.clone();
        ours.replication = PairMode::Checkpoint {
            vcpus: 4,
            epoch_ms: 20,
        };
        assert!(hello_mismatch(&ours, &theirs, "host-a").is_some_and(|m| m.contains("4 vCPUs")));
        assert_eq!(hello_mismatch(&theirs, &theirs, "host-a"), None);
    }
}
