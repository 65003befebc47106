//! The harness's error type. Console-related errors carry the host name, what
//! was awaited and the tail of the console, so a failing test explains itself.

use std::path::PathBuf;
use std::time::Duration;

/// Number of console lines quoted in an error.
pub const TAIL_LINES: usize = 60;

/// Errors of the harness. `Debug` prints the same text as `Display`, so a
/// test's `unwrap()` or `?` shows the console tail as readable lines.
#[derive(thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{program} not found in PATH: install it (`make prereqs`, or `apt-get install {package}`)"
    )]
    ToolMissing {
        program: &'static str,
        package: &'static str,
    },

    #[error("appliance ISO {} is missing: run `make image` first", path.display())]
    IsoMissing { path: PathBuf },

    #[error(
        "the nested test bed's QEMU {} is missing: run `make nested-qemu` \
         (qemu-tests/nested-qemu.lock says which QEMU and why)",
        path.display()
    )]
    NestedQemuMissing { path: PathBuf },

    #[error(
        "host {host}: timed out after {timeout:?} waiting for {pattern}\n\
         --- last console lines of {host} ---\n{tail}"
    )]
    Timeout {
        host: String,
        pattern: String,
        timeout: Duration,
        tail: String,
    },

    #[error(
        "host {host}: QEMU exited ({status}) while waiting for {pattern}\n\
         --- last console lines of {host} ---\n{tail}"
    )]
    Exited {
        host: String,
        pattern: String,
        status: String,
        tail: String,
    },

    #[error(
        "host {host}: console line matching {pattern} appeared although it must not: {line:?}\n\
         --- last console lines of {host} ---\n{tail}"
    )]
    Unexpected {
        host: String,
        pattern: String,
        line: String,
        tail: String,
    },

    #[error("invalid console pattern: {0}")]
    Regex(#[from] regex::Error),

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("config disk for host {host}: {reason}")]
    ConfigDisk { host: String, reason: String },

    #[error("storage path {path}: {reason}")]
    StorageWatch { path: String, reason: String },

    #[error("hub {hub}: no port named {port:?}")]
    UnknownPort { hub: String, port: String },

    #[error("hub {hub}: a port named {port:?} already exists")]
    DuplicatePort { hub: String, port: String },

    #[error("{0} needs root (network namespaces and TAP devices); run the tests as root")]
    NotRoot(&'static str),

    #[error("QMP on host {host}: {reason}")]
    Qmp { host: String, reason: String },
}

impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)?;
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl HarnessError {
    /// Wraps an I/O error with a short description of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
