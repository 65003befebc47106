//! The initramfs tree and its deterministic cpio "newc" encoding.
//!
//! Everything that could make two builds differ is fixed here: entries are
//! written in component-wise sorted order (so a directory always precedes its
//! contents), every entry gets the same mtime, owners are 0:0, inode numbers
//! are assigned 1, 2, 3… in that order, link counts are computed from the tree,
//! and permission bits are whatever the caller put in the [`Node`] (never read
//! from the host). Missing parent directories are created with mode 0755.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use cpio::newc::{self, ModeFileType};

/// Mode given to directories that are created implicitly as parents.
pub const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Read from this host path when the archive is written.
    Path(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A character device (`c`).
    Char,
    /// A block device (`b`).
    Block,
}

/// One entry of the archive. Modes are permission bits only (`0o7777` mask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir { mode: u32 },
    /// A regular file.
    File { mode: u32, source: FileSource },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A device node.
    Device {
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Errors while building or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path}: added twice with different contents")]
    Duplicate { path: String },
    #[error("{path}: a parent of this entry is not a directory")]
    ParentNotDir { path: String },
    #[error("{path}: mode {mode:#o} has bits outside 0o7777")]
    BadMode { path: String, mode: u32 },
    #[error("{path}: {size} bytes is too large for a newc entry (4 GiB limit)")]
    TooLarge { path: String, size: u64 },
    #[error("{path}: source changed while it was being archived ({expected} bytes expected, {got} read)")]
    SourceChanged {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A sorted initramfs tree. Keys are path components relative to `/`.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    nodes: BTreeMap<Vec<String>, Node>,
}

fn split_path(path: &str) -> Result<Vec<String>, ArchiveError> {
    let invalid = |reason| ArchiveError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let parts: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    if parts.is_empty() {
        return Err(invalid("names the root itself"));
    }
    if parts.iter().any(|c| c == "." || c == "..") {
        return Err(invalid("contains '.' or '..'"));
    }
    Ok(parts)
}

fn node_mode(node: &Node) -> Option<u32> {
    match node {
        Node::Dir { mode } | Node::File { mode, .. } | Node::Device { mode, .. } => Some(*mode),
        Node::Symlink { .. } => None,
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (including implicit parent directories).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Entry paths in archive order, without a leading slash.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.nodes.keys().map(|k| k.join("/"))
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        split_path(path).ok().and_then(|k| self.nodes.get(&k))
    }

    /// Adds `node` at `path` (absolute or relative to `/`), creating missing
    /// parent directories. Adding a directory where one exists updates its
    /// mode; adding an identical node again is a no-op; anything else that
    /// collides is an error.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), ArchiveError> {
        let key = split_path(path)?;
        if let Some(mode) = node_mode(&node) {
            if mode & !0o7777 != 0 {
                return Err(ArchiveError::BadMode {
                    path: path.to_string(),
                    mode,
                });
            }
        }
        for depth in 1..key.len() {
            let parent = key[..depth].to_vec();
            match self.nodes.get(&parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(ArchiveError::ParentNotDir {
                        path: path.to_string(),
                    })
                }
                None => {
                    self.nodes.insert(
                        parent,
                        Node::Dir {
                            mode: IMPLICIT_DIR_MODE,
                        },
                    );
                }
            }
        }
        match (self.nodes.get(&key), &node) {
            (None, _) | (Some(Node::Dir { .. }), Node::Dir { .. }) => {
                self.nodes.insert(key, node);
                Ok(())
            }
            (Some(existing), new) if existing == new => Ok(()),
            (Some(_), _) => Err(ArchiveError::Duplicate {
                path: path.to_string(),
            }),
        }
    }

    /// Number of directories directly below `key`.
    fn subdir_count(&self, key: &[String]) -> u32 {
        let mut count = 0;
        for (k, n) in self.nodes.range(key.to_vec()..) {
            if !k.starts_with(key) {
                break;
            }
            if k.len() == key.len() + 1 && matches!(n, Node::Dir { .. }) {
                count += 1;
            }
        }
        count
    }

    /// Writes the archive as cpio newc (uncompressed) followed by the
    /// `TRAILER!!!` entry. Every entry gets `mtime` and owner 0:0.
    pub fn write_newc<W: Write>(&self, mtime: u32, mut w: W) -> Result<W, ArchiveError> {
        for (index, (key, node)) in self.nodes.iter().enumerate() {
            let name = key.join("/");
            let io_err = |source| ArchiveError::Io {
                path: name.clone(),
                source,
            };
            let ino = u32::try_from(index + 1).map_err(|_| ArchiveError::TooLarge {
                path: name.clone(),
                size: index as u64,
            })?;
            let base = newc::Builder::new(&name)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(mtime)
                .dev_major(0)
                .dev_minor(0);
            w = match node {
                Node::Dir { mode } => {
                    let b = base
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2 + self.subdir_count(key));
                    b.write(w, 0).finish().map_err(io_err)?
                }
                Node::Symlink { target } => {
                    let b = base
                        .mode(0o777)
                        .set_mode_file_type(ModeFileType::Symlink)
                        .nlink(1);
                    write_bytes(b, w, target.as_bytes(), &name)?
                }
                Node::Device {
                    kind,
                    mode,
                    major,
                    minor,
                } => {
                    let ft = match kind {
                        DeviceKind::Char => ModeFileType::Char,
                        DeviceKind::Block => ModeFileType::Block,
                    };
                    let b = base
                        .mode(*mode)
                        .set_mode_file_type(ft)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor);
                    b.write(w, 0).finish().map_err(io_err)?
                }
                Node::File { mode, source } => {
                    let b = base
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Regular)
                        .nlink(1);
                    match source {
                        FileSource::Bytes(bytes) => write_bytes(b, w, bytes, &name)?,
                        FileSource::Path(p) => write_file(b, w, p, &name)?,
                    }
                }
            };
        }
        newc::trailer(w).map_err(|source| ArchiveError::Io {
            path: "TRAILER!!!".into(),
            source,
        })
    }
}

fn entry_size(len: u64, name: &str) -> Result<u32, ArchiveError> {
    u32::try_from(len).map_err(|_| ArchiveError::TooLarge {
        path: name.to_string(),
        size: len,
    })
}

fn write_bytes<W: Write>(
    b: newc::Builder,
    w: W,
    bytes: &[u8],
    name: &str,
) -> Result<W, ArchiveError> {
    let size = entry_size(bytes.len() as u64, name)?;
    let io_err = |source| ArchiveError::Io {
        path: name.to_string(),
        source,
    };
    let mut writer = b.write(w, size);
    writer.write_all(bytes).map_err(io_err)?;
    writer.finish().map_err(io_err)
}

fn write_file<W: Write>(
    b: newc::Builder,
    w: W,
    src: &std::path::Path,
    name: &str,
) -> Result<W, ArchiveError> {
    let io_err = |source| ArchiveError::Io {
        path: format!("{name} (from {})", src.display()),
        source,
    };
    let mut file = File::open(src).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let size = entry_size(len, name)?;
    let mut writer = b.write(w, size);
    // `take(len + 1)` notices a file that grew; a short copy notices one that shrank.
    let copied = io::copy(&mut (&mut file).take(len + 1), &mut writer);
    let got = match copied {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => len + 1,
        Err(e) => return Err(io_err(e)),
    };
    if got != len {
        return Err(ArchiveError::SourceChanged {
            path: src.display().to_string(),
            expected: len,
            got,
        });
    }
    writer.finish().map_err(io_err)
}
