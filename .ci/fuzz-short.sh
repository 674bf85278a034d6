#!/usr/bin/env bash
# Short coverage-guided fuzzing of the input readers (fuzz/README.md): build every cargo-fuzz
# target, seed the corpora (fuzz/seed.py), run each target for a short time, and fail if any
# target finds a crash (panic, abort, timeout, or an allocation over the limits). Each
# reproducer is printed with its base64, so the CI log alone is enough to replay it:
#
#   echo '<base64>' | base64 -d > crash && cargo test --test it fuzz_regressions  (after
#   copying it to testdata/fuzz-regressions/<target>/), or
#   cargo +nightly fuzz run -s none <target> crash
#
# Environment (all optional):
#   FUZZ_SECONDS=60        seconds per target (libFuzzer -max_total_time)
#   FUZZ_TARGETS="..."     targets to run (default: all five)
#   FUZZ_SANITIZER=none    cargo fuzz --sanitizer (none|address); none builds and runs about
#                          twice as fast, and libFuzzer's memory limits work without ASan
#   FUZZ_MAX_LEN=1048576   libFuzzer -max_len (the seeds are at most this long)
#
# Targets are built with -O: the release profile without overflow checks, as the shipped
# binary is (a third-party parser's wrapping arithmetic is not a crash there; our own
# overflow checks run in the dev-profile tests and the stable replay of the findings).
#   FUZZ_TARGET_DIR        cargo fuzz --target-dir (default fuzz/target)
#   SDSEG_PYTHON           interpreter for fuzz/seed.py (pydicom/nibabel test files when it
#                          has them); default python3
#   CARGO_FUZZ_VERSION     the cargo-fuzz installed when missing (default pinned below)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGETS=${FUZZ_TARGETS:-"nifti dicom_file dicom_series checkpoint pipeline_toml"}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-1048576}
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.2}
PYTHON=${SDSEG_PYTHON:-python3}
TARGET_DIR=()
[[ -n ${FUZZ_TARGET_DIR:-} ]] && TARGET_DIR=(--target-dir "$FUZZ_TARGET_DIR")
LIBFUZZER_LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20)
# A panic's backtrace in the log (without ASan, libFuzzer prints no stack of its own).
export RUST_BACKTRACE=1

t0=$SECONDS
stamp() { echo "[fuzz-short +$((SECONDS - t0))s] $*"; }

# cargo-fuzz needs nightly rustc flags (-Zsanitizer, sancov): a nightly toolchain when one is
# installed, else stable with RUSTC_BOOTSTRAP=1.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  CARGO=(cargo +nightly)
else
  CARGO=(cargo)
  export RUSTC_BOOTSTRAP=1
fi
stamp "toolchain: $("${CARGO[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}"

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  stamp "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
stamp "$(cargo fuzz --version)"

"$PYTHON" fuzz/seed.py --max-len "$FUZZ_MAX_LEN"

stamp "building targets (sanitizer $FUZZ_SANITIZER)"
"${CARGO[@]}" fuzz build -O -s "$FUZZ_SANITIZER" "${TARGET_DIR[@]}"
stamp "built"
BIN_DIR=${FUZZ_TARGET_DIR:-fuzz/target}/$(rustc -vV | sed -n 's/^host: //p')/release

failed=()
for t in $FUZZ_TARGETS; do
  artifacts=fuzz/artifacts/$t
  rm -rf "$artifacts"
  mkdir -p "$artifacts" "fuzz/corpus/$t"
  dict=()
  [[ -f fuzz/dicts/$t.dict ]] && dict=(-dict="fuzz/dicts/$t.dict")
  stamp "fuzzing $t for ${FUZZ_SECONDS}s"
  log=fuzz/artifacts/$t.log
  status=0
  # The binary `fuzz build` made, run directly: `cargo fuzz run` would check the build again.
  "$BIN_DIR/$t" "fuzz/corpus/$t" \
    -max_total_time="$FUZZ_SECONDS" -max_len="$FUZZ_MAX_LEN" "${LIBFUZZER_LIMITS[@]}" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || status=$?
  # The whole log but the (many) lines for each new corpus entry.
  grep -a -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE)' "$log" || true
  shopt -s nullglob
  found=("$artifacts"/*)
  shopt -u nullglob
  if [[ $status -ne 0 || ${#found[@]} -gt 0 ]]; then
    failed+=("$t")
    echo "::error::fuzz target $t failed (exit $status)"
    for f in "${found[@]}"; do
      echo "reproducer: $f ($(stat -c %s "$f") bytes); base64:"
      base64 -w 0 "$f"
      echo
    done
  fi
done

stamp "done"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz-short: crashes in: ${failed[*]} (reproducers above; see fuzz/README.md)" >&2
  exit 1
fi
echo "fuzz-short: no crash in ${FUZZ_SECONDS}s per target ($FUZZ_TARGETS)"
