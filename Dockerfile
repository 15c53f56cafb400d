# recon-cli, CPU images (docs/docker.md). Two targets from one file:
#
#   runtime (the default, last stage): recon-cli, ONNX Runtime, no PyTorch. Runs every shipped pipeline
#           (the learned ones through ONNX Runtime); `recon train` is not in it.
#   train:  runtime + the CPU build of PyTorch and onnx, for `recon train`.
#
#   docker build -t recon-cli .                                          # runtime
#   docker build --target train -t recon-cli:train .                     # with a torch wheel in docker/wheels/
#   docker build --target train --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t recon-cli:train .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/out:/out" recon-cli run pipelines/fbp.yaml -o /out/fbp.h5
#
# Needs BuildKit (DOCKER_BUILDKIT=1 or buildx): the train target bind-mounts the wheel folder, and BuildKit
# builds only the stages the chosen target needs.
# Mount points: /data (inputs; mount read-only) and /out (outputs). WORKDIR /app holds pipelines/ and
# sample_data/ (and training/), so the shipped pipelines run as they are; /app/out is a link to /out, so a pipeline's
# default output path (out/...) also lands in the mounted folder.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECON_CACHE_DIR=/tmp/recon-cache

# 1. The runtime dependencies named in pyproject.toml (and the dask extra for `--executor dask`), without the
#    package itself: this layer changes only when the dependencies do. No torch among them.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['dask']))" > /tmp/requirements.txt \
 && python3 -m pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 2. recon-cli itself (shipped models in recon_cli/models/ are package data and come with it). The source tree
#    is removed; /app/recon_cli then links to the installed package, so a model named by its repository path
#    (recon_cli/models/x.onnx) still resolves from /app.
COPY recon_cli ./recon_cli
RUN python3 -m pip install --no-deps . \
 && rm -rf /app/recon_cli /app/build /app/*.egg-info \
 && ln -s "$(cd /tmp && python3 -c 'import os, recon_cli; print(os.path.dirname(recon_cli.__file__))')" /app/recon_cli \
 && recon --version \
 && python3 -c "import astra, h5py, onnxruntime, pydicom, recon_cli.solvers; print('astra', astra.__version__)"

# 3. Sample data, pipelines and training configs, the non-root user (uid 1000), and the mount points.
COPY sample_data ./sample_data
COPY pipelines ./pipelines
COPY training ./training
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin recon \
 && mkdir -p /data /out \
 && chown recon:recon /data /out \
 && ln -s /out /app/out


# ---------------------------------------------------------------------------------------------------------------
# train: PyTorch (CPU build) and onnx on top, for `recon train`. PyPI's torch for Linux x86_64 is a multi-GB
# CUDA build, so torch comes from a wheel in docker/wheels/ (torch-<TORCH_VERSION>*.whl, e.g.
# torch-2.13.0+cpu-cp311-...whl) or, when there is none, from TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu).
FROM base AS train
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=
RUN --mount=type=bind,source=docker/wheels,target=/tmp/wheels \
    set -eu; \
    wheel=$(ls /tmp/wheels/torch-"${TORCH_VERSION}"*.whl 2>/dev/null | head -n 1 || true); \
    if [ -n "$wheel" ]; then \
        echo "installing $wheel"; \
        python3 -m pip install "$wheel"; \
    elif [ -n "$TORCH_INDEX" ]; then \
        python3 -m pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple \
            "torch==${TORCH_VERSION}"; \
    else \
        echo "error: no torch-${TORCH_VERSION}*.whl in docker/wheels/ and no --build-arg TORCH_INDEX" \
             "(e.g. https://download.pytorch.org/whl/cpu); see docs/docker.md" >&2; \
        exit 1; \
    fi; \
    python3 -c "import torch; assert torch.version.cuda is None, 'not the CPU build: CUDA ' + str(torch.version.cuda); print('torch', torch.__version__)"; \
    python3 -m pip install "onnx>=1.15"
USER recon
LABEL org.opencontainers.image.title="recon-cli-train" \
      org.opencontainers.image.description="CT reconstruction CLI (CPU) with PyTorch for recon train. Mount inputs read-only at /data, outputs at /out." \
      org.opencontainers.image.licenses="MIT"
ENTRYPOINT ["recon"]
CMD ["--help"]


# ---------------------------------------------------------------------------------------------------------------
# runtime (default target): no PyTorch. The build fails if torch slipped in.
FROM base AS runtime
RUN python3 -c "import importlib.util as u, sys; sys.exit('torch is installed in the runtime image' if u.find_spec('torch') else 0)"
USER recon
WORKDIR /app
LABEL org.opencontainers.image.title="recon-cli" \
      org.opencontainers.image.description="CT reconstruction CLI (CPU, ONNX Runtime, no PyTorch). Mount inputs read-only at /data, outputs at /out." \
      org.opencontainers.image.licenses="MIT"
ENTRYPOINT ["recon"]
CMD ["--help"]
