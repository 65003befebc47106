//! The Linux KV guest as a host process: protocol, restart, and SIGKILL under concurrent load.
//!
//! Properties checked after every kill and restart: every acknowledged PUT is served with its
//! value, the log on the disk file decodes with `ftguest-kvlog`'s replay to the end (no torn
//! record: a process kill cannot tear a completed `pwrite`), and the server's `replayed=` count
//! equals the records the decoder found.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{field, start, Client};
use ftguest_kvlog::replay::{replay, MemDisk};
use ftguest_kvlog::{DiskLayout, LogEnd, SECTOR_SIZE};

#[test]
fn protocol_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::disk(dir.path(), 4096);
    let server = start(&disk);
    assert!(
        server.lines[0].starts_with("kv: disk 4096 sectors"),
        "{:?}",
        server.lines
    );
    assert!(server
        .lines
        .iter()
        .any(|l| l == "kv: slots 64 at sector 4032 held=0"));
    let mut c = Client::connect(server.addr).unwrap();
    assert_eq!(c.call("GET a").unwrap(), "NOTFOUND");
    assert_eq!(c.call("PUT a 1").unwrap(), "OK");
    assert_eq!(c.call("PUT a 2").unwrap(), "OK");
    assert_eq!(c.call("PUT empty").unwrap(), "OK");
    assert_eq!(c.call("GET a").unwrap(), "VALUE 2");
    assert_eq!(c.call("GET empty").unwrap(), "VALUE ");
    assert_eq!(c.call("SET 3 x").unwrap(), "OK 1");
    assert_eq!(c.call("SET 3 y").unwrap(), "OK 2");
    assert_eq!(c.call("SLOT 3").unwrap(), "VALUE 2 y");
    assert_eq!(c.call("SLOT 4").unwrap(), "NONE");
    assert_eq!(c.call("FROB").unwrap(), "ERR unknown command");
    assert_eq!(c.call("SET 07 x").unwrap(), "ERR bad slot");
    let long = format!("PUT k {}", "v".repeat(2000));
    assert_eq!(c.call(&long).unwrap(), "ERR line too long");
    // Pipelined: PUTs are group-committed, replies stay in order, a GET sees the PUT before it.
    let mut lines = Vec::new();
    for i in 0..40 {
        lines.push(format!("PUT p{} {i}", i % 3));
        lines.push(format!("GET p{}", i % 3));
    }
    let replies = c.pipeline(&lines).unwrap();
    for (i, pair) in replies.chunks(2).enumerate() {
        assert_eq!(pair, ["OK".to_string(), format!("VALUE {i}")]);
    }
    let mut c = Client::connect(server.addr).unwrap();
    let stat = c.call("STAT").unwrap();
    assert!(stat.starts_with("STAT keys=5 puts=43 gets=43 "), "{stat}");
    drop(c);
    server.kill();

    let server = start(&disk);
    let listening = server.lines.last().unwrap();
    assert_eq!(
        (field(listening, "keys"), field(listening, "replayed")),
        (5, 43)
    );
    let mut c = Client::connect(server.addr).unwrap();
    assert_eq!(c.call("GET a").unwrap(), "VALUE 2");
    assert_eq!(c.call("GET p0").unwrap(), "VALUE 39");
    assert_eq!(c.call("SET 3 z").unwrap(), "OK 3", "slot versions continue");
    assert_eq!(c.call("PUT b 3").unwrap(), "OK");
}

/// Replays the disk file with the kvlog decoder: (records, table).
fn decode(path: &std::path::Path) -> (u64, BTreeMap<String, String>, LogEnd) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() % SECTOR_SIZE, 0);
    let layout = DiskLayout::new((bytes.len() / SECTOR_SIZE) as u64).unwrap();
    let mut mem = MemDisk { bytes };
    let mut table = BTreeMap::new();
    let outcome = replay(&mut mem, layout.log_sectors, |r| {
        table.insert(
            String::from_utf8(r.key.to_vec()).unwrap(),
            String::from_utf8(r.value.to_vec()).unwrap(),
        );
    })
    .unwrap();
    (outcome.records, table, outcome.end)
}

/// Clients PUT unique keys until the server dies; returns the acknowledged ones.
fn load(
    addr: std::net::SocketAddr,
    round: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, String)>>> {
    (0..6)
        .map(|t| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let Ok(mut c) = Client::connect(addr) else {
                    return acked;
                };
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (k, v) = (format!("r{round}-c{t}-{i}"), format!("v{}", i * 7 + t));
                    match c.call(&format!("PUT {k} {v}")) {
                        Ok(r) if r == "OK" => acked.push((k, v)),
                        // A full log refuses the PUT (not acknowledged,
                        // nothing to survive): this client's load ends. A
                        // fast machine filled 8 MiB in the second round.
                        Ok(r) if r == "ERR log full" => break,
                        Ok(r) => panic!("PUT {k}: {r}"),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect()
}

#[test]
fn every_acknowledged_put_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::disk(dir.path(), 65536);
    let acked_all: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let mut records_before = 0;
    for round in 0..3 {
        let server = start(&disk);
        let listening = server.lines.last().unwrap().clone();
        let (records, table, end) = decode(&disk);
        assert_eq!(end, LogEnd::Clean, "round {round}: log end");
        assert_eq!(field(&listening, "replayed"), records, "round {round}");
        assert!(records >= records_before);
        let acked = acked_all.lock().unwrap().clone();
        for (k, v) in &acked {
            assert_eq!(
                table.get(k),
                Some(v),
                "round {round}: acknowledged {k} not in the log"
            );
        }
        // Every acknowledged PUT is served after the restart.
        let mut c = Client::connect(server.addr).unwrap();
        for (k, v) in acked.iter().step_by(7) {
            assert_eq!(c.call(&format!("GET {k}")).unwrap(), format!("VALUE {v}"));
        }
        assert_eq!(field(&c.call("STAT").unwrap(), "keys"), table.len() as u64);
        drop(c);

        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(server.addr, round, Arc::clone(&stop));
        // Kill mid-load, once some PUTs were acknowledged.
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let mut n = 0;
        for h in clients {
            let got = h.join().unwrap();
            n += got.len();
            acked_all.lock().unwrap().extend(got);
        }
        assert!(
            n > 0,
            "round {round}: no PUT acknowledged in {:?}",
            t0.elapsed()
        );
        records_before = records;
    }
    let (records, table, end) = decode(&disk);
    assert_eq!(end, LogEnd::Clean);
    assert!(records as usize >= acked_all.lock().unwrap().len());
    for (k, v) in acked_all.lock().unwrap().iter() {
        assert_eq!(table.get(k), Some(v), "acknowledged {k} lost");
    }
}

/// tmpfs refused O_DIRECT before Linux 6.6 and accepts it since: either way the service must
/// say which it uses and work.
#[test]
fn runs_on_tmpfs_with_or_without_o_direct() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let disk = common::disk(dir.path(), 1024);
    let server = start(&disk);
    let refused = server.lines.iter().any(|l| l.contains("refuses O_DIRECT"));
    let direct = field(
        &server.lines[usize::from(refused)]
            .replace("=true", "=1")
            .replace("=false", "=0"),
        "direct",
    );
    assert_eq!(direct == 0, refused, "{:?}", server.lines);
    let mut c = Client::connect(server.addr).unwrap();
    assert_eq!(c.call("PUT a 1").unwrap(), "OK");
    assert_eq!(c.call("GET a").unwrap(), "VALUE 1");
}
