//! The epoch Output Rule, case by case (the simulation in `sim_tests.rs`
//! checks it under crashes and a bad link).

use super::epoch::{DiskWrite, SECTOR_SIZE};
use super::gate::{Action, EndEarly, EpochGate, GateConfig, GateError, Mode};

const CFG: GateConfig = GateConfig {
    max_dirty_pages: 100,
    max_write_bytes: 4096,
};

fn sectors(fill: u8, n: usize) -> Vec<u8> {
    vec![fill; n * SECTOR_SIZE]
}

fn released(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Release { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

fn submitted(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Submit { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect()
}

#[test]
fn frames_leave_after_ack_and_durable_writes_in_order() {
    let mut g = EpochGate::new(CFG, 1);
    g.on_frame(b"a".to_vec());
    g.on_write(8, sectors(1, 1));
    let (c1, acts) = g.close_epoch();
    assert_eq!((c1.number, c1.writes.len()), (1, 1));
    assert!(acts.is_empty(), "nothing before the ack");
    g.on_frame(b"b".to_vec());
    let (_, acts) = g.close_epoch();
    assert!(acts.is_empty());
    // Ack of epoch 1: its writes go to the device; the frame waits for them.
    let acts = g.on_ack(1).unwrap();
    assert_eq!(submitted(&acts), vec![1]);
    assert!(released(&acts).is_empty());
    // Epoch 2 acked meanwhile: still nothing (writes of epoch 1 not durable).
    assert!(released(&g.on_ack(2).unwrap()).is_empty());
    let acts = g.on_durable(1).unwrap();
    // Epoch 2 had no writes: both frames leave, in order.
    assert_eq!(released(&acts), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(g.progress(), (2, 2, 2));
    assert_eq!(g.frames_held(), 0);
}

#[test]
fn a_never_acknowledged_epoch_releases_nothing() {
    let mut g = EpochGate::new(CFG, 1);
    g.on_frame(b"1".to_vec());
    g.close_epoch();
    g.on_frame(b"2".to_vec());
    g.on_write(0, sectors(2, 1));
    g.close_epoch();
    let acts = g.on_ack(1).unwrap();
    assert_eq!(released(&acts), vec![b"1".to_vec()]);
    // Epoch 2 torn at the Secondary: no ack, nothing of it leaves or is
    // written, however long we wait.
    assert_eq!(g.frames_held(), 1);
    assert_eq!(g.progress(), (1, 1, 1));
    assert_eq!(
        g.on_ack(3),
        Err(GateError::AckBeyondClosed {
            acked: 3,
            closed: 2
        })
    );
    // A duplicate, older ack changes nothing.
    assert!(g.on_ack(1).unwrap().is_empty());
}

#[test]
fn writes_reach_the_device_one_epoch_at_a_time() {
    let mut g = EpochGate::new(CFG, 1);
    for e in 1..=3u8 {
        g.on_write(u64::from(e), sectors(e, 1));
        g.on_write(100, sectors(e, 2));
        g.close_epoch();
    }
    let acts = g.on_ack(3).unwrap();
    match &acts[..] {
        [Action::Submit { epoch: 1, writes }] => assert_eq!(
            writes,
            &vec![
                DiskWrite {
                    sector: 1,
                    data: sectors(1, 1)
                },
                DiskWrite {
                    sector: 100,
                    data: sectors(1, 2)
                },
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        g.on_durable(2),
        Err(GateError::NotInFlight {
            epoch: 2,
            in_flight: Some(1)
        })
    ));
    assert_eq!(submitted(&g.on_durable(1).unwrap()), vec![2]);
    assert_eq!(submitted(&g.on_durable(2).unwrap()), vec![3]);
    assert!(g.on_durable(3).unwrap().is_empty());
    assert_eq!(g.pending_sectors(), 0);
}

#[test]
fn reads_see_pending_writes_newest_first_with_partial_overlaps() {
    let mut g = EpochGate::new(CFG, 1);
    let mut device = vec![0xd0u8; 16 * SECTOR_SIZE];
    g.on_write(2, sectors(1, 4)); // 2..6 = 1
    g.close_epoch();
    g.on_write(4, sectors(2, 3)); // 4..7 = 2 (overlaps the tail of epoch 1's)
    let mut calls = Vec::new();
    let mut buf = vec![0u8; 8 * SECTOR_SIZE];
    g.read(0, &mut buf, &mut |s, b: &mut [u8]| {
        calls.push((s, b.len() / SECTOR_SIZE));
        let at = s as usize * SECTOR_SIZE;
        b.copy_from_slice(&device[at..at + b.len()]);
        Ok::<(), ()>(())
    })
    .unwrap();
    let per_sector: Vec<u8> = buf.chunks(SECTOR_SIZE).map(|s| s[0]).collect();
    assert_eq!(per_sector, vec![0xd0, 0xd0, 1, 1, 2, 2, 2, 0xd0]);
    assert_eq!(
        calls,
        vec![(0, 2), (7, 1)],
        "only the missing runs hit the device"
    );
    // Epoch 1 becomes durable: its sectors 2, 3 leave the overlay (they are
    // on the device now), sectors 4, 5 stay (epoch 2 wrote them again).
    let acts = g.on_ack(1).unwrap();
    let Action::Submit { writes, .. } = &acts[0] else {
        panic!()
    };
    for w in writes {
        let at = w.sector as usize * SECTOR_SIZE;
        device[at..at + w.data.len()].copy_from_slice(&w.data);
    }
    g.on_durable(1).unwrap();
    assert_eq!(g.pending_sectors(), 3);
    g.read(0, &mut buf, &mut |s, b: &mut [u8]| {
        let at = s as usize * SECTOR_SIZE;
        b.copy_from_slice(&device[at..at + b.len()]);
        Ok::<(), ()>(())
    })
    .unwrap();
    let per_sector: Vec<u8> = buf.chunks(SECTOR_SIZE).map(|s| s[0]).collect();
    assert_eq!(per_sector, vec![0xd0, 0xd0, 1, 1, 2, 2, 2, 0xd0]);
}

#[test]
fn losing_the_secondary_holds_until_the_next_generation_is_won() {
    let mut g = EpochGate::new(CFG, 4);
    g.on_frame(b"x".to_vec());
    g.on_write(0, sectors(1, 1));
    g.close_epoch();
    g.on_frame(b"y".to_vec());
    g.close_epoch();
    let acts = g.on_ack(1).unwrap();
    assert_eq!(submitted(&acts), vec![1]);
    g.on_secondary_lost().unwrap();
    // The in-flight write completes, but even epoch 1's frame (acked, durable)
    // waits: the member is racing and may lose.
    assert!(g.on_durable(1).unwrap().is_empty());
    assert!(matches!(g.on_ack(2), Err(GateError::AckNotPaired { .. })));
    g.on_frame(b"z".to_vec());
    g.on_write(1, sectors(3, 1));
    let (c, acts) = g.close_epoch();
    assert_eq!((c.number, c.generation), (3, 4));
    assert!(acts.is_empty());
    assert!(
        g.on_generation_won(4).is_err(),
        "must be a newer generation"
    );
    let acts = g.on_generation_won(5).unwrap();
    // Epoch 1's frame; epoch 2 has no writes (its frame); epoch 3's write.
    assert_eq!(released(&acts), vec![b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(submitted(&acts), vec![3]);
    assert_eq!(released(&g.on_durable(3).unwrap()), vec![b"z".to_vec()]);
    assert_eq!(g.mode(), Mode::Solo { generation: 5 });
    // Alone, a closed epoch counts as acked; its frames still wait for its
    // writes to be durable.
    g.on_frame(b"w".to_vec());
    g.on_write(9, sectors(4, 1));
    let (_, acts) = g.close_epoch();
    assert_eq!((submitted(&acts), released(&acts).len()), (vec![4], 0));
    assert_eq!(released(&g.on_durable(4).unwrap()), vec![b"w".to_vec()]);
    g.on_paired(6).unwrap();
    assert!(g.on_secondary_lost().is_ok());
}

#[test]
fn an_epoch_ends_early_past_its_bounds() {
    let mut g = EpochGate::new(CFG, 1);
    assert_eq!(g.end_early(99), None);
    assert_eq!(
        g.end_early(100),
        Some(EndEarly::DirtyPages {
            pages: 100,
            limit: 100
        })
    );
    g.on_write(0, sectors(0, 8));
    assert_eq!(
        g.end_early(0),
        Some(EndEarly::WriteBytes {
            bytes: 4096,
            limit: 4096
        })
    );
    g.close_epoch();
    assert_eq!(g.end_early(0), None);
}

/// A lone gate in generation 2 (lost generation 1's Secondary, won 2).
fn solo() -> EpochGate {
    let mut g = EpochGate::new(CFG, 1);
    g.on_secondary_lost().unwrap();
    g.on_generation_won(2).unwrap();
    g
}

/// Respawn (`respawn.rs`): epochs closed alone before the join release
/// without the new Secondary; the join's full epoch and later ones wait for
/// its acks; writes of earlier epochs not yet durable travel in the join's
/// epoch, ahead of its own.
#[test]
fn a_join_holds_its_full_epoch_and_later_ones_for_the_new_secondarys_acks() {
    let mut g = solo();
    g.on_frame(b"alone".to_vec());
    g.on_write(8, sectors(1, 1));
    let (c1, acts) = g.close_epoch();
    assert_eq!(submitted(&acts), vec![c1.number], "alone: acked at close");
    g.on_write(16, sectors(2, 1));
    g.on_frame(b"joining".to_vec());
    let (j, acts) = g.close_epoch_joining(2).unwrap();
    assert!(acts.is_empty(), "epoch 1's writes are still in flight");
    assert_eq!(g.mode(), Mode::Paired { generation: 2 });
    // Epoch 1's write (not durable yet) rides in the full epoch, first.
    let at: Vec<u64> = j.writes.iter().map(|w| w.sector).collect();
    assert_eq!(at, vec![8, 16]);
    // Epoch 1 becomes durable: its frame leaves without any ack.
    let acts = g.on_durable(c1.number).unwrap();
    assert_eq!(released(&acts), vec![b"alone".to_vec()]);
    assert!(
        submitted(&acts).is_empty(),
        "the join's epoch waits for its ack"
    );
    g.on_frame(b"after".to_vec());
    let (c3, acts) = g.close_epoch();
    assert!(acts.is_empty(), "paired: nothing without acks");
    // The new Secondary's ack of the full epoch: its own write goes out.
    let acts = g.on_ack(j.number).unwrap();
    assert_eq!(submitted(&acts), vec![j.number]);
    let acts = g.on_durable(j.number).unwrap();
    assert_eq!(released(&acts), vec![b"joining".to_vec()]);
    assert!(released(&g.on_ack(c3.number).unwrap()).len() == 1);
}

/// A join given up before the member paired: alone again in the same
/// generation, every closed epoch released; a join in another generation,
/// or a second one, is refused.
#[test]
fn an_abandoned_join_runs_alone_again_in_its_generation() {
    let mut g = solo();
    assert!(matches!(
        g.close_epoch_joining(3),
        Err(GateError::Transition { .. })
    ));
    g.on_frame(b"f".to_vec());
    let (j, acts) = g.close_epoch_joining(2).unwrap();
    assert!(released(&acts).is_empty());
    assert!(matches!(
        g.close_epoch_joining(2),
        Err(GateError::Transition { .. })
    ));
    assert!(g.abandon_join(3).is_err());
    let acts = g.abandon_join(2).unwrap();
    assert_eq!(g.mode(), Mode::Solo { generation: 2 });
    assert_eq!(released(&acts), vec![b"f".to_vec()]);
    assert_eq!(g.progress().0, j.number, "every closed epoch acked");
    assert!(g.abandon_join(2).is_err(), "only once");
}

/// A lone Primary that re-won a later generation stays alone in it; never
/// backwards.
#[test]
fn a_lone_gate_follows_a_later_generation_won_again() {
    let mut g = solo();
    assert!(g.on_generation_rewon(2).is_err());
    g.on_generation_rewon(4).unwrap();
    assert_eq!(g.mode(), Mode::Solo { generation: 4 });
    g.on_frame(b"x".to_vec());
    let (c, acts) = g.close_epoch();
    assert_eq!((c.generation, released(&acts)), (4, vec![b"x".to_vec()]));
}

#[test]
fn the_oldest_held_frame_names_its_epoch_until_it_leaves() {
    let mut g = EpochGate::new(CFG, 1);
    assert_eq!(g.oldest_held_frame(), None);
    g.close_epoch();
    g.on_frame(b"a".to_vec());
    g.close_epoch();
    g.on_frame(b"b".to_vec());
    g.close_epoch();
    assert_eq!(g.oldest_held_frame(), Some(2));
    // Epoch 1 (no frame) acknowledged: epoch 2's frame still waits.
    assert!(released(&g.on_ack(1).unwrap()).is_empty());
    assert_eq!(g.oldest_held_frame(), Some(2));
    assert_eq!(released(&g.on_ack(2).unwrap()), vec![b"a".to_vec()]);
    assert_eq!(g.oldest_held_frame(), Some(3));
    g.on_ack(3).unwrap();
    assert_eq!(g.oldest_held_frame(), None);
}
