//! The late-write fence on the gated disk path (`late_fence.rs`): after a
//! take-over, the re-written writes go first, through the gate, once the
//! member opens it; a later epoch overlapping them waits for the bound
//! while reads still see its data; the frames of its epoch wait with it.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::checkpoint::gate::GateConfig;
use crate::linux::tests::wait_until;
use crate::live::DiskSpec;

const BOUND: Duration = Duration::from_millis(600);

fn sector(file: &tempfile::NamedTempFile, s: u64) -> Vec<u8> {
    let at = s as usize * 512;
    std::fs::read(file.path()).unwrap()[at..at + 512].to_vec()
}

#[test]
fn a_later_overlapping_epoch_waits_for_the_bound_and_reads_see_it_meanwhile() {
    let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let f2 = Arc::clone(&frames);
    // A take-over in generation 2: the gate starts in 1, held.
    let outputs = GatedOutputs::with_grant(
        EpochGate::new(
            GateConfig {
                max_dirty_pages: u64::MAX,
                max_write_bytes: u64::MAX,
            },
            1,
        ),
        Some(Box::new(move |f: &[u8]| {
            f2.lock().unwrap().push(f.to_vec())
        })),
        HostGrant::always(),
        true,
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(64 * 512).unwrap();
    let spec = DiskSpec {
        path: file.path().into(),
        region: None,
    };
    let disk = DiskBackend::open(&spec, 0).unwrap();
    let mut backend =
        GatedBackend::new(Arc::clone(&outputs), Some(disk), None, 0, Box::new(|_| {}));
    let (done_tx, done) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    backend
        .start(Arc::new(move |ev| {
            let _ = done_tx.lock().unwrap().send(ev);
        }))
        .unwrap();

    // The old Primary's unfinished write, re-written with an announcement.
    let old = [DiskWrite {
        sector: 8,
        data: vec![0xaa; 512],
    }];
    let e0 = outputs.reissue(&old, &[b"garp".to_vec()]);
    let t0 = Instant::now();
    outputs.set_fence(LateWriteFence::with_bound(&old, e0, false, BOUND).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        sector(&file, 8),
        vec![0; 512],
        "written before the gate opened"
    );
    outputs.set_member_gate(Gate::Open, 2).unwrap();
    wait_until("the re-written epoch is durable", || {
        outputs.progress().2 >= e0
    });
    assert_eq!(sector(&file, 8), vec![0xaa; 512]);
    assert_eq!(*frames.lock().unwrap(), vec![b"garp".to_vec()]);

    // The resumed guest overwrites sector 9 (overlapping? no) and 8 (yes).
    for (s, fill) in [(9u64, 0xb9u8), (8, 0xbb)] {
        backend.submit_block(BlockRequest {
            dev: 0,
            id: s,
            op: BlockOp::Write {
                sector: s,
                data: vec![fill; 512],
            },
        });
    }
    backend.send_frame(0, b"after".to_vec());
    let e1 = outputs.close_epoch().number;
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        t0.elapsed() < BOUND,
        "the machine is too slow for this bound"
    );
    assert_eq!(
        sector(&file, 8),
        vec![0xaa; 512],
        "the fence let it through"
    );
    assert_eq!(sector(&file, 9), vec![0; 512], "its epoch is written whole");
    assert_eq!(frames.lock().unwrap().len(), 1, "its frame left before it");
    // A read meanwhile sees what the guest wrote.
    backend.submit_block(BlockRequest {
        dev: 0,
        id: 77,
        op: BlockOp::Read {
            sector: 8,
            len: 512,
        },
    });
    let data = loop {
        match done.recv_timeout(Duration::from_secs(5)).unwrap() {
            InputEvent::BlockDone { id: 77, data, .. } => break data,
            _ => continue,
        }
    };
    assert_eq!(data, vec![0xbb; 512], "the read missed the held write");
    wait_until("the fenced epoch is durable", || outputs.progress().2 >= e1);
    assert!(t0.elapsed() >= BOUND, "written before the bound");
    assert_eq!(sector(&file, 8), vec![0xbb; 512]);
    assert_eq!(sector(&file, 9), vec![0xb9; 512]);
    wait_until("its frame left", || frames.lock().unwrap().len() == 2);
    backend.stop();
}

/// Fencing cut the old host off at the storage: no fence, the guest's
/// overlapping writes go at once.
#[test]
fn no_fence_when_the_old_host_is_cut_off() {
    let old = [DiskWrite {
        sector: 8,
        data: vec![1; 512],
    }];
    assert!(LateWriteFence::after_take_over(&old, 3, true).is_none());
}
