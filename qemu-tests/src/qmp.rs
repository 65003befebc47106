//! A minimal QMP client: one connection per command (greeting, capabilities
//! negotiation, the command, its reply; asynchronous events are skipped).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
