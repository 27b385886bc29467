#!/usr/bin/env bash
# Runs every test in the workspace: unit tests, openraft's storage conformance suite, and
# the cluster tests that start real registry-server processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Build the server binary first: the cluster tests in tests/ start it as a process.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
