#!/usr/bin/env bash
# Prepare a GPU check on a bare CUDA machine whose Python (3.12, with CuPy and PyTorch) lacks recon-cli's
# other dependencies and has no network: run HERE (where pip can download), from the repository root.
#   bash benchmarks/gpu_env/prepare.sh        -> .whl/ (wheels for cp312) and .gpu/ (cuFFT shim, built here)
# Then, on the GPU machine, with .whl and .gpu copied beside the checkout:
#   bash benchmarks/gpu_env/run_on_gpu.sh     -> benchmarks/gpu_check.sh with everything installed
#
# Why a shim: ASTRA's PyPI wheel links CUDA 12's cuFFT (soname libcufft.so.11; it calls 5 functions) and
# needs nvidia-cufft-cu12 (~280 MB unpacked). An image with CUDA 13 has libcufft.so.12 only; the shim
# (cufft_shim.c) exports those 5 functions under the CUDA 12 symbol version and forwards them to it.
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
mkdir -p .whl .gpu
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl \
    "astra-toolbox>=2.5,<2.6" nvidia-cuda-runtime-cu12 pydicom pydantic pydantic_core annotated-types \
    typing-inspection dask distributed partd locket tblib zict tornado pynetdicom nibabel
gcc -O2 -shared -fPIC -o .gpu/libcufft.so.11 -Wl,-soname,libcufft.so.11 \
    -Wl,--version-script=benchmarks/gpu_env/cufft_shim.map benchmarks/gpu_env/cufft_shim.c -ldl
echo "wheels: $(ls .whl | wc -l) in .whl ($(du -sh .whl | cut -f1)); shim: .gpu/libcufft.so.11"
