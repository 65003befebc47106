//! Who is on the other end of a control socket: the peer's credentials
//! (`SO_PEERCRED`) and which of the appliance's programs it is (its executable,
//! `/proc/<pid>/exe`).
//!
//! Rules:
//! - Credentials come from the kernel (`SO_PEERCRED`: the pid, uid and gid of
//!   the process that called `connect`), never from the request.
//! - A program is identified by its executable's path, compared with a table
//!   ([`Programs`]): on the appliance `/init`, `/bin/ftvmm`, `/bin/heartbeat`,
//!   `/bin/fencing` (the initramfs, which nothing can write after boot). Tests
//!   map a program to their own executable.
//!
//! What this does not give: protection from a root process that wants in. A
//! root peer can ptrace or replace any daemon, and the pid of `SO_PEERCRED` is
//! the connecting process at `connect` time: if it exits and its pid is reused
//! before the executable is read, the new process's executable is seen (Linux
//! 6.5's `SO_PEERPIDFD` closes that; the appliance kernel is 6.1). The checks
//! keep every *other* local process — a daemon with a bug, a confused tool — to
//! the requests its role needs.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The peer of a connected Unix stream socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// The target of `/proc/<pid>/exe`, or why it could not be read.
    pub exe: Result<PathBuf, String>,
}

impl Peer {
    /// The credentials of `stream`'s peer and its executable.
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: the fd is a live socket owned by `stream` for the whole call;
        // `cred` is a writable ucred and `len` holds its size, as SO_PEERCRED wants.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            exe: std::fs::read_link(format!("/proc/{}/exe", cred.pid)).map_err(|e| e.to_string()),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exe {
            Ok(exe) => write!(f, "pid {} ({}, uid {})", self.pid, exe.display(), self.uid),
            Err(e) => write!(
                f,
                "pid {} (executable unknown: {e}, uid {})",
                self.pid, self.uid
            ),
        }
    }
}

/// The appliance's programs that talk on the control sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Program {
    Init,
    Ftvmm,
    Heartbeat,
    Fencing,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::Init,
        Program::Ftvmm,
        Program::Heartbeat,
        Program::Fencing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::Init => "init",
            Program::Ftvmm => "ftvmm",
            Program::Heartbeat => "heartbeat",
            Program::Fencing => "fencing",
        }
    }

    /// Where the image puts it (`image/build.sh`).
    pub fn appliance_exe(self) -> &'static str {
        match self {
            Program::Init => "/init",
            Program::Ftvmm => "/bin/ftvmm",
            Program::Heartbeat => "/bin/heartbeat",
            Program::Fencing => "/bin/fencing",
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which executable is which program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    exes: BTreeMap<Program, PathBuf>,
}

impl Programs {
    /// The image's paths (`/init`, `/bin/ftvmm`, ...).
    pub fn appliance() -> Programs {
        Programs {
            exes: Program::ALL
                .iter()
                .map(|p| (*p, PathBuf::from(p.appliance_exe())))
                .collect(),
        }
    }

    /// The same, with `program` being `exe` instead (tests: their own
    /// executable, or a daemon binary under `target/`). The path is made
    /// canonical when it exists, as `/proc/<pid>/exe` is.
    pub fn with(mut self, program: Program, exe: &Path) -> Programs {
        let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        self.exes.insert(program, exe);
        self
    }

    /// Applies `--peer-exe PROGRAM=PATH` overrides (the daemons' option for tests).
    pub fn with_overrides(mut self, overrides: &[String]) -> Result<Programs, String> {
        for o in overrides {
            let (name, path) = o
                .split_once('=')
                .ok_or_else(|| format!("--peer-exe {o:?}: want PROGRAM=PATH"))?;
            let program = Program::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| {
                    format!("--peer-exe {o:?}: unknown program {name:?} (init, ftvmm, heartbeat, fencing)")
                })?;
            self = self.with(program, Path::new(path));
        }
        Ok(self)
    }

    /// The program whose executable `exe` is, if any.
    pub fn identify(&self, exe: &Path) -> Option<Program> {
        self.exes
            .iter()
            .find(|(_, e)| e.as_path() == exe)
            .map(|(p, _)| *p)
    }

    /// The executable of `program`.
    pub fn exe(&self, program: Program) -> &Path {
        self.exes
            .get(&program)
            .map(PathBuf::as_path)
            .expect("every program has an executable: appliance() lists them all")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p.pid as u32, std::process::id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(p.uid, unsafe { libc::getuid() });
        let me = std::env::current_exe().unwrap();
        assert_eq!(p.exe.as_deref(), Ok(me.as_path()));
        let programs = Programs::appliance().with(Program::Ftvmm, &me);
        assert_eq!(programs.identify(&me), Some(Program::Ftvmm));
        assert_eq!(
            programs.identify(Path::new("/bin/fencing")),
            Some(Program::Fencing)
        );
        assert_eq!(programs.identify(Path::new("/bin/ftvmm")), None);
        assert!(
            p.to_string().starts_with(&format!("pid {} (/", p.pid)),
            "{p}"
        );
    }

    #[test]
    fn overrides_name_a_known_program() {
        let p = Programs::appliance()
            .with_overrides(&["fencing=/opt/fencing".into()])
            .unwrap();
        assert_eq!(p.exe(Program::Fencing), Path::new("/opt/fencing"));
        assert_eq!(p.exe(Program::Init), Path::new("/init"));
        assert!(Programs::appliance()
            .with_overrides(&["sshd=/usr/sbin/sshd".into()])
            .unwrap_err()
            .contains("unknown program \"sshd\""));
        assert!(Programs::appliance()
            .with_overrides(&["ftvmm".into()])
            .unwrap_err()
            .contains("want PROGRAM=PATH"));
    }
}
