//! The control socket: one JSON request line per connection, one JSON
//! response line back (`config_schema::ctl`). `Status` is answered with the
//! daemon's status object; every other request with `Response::Error`.

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use config_schema::ctl::{self, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// Answers one request given the current status object.
pub fn answer(req: Request, status: serde_json::Value, daemon: &str) -> Response {
    match req {
        Request::Status => Response::Status { status },
        other => Response::Error {
            message: format!("{daemon} does not handle {other:?}"),
        },
    }
}

/// Binds `path`, replacing a stale socket file left by an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Listen {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// Serves connections forever, one thread each.
pub fn serve<F>(listener: UnixListener, daemon: &'static str, status: F)
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let status = Arc::new(status);
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let status = Arc::clone(&status);
                std::thread::spawn(move || serve_one(stream, daemon, &*status));
            }
            Err(e) => tracing::warn!("control accept failed: {e}"),
        }
    }
}

fn serve_one(stream: UnixStream, daemon: &str, status: &dyn Fn() -> serde_json::Value) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let resp = match ctl::read_message::<Request, _>(&mut BufReader::new(&stream), "client") {
        Ok(req) => answer(req, status(), daemon),
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    if let Err(e) = ctl::write_message(&mut &stream, &resp) {
        tracing::warn!("control reply failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_over_a_real_socket_and_errors_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fe.sock");
        std::fs::write(&path, b"stale").unwrap();
        let l = bind(&path).unwrap();
        std::thread::spawn(move || {
            serve(l, "fencing", || serde_json::json!({"daemon": "fencing"}))
        });
        match ctl::query(&path, &Request::Status).unwrap() {
            Response::Status { status } => assert_eq!(status["daemon"], "fencing"),
            other => panic!("unexpected {other:?}"),
        }
        let r = ctl::query(&path, &Request::StartVm { name: "kv".into() }).unwrap();
        assert!(matches!(r, Response::Error { message } if message.contains("does not handle")));
    }

    #[test]
    fn garbage_gets_an_error_line() {
        use std::io::{BufRead, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fe.sock");
        let l = bind(&path).unwrap();
        std::thread::spawn(move || serve(l, "fencing", || serde_json::json!({})));
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert!(matches!(r, Response::Error { message } if message.starts_with("bad request")));
    }
}
