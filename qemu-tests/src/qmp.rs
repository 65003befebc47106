//! A minimal QMP client: one connection per command (greeting, capabilities
//! negotiation, the command, its reply; asynchronous events are skipped),
//! and an event recorder on a second monitor ([`record_events`]) that says
//! afterwards why a host's QEMU ended (the watchdog, a reset request, a
//! power-off).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` with optional `arguments` on the QMP socket at `socket`.
/// Errors are plain text: the caller wraps them with the host name.
pub fn execute(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, String> {
    let stream =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let greeting = read_message(&mut reader)?;
    if greeting.get("QMP").is_none() {
        return Err(format!("unexpected greeting {greeting}"));
    }
    send(&mut writer, &json!({ "execute": "qmp_capabilities" }))?;
    reply(&mut reader)?;
    let mut msg = json!({ "execute": command });
    if let Some(args) = arguments {
        msg["arguments"] = args;
    }
    send(&mut writer, &msg)?;
    reply(&mut reader)
}

/// The file [`record_events`] writes: one line per event, `<seconds since
/// spawn> <event JSON>`.
pub const EVENTS_LOG: &str = "qmp-events.log";

/// Connects to the QMP monitor at `socket` (retrying while QEMU creates it,
/// up to 30 s), negotiates capabilities and appends every asynchronous event
/// to `log` with the seconds since `since`, until QEMU closes the
/// connection. Runs on its own thread; a failure is written into `log`
/// too, so an empty log means "connected and nothing happened".
pub fn record_events(socket: PathBuf, log: PathBuf, since: Instant) {
    let mut out = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("qmp: create {}: {e}", log.display());
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match UnixStream::connect(&socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                let _ = writeln!(out, "# not connected: {}: {e}", socket.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(out, "# not connected: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    let negotiated = read_message(&mut reader)
        .and_then(|_| send(&mut writer, &json!({ "execute": "qmp_capabilities" })))
        .and_then(|_| reply(&mut reader));
    if let Err(e) = negotiated {
        let _ = writeln!(out, "# not connected: {e}");
        return;
    }
    while let Ok(msg) = read_message(&mut reader) {
        if msg.get("event").is_some() {
            let at = since.elapsed().as_secs_f64();
            let _ = writeln!(out, "{at:.3} {msg}");
        }
    }
}

/// The first event named `name` in an [`EVENTS_LOG`]'s text: its time (s
/// since spawn) and its JSON.
pub fn find_event(log: &str, name: &str) -> Option<(f64, Value)> {
    log.lines().find_map(|l| {
        let (at, json) = l.split_once(' ')?;
        let v: Value = serde_json::from_str(json).ok()?;
        (v["event"] == name).then_some((at.parse().ok()?, v))
    })
}

fn send(w: &mut impl Write, msg: &Value) -> Result<(), String> {
    let mut line = msg.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())
        .map_err(|e| format!("send {msg}: {e}"))
}

fn read_message(r: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("QMP connection closed".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("bad QMP message {line:?}: {e}"))
}

/// Reads messages until a command reply, skipping events.
fn reply(r: &mut impl BufRead) -> Result<Value, String> {
    loop {
        let msg = read_message(r)?;
        if let Some(ret) = msg.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = msg.get("error") {
            return Err(format!("command failed: {err}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QMP server speaking the protocol's happy path plus one event.
    #[test]
    fn negotiates_and_skips_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut seen = Vec::new();
            for _ in 0..2 {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                seen.push(serde_json::from_str::<Value>(&l).unwrap());
                w.write_all(b"{\"event\": \"STOP\"}\n").unwrap();
                w.write_all(b"{\"return\": {\"status\": \"paused\"}}\n")
                    .unwrap();
            }
            seen
        });
        let ret = execute(&path, "query-status", None).unwrap();
        assert_eq!(ret["status"], "paused");
        let seen = server.join().unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[1]["execute"], "query-status");
    }
}
