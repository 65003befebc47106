//! Running the built `ftctl` in the CLI tests (`cli.rs`, `image_cli.rs`,
//! `signed_cli.rs`): a command that must succeed gives its stdout, one that
//! must fail its single stderr line (every refusal is one line).

// Each test crate uses a part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

pub const FTCTL: &str = env!("CARGO_BIN_EXE_ftctl");

pub fn ftctl(args: &[&str]) -> Output {
    Command::new(FTCTL).args(args).output().expect("ftctl runs")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let o = ftctl(args);
    assert!(
        o.status.success(),
        "ftctl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs a command that must fail; returns its single stderr line.
pub fn fails(args: &[&str]) -> String {
    let o = ftctl(args);
    assert!(!o.status.success(), "ftctl {args:?} succeeded");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    err.trim_end().to_string()
}
