# Sourced by .ci/cuda-check.sh and .ci/gpu-check.sh: puts a CUDA compiler (nvcc, ptxas, NVRTC,
# the headers candle-kernels needs) on PATH and sets CUDA_HOME.
#
# A CUDA toolkit already installed (nvcc on PATH, or under $CUDA_HOME / /usr/local/cuda) is
# used as is unless CUDA_FROM_WHEELS=1. Otherwise the PyPI `nvidia-cuda-*` wheels of one CUDA
# minor go into a venv (pinned: an unpinned nvvm emits PTX newer than nvcc's ptxas accepts;
# see rust-deps.md §4). Needs PyPI then.
#
# In: cuda_venv (venv folder), PYTHON (default python3). Out: CUDA_HOME, PATH, LD_LIBRARY_PATH,
# cuda_toolchain (a line saying which compiler), cuda_python (a python with ctypes for NVRTC).

cuda_minor="${cuda_minor:-13.2}"

cuda_toolchain_setup() {
    local found=""
    if [[ ${CUDA_FROM_WHEELS:-0} != 1 ]]; then
        for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
            if [[ -n $d && -x $d/bin/nvcc ]]; then found=$d; break; fi
        done
        if [[ -z $found ]] && command -v nvcc >/dev/null; then
            found="$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)"
        fi
    fi
    cuda_python="${PYTHON:-python3}"
    if [[ -n $found ]]; then
        export CUDA_HOME="$found"
        export PATH="$CUDA_HOME/bin:$PATH"
        local lib="$CUDA_HOME/lib64"
        [[ -d $lib ]] || lib="$CUDA_HOME/lib"
        export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        cuda_toolchain="installed toolkit $CUDA_HOME"
    else
        if [[ ! -x "$cuda_venv/bin/python" ]]; then
            "${PYTHON:-python3}" -m venv "$cuda_venv"
        fi
        "$cuda_venv/bin/pip" install --quiet --disable-pip-version-check \
            "nvidia-cuda-nvcc==${cuda_minor}.*" "nvidia-nvvm==${cuda_minor}.*" \
            "nvidia-cuda-crt==${cuda_minor}.*" "nvidia-cuda-runtime==${cuda_minor}.*" \
            "nvidia-cuda-nvrtc==${cuda_minor}.*" "nvidia-cuda-cccl==13.*"
        local site
        site="$("$cuda_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        export CUDA_HOME="$site/nvidia/cu13"
        chmod +x "$CUDA_HOME"/bin/* "$CUDA_HOME"/nvvm/bin/* 2>/dev/null || true
        export PATH="$CUDA_HOME/bin:$PATH"
        export LD_LIBRARY_PATH="$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        cuda_toolchain="PyPI wheels, CUDA ${cuda_minor} ($cuda_venv)"
        cuda_python="$cuda_venv/bin/python"
    fi
}
