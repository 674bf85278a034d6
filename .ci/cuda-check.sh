#!/usr/bin/env bash
# Compile-check the CUDA path without a GPU (CI has none), so it cannot rot.
#
#   1. nvcc / NVRTC from the PyPI `nvidia-cuda-*` wheels into a venv (pinned to one CUDA minor:
#      an unpinned nvvm emits PTX newer than nvcc's ptxas accepts; see rust-deps.md §4).
#   2. kernels/cuda/latent_estimate.cu compiled to PTX by NVRTC exactly as kernels/src/latent.rs
#      does at run time (--gpu-architecture=compute_90 --fmad=false), then assembled by ptxas
#      for sm_90.
#   3. `cargo check --features cuda --workspace --all-targets` (the app's `cuda` feature turns on
#      sdseg-kernels/cuda; candle-kernels needs nvcc and CUDA_COMPUTE_CAP), in its own target
#      dir so the CPU build cache stays untouched.
#
# Env: CUDA_CHECK_VENV (default target/cuda-check-venv), CUDA_CHECK_TARGET_DIR (default
# target/cuda-check), CUDA_COMPUTE_CAP (default 90 = H100), PYTHON (default python3).
# Takes ~10 min on a 2-core machine, almost all of it candle-kernels' nvcc builds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${CUDA_CHECK_VENV:-$root/target/cuda-check-venv}"
target="${CUDA_CHECK_TARGET_DIR:-$root/target/cuda-check}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cuda_minor="13.2"
# shellcheck source=.ci/cuda-toolchain.sh
source "$root/.ci/cuda-toolchain.sh"

start=$(date +%s)
say() { echo "[cuda-check $(($(date +%s) - start))s] $*" >&2; }

say "CUDA compiler: the PyPI wheels of CUDA ${cuda_minor} (CUDA_FROM_WHEELS=1)"
cuda_venv="$venv"
CUDA_FROM_WHEELS=1 cuda_toolchain_setup
say "nvcc: $(nvcc --version | tail -n 2 | head -n 1)"

# --- 2. The project's own kernel, through NVRTC as at run time, then ptxas. -----------------
ptx_dir="$(mktemp -d)"
trap 'rm -rf "$ptx_dir"' EXIT
"$venv/bin/python" - "$root/kernels/cuda/latent_estimate.cu" "$ptx_dir/latent_estimate.ptx" \
    "$CUDA_HOME/lib" "$CUDA_COMPUTE_CAP" <<'PY'
import ctypes, glob, sys
src_path, out_path, libdir, cap = sys.argv[1:5]
lib = ctypes.CDLL(sorted(glob.glob(f"{libdir}/libnvrtc.so*"))[0])
src = open(src_path, "rb").read()
prog = ctypes.c_void_p()
def check(rc, what):
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise SystemExit(f"NVRTC {what}: {lib.nvrtcGetErrorString(rc).decode()}")
check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"latent_estimate.cu", 0, None, None), "create")
opts = [f"--gpu-architecture=compute_{cap}".encode(), b"--fmad=false"]
arr = (ctypes.c_char_p * len(opts))(*opts)
rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
if log.value.strip():
    print(log.value.decode(), file=sys.stderr)
check(rc, "compile")
lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
check(lib.nvrtcGetPTX(prog, ptx), "get PTX")
open(out_path, "wb").write(ptx.value)
names = [l.split()[-1].rstrip("(") for l in ptx.value.decode().splitlines() if ".entry" in l]
print("NVRTC kernels:", " ".join(names), file=sys.stderr)
for k in ("f32", "f64", "f16", "bf16"):
    if not any(f"latent_estimate_{k}" in n for n in names):
        raise SystemExit(f"latent_estimate_{k} missing from the PTX")
PY
ptxas -arch="sm_${CUDA_COMPUTE_CAP}" "$ptx_dir/latent_estimate.ptx" -o "$ptx_dir/latent_estimate.cubin"
say "kernels/cuda/latent_estimate.cu: NVRTC + ptxas sm_${CUDA_COMPUTE_CAP} ok"

# --- 3. The Rust side with candle's CUDA backend. -------------------------------------------
say "cargo check --features cuda --workspace --all-targets (target dir $target)"
CARGO_TARGET_DIR="$target" cargo check --features cuda --workspace --all-targets
say "done"
