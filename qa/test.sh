#!/usr/bin/env bash
# Quick start 2: the whole test suite. Installs what it needs, checks
# formatting and lints, runs the unit and integration tests, builds the node
# image and runs the system tests in QEMU. Ends with one summary line:
# "total: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
qa/setup-host.sh || exit 1

mkdir -p target/qa
log=target/qa/cargo-test.log
fail=0

echo "== cargo fmt --check"
cargo fmt --all --check || fail=1
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings || fail=1

echo "== unit and integration tests (cargo test --release)"
# --release shares its builds with the image's release binaries: every cargo
# build here and in debvisor-qa/debvisor-image is of the whole workspace, and
# no dev-dependency adds a feature, so cargo resolves the same features for
# the tests and the binaries and compiles each crate once.
cargo test --workspace --release --locked --no-fail-fast 2>&1 | tee "$log"
unit_rc=${PIPESTATUS[0]}
read -r unit_pass unit_fail < <(awk '/^test result:/ {p+=$4; f+=$6} END {print p+0, f+0}' "$log")
if [ "$unit_rc" != 0 ] && [ "$unit_fail" = 0 ]; then
  echo "cargo test failed before running every test (exit $unit_rc)"; unit_fail=1
fi

echo "== system tests (debvisor-qa test)"
cargo build --release --locked --workspace || fail=1
sys_log=target/qa/system-test.log
# Two VM tests at a time: a guest under TCG keeps about 1.5 of the 2 cores
# busy, so a second one uses what the first leaves idle (each runs about 1.6
# times slower, the suite about a quarter faster).
target/release/debvisor-qa test --jobs 2 "$@" 2>&1 | tee "$sys_log"
sys_rc=${PIPESTATUS[0]}
read -r sys_pass sys_fail < <(grep -E '^[0-9]+ passed, [0-9]+ failed' "$sys_log" | tail -n1 | awk '{print $1+0, $3+0}')
sys_pass=${sys_pass:-0}; sys_fail=${sys_fail:-0}
if [ "$sys_rc" != 0 ] && [ "$sys_fail" = 0 ]; then
  echo "system tests failed before running every test (exit $sys_rc)"; sys_fail=1
fi

echo
echo "unit/integration: $unit_pass passed, $unit_fail failed; system: $sys_pass passed, $sys_fail failed"
[ "$fail" = 0 ] || echo "formatting or lints failed (see above)"
total_fail=$((unit_fail + sys_fail + fail))
echo "total: $((unit_pass + sys_pass)) passed, $total_fail failed"
[ "$total_fail" = 0 ]
