#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build this workspace:
# clang and libclang-dev (RocksDB's sys crate runs bindgen and compiles C++), make (the
# jemalloc sys crate builds jemalloc with its configure script and make), and
# cargo-nextest (the test runner); plus curl, jq and flock (util-linux), which the shell
# examples in examples/ and their test use; faketime (libfaketime), which
# tests/tests/clock_skew.rs runs one server under to shift its wall clock; chromium,
# the headless browser tests/tests/dashboard.rs drives the web dashboard (/ui) in;
# dig (dnsutils), which tests/tests/dns.rs queries the DNS interface with; prometheus and
# victoria-metrics, the scrapers tests/tests/prometheus.rs and tests/tests/consul.rs point
# at the discovery endpoints; and a Python virtual environment in .venv with PyPI's
# py-consul, the Consul client tests/tests/consul_client.rs registers with. Safe to run
# again: it only installs what is missing.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dig >/dev/null 2>&1 || missing+=(dnsutils)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "install-deps: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The Consul client the Consul-compatibility test uses, pinned, in the repository's own
# virtual environment (ignored by git).
VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$VENV/bin/python" -c "import consul" >/dev/null 2>&1; then
  echo "install-deps: installing py-consul in $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check py-consul==1.8.0
fi
