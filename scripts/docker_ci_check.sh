#!/usr/bin/env bash
# CI check of the CPU Docker image: build it, run the sample pipeline inside it with mounted folders,
# and check what it wrote. Exit 0 only when everything holds; prints "docker_ci_check: OK" at the end.
#
#   scripts/docker_ci_check.sh            # as root on the CI machine (installs Docker if missing)
#
# Steps:
#   1. ../shared/tools/docker_ci.sh builds ./Dockerfile's default target, the runtime image without PyTorch
#      (with a locally made python:3.11-slim base), and runs `recon --version` in the image;
#   2. the image has no torch, its user is recon (uid 1000), and its size is logged;
#   3. as uid 1000 (the image's user) into a folder owned by 1000: every shipped pipeline
#      (`recon run pipelines/<each>.yaml -o /out/<each>.h5`), the learned ones included, on the sample
#      data inside the image;
#   4. as uid 4321 (no account in the image) with the sample data mounted read-only at /data:
#      the fbp pipeline on /data/..., then `recon metrics` of the output against the input's
#      reference; and a run that tries to write into the read-only /data must fail with exit 2;
#   5. every output exists, is owned by the uid that ran the container, no temporary file is left,
#      and the host's h5py (.venv) reads /reconstruction as a finite 256 x 256 image.
#
# Environment: DOCKER_CI (path of docker_ci.sh), IMAGE (tag, default recon-cli:ci), WORK (scratch folder),
# KEEP_DAEMON=1 (leave dockerd running), KEEP_IMAGE=1, PIPELINES (space-separated names, default all).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOCKER_CI=${DOCKER_CI:-$ROOT/../shared/tools/docker_ci.sh}
export IMAGE=${IMAGE:-recon-cli:ci}
WORK=${WORK:-$(mktemp -d -t recon-docker-check.XXXXXX)}
CALLER_KEEPS_DAEMON=${KEEP_DAEMON:-0}
DOCKER=/usr/bin/docker
SAMPLE=shepp_logan_fan60.h5

T0=$(date +%s)
log() { echo "[docker_ci_check +$(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "docker_ci_check: FAIL: $*" >&2; exit 1; }

stop_daemon() {
  local pidfile="$WORK/ci/dockerd.pid"
  if [ "$CALLER_KEEPS_DAEMON" != 1 ] && [ -f "$pidfile" ]; then
    local pid
    pid=$(cat "$pidfile")
    log "stopping dockerd pid $pid"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    umount /run/docker/netns/default 2>/dev/null || true
  fi
}
trap stop_daemon EXIT

# 1. The build context needs docker/wheels/ (the train target's wheel folder), even when empty.
mkdir -p "$ROOT/docker/wheels"
[ -x "$DOCKER_CI" ] || [ -f "$DOCKER_CI" ] || fail "docker_ci.sh not found at $DOCKER_CI (set DOCKER_CI)"

# 2. Build (and a first run: the version) through the shared CI tool; the daemon stays up for step 3.
log "building $IMAGE with $DOCKER_CI"
T_BUILD=$(date +%s)
KEEP_DAEMON=1 WORK="$WORK/ci" bash "$DOCKER_CI" "$ROOT" --version
BUILD_S=$(( $(date +%s) - T_BUILD ))
[ -x "$DOCKER" ] || DOCKER=docker
SIZE=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
log "built in ${BUILD_S}s; image size $(( SIZE / 1024 / 1024 )) MiB"

USER_IN_IMAGE=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
[ "$USER_IN_IMAGE" = recon ] || fail "image user is '$USER_IN_IMAGE', expected recon"

"$DOCKER" run --rm --entrypoint python3 "$IMAGE" -c \
  "import importlib.util as u, sys; sys.exit('torch in the runtime image' if u.find_spec('torch') else 0)" \
  || fail "the runtime image has PyTorch"
log "no torch in the image"

owner_is() {  # owner_is UID:GID FILE...
  local want=$1 f
  shift
  for f in "$@"; do
    [ -e "$f" ] || fail "missing output $f"
    [ "$(stat -c %u:%g "$f")" = "$want" ] || fail "$f is owned by $(stat -c %u:%g "$f"), expected $want"
  done
}
no_temp_files() {
  local left
  left=$(find "$1" -name '*.tmp' -o -name '.*.tmp' | head -n 5)
  [ -z "$left" ] || fail "temporary files left in $1: $left"
}

# 3. uid 1000 (the image's user), the sample data inside the image, /out mounted: every shipped pipeline.
T_RUN=$(date +%s)
OUT1="$WORK/out1000"
mkdir -p "$OUT1"
chown 1000:1000 "$OUT1"
PIPELINES=${PIPELINES:-$(cd "$ROOT/pipelines" && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')}
for name in $PIPELINES; do
  T_P=$(date +%s)
  "$DOCKER" run --rm --user 1000:1000 -v "$OUT1:/out" "$IMAGE" -q run "pipelines/$name.yaml" -o "/out/$name.h5" \
    --json >"$WORK/run1000_$name.json" || fail "pipelines/$name.yaml failed in the image as uid 1000"
  owner_is 1000:1000 "$OUT1/$name.h5"
  log "run as 1000:1000: pipelines/$name.yaml -> /out/$name.h5 ($(( $(date +%s) - T_P ))s)"
done
cp "$WORK/run1000_fbp.json" "$WORK/run1000.json"
owner_is 1000:1000 "$OUT1/fbp.h5" "$OUT1/fbp.png"
no_temp_files "$OUT1"

# 4. uid 4321 (unknown to the image), inputs mounted read-only at /data.
OUT2="$WORK/out4321"
mkdir -p "$OUT2"
chown 4321:4321 "$OUT2"
log "run as 4321:4321 with -v sample_data:/data:ro: recon run pipelines/fbp.yaml -i /data/$SAMPLE -o /out/fbp.h5"
"$DOCKER" run --rm --user 4321:4321 -v "$ROOT/sample_data:/data:ro" -v "$OUT2:/out" "$IMAGE" \
  run pipelines/fbp.yaml -i "/data/$SAMPLE" -o /out/fbp.h5 --json >"$WORK/run4321.json"
owner_is 4321:4321 "$OUT2/fbp.h5" "$OUT2/fbp.png"
no_temp_files "$OUT2"
log "recon metrics /out/fbp.h5 /data/$SAMPLE"
"$DOCKER" run --rm --user 4321:4321 -v "$ROOT/sample_data:/data:ro" -v "$OUT2:/out:ro" "$IMAGE" \
  metrics /out/fbp.h5 "/data/$SAMPLE" --json >"$WORK/metrics.json"
log "a run writing into the read-only /data must be refused"
set +e
"$DOCKER" run --rm --user 4321:4321 -v "$ROOT/sample_data:/data:ro" "$IMAGE" \
  run pipelines/fbp.yaml -i "/data/$SAMPLE" -o /data/refused.h5 >"$WORK/readonly.out" 2>"$WORK/readonly.err"
RC=$?
set -e
[ "$RC" = 2 ] || { cat "$WORK/readonly.err" >&2; fail "writing into read-only /data exited $RC, expected 2"; }
grep -q '^Error: /data/refused.h5' "$WORK/readonly.err" || { cat "$WORK/readonly.err" >&2; fail "no one-line error"; }
[ ! -e "$ROOT/sample_data/refused.h5" ] || fail "the read-only mount was written to"
RUN_S=$(( $(date +%s) - T_RUN ))

# 5. The outputs read on the host.
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" - "$OUT1/fbp.h5" "$OUT2/fbp.h5" "$WORK/run1000.json" "$WORK/run4321.json" "$WORK/metrics.json" <<'EOF'
import json, sys
paths, runs, metrics = sys.argv[1:3], sys.argv[3:5], sys.argv[5]
try:
    import h5py, numpy as np
except ImportError:
    h5py = None
    print("host has no h5py: skipping the host-side read")
for p in paths:
    if h5py is not None:
        with h5py.File(p, "r") as f:
            rec = f["/reconstruction"][()]
            assert rec.shape == (256, 256) and np.isfinite(rec).all(), (p, rec.shape)
            assert "pipeline_yaml" in f["/provenance"].attrs or len(f["/provenance"].attrs) > 0, p
for r in runs:
    out = json.load(open(r))
    assert out["outputs"]["hdf5"] == "/out/fbp.h5", out
    assert out["metrics"]["psnr"] > 15, out["metrics"]
m = json.load(open(metrics))
assert m["psnr"] > 15 and 0 < m["ssim"] <= 1, m
print(f"outputs read back; PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")
EOF

if [ "${KEEP_IMAGE:-0}" != 1 ]; then
  "$DOCKER" image rm -f "$IMAGE" >/dev/null 2>&1 || true
fi
log "timings: build ${BUILD_S}s (incl. Docker install and base image), container runs ${RUN_S}s," \
    "total $(( $(date +%s) - T0 ))s; image $(( SIZE / 1024 / 1024 )) MiB"
echo "docker_ci_check: OK"
