//! Programs taken from pinned Debian packages (`image/iscsi.lock`): which
//! files, where each goes in the image, and each `.deb` by name, version and
//! sha256. `image/build.sh` fetches and checks the `.deb`s, and
//! [`crate::elfdeps::closure`] finds the programs' libraries in them.
//!
//! ```text
//! program <path in the packages> <path in the image>     (one or more)
//! package <name> <version> <.deb sha256>                  (one or more)
//! ```

use std::collections::BTreeSet;

use crate::drivers::{is_sha256, ListError};

/// One pinned `.deb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPin {
    pub package: String,
    pub version: String,
    pub deb_sha256: String,
}

impl DebPin {
    /// The file name `apt-get download` gives the amd64 `.deb` (an epoch's
    /// `:` is written `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }
}

/// One `program` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramPin {
    /// Path of the program inside the packages (`sbin/iscsid`).
    pub program: String,
    /// Its path in the image (`/sbin/iscsid`).
    pub dest: String,
}

/// A parsed program lock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProgramLock {
    /// In file order; no two with the same path in the image.
    pub programs: Vec<ProgramPin>,
    pub packages: Vec<DebPin>,
}

impl ProgramLock {
    /// `(path in the packages, path in the image)` of every program, the
    /// form [`crate::elfdeps::closure`] takes.
    pub fn program_paths(&self) -> Vec<(&str, &str)> {
        self.programs
            .iter()
            .map(|p| (p.program.as_str(), p.dest.as_str()))
            .collect()
    }
}

/// Parses a program lock; `file` names it in errors.
pub fn parse_program_lock(text: &str, file: &'static str) -> Result<ProgramLock, ListError> {
    let mut lock = ProgramLock::default();
    let mut names = BTreeSet::new();
    let mut dests = BTreeSet::new();
    for (index, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |problem: &str| ListError::Line {
            file,
            line: index + 1,
            problem: problem.into(),
        };
        match l.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["program", path, dest] => {
                if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
                    return Err(bad(
                        "the program's path in the packages must be relative, without `..`",
                    ));
                }
                if !dest.starts_with('/')
                    || dest.split('/').skip(1).any(|c| c == ".." || c.is_empty())
                {
                    return Err(bad(
                        "the program's path in the image must be absolute, without `..`",
                    ));
                }
                if !dests.insert(dest.to_string()) {
                    return Err(bad("a second program for the same path in the image"));
                }
                lock.programs.push(ProgramPin {
                    program: path.to_string(),
                    dest: dest.to_string(),
                });
            }
            ["package", name, version, sha] if is_sha256(sha) => {
                if !names.insert(name.to_string()) {
                    return Err(bad("package listed twice"));
                }
                lock.packages.push(DebPin {
                    package: name.to_string(),
                    version: version.to_string(),
                    deb_sha256: sha.to_string(),
                });
            }
            _ => {
                return Err(bad(
                    "want `program <path in the packages> <path in the image>` \
                     or `package <name> <version> <sha256>`",
                ))
            }
        }
    }
    if lock.programs.is_empty() || lock.packages.is_empty() {
        return Err(ListError::File {
            file,
            problem: "want at least one program line and at least one package line".into(),
        });
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_odd_lines() {
        let sha = "0f".repeat(32);
        let text = format!(
            "# c\nprogram sbin/x /sbin/x\nprogram usr/sbin/y /sbin/y\n\
             package a 1:2.0-1~deb12u1 {sha}\npackage b 3 {sha}\n"
        );
        let l = parse_program_lock(&text, "t.lock").unwrap();
        assert_eq!(
            l.program_paths(),
            [("sbin/x", "/sbin/x"), ("usr/sbin/y", "/sbin/y")]
        );
        assert_eq!(l.packages.len(), 2);
        assert_eq!(
            l.packages[0].deb_file_name(),
            "a_1%3a2.0-1~deb12u1_amd64.deb"
        );
        for bad in [
            format!("package a 1 {sha}\n"),
            "program sbin/x /sbin/x\n".to_string(),
            format!("program /sbin/x /sbin/x\npackage a 1 {sha}\n"),
            format!("program sbin/x sbin/x\npackage a 1 {sha}\n"),
            format!("program sbin/x /sbin/../x\npackage a 1 {sha}\n"),
            format!("program sbin/x /sbin/x\npackage a 1 {sha}\npackage a 2 {sha}\n"),
            "program sbin/x /sbin/x\npackage a 1 NOTHEX\n".to_string(),
            format!("program sbin/x /sbin/x\nprogram sbin/y /sbin/x\npackage a 1 {sha}\n"),
        ] {
            assert!(parse_program_lock(&bad, "t.lock").is_err(), "{bad}");
        }
    }
}
