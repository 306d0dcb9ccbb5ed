#!/usr/bin/env bash
# Runs Confer's fuzz targets (proptest properties on stable Rust, see
# "Fuzzing" in docs/reliability.md) for many more cases than the normal
# test run gives them, with fresh random seeds each round.
#
#   scripts/fuzz.sh [CASES] [MINUTES]
#
# CASES    cases per target per round (default 10000); the targets whose
#          every case sets up a connected media session or a sequence of
#          WebSocket frames get a tenth of it.
# MINUTES  go on with new rounds until this many minutes have passed
#          (default 0: one round).
#
# A failure prints the input, shrunk to a minimal one; the SFU's targets
# also record its seed under sfu/src/**/proptest-regressions/ so that the
# next run tries it first. Make it a named regression test, then fix it.
set -euo pipefail

cd "$(dirname "$0")/.."

cases=${1:-10000}
minutes=${2:-0}
case "$cases$minutes" in *[!0-9]*) echo "usage: $0 [CASES] [MINUTES]" >&2; exit 2 ;; esac
heavy=$((cases / 10 > 0 ? cases / 10 : 1))

run() {
  local n=$1
  shift
  printf '\n==> %s cases: cargo test %s\n' "$n" "$*"
  PROPTEST_CASES=$n cargo test -q "$@"
}

round() {
  # SFU: VP8 payload descriptors, datagrams without participants, STUN
  # usernames, arbitrary SDP text.
  run "$cases" -p confer-sfu --lib -- \
    core::vp8::tests::any_payload engine::tests::a_datagram_to engine::tests::any_datagram \
    engine::tests::reading_the_ufrag engine::tests::any_text_as_an_offer
  # SFU: mutated real offers; datagrams from connected participants.
  run "$heavy" -p confer-sfu --lib -- \
    engine::tests::a_mutated_offer engine::tests::datagrams_from_connected
  # Signalling: REST requests and user tokens.
  run "$cases" -p confer-signalling --test fuzz_rest -- no_request token_verification
  # Signalling: sequences of WebSocket frames to one session.
  run "$heavy" -p confer-signalling --test fuzz_frames -- --nocapture
}

deadline=$(($(date +%s) + minutes * 60))
n=1
while :; do
  printf '\n==> round %s\n' "$n"
  round
  [ "$(date +%s)" -lt "$deadline" ] || break
  n=$((n + 1))
done
printf '\n==> %s round(s) of fuzzing passed\n' "$n"
