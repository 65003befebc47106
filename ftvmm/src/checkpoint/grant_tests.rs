//! The epoch gate obeys the host's output grant and the member's gate as
//! lockstep's held outputs do: with the grant lapsed or withdrawn, or the
//! member holding, an acknowledged epoch's frames and disk writes stay held;
//! they leave once both allow it, writes before frames.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::checkpoint::gate::GateConfig;
use crate::linux::tests::wait_until;
use crate::live::DiskSpec;

fn gate(generation: u64) -> EpochGate {
    EpochGate::new(
        GateConfig {
            max_dirty_pages: u64::MAX,
            max_write_bytes: u64::MAX,
        },
        generation,
    )
}

struct Rig {
    outputs: Arc<GatedOutputs>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    file: tempfile::NamedTempFile,
    backend: GatedBackend,
}

fn rig(grant: Arc<HostGrant>, generation: u64) -> Rig {
    let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let f2 = Arc::clone(&frames);
    let outputs = GatedOutputs::with_grant(
        gate(generation),
        Some(Box::new(move |f: &[u8]| {
            f2.lock().unwrap().push(f.to_vec())
        })),
        grant,
        false,
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(64 * 512).unwrap();
    let disk = DiskBackend::open(
        &DiskSpec {
            path: file.path().into(),
            region: None,
        },
        0,
    )
    .unwrap();
    let mut backend =
        GatedBackend::new(Arc::clone(&outputs), Some(disk), None, 0, Box::new(|_| {}));
    backend.start(Arc::new(|_| {})).unwrap();
    Rig {
        outputs,
        frames,
        file,
        backend,
    }
}

impl Rig {
    /// The guest writes `fill` at `sector` and sends a frame naming it.
    fn write_and_send(&mut self, sector: u64, fill: u8) {
        self.backend.submit_block(BlockRequest {
            dev: 0,
            id: sector,
            op: BlockOp::Write {
                sector,
                data: vec![fill; 512],
            },
        });
        self.backend.send_frame(0, vec![fill]);
    }

    fn sector(&self, sector: u64) -> Vec<u8> {
        let at = sector as usize * 512;
        std::fs::read(self.file.path()).unwrap()[at..at + 512].to_vec()
    }

    fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().clone()
    }

    /// Nothing of `fill` left for a while.
    fn assert_held(&self, sector: u64, what: &str) {
        std::thread::sleep(Duration::from_millis(100));
        assert!(self.frames().is_empty(), "a frame left {what}");
        assert!(
            self.sector(sector).iter().all(|&b| b == 0),
            "a disk write reached the device {what}"
        );
    }
}

#[test]
fn a_lapsed_grant_holds_acknowledged_frames_and_writes_until_it_is_back() {
    let grant = HostGrant::none();
    grant.renew(Duration::from_millis(30));
    let mut r = rig(Arc::clone(&grant), 1);
    r.write_and_send(4, 0xa1);
    // The grant lapses (fencing stuck) before the epoch is acknowledged.
    std::thread::sleep(Duration::from_millis(50));
    assert!(!grant.valid());
    r.outputs.close_epoch();
    r.outputs.on_ack(1).unwrap();
    r.assert_held(4, "on an ack while the grant had lapsed");
    assert_eq!(
        r.outputs.progress(),
        (1, 0, 0),
        "acknowledged, not submitted"
    );

    grant.renew(Duration::from_secs(60));
    r.outputs.kick();
    wait_until("the frame leaves once the grant is back", || {
        !r.frames().is_empty()
    });
    assert_eq!(r.sector(4), vec![0xa1; 512], "the write is durable first");
    assert_eq!(r.frames(), vec![vec![0xa1]]);

    // Withdrawn (lease renewal failing): held again; an epoch close after
    // the renewal releases without a kick.
    grant.withdraw();
    r.write_and_send(5, 0xb2);
    r.outputs.close_epoch();
    r.outputs.on_ack(2).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.frames().len(), 1, "a frame left without a grant");
    assert!(
        r.sector(5).iter().all(|&b| b == 0),
        "written without a grant"
    );
    grant.renew(Duration::from_secs(60));
    r.outputs.close_epoch();
    wait_until("epoch 2 leaves at the next close", || r.frames().len() == 2);
    assert_eq!(r.sector(5), vec![0xb2; 512]);
    r.backend.stop();
}

#[test]
fn the_member_gate_holds_then_running_alone_releases_unacknowledged_epochs() {
    let mut r = rig(HostGrant::always(), 3);
    r.write_and_send(6, 0xc3);
    r.outputs.set_member_gate(Gate::Held, 3).unwrap();
    r.outputs.close_epoch();
    r.outputs.on_ack(1).unwrap();
    r.assert_held(6, "while the member holds (racing)");
    // Epoch 2 is never acknowledged: the Secondary is gone.
    r.write_and_send(7, 0xd4);
    r.outputs.close_epoch();
    assert!(
        r.outputs.set_member_gate(Gate::Open, 3).is_err(),
        "running alone needs a later generation than the pair's"
    );
    r.outputs.set_member_gate(Gate::Open, 4).unwrap();
    wait_until("both epochs leave once generation 4 is won", || {
        r.frames().len() == 2
    });
    assert_eq!(r.sector(6), vec![0xc3; 512]);
    assert_eq!(r.sector(7), vec![0xd4; 512]);
    assert!(
        r.outputs.set_member_gate(Gate::ByAcks, 4).is_err(),
        "no pair to release by acks"
    );
    r.backend.stop();
}

#[test]
fn the_disk_thread_looks_at_the_grant_again_before_each_write() {
    let grant = HostGrant::none();
    let r = rig(Arc::clone(&grant), 1);
    let mut disk = DiskBackend::open(
        &DiskSpec {
            path: r.file.path().into(),
            region: None,
        },
        0,
    )
    .unwrap();
    let writes = vec![DiskWrite {
        sector: 9,
        data: vec![0xe5; 512],
    }];
    // Handed an epoch's writes, then the grant is gone: it waits.
    let g2 = Arc::clone(&grant);
    let renew = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        g2.renew(Duration::from_secs(60));
    });
    let t = std::time::Instant::now();
    assert_eq!(
        write_epoch(&mut disk, &writes, &r.outputs, BootInstant::now()),
        Ok(512)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(140),
        "written before the grant came back ({:?})",
        t.elapsed()
    );
    renew.join().unwrap();
    assert_eq!(r.sector(9), vec![0xe5; 512]);
    // Without a grant while the backend stops: given up, never written.
    grant.withdraw();
    r.outputs.stopping.store(true, Ordering::SeqCst);
    let later = vec![DiskWrite {
        sector: 10,
        data: vec![0xf6; 512],
    }];
    assert!(write_epoch(&mut disk, &later, &r.outputs, BootInstant::now()).is_err());
    assert!(r.sector(10).iter().all(|&b| b == 0));
}

/// A write whose epoch was released more than `IO_AGE_LIMIT` ago (a host
/// thawed, or held that long by its grant) is never started.
#[test]
fn a_write_released_too_long_ago_is_never_started() {
    let r = rig(HostGrant::always(), 1);
    let mut disk = DiskBackend::open(
        &DiskSpec {
            path: r.file.path().into(),
            region: None,
        },
        0,
    )
    .unwrap();
    let writes = vec![DiskWrite {
        sector: 11,
        data: vec![0x17; 512],
    }];
    let now = BootInstant::now().as_nanos();
    let stale = BootInstant::from_nanos(now - (IO_AGE_LIMIT_MS + 500) * 1_000_000);
    let err = write_epoch(&mut disk, &writes, &r.outputs, stale).unwrap_err();
    assert!(err.contains("never started"), "{err}");
    assert!(r.sector(11).iter().all(|&b| b == 0), "a stale write landed");
    let fresh = BootInstant::from_nanos(now - (IO_AGE_LIMIT_MS - 500) * 1_000_000);
    assert_eq!(write_epoch(&mut disk, &writes, &r.outputs, fresh), Ok(512));
}
