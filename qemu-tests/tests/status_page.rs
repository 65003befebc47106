//! The status page (`ftctl page`) in a real browser through a failover.
//!
//! Proves: against a booted pair (host-a Primary, host-b Secondary of VM
//! `kv`, a config with the development operator key), `ftctl page` run on
//! an "operator machine" (a network namespace on the FT hub) polls the
//! cluster with the operator key and serves a page that draws `kv` as
//! PRIMARY in host-a's box and SECONDARY in host-b's, protected, with lag
//! and log bandwidth figures from a KV client's traffic; it refuses a POST.
//! Then host-a's QEMU is killed: the page, still polling host-b, shows
//! host-a UNREACHABLE, `kv` PRIMARY in host-b's box in generation 2, not
//! protected with its reason, and the failover event with its pause. Each
//! state is also captured by headless Chromium (`chromium --headless
//! --screenshot`), under `<target>/status-page/`. Before and after the
//! failover, `ftctl status --cluster` and the page's `/metrics?host=ADDR`
//! (a host's OpenMetrics text, fetched with the operator key) say who is
//! Primary, whether `kv` is protected and its generation; a host not given
//! to the page is refused, a dead one is a 502.
//!
//! In `make test` (`image/prereqs.sh` installs Chromium); it FAILS with a
//! hint when Chromium, the ISO, QEMU or root is missing.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait, wait_paired, Client, VM};
use qemu_tests::ftctl;
use qemu_tests::paths::{find_in_path, workspace_root};
use qemu_tests::{Cluster, NetnsTap};

/// Where `ftctl page` listens, inside the operator's namespace.
const LISTEN: &str = "127.0.0.1:8080";
/// The operator machine's address on the FT network.
const OPERATOR_CIDR: &str = "192.0.2.200/24";
const STEP: Duration = Duration::from_secs(120);

/// The marker of a run whose pair changed before the test's fault: the
/// example's timing (1 s failure timeout, lease renewal every 500 ms) on
/// TCG hosts, beside this test's headless Chromium, can break the pair on
/// its own — the Primary handing its VM over when its own lease renewal
/// lagged ("storage lost (fencing holds output); handed the VM over": stop
/// 48, 2 of 3 runs with a core kept busy), or dropping its Secondary after
/// 1 s of silence ("secondary lost: host-b silent on the logging channel",
/// 1 of 3 unloaded). The product was right; the test's precondition (host-a
/// Primary with host-b Secondary until host-a is killed) was gone, so it
/// runs once more with a fresh cluster, and says so.
const PAIR_CHANGED: &str = "PAIR CHANGED BEFORE THE FAULT (the test bed's load)";

#[test]
fn status_page_shows_primary_secondary_and_a_failover() {
    qemu_tests::testbed::retry_once_on("status-page", &[PAIR_CHANGED], status_page_once);
}

fn status_page_once() {
    let chromium = find_in_path("chromium").unwrap_or_else(|| {
        panic!("chromium not found in PATH: `apt-get install chromium` (Debian) to run this test")
    });
    let ftctl = ftctl::binary();
    // The target directory: `<target>/<profile>/ftctl`.
    let target = ftctl.ancestors().nth(2).unwrap().to_path_buf();
    let shots = target.join("status-page");
    std::fs::create_dir_all(&shots).unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let source = ftctl::with_operator(config_dir.path());
    let mut cluster = Cluster::new("status-page", &source).unwrap();
    for h in ["host-a", "host-b"] {
        cluster.boot(h).unwrap();
    }
    let mut cluster = wait_paired(cluster);
    let client = Client::start(&cluster, "status page");
    let op = NetnsTap::attach(
        &cluster.ft,
        "operator",
        &format!("ftp-{}-op", std::process::id()),
        OPERATOR_CIDR,
        None,
    )
    .unwrap();
    let key = workspace_root().join("examples/dev-keys/operators/dev-operator.pk8");
    // host-b first: it survives the failover; host-a as the fallback.
    let page = Page::start(
        &op,
        &ftctl,
        (&key, &source.config),
        &["192.0.2.2", "192.0.2.1"],
    );
    client.wait_replies(40, STEP);

    // Paired: the VM on both hosts, with figures.
    let html = until(&op, "the paired cluster", |h| {
        h.contains("kv · PRIMARY")
            && h.contains("kv · SECONDARY")
            && h.contains("log bandwidth")
            && !h.contains("<td>n/a</td><td>none recorded</td>")
    });
    in_box(&html, "host-a", "kv · PRIMARY");
    in_box(&html, "host-b", "kv · SECONDARY");
    assert!(html.contains("protected: secondary host-b"), "{html}");
    let json = get(&op, "GET", "/status.json");
    assert!(json.starts_with("HTTP/1.0 200") || json.starts_with("HTTP/1.1 200"));
    let post = get(&op, "POST", "/");
    assert!(post.contains(" 405 "), "POST not refused: {post}");
    screenshot(&op, &chromium, &shots.join("1-paired.png"));
    let status = |host: &str| status_cluster(&op, &ftctl, (&key, &source.config), host);
    let before = status("192.0.2.2");
    let a = cluster.host("host-a").unwrap();
    if a.console().count("handed the VM over") > 0 || a.console().count("secondary lost") > 0 {
        panic!("{PAIR_CHANGED}: host-a's pair changed before the kill:\n{before}");
    }
    assert!(
        before.contains("    primary: host-a  secondary: host-b  generation: 1\n"),
        "{before}"
    );
    let m = get(&op, "GET", "/metrics?host=192.0.2.1");
    for want in [
        " 200 ",
        "application/openmetrics-text",
        "ft_vm_primary_here{host=\"host-a\",vm=\"kv\"} 1\n",
        "ft_vm_protected{host=\"host-a\",vm=\"kv\"} 1\n",
        "ft_vm_generation{host=\"host-a\",vm=\"kv\"} 1\n",
    ] {
        assert!(m.contains(want), "host-a's metrics lack {want:?}:\n{m}");
    }
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    let m = get(&op, "GET", "/metrics?host=192.0.2.2");
    assert!(
        m.contains("ft_vm_primary_here{host=\"host-b\",vm=\"kv\"} 0\n"),
        "host-b's metrics:\n{m}"
    );
    let m = get(&op, "GET", "/metrics?host=192.0.2.3");
    assert!(
        m.contains(" 404 ") && m.contains("192.0.2.3 is not one of this page's hosts"),
        "{m}"
    );

    // Kill the Primary's QEMU.
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let t_kill = Instant::now();
    a.kill().unwrap();
    let html = until(&op, "host-a unreachable", |h| {
        box_of(h, "host-a").contains("UNREACHABLE")
    });
    eprintln!(
        "page shows host-a UNREACHABLE {:.1} s after the kill; tiles: {:?}",
        t_kill.elapsed().as_secs_f64(),
        tiles(&html)
    );
    screenshot(&op, &chromium, &shots.join("2-host-a-down.png"));
    wait(
        b,
        format!("ftvmm: vm {VM}: won generation 2; live as primary"),
    );
    let html = until(&op, "host-b Primary after a failover", |h| {
        box_of(h, "host-b").contains("kv · PRIMARY") && h.contains("failover vm kv")
    });
    eprintln!(
        "page shows host-b Primary {:.1} s after the kill",
        t_kill.elapsed().as_secs_f64()
    );
    in_box(&html, "host-b", "kv · PRIMARY");
    in_box(&html, "host-a", "UNREACHABLE");
    assert!(
        !html.contains("kv · SECONDARY"),
        "a Secondary is still drawn:\n{html}"
    );
    let row = html
        .split("<tr>")
        .find(|r| r.starts_with("<td>kv</td>"))
        .expect("kv's row");
    assert!(row.contains("class=\"bad\">"), "kv shown protected: {row}");
    // Primary host-b, no Secondary, a generation past the first (ftvmm's
    // own count: a recheck after the go-live may have taken more than one).
    let cells: Vec<&str> = row
        .split("<td")
        .filter_map(|c| c.split_once('>').and_then(|(_, c)| c.strip_suffix("</td>")))
        .collect();
    assert_eq!(
        cells.get(4..6),
        Some(&["host-b", "none"][..]),
        "kv's row: {row}"
    );
    let generation: u64 = cells[6].parse().unwrap_or(0);
    assert!(generation >= 2, "kv's row: {row}");
    assert!(
        row.contains("ago on host-b, pause "),
        "no failover in kv's row: {row}"
    );
    client.goes_on(40, STEP);
    screenshot(&op, &chromium, &shots.join("3-after-failover.png"));
    let after = status("192.0.2.2");
    assert!(
        after.contains("    primary: host-b  secondary: "),
        "{after}"
    );
    assert!(!after.contains("primary: host-a"), "{after}");
    let m = get(&op, "GET", "/metrics?host=192.0.2.2");
    for want in [
        "ft_vm_primary_here{host=\"host-b\",vm=\"kv\"} 1\n",
        "ft_vm_protected{host=\"host-b\",vm=\"kv\"} 0\n",
    ] {
        assert!(m.contains(want), "host-b's metrics lack {want:?}:\n{m}");
    }
    let g = (m.lines())
        .find_map(|l| l.strip_prefix("ft_vm_generation{host=\"host-b\",vm=\"kv\"} "))
        .and_then(|g| g.trim().parse::<u64>().ok());
    assert!(g >= Some(2), "kv's generation on host-b: {g:?}\n{m}");
    let m = get(&op, "GET", "/metrics?host=192.0.2.1");
    assert!(
        m.contains(" 502 ") && m.contains("no metrics from 192.0.2.1: "),
        "{m}"
    );
    let done = client.finish();
    eprintln!(
        "client: {} acknowledged PUTs all readable after the failover; screenshots in {}",
        done.acked.len(),
        shots.display()
    );
    drop(page);
    drop(op);
    cluster.pass();
}

/// `ftctl page` in the operator's namespace; killed on drop.
struct Page(Child);

impl Page {
    /// `key` signs the queries; the hosts' keys in `config` check the replies.
    fn start(op: &NetnsTap, ftctl: &Path, (key, config): (&Path, &Path), hosts: &[&str]) -> Page {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", op.netns()])
            .arg(ftctl)
            .arg("page");
        for h in hosts {
            cmd.args(["--host", h]);
        }
        cmd.arg("--key").arg(key).arg("--config").arg(config);
        cmd.args(["--listen", LISTEN]);
        // `ip netns exec` execs the program: the child is ftctl itself.
        let child = cmd.stdin(Stdio::null()).spawn().expect("start ftctl page");
        Page(child)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ftctl status --cluster --host HOST` from the operator's namespace: its
/// output (the test fails with it when the command does).
fn status_cluster(
    op: &NetnsTap,
    ftctl: &Path,
    (key, config): (&Path, &Path),
    host: &str,
) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", op.netns()])
        .arg(ftctl)
        .args(["status", "--cluster", "--host", host])
        .arg("--key")
        .arg(key)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run ftctl status --cluster");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ftctl status --cluster --host {host}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// One HTTP/1.0 request to the page from inside the namespace: the whole
/// answer (status line, headers, body), or the connection error.
fn get(op: &NetnsTap, method: &str, path: &str) -> String {
    let addr: SocketAddr = LISTEN.parse().unwrap();
    let mut s = match op.tcp_connect(addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return format!("no connection: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {LISTEN}\r\nContent-Length: 0\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return format!("write failed: {e}");
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Polls the page until `ok`; fails showing the last page.
fn until(op: &NetnsTap, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let page = get(op, "GET", "/");
        if ok(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what} within {STEP:?}; last answer:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `host`'s box and its tiles: from its title to the next host's box
/// (empty if the page has none).
fn box_of<'a>(html: &'a str, host: &str) -> &'a str {
    let Some(start) = html.find(&format!("font-size=\"16\" font-weight=\"bold\">{host}")) else {
        return "";
    };
    let rest = &html[start..];
    let end = rest.find("<g class=\"host\">").unwrap_or(rest.len());
    &rest[..end]
}

/// `what` is drawn inside `host`'s box.
fn in_box(html: &str, host: &str, what: &str) {
    let b = box_of(html, host);
    assert!(
        b.contains(what),
        "{what:?} not in {host}'s box:\n{b}\npage:\n{html}"
    );
}

/// The VM tiles' headlines, for the log.
fn tiles(html: &str) -> Vec<String> {
    html.split("<tspan font-weight=\"bold\">")
        .skip(1)
        .filter_map(|t| t.split("</tspan>").next())
        .filter(|t| t.contains(" · "))
        .map(str::to_owned)
        .collect()
}

/// A 1200x800 screenshot of the page with headless Chromium in the namespace.
fn screenshot(op: &NetnsTap, chromium: &Path, file: &Path) {
    let _ = std::fs::remove_file(file);
    let out = Command::new("timeout")
        .args(["90", "ip", "netns", "exec", op.netns()])
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,800",
        ])
        .arg(format!("--screenshot={}", file.display()))
        .arg(format!("http://{LISTEN}/"))
        .output()
        .expect("run chromium");
    assert!(
        file.exists(),
        "chromium wrote no screenshot {} (exit {}): {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("screenshot: {}", file.display());
}
