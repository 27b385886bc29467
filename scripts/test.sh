#!/usr/bin/env bash
# Runs every test in the workspace: unit tests, openraft's storage conformance suite, and
# the cluster tests that start real registry-server processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Build the binaries and examples first: the tests in tests/ start the server, regctl and
# the client examples as processes.
cargo build --workspace --bins --examples
cargo nextest run --workspace --no-fail-fast "$@"
