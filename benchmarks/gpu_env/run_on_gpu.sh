#!/usr/bin/env bash
# On the bare GPU machine, from the repository root, with .whl and .gpu made by prepare.sh: install the
# wheels into /tmp (the image's own packages untouched), point ASTRA at the CUDA 12 runtime and the cuFFT
# shim, check that ASTRA's CUDA FBP runs, then run benchmarks/gpu_check.sh. With $OUT set, the report and
# logs are also packed into $OUT/gpu_results.tgz.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    $(ls .whl/*.whl | grep -v nvidia_cuda_runtime)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/cu12 .whl/nvidia_cuda_runtime*.whl
SITE=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))')
CUFFT12_LIB=$(find $SITE /usr/local/cuda* /usr/lib/x86_64-linux-gnu -name 'libcufft.so.12*' 2>/dev/null | head -1)
echo "cuFFT (CUDA 13) behind the shim: ${CUFFT12_LIB:-not found}"
export CUFFT12_LIB
export LD_LIBRARY_PATH=$PWD/.gpu:/tmp/cu12/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
echo "install: $(( $(date +%s) - T0 )) s"
timeout 40 python3 - <<'PY'
import astra, numpy as np
print("astra", astra.__version__, "use_cuda", astra.use_cuda())
from recon_cli.backend import gpu_status
print("gpu_status", gpu_status())
vg = astra.create_vol_geom(64, 64)
pg = astra.create_proj_geom("parallel", 1.0, 96, np.linspace(0, np.pi, 60, False))
x = np.zeros((64, 64), np.float32); x[20:40, 24:44] = 1
sid, _ = astra.create_sino(x, astra.create_projector("cuda", pg, vg))
rid = astra.data2d.create("-vol", vg)
cfg = astra.astra_dict("FBP_CUDA"); cfg["ReconstructionDataId"] = rid; cfg["ProjectionDataId"] = sid
aid = astra.algorithm.create(cfg); astra.algorithm.run(aid)
print("FBP_CUDA mean abs error on a square:", float(np.abs(astra.data2d.get(rid) - x).mean()))
PY
PYTHON=python3 timeout "$([ "${GPU_CHECK_QUICK:-0}" = 1 ] && echo 230 || echo 520)" bash benchmarks/gpu_check.sh
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_results.tgz" benchmarks/results/gpu.md benchmarks/results/gpu_logs \
        benchmarks/results/scaling_gpu.md benchmarks/results/gpu_pipelines.md 2>/dev/null
    cp benchmarks/results/gpu.md "$OUT/" 2>/dev/null
fi
echo "total: $(( $(date +%s) - T0 )) s"
