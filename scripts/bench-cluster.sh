#!/usr/bin/env bash
# Runs `loadgen chat` against N signalling nodes on one PostgreSQL
# database, one NATS server and one S3 (s3s-fs), all on this machine, and
# prints each process's CPU seconds (docs/benchmarks.md, "A cluster").
#
#   scripts/bench-cluster.sh NODES REPORT_DIR [loadgen chat arguments …]
#   scripts/bench-cluster.sh 3 /tmp/lg-pg3 --users 10000 --ramp 1000 --duration 15 --message-rate 200
#
# Needs release builds (cargo build --release -p confer-signalling -p
# confer-loadgen), a PostgreSQL whose base URL is in PG (default
# postgres://postgres@127.0.0.1:5432; a role that may create databases),
# NATS_SERVER (a nats-server binary, default: nats-server on PATH) and
# S3S_FS (default: target/tools/bin/s3s-fs, which scripts/test.sh builds).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
nodes=${1:?nodes}
report=${2:?report directory}
shift 2
pg=${PG:-postgres://postgres@127.0.0.1:5432}
nats_server=${NATS_SERVER:-nats-server}
s3s=${S3S_FS:-$root/target/tools/bin/s3s-fs}
bin=$root/target/release
work=$(mktemp -d /tmp/confer-bench-cluster.XXXXXX)
db=confer_bench_$(date +%s)

psql -q "$pg/postgres" -c "CREATE DATABASE $db"
mkdir -p "$work/s3/confer-files"
"$nats_server" -a 127.0.0.1 -p 14222 > "$work/nats.log" 2>&1 &
nats=$!
"$s3s" --host 127.0.0.1 --port 19000 --access-key bench --secret-key bench-secret-0123456789 \
  "$work/s3" > /dev/null 2>&1 &
s3=$!
pids=()
targets=()
cleanup() {
  kill "${pids[@]}" "$nats" "$s3" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT
sleep 0.5
for i in $(seq 0 $((nodes - 1))); do
  port=$((18080 + i))
  mkdir -p "$work/node-$i"
  CONFER_LIMITS__WS_CONNECTS_PER_IP__COUNT=0 CONFER_HTTP__CONNECTIONS_PER_IP=0 \
  CONFER_STORE__URL="$pg/$db" CONFER_BUS__URL=nats://127.0.0.1:14222 \
  CONFER_FILES__S3__ENDPOINT=http://127.0.0.1:19000 CONFER_FILES__S3__BUCKET=confer-files \
  CONFER_FILES__S3__REGION=us-east-1 CONFER_FILES__S3__ACCESS_KEY=bench \
  CONFER_FILES__S3__SECRET_KEY=bench-secret-0123456789 CONFER_FILES__S3__PATH_STYLE=true \
    "$bin/signalling" serve --data-dir "$work/node-$i" --listen "127.0.0.1:$port" \
    > "$work/node-$i.log" 2>&1 &
  pids+=($!)
  targets+=("http://127.0.0.1:$port")
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.2; done
done
target=$(IFS=,; echo "${targets[*]}")
"$bin/loadgen" chat --target "$target" --outbox "$work/node-0/outbox" \
  --server-pid "${pids[0]}" --report "$report" "$@"
# CPU seconds of each process over the run (utime + stime).
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
for i in "${!pids[@]}"; do echo "node $i: $(cpu "${pids[$i]}") s CPU"; done
echo "nats-server: $(cpu "$nats") s CPU"
echo "node logs: $work"
