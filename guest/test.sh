#!/usr/bin/env bash
# Builds the reference guest for x86_64-unknown-none and runs its host-side tests
# (log format, KV parser, CPU workload) on the host target. Used by `make test`.
set -euo pipefail
cd "$(dirname "$0")"
# Into guest/target whatever CARGO_TARGET_DIR says: the VMM tests and the
# benchmark look for the ELF there.
cargo build --release --target x86_64-unknown-none --bin ftguest --target-dir target
cargo test --target x86_64-unknown-linux-gnu --workspace --exclude ftguest
cargo fmt --all -- --check
cargo clippy --release --target x86_64-unknown-none --bin ftguest -- -D warnings
cargo clippy --target x86_64-unknown-linux-gnu -p ftguest-kvlog -p ftguest-cpuwork --all-targets -- -D warnings
