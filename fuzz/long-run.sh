#!/usr/bin/env bash
# Long local run of one target (fuzz/README.md): libFuzzer's fork mode with one worker, which
# keeps going after a crash, OOM or timeout (each saved under fuzz/findings/<target>/), at the
# lowest CPU priority, rayon on one thread. Needs `cargo +nightly fuzz build -s none` first.
#
#   fuzz/long-run.sh TARGET SECONDS [extra libFuzzer flags]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
t=$1 secs=$2
shift 2
# A copy of the binary, so that a rebuild during the run does not swap it under fork mode.
mkdir -p target/long-run
bin=target/long-run/$t
cp "target/x86_64-unknown-linux-gnu/release/$t" "$bin"
mkdir -p "corpus/$t" "findings/$t" logs
dict=()
[[ -f dicts/$t.dict ]] && dict=(-dict="dicts/$t.dict")
log=logs/$t-$(date +%Y%m%d-%H%M%S).log
echo "fuzz/$log"
RUST_BACKTRACE=1 RAYON_NUM_THREADS=1 exec /usr/bin/time -f "cpu: user %U s, sys %S s, wall %e s" \
  nice -n 19 "$bin" "corpus/$t" \
  -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
  -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 -max_len=1048576 \
  -max_total_time="$secs" -artifact_prefix="findings/$t/" -print_final_stats=1 \
  "${dict[@]}" "$@" >"$log" 2>&1
