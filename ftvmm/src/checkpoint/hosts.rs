//! `ftvmm linux --checkpoint-primary` / `--checkpoint-secondary`: a
//! checkpoint pair in two processes (two hosts) over the authenticated
//! channel ([`super::remote`]). The Primary connects to the Secondary, runs
//! the VM with the gated backend and ships epochs; the Secondary applies
//! them to staging memory and acknowledges. When the Secondary's trigger
//! file appears it drops the link and resumes the guest from its last
//! complete epoch on the same (shared) disk and its own TAP, as
//! `--local-secondary` does in one process.
//!
//! Rules:
//! - The Primary releases nothing of an epoch before its ack arrives over
//!   the channel (the gate, `gated.rs`).
//! - The link lost, the Primary halts its outputs and stops its VM: this
//!   mode has no fencing or generations, so it cannot know whether the
//!   Secondary took over, and going on alone could split the brain. It
//!   exits with [`HostError::Lost`].
//! - The Secondary takes over only on its trigger, never on its own: after
//!   a lost link it keeps its last complete epoch and waits for the trigger
//!   (or exits when none is configured). The Primary's guest ending sends
//!   `Bye`, and the Secondary exits without taking over.
//!
//! Missing for a production pair: failure detection, fencing and the
//! generation race (lockstep has them), resending from the first unacked
//! epoch after a reconnect, and a hello that checks both sides run the same
//! VM (a smaller staging memory is caught per epoch by the receiver, a
//! vCPU count mismatch only at take-over).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::gated::GatedOutputs;
use super::local::{
    gated_devices, take_over_and_run, GatedDevices, LocalPairError, SharedConsole, Summary,
};
use super::primary::{self, LoopConfig};
use super::receiver::Receiver;
use super::remote::{read_acks, serve, ChannelSink, LinkError};
use super::secondary::Staging;
use crate::linux::bus::Console;
use crate::linux::machine::{Report, Running};
use crate::linux::run::{boot_linux_vm, LinuxSpec};
use crate::linux::LinuxVmError;
use crate::lockstep::channel::{self, Channel, ChannelError, Identity, Message};

/// TCP connect plus Noise handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A send the peer's TCP cannot take within this ends the link.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a receiving thread notices it is told to stop.
const POLL: Duration = Duration::from_millis(50);

/// The Primary's settings.
#[derive(Debug, Clone)]
pub struct RemotePrimary {
    pub peer: SocketAddr,
    pub identity: Identity,
    /// The Secondary's public key.
    pub peer_key: [u8; 32],
    pub epoch: Duration,
    /// How the epoch loop harvests the dirty log.
    pub dirty: super::dirty_log::DirtyLog,
    /// The Primary's delta cache (`delta_base.rs`; 0: raw pages only).
    pub delta_bytes: usize,
}

/// The Secondary's settings.
#[derive(Debug, Clone)]
pub struct RemoteSecondary {
    pub listen: SocketAddr,
    pub identity: Identity,
    /// The only Primary key accepted.
    pub peer_key: [u8; 32],
    /// Take over when this file exists.
    pub take_over_on: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Pair(#[from] LocalPairError),
    #[error(transparent)]
    Vm(#[from] LinuxVmError),
    #[error("channel to {peer}: {source} (is the other side running, with the keys swapped?)")]
    Connect { peer: String, source: ChannelError },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The link between the two ended without an orderly goodbye.
    #[error("the link to the {peer} is lost at epoch {epoch} (acknowledged {acked}): {why}")]
    Lost {
        peer: &'static str,
        epoch: u64,
        acked: u64,
        why: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the Primary to the guest's end or the link's loss (module doc).
pub fn run_checkpoint_primary(
    spec: &LinuxSpec,
    cfg: &RemotePrimary,
    console: Console,
    on_start: impl Fn(&Running),
) -> Result<Report, HostError> {
    let connect = |source| HostError::Connect {
        peer: cfg.peer.to_string(),
        source,
    };
    let ch = channel::connect(
        cfg.peer,
        &cfg.identity,
        &cfg.peer_key,
        "secondary",
        CONNECT_TIMEOUT,
    )
    .map_err(connect)?;
    ch.set_read_timeout(Some(POLL))
        .and_then(|()| ch.set_write_timeout(Some(SEND_TIMEOUT)))
        .map_err(|e| connect(e.into()))?;
    eprintln!("checkpoint: connected to the Secondary at {}", cfg.peer);

    let GatedDevices {
        outputs,
        backend,
        virtio,
        failed,
    } = gated_devices(spec)?;
    let running = boot_linux_vm(
        spec,
        virtio,
        Box::new(SharedConsole::new(console)),
        Box::new(backend),
    )?;
    on_start(&running);
    let loop_cfg = LoopConfig {
        epoch: cfg.epoch,
        first_full: true,
        dirty: cfg.dirty,
        delta_bytes: cfg.delta_bytes,
    };
    drive_primary(running, &outputs, &failed, ch, loop_cfg)
}

/// The Primary's pair on a running VM whose backend is gated by `outputs`
/// (`failed`: the backend's failure report): epochs out, acks in, until the
/// guest ends (`Bye` to the Secondary) or the link is lost (the VM stops).
pub fn drive_primary(
    running: Running,
    outputs: &Arc<GatedOutputs>,
    failed: &Mutex<Option<String>>,
    ch: Channel,
    loop_cfg: LoopConfig,
) -> Result<Report, HostError> {
    let (tx, mut rx) = ch.split();
    let stop = Arc::new(AtomicBool::new(false));
    let lost: Arc<Mutex<Option<String>>> = Arc::default();
    let acks = {
        let (outputs, stop, lost) = (Arc::clone(outputs), Arc::clone(&stop), Arc::clone(&lost));
        std::thread::Builder::new()
            .name("ckpt-acks".into())
            .spawn(move || {
                let end = read_acks(&mut rx, &outputs, &stop);
                if !matches!(end, LinkError::Stopped) {
                    *lock(&lost) = Some(end.to_string());
                }
            })
            .map_err(LinuxVmError::Thread)?
    };
    let mut sink = ChannelSink(tx);
    let loop_stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let epochs = s.spawn(|| {
            let mut sum = Summary::default().with_waits(Arc::clone(outputs));
            primary::run_epochs(&running, outputs, &mut sink, loop_cfg, &loop_stop, |e| {
                sum.add(e)
            })
        });
        while running.ended().is_none() && lock(&lost).is_none() && !epochs.is_finished() {
            if let Some(why) = lock(failed).take() {
                eprintln!("checkpoint: {why}");
                running.stop();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        loop_stop.store(true, Ordering::SeqCst);
        match epochs.join() {
            Ok(Err(primary::EpochLoopError::Link { why, .. })) => {
                lock(&lost).get_or_insert(why);
            }
            Ok(Err(e)) if !matches!(e, primary::EpochLoopError::VmEnded) => {
                eprintln!("checkpoint: epoch loop ended: {e}");
                running.stop();
            }
            _ => {}
        }
    });
    stop.store(true, Ordering::SeqCst);
    let lost = lock(&lost).take();
    let (epoch, (acked, _, _)) = (outputs.current(), outputs.progress());
    match lost {
        None => {
            let report = running.wait();
            let _ = sink.0.send_last(&Message::Bye {
                reason: format!("the Primary's guest ended: {}", report.end),
            });
            sink.0.shutdown();
            let _ = acks.join();
            Ok(report)
        }
        Some(why) => {
            outputs.halt();
            running.stop();
            let report = running.wait();
            sink.0.shutdown();
            let _ = acks.join();
            eprintln!("checkpoint: Primary stopped (its VM: {})", report.end);
            Err(HostError::Lost {
                peer: "Secondary",
                epoch,
                acked,
                why,
            })
        }
    }
}

/// Waits for the Primary's connection (and its handshake), or the trigger.
fn accept_primary(listener: &TcpListener, cfg: &RemoteSecondary) -> Option<Channel> {
    let key = cfg.peer_key;
    let allowed = move |k: &[u8; 32]| (*k == key).then(|| "primary".to_string());
    loop {
        if triggered(cfg) {
            return None;
        }
        match listener.accept() {
            Ok((stream, from)) => {
                if let Err(e) = stream.set_nonblocking(false) {
                    tracing::warn!("checkpoint: connection from {from}: {e}");
                    continue;
                }
                match channel::accept(stream, &cfg.identity, &allowed, CONNECT_TIMEOUT) {
                    Ok(ch) => return Some(ch),
                    Err(e) => tracing::warn!("checkpoint: connection from {from} refused: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => tracing::warn!("checkpoint: accept: {e}"),
        }
    }
}

fn triggered(cfg: &RemoteSecondary) -> bool {
    cfg.take_over_on.as_ref().is_some_and(|p| p.exists())
}

/// Runs the Secondary: `Ok(None)` when the Primary's guest ended in order,
/// `Ok(Some(report))` after a take-over, the take-over VM's end.
pub fn run_checkpoint_secondary(
    spec: &LinuxSpec,
    cfg: &RemoteSecondary,
    console: Console,
    on_start: impl Fn(&Running),
) -> Result<Option<Report>, HostError> {
    let listen_err = |source| HostError::Listen {
        addr: cfg.listen,
        source,
    };
    let listener = TcpListener::bind(cfg.listen).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    eprintln!("checkpoint: Secondary listening on {}", cfg.listen);
    let Some((r, advance)) = secondary_until_take_over(&listener, cfg, spec.mem_mib << 20)? else {
        return Ok(None);
    };
    let t = Instant::now();
    eprintln!("checkpoint: taking over from epoch {}", r.last());
    let report = take_over_and_run(spec, r, SharedConsole::new(console), advance, t, &on_start)?;
    Ok(Some(report))
}

/// The Secondary until it is to take over: accepts the Primary on
/// `listener` (non-blocking), applies its epochs until the trigger (or, once
/// the link is lost, waits for it). `None`: the Primary ended the pair in
/// order. Otherwise the receiver at its last complete epoch and how long
/// ago that epoch was applied (the guest clock's advance).
pub fn secondary_until_take_over(
    listener: &TcpListener,
    cfg: &RemoteSecondary,
    mem_size: u64,
) -> Result<Option<(Receiver<Staging>, Duration)>, HostError> {
    let mut r = Receiver::new(1, Staging::new(mem_size)?, 0);
    let applied_at = Arc::new(Mutex::new(Instant::now()));
    let end = match accept_primary(listener, cfg) {
        None => None,
        Some(ch) => {
            eprintln!("checkpoint: the Primary connected");
            ch.set_read_timeout(Some(POLL))
                .and_then(|()| ch.set_write_timeout(Some(SEND_TIMEOUT)))
                .map_err(|e| HostError::Connect {
                    peer: ch.peer().to_string(),
                    source: e.into(),
                })?;
            Some(serve_until_trigger(ch, &mut r, cfg, &applied_at))
        }
    };
    match end {
        Some(LinkError::Bye { reason }) => {
            eprintln!(
                "checkpoint: the Primary ended the pair at epoch {}: {reason}",
                r.last()
            );
            return Ok(None);
        }
        Some(LinkError::Stopped) | None => {}
        Some(e) => {
            eprintln!("checkpoint: link lost at epoch {}: {e}", r.last());
            if cfg.take_over_on.is_none() {
                return Err(HostError::Lost {
                    peer: "Primary",
                    epoch: r.last(),
                    acked: r.last(),
                    why: e.to_string(),
                });
            }
            eprintln!("checkpoint: waiting for the take-over trigger");
            while !triggered(cfg) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let advance = lock(&applied_at).elapsed();
    Ok(Some((r, advance)))
}

/// Serves the link on this thread until it ends or the trigger appears
/// (then the link is dropped: `Stopped`).
fn serve_until_trigger(
    ch: Channel,
    r: &mut Receiver<Staging>,
    cfg: &RemoteSecondary,
    applied_at: &Mutex<Instant>,
) -> LinkError {
    let stop = AtomicBool::new(false);
    let (tx, mut rx) = ch.split();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            serve(tx, &mut rx, r, &stop, |_| {
                *lock(applied_at) = Instant::now()
            })
        });
        while !server.is_finished() {
            if triggered(cfg) {
                stop.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        server.join().unwrap_or(LinkError::Stopped)
    })
}
