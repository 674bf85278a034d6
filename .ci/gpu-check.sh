#!/usr/bin/env bash
# The CUDA path on a real GPU, in one go (issue 18, item 6). CI has no GPU: it only compiles this
# path (.ci/cuda-check.sh); run this script on a machine with an NVIDIA GPU.
#
#   .ci/gpu-check.sh            build, GPU tests, bench (prints a summary at the end)
#
# Steps:
#   1. the GPU: nvidia-smi's name, compute capability (≥ 8.0 required), driver and CUDA version;
#   2. a CUDA compiler for candle-kernels: an installed toolkit (nvcc on PATH, $CUDA_HOME or
#      /usr/local/cuda), else the PyPI nvidia-cuda-* wheels (needs PyPI; .ci/cuda-toolchain.sh);
#   3. `cargo build --release --features cuda` for the detected compute capability
#      (CUDA_COMPUTE_CAP), the binary and the integration-test binary;
#   4. the GPU tests (tests/it/gpu.rs): f32 parity with the official fixtures at the CPU's
#      tolerances, bf16/f16 decisions against f32, the NVRTC latent-estimation kernel bit for bit
#      against `latent_estimate_reference`, the demo run on the GPU against the CPU run;
#   5. `sdseg-volume bench --device cuda` on the full-size `sdseg-binary` (random weights) at
#      batch 1, 8, 32 in f32 and bf16: ms and slices per second, and the share of the bf16
#      tensor-core roofline (FLOPs per slice / the GPU's dense bf16 peak).
#
# Needs: the NVIDIA driver, Rust (cargo), python3, a C compiler; network for crates.io (or a
# filled ~/.cargo registry: `cargo fetch` beforehand) and, without an installed toolkit, PyPI.
# Budget: < 8 min on 16 cores with one GPU, the build included; the build is cached in
# GPU_CHECK_TARGET_DIR (default target/gpu-check), so a second run takes ~1 min.
#
# Env: GPU_CHECK_TARGET_DIR, CUDA_COMPUTE_CAP (default: detected), GPU_BF16_TFLOPS (the dense
# bf16 peak when the GPU is not in the table below), GPU_CHECK_BATCHES (default "1,8,32"),
# GPU_CHECK_SKIP_BENCH=1, CUDA_FROM_WHEELS=1 (ignore an installed toolkit).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${GPU_CHECK_TARGET_DIR:-$root/target/gpu-check}"
cuda_venv="${GPU_CHECK_VENV:-$root/target/cuda-check-venv}"
batches="${GPU_CHECK_BATCHES:-1,8,32}"
# shellcheck source=.ci/cuda-toolchain.sh
source "$root/.ci/cuda-toolchain.sh"

start=$(date +%s)
say() { echo "[gpu-check $(($(date +%s) - start))s] $*" >&2; }
die() { echo "gpu-check: $*" >&2; exit 1; }
summary=()

# --- 1. The GPU. ------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs an NVIDIA GPU and its driver (CI only compiles the CUDA path: .ci/cuda-check.sh)"
IFS=, read -r gpu_name gpu_cap gpu_driver gpu_mem < <(nvidia-smi -i 0 \
    --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader)
gpu_name="$(echo "$gpu_name" | xargs)"
gpu_cap="$(echo "$gpu_cap" | xargs)"
cuda_driver_version="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n 1)"
cap_digits="${gpu_cap/./}"
[[ $cap_digits =~ ^[0-9]+$ ]] || die "could not read the compute capability from nvidia-smi ('$gpu_cap')"
((cap_digits >= 80)) || die "$gpu_name has compute capability $gpu_cap; the CUDA path needs ≥ 8.0 (bf16 tensor cores)"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap_digits}"
say "GPU: $gpu_name, compute capability $gpu_cap, driver $(echo "$gpu_driver" | xargs) (CUDA ${cuda_driver_version:-?}),$gpu_mem"
summary+=("GPU: $gpu_name (cc $gpu_cap, CUDA ${cuda_driver_version:-?}, $(echo "$gpu_mem" | xargs))")

# --- 2. The compiler. -------------------------------------------------------------------------
cuda_toolchain_setup
say "CUDA compiler: $cuda_toolchain; $(nvcc --version | tail -n 2 | head -n 1)"
summary+=("compiler: $cuda_toolchain")

# --- 3. Build. --------------------------------------------------------------------------------
t0=$(date +%s)
say "cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $target)"
CARGO_TARGET_DIR="$target" cargo build --release --locked --features cuda --bin sdseg-volume
CARGO_TARGET_DIR="$target" cargo test --release --locked --features cuda --test it --no-run
bin="$target/release/sdseg-volume"
summary+=("build: $(($(date +%s) - t0)) s")

# --- 4. GPU tests. ----------------------------------------------------------------------------
t0=$(date +%s)
say "GPU tests (tests/it/gpu.rs)"
test_log="$target/gpu-tests.log"
if ! CARGO_TARGET_DIR="$target" cargo test --release --locked \
    --features cuda --test it gpu:: -- --test-threads=1 --nocapture 2>&1 | tee "$test_log"; then
    die "GPU tests failed (log: $test_log)"
fi
grep -q "test result: ok" "$test_log" || die "GPU tests did not report success (log: $test_log)"
summary+=("GPU tests: $(grep -o '[0-9]* passed' "$test_log" | tail -n 1), $(($(date +%s) - t0)) s")
while IFS= read -r line; do summary+=("  $line"); done < <(grep -E "on the GPU:|between CPU and GPU" "$test_log" || true)

# --- 5. Bench. --------------------------------------------------------------------------------
if [[ ${GPU_CHECK_SKIP_BENCH:-0} != 1 ]]; then
    # Dense bf16 tensor-core peaks (TFLOPS, without sparsity) from NVIDIA's data sheets.
    peak="${GPU_BF16_TFLOPS:-}"
    if [[ -z $peak ]]; then
        case "$gpu_name" in
            *H100*PCIe*) peak=756 ;;
            *H100*NVL*) peak=835 ;;
            *H100* | *H200* | *GH200*) peak=989 ;;
            *B200*) peak=2250 ;;
            *A100*) peak=312 ;;
            *L40S*) peak=362 ;;
            *L40*) peak=181 ;;
            *A10G* | *A10*) peak=125 ;;
            *L4*) peak=121 ;;
            *4090*) peak=165 ;;
            *) peak="" ;;
        esac
    fi
    bench_json="$target/gpu-bench.jsonl"
    : >"$bench_json"
    for dtype in f32 bf16; do
        say "bench --device cuda --dtype $dtype --batch-size $batches"
        "$bin" --quiet bench --device cuda --preset sdseg-binary --dtype "$dtype" \
            --batch-size "$batches" --iters 5 --warmup 2 --json >>"$bench_json"
    done
    while IFS= read -r line; do summary+=("$line"); done < <(python3 - "$bench_json" "$peak" <<'PY'
import json, sys
path, peak = sys.argv[1], sys.argv[2]
peak = float(peak) if peak else None
print("bench (full-size sdseg-binary, random weights):")
print(f"  {'dtype':<6} {'batch':>5} {'ms/slice':>9} {'slices/s':>9} {'GFLOP/slice':>11} {'roofline ms':>11} {'share':>7}")
for line in open(path):
    r = json.loads(line)
    if "ms_per_slice" not in r:
        continue
    ms = r["ms_per_slice"]["total"]
    gf = r["gflop_per_slice"]["total"]
    roof = gf / (peak * 1e3) * 1e3 if peak else None  # GFLOP / (TFLOPS·1e3 GFLOP/s) in ms
    share = f"{100 * roof / ms:6.1f}%" if roof else "     ?"
    roof_s = f"{roof:11.3f}" if roof else "          ?"
    print(f"  {r['dtype']:<6} {r['batch_size']:>5} {ms:9.2f} {r['slices_per_s']:9.1f} {gf:11.1f} {roof_s} {share}")
print(f"  roofline: dense bf16 peak {peak:g} TFLOPS" if peak else
      "  roofline: unknown GPU; set GPU_BF16_TFLOPS to the dense bf16 peak")
PY
)
fi

echo
echo "=== gpu-check summary ($(($(date +%s) - start)) s) ==="
printf '%s\n' "${summary[@]}"
