//! The two-host drivers of `hosts.rs` on /dev/kvm over TCP loopback (the
//! counter guest; booting a Linux kernel is left to the QEMU tests): the
//! Secondary takes over on its trigger and the Primary stops, and the
//! Primary's guest ending ends the Secondary without a take-over.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::gated::GatedOutputs;
use super::hosts::{drive_primary, secondary_until_take_over, HostError, RemoteSecondary};
use super::remote_tests::{counter_vm, gate, MEM};
use super::secondary::{self, Rebuild};
use super::test_support::{identities, TIMEOUT};
use crate::linux::tests::{counter, wait_until, NoBackend, Sink};
use crate::linux::End;
use crate::lockstep::channel::{self, Channel};

fn loop_cfg() -> super::primary::LoopConfig {
    super::primary::LoopConfig {
        epoch: Duration::from_millis(20),
        first_full: true,
        dirty: Default::default(),
        delta_bytes: crate::checkpoint::delta_base::DEFAULT_BYTES,
    }
}

type SecondaryEnd = Result<
    Option<(
        super::receiver::Receiver<super::secondary::Staging>,
        Duration,
    )>,
    HostError,
>;

/// A Secondary driver on its own thread, and the Primary's channel to it.
fn secondary_and_channel(
    take_over_on: Option<std::path::PathBuf>,
) -> (std::thread::JoinHandle<SecondaryEnd>, Channel) {
    let (primary, secondary) = identities();
    let s_pub = secondary.public_key();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let cfg = RemoteSecondary {
        listen: listener.local_addr().unwrap(),
        identity: secondary,
        peer_key: primary.public_key(),
        take_over_on,
    };
    let addr = cfg.listen;
    let h = std::thread::spawn(move || secondary_until_take_over(&listener, &cfg, MEM));
    let ch = channel::connect(addr, &primary, &s_pub, "secondary", TIMEOUT).unwrap();
    ch.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    ch.set_write_timeout(Some(TIMEOUT)).unwrap();
    (h, ch)
}

#[test]
fn the_secondary_takes_over_on_its_trigger_and_the_primary_stops() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("take-over");
    let (sec, ch) = secondary_and_channel(Some(trigger.clone()));
    let outputs: Arc<GatedOutputs> = GatedOutputs::new(gate(), None);
    let (running, _pmem) = counter_vm(&outputs);
    let o2 = Arc::clone(&outputs);
    let prim =
        std::thread::spawn(move || drive_primary(running, &o2, &Mutex::new(None), ch, loop_cfg()));
    wait_until("five epochs acknowledged", || outputs.progress().0 >= 5);
    std::fs::write(&trigger, b"").unwrap();
    let (r, _advance) = sec
        .join()
        .unwrap()
        .expect("the Secondary ran")
        .expect("it took over");
    match prim.join().unwrap() {
        Err(HostError::Lost { peer, acked, .. }) => {
            assert_eq!(peer, "Secondary");
            assert!(
                acked <= r.last(),
                "acked {acked}, Secondary at {}",
                r.last()
            );
        }
        other => panic!("the Primary must stop as the link is lost: {other:?}"),
    }
    let (current, (acked, _, _)) = (outputs.current(), outputs.progress());
    assert!(r.last() >= 5 && r.last() <= current && acked <= r.last());

    let sink = Sink::default();
    let (running2, epoch) = secondary::take_over(
        r.take_over(),
        Rebuild {
            vcpus: 2,
            virtio: vec![],
            console: Box::new(sink.clone()),
            backend: Box::new(NoBackend),
            advance_ns: 0,
        },
        |w| {
            assert!(w.is_empty());
            Ok(())
        },
    )
    .expect("take over");
    assert!(epoch >= 5);
    let mem2 = running2.memory();
    let at = counter(&mem2);
    wait_until("the taken-over guest counts on", || counter(&mem2) != at);
    running2.stop();
    assert_eq!(running2.wait().end, End::Stopped);
}

#[test]
fn the_primary_guest_ending_ends_the_secondary_without_a_take_over() {
    let (sec, ch) = secondary_and_channel(None);
    let outputs: Arc<GatedOutputs> = GatedOutputs::new(gate(), None);
    let (running, _pmem) = counter_vm(&outputs);
    let control = running.control();
    let o2 = Arc::clone(&outputs);
    let prim =
        std::thread::spawn(move || drive_primary(running, &o2, &Mutex::new(None), ch, loop_cfg()));
    wait_until("three epochs acknowledged", || outputs.progress().0 >= 3);
    control.end(End::Stopped);
    let report = prim.join().unwrap().expect("an orderly end");
    assert_eq!(report.end, End::Stopped);
    assert!(
        sec.join().unwrap().expect("the Secondary ran").is_none(),
        "no take-over after the Primary's goodbye"
    );
}
