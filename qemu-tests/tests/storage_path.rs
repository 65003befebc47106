//! Storage paths without an appliance: one `qemu-nbd` on a temp image, two
//! paths A and B, and `qemu-io` as the NBD client of each. Writes through A
//! are read back through B while A passes, is delayed, is cut and restored.
//! Needs `qemu-nbd` and `qemu-io` (package qemu-utils).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use qemu_tests::paths::find_in_path;
use qemu_tests::storage::{qemu_nbd_binary, NbdStorage, NBD_EXPORT};
use qemu_tests::{PathStats, StoragePath};

/// Upper bound for things that happen at once (a qemu-io run, a counter
/// moving); only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a cut client is watched for a completion that must not come.
const SILENCE: Duration = Duration::from_secs(1);

struct Setup {
    image: PathBuf,
    a: StoragePath,
    b: StoragePath,
    _nbd: NbdStorage,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    qemu_nbd_binary().unwrap();
    qemu_io_binary();
    let dir = tempfile::Builder::new()
        .prefix("ft-nbd-")
        .tempdir()
        .unwrap();
    let image = dir.path().join("shared.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let nbd = NbdStorage::start(&image, &dir.path().join("nbd.sock")).unwrap();
    let a = nbd.path("a", &dir.path().join("a.sock")).unwrap();
    let b = nbd.path("b", &dir.path().join("b.sock")).unwrap();
    Setup {
        image,
        a,
        b,
        _nbd: nbd,
        _dir: dir,
    }
}

fn qemu_io_binary() -> PathBuf {
    find_in_path("qemu-io").unwrap_or_else(|| {
        panic!("qemu-io not found in PATH: install it (`apt-get install qemu-utils`)")
    })
}

fn image_opts(socket: &Path, extra: &str) -> String {
    format!(
        "driver=nbd,server.type=unix,server.path={},export={NBD_EXPORT}{extra}",
        socket.display()
    )
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs qemu-io commands on a fresh connection through `path`; returns
/// (success, stdout + stderr).
fn qemu_io(path: &StoragePath, commands: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(qemu_io_binary());
    cmd.arg("--image-opts").arg(image_opts(path.socket(), ""));
    for c in commands {
        cmd.args(["-c", c]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > PATIENCE {
            kill(&mut child);
            panic!("qemu-io {commands:?} through {} hung", path.name());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// True if `len` bytes at `offset` all read back as `byte` through `path`.
fn holds(path: &StoragePath, byte: u8, offset: u64, len: u64) -> bool {
    let (ok, out) = qemu_io(path, &[&format!("read -P {byte:#x} {offset} {len}")]);
    assert!(
        ok || out.contains("Pattern verification failed"),
        "qemu-io read: {out}"
    );
    ok
}

/// True if the image file itself holds `byte` at `offset`.
fn file_holds(image: &Path, byte: u8, offset: u64) -> bool {
    std::fs::read(image).unwrap()[offset as usize] == byte
}

fn wait_stats(path: &StoragePath, what: &str, cond: impl Fn(&PathStats) -> bool) -> PathStats {
    let start = Instant::now();
    loop {
        let s = path.stats();
        if cond(&s) {
            return s;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "path {}: {what} never happened: {s:?}",
            path.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An interactive qemu-io holding one NBD connection through a path.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Client {
    /// Connects through `path` and completes one read, so the NBD
    /// connection is established before the test changes the path.
    fn open(path: &StoragePath, extra_opts: &str) -> Client {
        let mut child = Command::new(qemu_io_binary())
            .arg("--image-opts")
            .arg(image_opts(path.socket(), extra_opts))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            lines,
        };
        c.send("read 0 512");
        c.expect("read 512/512", PATIENCE)
            .unwrap_or_else(|| panic!("qemu-io through {} did not open", path.name()));
        c
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The first output line containing `text` within `within`, if any.
    fn expect(&self, text: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(text) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[test]
fn pass_forwards_writes_to_shared_storage() {
    let s = setup();
    let (ok, out) = qemu_io(&s.a, &["write -P 0xab 0 4k"]);
    assert!(ok && out.contains("wrote 4096/4096"), "{out}");
    assert!(holds(&s.b, 0xab, 0, 4096), "A's write not visible via B");
    assert!(file_holds(&s.image, 0xab, 0));
    // (The forwarding threads count a chunk just after passing it on.)
    let a = wait_stats(&s.a, "bytes counted", |a| {
        a.to_storage > 4096 && a.to_host > 0
    });
    assert_eq!((a.discarded, a.delayed_chunks, a.connections), (0, 0, 1));
    // The watch of real NBD traffic (qemu-io through qemu-nbd) saw exactly
    // the write, where it landed; B only read.
    let (ok, out) = qemu_io(&s.a, &["write -P 0xac 1M 8k", "write -P 0xad 2M 512"]);
    assert!(ok, "{out}");
    let w: Vec<(u64, u64)> =
        s.a.landed_writes()
            .unwrap()
            .iter()
            .map(|w| (w.offset, w.len))
            .collect();
    assert_eq!(w, vec![(0, 4096), (1 << 20, 8192), (2 << 20, 512)]);
    assert!(s.b.landed_writes().unwrap().is_empty());
}

#[test]
fn delayed_writes_still_land() {
    let s = setup();
    s.a.delay(Duration::from_millis(300));
    let (ok, out) = qemu_io(&s.a, &["write -P 0x5a 64k 4k"]);
    assert!(ok && out.contains("wrote 4096/4096"), "{out}");
    let a = s.a.stats();
    eprintln!("delayed path A: {a:?}");
    assert!(a.delayed_chunks > 0, "{a:?}");
    assert!(holds(&s.b, 0x5a, 64 << 10, 4096), "delayed write lost");
    s.a.pass();
    assert!(holds(&s.a, 0x5a, 64 << 10, 4096));
}

#[test]
fn held_writes_are_invisible_until_due_and_dropped_by_a_cut() {
    let s = setup();
    let mut c = Client::open(&s.a, "");
    // Held an hour: it cannot land during the test.
    s.a.delay(Duration::from_secs(3600));
    let before = s.a.stats();
    c.send("write -P 0x77 128k 4k");
    wait_stats(&s.a, "write held", |st| {
        st.delayed_chunks > before.delayed_chunks
    });
    assert!(!holds(&s.b, 0x77, 128 << 10, 4096), "held write landed");
    s.a.cut();
    let st = wait_stats(&s.a, "held write dropped", |st| st.discarded >= 4096);
    eprintln!("after the cut: {st:?}");
    // Handshake and one read request only: the held write never went out.
    assert!(st.to_storage < 4096, "{st:?}");
    assert!(c.expect("wrote", SILENCE).is_none(), "held write completed");
    drop(c);
    s.a.restore();
    assert!(!holds(&s.b, 0x77, 128 << 10, 4096), "dropped write landed");
    assert!(!file_holds(&s.image, 0x77, 128 << 10));
}

#[test]
fn cut_path_hangs_and_its_writes_never_land() {
    let s = setup();
    let mut c = Client::open(&s.a, "");
    s.a.cut();
    c.send("write -P 0xcd 0 4k");
    let st = wait_stats(&s.a, "write discarded", |st| st.discarded >= 4096);
    eprintln!("cut path A: {st:?}");
    assert!(
        c.expect("wrote", SILENCE).is_none(),
        "write on a cut path completed"
    );
    // The other host's path is unaffected.
    let (ok, out) = qemu_io(&s.b, &["write -P 0x11 1M 4k"]);
    assert!(ok, "{out}");
    assert!(!holds(&s.b, 0xcd, 0, 4096));
    // A connection opened during the cut gets nothing, not even a handshake.
    let mut late = Command::new(qemu_io_binary())
        .arg("--image-opts")
        .arg(image_opts(s.a.socket(), ""))
        .args(["-c", "write -P 0xce 0 4k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_stats(&s.a, "second connection", |st| st.connections == 2);
    std::thread::sleep(SILENCE);
    assert!(
        late.try_wait().unwrap().is_none(),
        "qemu-io on a cut path ended"
    );
    kill(&mut late);
    drop(c);
    s.a.restore();
    for byte in [0xcd, 0xce] {
        assert!(!holds(&s.b, byte, 0, 4096), "cut write {byte:#x} landed");
        assert!(!file_holds(&s.image, byte, 0));
    }
    let (ok, out) = qemu_io(&s.a, &["write -P 0xef 8k 4k"]);
    assert!(ok, "path A after restore: {out}");
    assert!(holds(&s.b, 0xef, 8 << 10, 4096));
}

/// What a host sees: QEMU's NBD client with a reconnect delay hangs on a
/// cut path and, after the restore, reconnects and re-sends the request,
/// which then lands (late).
#[test]
fn restore_lets_a_reconnecting_client_finish_its_hung_write() {
    let s = setup();
    let mut c = Client::open(&s.a, ",reconnect-delay=30");
    s.a.cut();
    c.send("write -P 0x99 2M 4k");
    wait_stats(&s.a, "write discarded", |st| st.discarded >= 4096);
    assert!(
        c.expect("wrote", SILENCE).is_none(),
        "write on a cut path completed"
    );
    assert!(!holds(&s.b, 0x99, 2 << 20, 4096));
    s.a.restore();
    let line = c.expect("wrote", PATIENCE);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("wrote 4096/4096")),
        "hung write did not complete after restore: {line:?}, {:?}",
        s.a.stats()
    );
    assert!(holds(&s.b, 0x99, 2 << 20, 4096));
    assert_eq!(s.a.stats().connections, 2, "{:?}", s.a.stats());
}
