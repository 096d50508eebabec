#!/usr/bin/env bash
# Quick start 1: build a node image (if needed) and boot it as a local lab
# node; prints the console URL, the agent endpoint and the admin password.
# Extra arguments go to `debvisor-qa lab up` (e.g. --detach, --rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."
qa/setup-host.sh
cargo build --release --locked --workspace
exec target/release/debvisor-qa lab up "$@"
