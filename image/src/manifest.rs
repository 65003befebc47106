//! Inputs of an archive: a staging directory, a manifest file, or both.
//!
//! A staging directory is copied as a tree. Only the *kind* of each host file
//! is taken from the host: directories become mode 0755, regular files 0755
//! when any execute bit is set and 0644 otherwise, symlinks keep their target.
//! Host owners, times, umask-dependent bits and inode numbers never reach the
//! archive. Sockets, FIFOs and device files in a staging tree are refused
//! (declare device nodes in a manifest; that needs no root).
//!
//! The manifest is line based, in the spirit of the kernel's `gen_init_cpio`
//! (owners are always 0:0 so they are not written):
//!
//! ```text
//! # comment
//! dir   /proc 0555
//! file  /init ../build/init 0755         # source relative to the manifest
//! nod   /dev/console 0600 c 5 1
//! slink /sbin/init /init
//! tree  /lib/modules stage/modules         # a staging directory under /lib/modules
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::archive::{Archive, ArchiveError, DeviceKind, FileSource, Node};

/// Errors while reading inputs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type in a staging tree (only dirs, files, symlinks)")]
    Unsupported { path: String },
    #[error("{path}: symlink target is not UTF-8")]
    NonUtf8 { path: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Permission bits given to a regular file from a staging tree.
pub fn staged_file_mode(host_mode: u32) -> u32 {
    if host_mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Adds the contents of host directory `src` below archive path `dest`
/// (`"/"` for the root). `dest` itself is added as a directory unless it is `/`.
pub fn add_tree(archive: &mut Archive, dest: &str, src: &Path) -> Result<(), ManifestError> {
    use std::os::unix::fs::PermissionsExt;
    let dest = dest.trim_end_matches('/');
    if !dest.is_empty() {
        archive.insert(dest, Node::Dir { mode: 0o755 })?;
    }
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| ManifestError::NonUtf8 {
            path: path.display().to_string(),
        })?;
        let target = format!("{dest}/{name}");
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            add_tree(archive, &target, &path)?;
        } else if ft.is_file() {
            let mode = staged_file_mode(meta.permissions().mode());
            archive.insert(
                &target,
                Node::File {
                    mode,
                    source: FileSource::Path(path.clone()),
                },
            )?;
        } else if ft.is_symlink() {
            let link = fs::read_link(&path).map_err(io_err(&path))?;
            let link = link.to_str().ok_or_else(|| ManifestError::NonUtf8 {
                path: path.display().to_string(),
            })?;
            archive.insert(
                &target,
                Node::Symlink {
                    target: link.to_string(),
                },
            )?;
        } else {
            return Err(ManifestError::Unsupported {
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|_| format!("mode {s:?} is not octal"))
}

fn parse_num(s: &str, what: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not a decimal number"))
}

/// Adds every line of the manifest at `file` to `archive`.
pub fn add_manifest(archive: &mut Archive, file: &Path) -> Result<(), ManifestError> {
    let text = fs::read_to_string(file).map_err(io_err(file))?;
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    add_manifest_text(archive, &text, &base, &file.display().to_string())
}

/// Adds every line of manifest `text` to `archive`; relative sources are
/// resolved against `base`. `name` is used in error messages.
pub fn add_manifest_text(
    archive: &mut Archive,
    text: &str,
    base: &Path,
    name: &str,
) -> Result<(), ManifestError> {
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let syntax = |message: String| ManifestError::Syntax {
            file: name.to_string(),
            line: index + 1,
            message,
        };
        let resolve = |s: &str| -> PathBuf {
            let p = Path::new(s);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        match words.as_slice() {
            ["dir", path, mode] => {
                let mode = parse_mode(mode).map_err(syntax)?;
                archive.insert(path, Node::Dir { mode })?;
            }
            ["file", path, src, mode] => {
                let mode = parse_mode(mode).map_err(syntax)?;
                let src = resolve(src);
                if !src.is_file() {
                    return Err(syntax(format!("source {} is not a file", src.display())));
                }
                archive.insert(
                    path,
                    Node::File {
                        mode,
                        source: FileSource::Path(src),
                    },
                )?;
            }
            ["nod", path, mode, kind, major, minor] => {
                let mode = parse_mode(mode).map_err(syntax)?;
                let kind = match *kind {
                    "c" => DeviceKind::Char,
                    "b" => DeviceKind::Block,
                    other => return Err(syntax(format!("device kind {other:?} is not c or b"))),
                };
                let major = parse_num(major, "major").map_err(syntax)?;
                let minor = parse_num(minor, "minor").map_err(syntax)?;
                archive.insert(
                    path,
                    Node::Device {
                        kind,
                        mode,
                        major,
                        minor,
                    },
                )?;
            }
            ["slink", path, target] => {
                archive.insert(
                    path,
                    Node::Symlink {
                        target: (*target).to_string(),
                    },
                )?;
            }
            ["tree", path, src] => add_tree(archive, path, &resolve(src))?,
            _ => {
                return Err(syntax(format!(
                    "expected `dir P MODE`, `file P SRC MODE`, `nod P MODE c|b MAJ MIN`, \
                     `slink P TARGET` or `tree P SRC`, got {line:?}"
                )))
            }
        }
    }
    Ok(())
}
