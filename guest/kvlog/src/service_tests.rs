//! Tests of the KV service: PUT/GET/STAT over the log, SET/SLOT over the slot area, restarts.

use super::*;
use crate::record::SECTOR_SIZE;
use crate::replay::{LogEnd, MemDisk, TailReason};
use crate::slot::{SlotDecodeError, SLOT_COUNT};
use alloc::string::String;
use alloc::vec;

/// A disk with a log of 64 sectors before the slot area.
const DISK: usize = 64 + SLOT_COUNT;

fn run(svc: &mut KvService, disk: &mut MemDisk, line: &str) -> String {
    let mut out = Vec::new();
    svc.handle_line(
        &Line::Complete(line.as_bytes().to_vec()),
        42,
        disk,
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn put_get_stat_and_recover_after_restart() {
    let mut disk = MemDisk::new(DISK);
    let (mut svc, out) = KvService::recover(&mut disk).unwrap();
    assert_eq!(out.end, LogEnd::Clean);
    assert_eq!(run(&mut svc, &mut disk, "PUT a 1"), "OK\n");
    assert_eq!(run(&mut svc, &mut disk, "PUT b 2"), "OK\n");
    assert_eq!(run(&mut svc, &mut disk, "PUT a 3"), "OK\n");
    assert_eq!(run(&mut svc, &mut disk, "GET a"), "VALUE 3\n");
    assert_eq!(run(&mut svc, &mut disk, "GET zz"), "NOTFOUND\n");
    assert_eq!(
        run(&mut svc, &mut disk, "STAT"),
        "STAT keys=2 puts=3 gets=2 ticks=42\n"
    );
    assert_eq!(run(&mut svc, &mut disk, "FOO"), "ERR unknown command\n");

    // "Reboot": rebuild from the disk alone.
    let (mut svc2, out) = KvService::recover(&mut disk).unwrap();
    assert_eq!(out.records, 3);
    assert_eq!(svc2.replayed(), 3);
    assert_eq!(svc2.store().len(), 2);
    assert_eq!(run(&mut svc2, &mut disk, "GET a"), "VALUE 3\n");
    assert_eq!(run(&mut svc2, &mut disk, "PUT c 4"), "OK\n");
    let (svc3, _) = KvService::recover(&mut disk).unwrap();
    assert_eq!(svc3.replayed(), 4);
}

#[test]
fn torn_tail_is_overwritten_by_next_put() {
    let mut disk = MemDisk::new(DISK);
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    run(&mut svc, &mut disk, "PUT a 1");
    let tail = svc.cursor().next_sector as usize;
    run(&mut svc, &mut disk, "PUT b 2");
    // Tear record 2: flip a byte of its key.
    disk.bytes[tail * 512 + 24] ^= 1;
    let (mut svc, out) = KvService::recover(&mut disk).unwrap();
    assert_eq!(out.records, 1);
    assert!(matches!(out.end, LogEnd::Torn(TailReason::Decode(_))));
    assert_eq!(svc.cursor().next_sector as usize, tail);
    assert_eq!(run(&mut svc, &mut disk, "PUT c 3"), "OK\n");
    let (mut svc, out) = KvService::recover(&mut disk).unwrap();
    assert_eq!(out.records, 2);
    assert_eq!(run(&mut svc, &mut disk, "GET b"), "NOTFOUND\n");
    assert_eq!(run(&mut svc, &mut disk, "GET c"), "VALUE 3\n");
}

#[test]
fn failed_write_is_not_acknowledged_nor_applied() {
    struct Broken;
    impl LogWriter for Broken {
        type Error = &'static str;
        fn write_durable(&mut self, _: u64, _: &[u8]) -> Result<(), &'static str> {
            Err("media error")
        }
    }
    let mut disk = MemDisk::new(DISK);
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    let mut out = Vec::new();
    svc.handle_line(
        &Line::Complete(b"PUT a 1".to_vec()),
        0,
        &mut Broken,
        &mut out,
    );
    assert_eq!(out, b"ERR disk: media error\n");
    assert_eq!(svc.store().len(), 0);
    assert_eq!(svc.cursor().next_seq, 1);
    // The same for SET: no OK, nothing shown, and the version is not reused.
    let mut out = Vec::new();
    svc.handle_line(
        &Line::Complete(b"SET 3 v".to_vec()),
        0,
        &mut Broken,
        &mut out,
    );
    assert_eq!(out, b"ERR disk: media error\n");
    assert_eq!(run(&mut svc, &mut disk, "SLOT 3"), "NONE\n");
    assert_eq!(run(&mut svc, &mut disk, "SET 3 w"), "OK 2\n");
}

#[test]
fn log_full_and_too_long() {
    // The smallest disk: a log of 3 sectors, then the slot area.
    let mut disk = MemDisk::new(3 + SLOT_COUNT);
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    assert_eq!(svc.layout().log_sectors, 3);
    for k in ["a", "b", "c"] {
        assert_eq!(
            run(&mut svc, &mut disk, &alloc::format!("PUT {k} 1")),
            "OK\n"
        );
    }
    assert_eq!(run(&mut svc, &mut disk, "PUT d 2"), "ERR log full\n");
    // The full log left the slot area alone, and slots still take updates.
    assert!(disk.bytes[3 * SECTOR_SIZE..].iter().all(|&b| b == 0));
    assert_eq!(run(&mut svc, &mut disk, "SET 0 x"), "OK 1\n");
    let mut out = Vec::new();
    svc.handle_line(&Line::TooLong, 0, &mut disk, &mut out);
    assert_eq!(out, b"ERR line too long\n");
    let big = String::from_utf8(vec![b'v'; 1024]).unwrap();
    let mut disk = MemDisk::new(DISK);
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    assert_eq!(
        run(&mut svc, &mut disk, &alloc::format!("PUT k {big}")),
        "OK\n"
    );
    assert_eq!(
        run(&mut svc, &mut disk, "GET k"),
        alloc::format!("VALUE {big}\n")
    );
}

#[test]
fn set_rewrites_one_sector_in_place_and_versions_continue_after_restart() {
    let mut disk = MemDisk::new(DISK);
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    assert_eq!(run(&mut svc, &mut disk, "SLOT 5"), "NONE\n");
    assert_eq!(run(&mut svc, &mut disk, "SET 5 first"), "OK 1\n");
    let before = disk.bytes.clone();
    assert_eq!(run(&mut svc, &mut disk, "SET 5 second"), "OK 2\n");
    // Exactly the sector of slot 5 changed: an in-place rewrite, not an append.
    let sector = svc.layout().slot_sector(5) as usize;
    assert_eq!(sector, 64 + 5);
    let changed: Vec<usize> = (0..DISK)
        .filter(|s| {
            let r = s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE;
            before[r.clone()] != disk.bytes[r]
        })
        .collect();
    assert_eq!(changed, [sector]);
    assert_eq!(run(&mut svc, &mut disk, "SLOT 5"), "VALUE 2 second\n");
    assert_eq!(run(&mut svc, &mut disk, "SET 63"), "OK 1\n");
    assert_eq!(run(&mut svc, &mut disk, "SLOT 63"), "VALUE 1 \n");
    assert_eq!(run(&mut svc, &mut disk, "PUT k v"), "OK\n");
    // SET and PUT do not disturb each other across a restart.
    let (mut svc, out) = KvService::recover(&mut disk).unwrap();
    assert_eq!((out.records, svc.slots().held()), (1, 2));
    assert_eq!(run(&mut svc, &mut disk, "SLOT 5"), "VALUE 2 second\n");
    assert_eq!(run(&mut svc, &mut disk, "SET 5 third"), "OK 3\n");
    assert_eq!(run(&mut svc, &mut disk, "GET k"), "VALUE v\n");
    assert_eq!(
        run(&mut svc, &mut disk, "SLOT 64"),
        "ERR slot out of range\n"
    );
    assert_eq!(run(&mut svc, &mut disk, "SET 05 x"), "ERR bad slot\n");
}

#[test]
fn a_damaged_slot_is_reported_and_refused() {
    let mut disk = MemDisk::new(DISK);
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    assert_eq!(run(&mut svc, &mut disk, "SET 2 page"), "OK 1\n");
    let at = svc.layout().slot_sector(2) as usize * SECTOR_SIZE;
    disk.bytes[at + 25] ^= 0x01;
    let (mut svc, _) = KvService::recover(&mut disk).unwrap();
    let reply = run(&mut svc, &mut disk, "SLOT 2");
    assert!(reply.starts_with("ERR slot 2 damaged (bad crc"), "{reply}");
    let reply = run(&mut svc, &mut disk, "SET 2 again");
    assert!(reply.starts_with("ERR slot 2 damaged (bad crc"), "{reply}");
    assert!(matches!(
        svc.slots().damaged().next(),
        Some((2, SlotDecodeError::BadCrc { .. }))
    ));
    // The damaged sector is left as it was; the other slots serve.
    assert_eq!(disk.bytes[at + 25], b'a' ^ 1);
    assert_eq!(run(&mut svc, &mut disk, "SET 3 ok"), "OK 1\n");
}

#[test]
fn a_disk_too_small_for_the_slot_area_is_refused() {
    let mut disk = MemDisk::new(2 + SLOT_COUNT);
    let err = KvService::recover(&mut disk).unwrap_err();
    assert!(matches!(
        err,
        RecoverError::Layout(crate::slot::LayoutError::TooSmall { sectors: 66 })
    ));
    let msg = alloc::format!("{err}");
    assert!(msg.contains("at least 67 sectors"), "{msg}");
}

/// A writer that counts calls and can be told to fail.
struct Counting {
    disk: MemDisk,
    writes: usize,
    fail: bool,
}

impl LogWriter for Counting {
    type Error = &'static str;
    fn write_durable(&mut self, first: u64, bytes: &[u8]) -> Result<(), &'static str> {
        if self.fail {
            return Err("injected");
        }
        self.writes += 1;
        self.disk
            .write_durable(first, bytes)
            .map_err(|_| "out of range")
    }
}

#[test]
fn put_batch_is_one_write_and_replays_like_single_puts() {
    let mut w = Counting {
        disk: MemDisk::new(DISK),
        writes: 0,
        fail: false,
    };
    let (mut svc, _) = KvService::recover(&mut w.disk).unwrap();
    let big = [b'v'; 1024];
    let long_key = [b'k'; 65];
    let replies = svc.put_batch(
        &[(b"a", b"1"), (&long_key, b"x"), (b"b", &big), (b"a", b"2")],
        &mut w,
    );
    assert_eq!(w.writes, 1);
    let text: Vec<String> = replies
        .iter()
        .map(|r| String::from_utf8(r.clone()).unwrap())
        .collect();
    assert_eq!(
        text,
        ["OK\n", "ERR key length 65 not in 1..=64\n", "OK\n", "OK\n"]
    );
    assert_eq!(svc.store().puts(), 3);
    assert_eq!(svc.cursor().next_seq, 4);
    assert_eq!(run(&mut svc, &mut w.disk, "PUT c 3"), "OK\n");

    // The batch's records replay as three ordinary ones, and the chain continues after them.
    let (mut again, out) = KvService::recover(&mut w.disk).unwrap();
    assert_eq!((out.records, out.end), (4, LogEnd::Clean));
    assert_eq!(run(&mut again, &mut w.disk, "GET a"), "VALUE 2\n");
    assert_eq!(again.store().len(), 3);
}

#[test]
fn put_batch_failure_changes_nothing() {
    let mut w = Counting {
        disk: MemDisk::new(DISK),
        writes: 0,
        fail: true,
    };
    let (mut svc, _) = KvService::recover(&mut w.disk).unwrap();
    let before = *svc.cursor();
    let replies = svc.put_batch(&[(b"a", b"1"), (b"b", b"2")], &mut w);
    assert_eq!(
        replies,
        [
            b"ERR disk: injected\n".to_vec(),
            b"ERR disk: injected\n".to_vec()
        ]
    );
    assert_eq!(*svc.cursor(), before);
    assert_eq!(svc.store().len(), 0);
    // Log full: only the PUT that does not fit is refused.
    w.fail = false;
    let big = [b'v'; 1024];
    let many: Vec<(&[u8], &[u8])> = (0..30).map(|_| (&b"k"[..], &big[..])).collect();
    let replies = svc.put_batch(&many, &mut w);
    let ok = replies.iter().filter(|r| r.as_slice() == b"OK\n").count();
    assert_eq!(ok, 21, "64 log sectors hold 21 records of 3 sectors");
    assert!(replies[21..]
        .iter()
        .all(|r| r.as_slice() == b"ERR log full\n"));
}
