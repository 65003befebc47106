//! The reference guest under ftvmm inside a QEMU appliance host (nested KVM
//! in TCG): host-a boots from the example config, its ftvmm daemon starts VM
//! `kv` as Primary, and a test client on the VM network (a TAP in a network
//! namespace on the VM hub) talks to the guest's KV service:
//!
//! 1. one TCP connection: `KEYS` PUTs (default 1,000), then GETs of all of them;
//! 2. the VM is restarted (ftvmm stops it and boots it again from its image):
//!    the guest replays its disk log and a new connection GETs every key;
//! 3. save → restore (ftvmm saves the running VM to `/run/ftvmm`, tears it
//!    down and restores a fresh VM from the save in the same process): the
//!    connection opened in step 2 goes on working.
//!
//! Restart and save → restore are driven through the ftvmm daemon's test hook
//! (`ft.test=vmctl` on the kernel command line; commands typed on the serial
//! console, see `ftvmm/src/daemon.rs`), because the appliance has no shell.
//!
//! Needs `out/ftappliance.iso` (or `FT_ISO`), qemu-system-x86_64 and root (the
//! network namespace); FAILS with a clear message when one is missing.
//! `FT_VM_KEYS=N` changes the number of keys. Timings go to stderr.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use qemu_tests::{Cluster, Host, NetnsTap};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The guest boots under nested KVM inside TCG: slow, and slower when busy.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// One reply of the guest (a PUT waits for its disk write and flush).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests sent before their replies are read (one connection, pipelined).
const WINDOW: usize = 25;
const GUEST: &str = "198.51.100.10:7000";
const VM: &str = "kv";

/// One KV connection with line replies.
struct Kv {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Kv {
    fn connect(client: &NetnsTap) -> Kv {
        let addr: SocketAddr = GUEST.parse().expect("valid address");
        let stream = client
            .tcp_connect(addr, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("cannot connect to the guest at {GUEST}: {e}"));
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Kv {
            writer: stream,
            reader,
        }
    }

    /// Sends `requests` in windows of [`WINDOW`] and returns one reply per request.
    fn exchange(&mut self, requests: &[String]) -> Vec<String> {
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

    fn one(&mut self, request: &str) -> String {
        self.exchange(&[request.to_string()]).remove(0)
    }
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

fn value(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(i % 50))
}

fn put_all(kv: &mut Kv, keys: usize) {
    let puts: Vec<String> = (0..keys)
        .map(|i| format!("PUT {} {}", key(i), value(i)))
        .collect();
    for (i, r) in kv.exchange(&puts).iter().enumerate() {
        assert_eq!(r, "OK", "reply to PUT {}", key(i));
    }
}

fn get_all(kv: &mut Kv, keys: usize) {
    let gets: Vec<String> = (0..keys).map(|i| format!("GET {}", key(i))).collect();
    for (i, r) in kv.exchange(&gets).iter().enumerate() {
        assert_eq!(*r, format!("VALUE {}", value(i)), "reply to GET {}", key(i));
    }
}

fn wait_listening(host: &Host, keys: usize, what: &str) -> Instant {
    let line = host
        .wait_for_next(format!("[{VM}] kv: listening on {GUEST}"), GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest not listening {what}: {e}"));
    assert!(
        line.contains(&format!("keys={keys} ")),
        "guest should have {keys} keys {what}: {line}"
    );
    Instant::now()
}

fn timed<R>(label: &str, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    eprintln!("vm: {label}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

#[test]
fn kv_guest_survives_restart_and_save_restore() {
    let keys: usize = std::env::var("FT_VM_KEYS")
        .ok()
        .map(|k| k.parse().expect("FT_VM_KEYS is a number"))
        .unwrap_or(1000);
    let mut cluster = Cluster::example("vm-kv").unwrap();
    let mut spec = cluster.host_spec("host-a").unwrap();
    spec.boot = cluster.kernel_boot("ft.test=vmctl").unwrap();
    cluster.boot_spec(spec).unwrap();
    let host = cluster.host("host-a").unwrap();

    let ready = host
        .wait_for_line("appliance ready: host=host-a generation=1", BOOT_TIMEOUT)
        .unwrap();
    eprintln!("vm: boot-to-ready {:.1} s", ready.at.as_secs_f64());
    host.wait_for("ftvmm: /dev/kvm ok", Duration::ZERO)
        .unwrap_or_else(|e| panic!("no KVM inside the appliance: {e}"));
    host.wait_for(
        format!("ftvmm: vm {VM}: starting as primary on host-a"),
        Duration::from_secs(30),
    )
    .unwrap();
    host.wait_for(
        "ftvmm: test hook ft.test=vmctl: reading commands",
        Duration::from_secs(30),
    )
    .unwrap();
    let boot = host
        .wait_for_line(format!("[{VM}] guest: boot"), GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("the guest did not boot under nested KVM: {e}"));
    eprintln!("vm: guest first line at {:.1} s", boot.at.as_secs_f64());
    wait_listening(host, 0, "after the first boot");

    let client = cluster.vm_client("client", "198.51.100.200/24").unwrap();
    let mut kv = Kv::connect(&client);
    timed(&format!("{keys} PUTs on one connection"), || {
        put_all(&mut kv, keys)
    });
    timed(&format!("{keys} GETs on the same connection"), || {
        get_all(&mut kv, keys)
    });
    assert_eq!(kv.one("GET missing"), "NOTFOUND");

    // Restart: a fresh boot of the guest, state from its disk log only.
    let t = Instant::now();
    host.send_console(&format!("ftvmm-test restart {VM}\n"))
        .unwrap();
    host.wait_for_next(
        format!("ftvmm: test hook: restart {VM}: done"),
        Duration::from_secs(60),
    )
    .unwrap();
    let listening = wait_listening(host, keys, "after the restart");
    eprintln!(
        "vm: restart to listening: {:.1} s",
        (listening - t).as_secs_f64()
    );
    drop(kv);
    let mut kv = Kv::connect(&client);
    timed(&format!("{keys} GETs after the restart"), || {
        get_all(&mut kv, keys)
    });
    let stat = kv.one("STAT");
    assert!(
        stat.starts_with(&format!("STAT keys={keys} puts=0 gets={keys} ")),
        "a restarted guest counts from zero: {stat}"
    );

    // Save → restore on the same connection.
    let t = Instant::now();
    host.send_console(&format!("ftvmm-test snapshot-restore {VM}\n"))
        .unwrap();
    host.wait_for_next(
        format!("ftvmm: test hook: snapshot-restore {VM}: done"),
        Duration::from_secs(120),
    )
    .unwrap();
    eprintln!("vm: save → restore: {:.1} s", t.elapsed().as_secs_f64());
    let stat = kv.one("STAT");
    assert!(
        stat.starts_with(&format!("STAT keys={keys} puts=0 gets={keys} ")),
        "the restored guest keeps its counters: {stat}"
    );
    assert_eq!(kv.one("PUT after-restore yes"), "OK");
    assert_eq!(kv.one("GET after-restore"), "VALUE yes");
    timed(&format!("{keys} GETs after save → restore"), || {
        get_all(&mut kv, keys)
    });
    host.assert_absent(format!("ftvmm: VM {VM} failed"), Duration::ZERO)
        .unwrap();
    // The restored guest did not boot again.
    assert_eq!(
        host.console().count(format!("[{VM}] guest: boot").as_str()),
        2
    );
    drop(kv);
    drop(client);
    cluster.pass();
}
