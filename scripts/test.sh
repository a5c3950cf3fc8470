#!/usr/bin/env bash
# The whole test suite: install what is needed, check formatting and lints,
# build the eBPF object and the workspace, run unit and privileged tests.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash scripts/setup.sh
cargo fmt --all -- --check
(cd netfab-ebpf && cargo fmt -- --check)
cargo xtask build
cargo clippy --workspace --all-targets -q -- -D warnings
cargo xtask test "$@"
