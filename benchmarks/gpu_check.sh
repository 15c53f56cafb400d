#!/usr/bin/env bash
# GPU check in one go (under 10 minutes): the GPU tests, then the GPU benchmarks; a report in
# benchmarks/results/gpu.md (and the raw logs in benchmarks/results/gpu_logs/).
#
#   bash benchmarks/gpu_check.sh                  # from the repository root, on a machine with a CUDA GPU
#   PYTHON=/opt/venv/bin/python bash benchmarks/gpu_check.sh
#
# Steps, each with its own time limit (the sum stays under 10 min):
#   1. the GPU seen by nvidia-smi and by recon-cli (recon_cli.backend.gpu_status)   30 s
#   2. RECON_TEST_GPU=1 pytest -m gpu (GPU tests must run: a missing GPU fails them)   200 s
#   3. benchmarks/scaling.py --device gpu: a slice stack on 1 and 2 workers, each on the GPU,
#      and Dask's overhead  -> benchmarks/results/scaling_gpu.md                        150 s
#   4. benchmarks/gpu_pipelines.py: every shipped pipeline on the CPU and on the GPU (PSNR,
#      speed-up)  -> benchmarks/results/gpu_pipelines.md                                 160 s
#   5. every other benchmark that offers `--device gpu --quick` (none when this was written)  60 s
# Every step runs even when an earlier one fails; the exit code is 1 when any step failed.
# GPU_CHECK_QUICK=1: a short check (about 4 min) for a nearly spent device budget: steps 1, 2 (110 s) and
# 4 with --quick (the model-based pipelines, 100 s); no scaling benchmark.
set -u
QUICK=${GPU_CHECK_QUICK:-0}
cd "$(dirname "$0")/.." || exit 2

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS=benchmarks/results
LOGS=$RESULTS/gpu_logs
REPORT=$RESULTS/gpu.md
mkdir -p "$LOGS"
export RECON_CACHE_DIR="${RECON_CACHE_DIR:-$(mktemp -d -t recon-gpu-cache-XXXXXX)}"
START=$(date +%s)
FAILED=0
declare -a SUMMARY=()

# run NAME LIMIT_S CMD...: the command under `timeout`, its output in $LOGS/NAME.log; a summary row.
run() {
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s) rc
    echo "== $name (limit ${limit} s): $*" | tee "$LOGS/$name.log"
    timeout --kill-after=10 "$limit" "$@" >>"$LOGS/$name.log" 2>&1
    rc=$?
    local secs=$(( $(date +%s) - t0 ))
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timed out"; elif [ "$rc" -ne 0 ]; then status="failed (exit $rc)"; fi
    [ "$status" = ok ] || FAILED=1
    SUMMARY+=("| $name | $status | $secs | \`$*\` |")
    echo "   -> $status in ${secs} s"
    return 0
}

# 1. the GPU
run gpu_info 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv \
    && $PYTHON -c 'from recon_cli.backend import gpu_status; import sys; ok, why = gpu_status(); \
print(\"recon-cli gpu_status:\", ok, why); sys.exit(0 if ok else 1)'"

# 2. the GPU tests (-rA: one line per test in the log, to count them below)
run gpu_tests "$([ "$QUICK" = 1 ] && echo 110 || echo 200)" env RECON_TEST_GPU=1 "$PYTHON" -m pytest -m gpu -q -rA -p no:cacheprovider tests

# 3. the scaling benchmark on the GPU
[ "$QUICK" = 1 ] || run scaling_gpu 150 "$PYTHON" benchmarks/scaling.py --device gpu --slices 64 --size 256 --iterations 50 \
    --repeats 2 --executors local1,local2,dask2 --out "$RESULTS/scaling_gpu.md"

# 4. every shipped pipeline on the CPU and on the GPU, side by side (PSNR and speed-up)
if [ "$QUICK" = 1 ]; then
    run gpu_pipelines 100 "$PYTHON" benchmarks/gpu_pipelines.py --quick --budget-s 85 --out "$RESULTS/gpu_pipelines.md"
else
    run gpu_pipelines 160 "$PYTHON" benchmarks/gpu_pipelines.py --budget-s 140 --out "$RESULTS/gpu_pipelines.md"
fi

# 5. other benchmarks with a --device option (quick runs)
for script in $([ "$QUICK" = 1 ] || echo benchmarks/*.py); do
    case "$script" in benchmarks/scaling.py|benchmarks/common.py|benchmarks/gpu_pipelines.py) continue ;; esac
    if grep -q -- '"--device"' "$script" && grep -q -- '"--quick"' "$script"; then
        name=$(basename "$script" .py)_gpu
        run "$name" 60 "$PYTHON" "$script" --device gpu --quick
    fi
done

# the report
{
    echo "# GPU check"
    echo
    echo "\`benchmarks/gpu_check.sh\` on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - START )) s in all;"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')."
    echo
    echo "| step | status | seconds | command |"
    echo "| --- | --- | --: | --- |"
    printf '%s\n' "${SUMMARY[@]}"
    echo
    echo "## GPU"
    echo
    echo '```'
    grep -v '^==' "$LOGS/gpu_info.log" | head -20
    echo '```'
    echo
    echo "## GPU tests (RECON_TEST_GPU=1 pytest -m gpu)"
    echo
    echo "passed: $(grep -c '^PASSED' "$LOGS/gpu_tests.log"), failed: $(grep -c '^FAILED' "$LOGS/gpu_tests.log"),"\
         "errors: $(grep -c '^ERROR' "$LOGS/gpu_tests.log"), skipped: $(grep -c '^SKIPPED' "$LOGS/gpu_tests.log")"
    echo
    echo '```'
    grep -E '^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed|error' "$LOGS/gpu_tests.log" | tail -60
    echo '```'
    echo
    echo "## Scaling on the GPU"
    echo
    if [ -s "$RESULTS/scaling_gpu.md" ] && grep -q 'slices/s' "$RESULTS/scaling_gpu.md"; then
        sed '1d' "$RESULTS/scaling_gpu.md"
    elif [ "$QUICK" = 1 ]; then
        echo "(not run: GPU_CHECK_QUICK=1)"
    else
        echo "(no result; the end of the log:)"
        echo '```'
        tail -30 "$LOGS/scaling_gpu.log"
        echo '```'
    fi
    echo
    echo "## Shipped pipelines on the CPU and the GPU"
    echo
    if [ -s "$RESULTS/gpu_pipelines.md" ]; then sed '1d' "$RESULTS/gpu_pipelines.md"; else
        echo '```'; tail -30 "$LOGS/gpu_pipelines.log"; echo '```'; fi
    for log in $(ls "$LOGS"/*_gpu.log 2>/dev/null); do
        name=$(basename "$log" .log)
        [ "$name" = scaling_gpu ] && continue
        echo
        echo "## $name"
        echo
        echo '```'
        tail -40 "$log"
        echo '```'
    done
} > "$REPORT"
echo "wrote $REPORT"
exit "$FAILED"
