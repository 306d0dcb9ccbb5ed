#!/usr/bin/env bash
# A company all-hands through signalling on a media cluster of two SFU
# nodes cascaded over QUIC, on this machine: one call of 300 (3 speak,
# 297 watch) when no single node may carry more than 160 sessions, so
# the call spans both nodes and every speaker's tracks cross the relay.
#
#   scripts/bench-all-hands.sh REPORT_DIR [loadgen media options…]
#
# Runs one signalling node (embedded store), two `sfu` processes (one
# worker each, relay on 127.0.0.1:7701 and :7702) and loadgen, all on
# loopback. loadgen's watchers only count packets by their clear RTP
# header (--counting) except three, which check content, layers and
# latency. Default load: --rooms 1 --publishers 3 --subscribers 297
# --fps 15 --duration 20; options given replace it. Prints where the
# sessions went and what crossed the relays.
#
# Needs release builds (made when missing).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
report=${1:?usage: scripts/bench-all-hands.sh REPORT_DIR [loadgen media options…]}
shift
mkdir -p "$report"
bin="$root/target/release"
cargo build --release --quiet -p confer-signalling -p confer-sfu -p confer-loadgen

work=$(mktemp -d)
token=all-hands-node-token
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_http() {
  for _ in $(seq 1 100); do
    curl -sf "$1" >/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

nodes=""
for i in 1 2; do
  CONFER_SFU_WORKERS=1 CONFER_SFU_PIN_WORKERS=false \
  CONFER_SFU_RELAY__LISTEN="127.0.0.1:770$i" \
    "$bin/sfu" --listen "127.0.0.1:809$i" --token "$token" >"$work/sfu-$i.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:809$i/healthz"
  nodes="$nodes${nodes:+,}{url=\"http://127.0.0.1:809$i\",token=\"$token\",max_participants=160}"
done

mkdir -p "$work/signalling"
CONFER_SFU__NODES="[$nodes]" \
CONFER_CALLS__CONFERENCE_SERVER_BASED_MEMBER_LIMIT=400 \
CONFER_LIMITS__WS_CONNECTS_PER_IP__COUNT=0 CONFER_HTTP__CONNECTIONS_PER_IP=0 \
  "$bin/signalling" serve --data-dir "$work/signalling" --listen 127.0.0.1:18080 \
  >"$work/signalling.log" 2>&1 &
pids+=($!)
signalling=$!
wait_http http://127.0.0.1:18080/healthz

if [ $# -eq 0 ]; then
  set -- --rooms 1 --publishers 3 --subscribers 297 --fps 15 --duration 20 \
    --counting --full-subscribers 3 --warmup 5
fi
"$bin/loadgen" media --target http://127.0.0.1:18080 --outbox "$work/signalling/outbox" \
  --report "$report" --quiet "$@" &
loadgen=$!
# While the call runs: where its sessions are, from signalling's metrics.
sleep 25
curl -sf http://127.0.0.1:18080/metrics | grep -E '^sfu_node_(participants|packets_per_second|cpu_ratio)' \
  | tee "$report/nodes.txt" || true
wait "$loadgen"
# What each node forwarded to its own subscribers and what crossed.
for i in 1 2; do
  curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:809$i/metrics" |
    awk -v node="$i" '/^sfu_tx_packets_total/ { tx += $NF } /^sfu_relay_(sent|received|dropped)_total/ { print "sfu node " node ": " $0 }
      END { print "sfu node " node ": forwarded to its subscribers " tx }'
done | tee -a "$report/nodes.txt"
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
for i in 0 1; do echo "sfu node $((i + 1)): $(cpu "${pids[$i]}") s CPU"; done | tee -a "$report/nodes.txt"
echo "signalling: $(cpu "$signalling") s CPU" | tee -a "$report/nodes.txt"
grep -h "relay" "$work"/sfu-*.log | head -20 || true
echo "logs: $work"
