//! The server side of the control protocol ([`crate::ctl`]), shared by every
//! daemon: bind the socket (replacing a stale file), then answer one request per
//! connection, one thread per connection, with the daemon's own handler.

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::ctl::{self, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
}

/// Binds `path`, replacing a stale socket file left by an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Listen {
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

/// The handler of a daemon that only reports status: `Status` gets `status()`,
/// every other request an error naming the daemon.
pub fn status_only(
    daemon: &str,
    req: Request,
    status: impl FnOnce() -> serde_json::Value,
) -> Response {
    match req {
        Request::Status => Response::Status { status: status() },
        other => Response::Error {
            message: format!("{daemon} does not handle {other:?}"),
        },
    }
}

/// Serves connections forever, one thread each; `handle` answers each request.
pub fn serve<F>(listener: UnixListener, handle: F)
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let handle = Arc::clone(&handle);
                std::thread::spawn(move || serve_one(stream, &*handle));
            }
            Err(e) => tracing::warn!("control accept failed: {e}"),
        }
    }
}

fn serve_one(stream: UnixStream, handle: &dyn Fn(Request) -> Response) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let resp = match ctl::read_message::<Request, _>(&mut BufReader::new(&stream), "client") {
        Ok(req) => handle(req),
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
    use std::io::{BufRead, Write};

    fn start(path: &Path) {
        let l = bind(path).unwrap();
        std::thread::spawn(move || {
            serve(l, |req| {
                status_only("testd", req, || serde_json::json!({"daemon": "testd"}))
            })
        });
    }

    #[test]
    fn status_over_a_real_socket_and_errors_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        std::fs::write(&path, b"stale").unwrap();
        start(&path);
        match ctl::query(&path, &Request::Status).unwrap() {
            Response::Status { status } => assert_eq!(status["daemon"], "testd"),
            other => panic!("unexpected {other:?}"),
        }
        let r = ctl::query(&path, &Request::StartVm { name: "kv".into() }).unwrap();
        assert!(
            matches!(r, Response::Error { message } if message.contains("testd does not handle"))
        );
    }

    #[test]
    fn garbage_gets_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        start(&path);
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert!(matches!(r, Response::Error { message } if message.starts_with("bad request")));
    }
}
