#!/usr/bin/env bash
# Confer's SFU and a Janus VideoRoom under the same media load, one after
# the other, on this machine.
#
#   scripts/bench-vs-janus.sh [loadgen media options…]
#
# Both servers run in a network namespace of their own (Janus ignores
# loopback interfaces when it gathers ICE candidates), reached over a veth
# pair: host side 10.77.0.1, namespace side 10.77.0.2. loadgen runs on the
# host side.
#
# Per core: the server runs on one core (SERVER_CPU, default 0; Confer's
# SFU with one worker), loadgen on the others (LOADGEN_CPUS, default 1),
# both with taskset, so that the figure is the server's own ceiling, not
# the machine's. loadgen's subscribers only count packets by their clear
# RTP header (--counting) but one per room, which checks content, layers
# and latency.
#
# Default load: a ramp of rooms with 2 publishers and 8 subscribers each
# (Opus + three-layer VP8 simulcast), 8 s per step, until loss passes
# 0.5 % or p99 latency 50 ms. Options given replace that scenario (the
# same for both runs).
# SYSTEMS="confer" (or "janus") runs one of them only.
# Reports: target/bench/confer/ and target/bench/janus/ (report.json,
# report.md, latency.svg, capacity.svg).
#
# Needs root (ip netns), Debian's janus package (installed when missing)
# and a release build (made when missing).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
ns=confer-bench
host_ip=10.77.0.1
ns_ip=10.77.0.2
out="$root/target/bench"
mkdir -p "$out"

say() { printf '\n==> %s\n' "$*"; }

if ! command -v janus >/dev/null; then
  say "installing janus"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null
fi

say "release build"
cargo build --release --quiet -p confer-sfu -p confer-loadgen

say "network namespace $ns"
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip link del vb-host 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add "$ns"
ip link add vb-host type veth peer name vb-ns
ip link set vb-ns netns "$ns"
ip addr add "$host_ip/24" dev vb-host
ip link set vb-host up
ip netns exec "$ns" ip addr add "$ns_ip/24" dev vb-ns
ip netns exec "$ns" ip link set vb-ns up
ip netns exec "$ns" ip link set lo up

wait_http() {
  for _ in $(seq 1 100); do
    curl -sf "$1" >/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

if [ $# -eq 0 ]; then
  set -- --rooms 2 --publishers 2 --subscribers 8 --counting --full-subscribers 1 \
    --ramp --step-secs 8 --warmup 3
fi
load=(--bind "$host_ip" --quiet "$@")
server_cpu=${SERVER_CPU:-0}
loadgen_cpus=${LOADGEN_CPUS:-1}

systems=${SYSTEMS:-confer janus}

if [[ " $systems " == *" confer "* ]]; then
say "Confer sfu (core $server_cpu; loadgen on $loadgen_cpus)"
ip netns exec "$ns" env CONFER_SFU_UDP_BIND="$ns_ip:0" CONFER_SFU_WORKERS=1 \
  CONFER_SFU_PIN_WORKERS=false taskset -c "$server_cpu" \
  "$root/target/release/sfu" --listen "$ns_ip:8090" >"$out/sfu.log" 2>&1 &
server_pid=$!
wait_http "http://$ns_ip:8090/healthz"
taskset -c "$loadgen_cpus" "$root/target/release/loadgen" media --sfu "http://$ns_ip:8090" \
  --server-pid "$server_pid" --report "$out/confer" "${load[@]}"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
fi

if [[ " $systems " == *" janus "* ]]; then
say "Janus $(janus --version 2>/dev/null | head -1)"
cfg="$out/janus-config"
mkdir -p "$cfg"
cat >"$cfg/janus.jcfg" <<EOF
general: {
  configs_folder = "$cfg"
  plugins_folder = "/usr/lib/x86_64-linux-gnu/janus/plugins"
  transports_folder = "/usr/lib/x86_64-linux-gnu/janus/transports"
  events_folder = "/usr/lib/x86_64-linux-gnu/janus/events"
  loggers_folder = "/usr/lib/x86_64-linux-gnu/janus/loggers"
  debug_level = 3
}
media: {
  rtp_port_range = "20000-40000"
}
nat: {
  ice_ignore_list = "vmnet"
}
plugins: {
  disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}
transports: {
  disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}
events: {
  broadcast = false
}
EOF
cat >"$cfg/janus.transport.http.jcfg" <<EOF
general: {
  json = "compact"
  base_path = "/janus"
  http = true
  port = 8088
  ip = "$ns_ip"
  https = false
}
admin: {
  admin_base_path = "/admin"
  admin_http = false
}
EOF
cat >"$cfg/janus.plugin.videoroom.jcfg" <<EOF
general: {
}
EOF
ip netns exec "$ns" taskset -c "$server_cpu" janus -F "$cfg" -C "$cfg/janus.jcfg" \
  >"$out/janus.log" 2>&1 &
server_pid=$!
wait_http "http://$ns_ip:8088/janus/info"
taskset -c "$loadgen_cpus" "$root/target/release/loadgen" media --janus "http://$ns_ip:8088/janus" \
  --server-pid "$server_pid" --report "$out/janus" "${load[@]}"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
fi

say "side by side (report.json of each)"
python3 - "$out" $systems <<'EOF'
import json, sys
out = sys.argv[1]
rows = []
for name in sys.argv[2:]:
    r = json.load(open(f"{out}/{name}/report.json"))
    cap = r.get("capacity") or {}
    rows.append((name, cap.get("rooms", r["rooms"]),
                 cap.get("forwarded_per_sec", r["forwarded_per_sec"]),
                 cap.get("stopped_by", "fixed load"),
                 r["latency_ms"]["p99"], r["corrupt"]))
print("| system | rooms at capacity | forwarded packets/s | stopped by | p99 ms (all steps) | corrupt |")
print("|---|---|---|---|---|---|")
for n, rooms, fps, why, p99, bad in rows:
    print(f"| {n} | {rooms} | {fps:.0f} | {why} | {p99:.2f} | {bad} |")
EOF
