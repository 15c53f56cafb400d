# recon-cli, CPU image (docs/docker.md).
#
#   docker build -t recon-cli .                        # with a torch wheel in docker/wheels/
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t recon-cli .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/out:/out" recon-cli run pipelines/fbp.yaml -o /out/fbp.h5
#
# Needs BuildKit (DOCKER_BUILDKIT=1 or buildx) for the wheel-folder mount.
# Mount points: /data (inputs; mount read-only) and /out (outputs). WORKDIR /app holds pipelines/ and
# sample_data/ (and training/), so the shipped pipelines run as they are; /app/out is a link to /out, so a pipeline's
# default output path (out/...) also lands in the mounted folder.
FROM python:3.11-slim

# PyTorch: the CPU build. PyPI's torch for Linux x86_64 is a multi-GB CUDA build, so torch comes from
# a wheel in docker/wheels/ (torch-<TORCH_VERSION>*.whl, e.g. torch-2.13.0+cpu-cp311-...whl) or, when
# there is none, from TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECON_CACHE_DIR=/tmp/recon-cache

# 1. PyTorch (CPU) first: the largest layer, and the one that changes least often.
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
    python3 -c "import torch; assert torch.version.cuda is None, 'not the CPU build: CUDA ' + str(torch.version.cuda); print('torch', torch.__version__)"

# 2. recon-cli with its runtime dependencies and the training extra (torch is already there).
#    Shipped models (recon_cli/models/) are package data and come with it.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY recon_cli ./recon_cli
RUN python3 -m pip install ".[train,dask]" \
 && rm -rf /app/recon_cli /app/build /app/*.egg-info \
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

USER recon
LABEL org.opencontainers.image.title="recon-cli" \
      org.opencontainers.image.description="CT reconstruction CLI (CPU). Mount inputs read-only at /data, outputs at /out." \
      org.opencontainers.image.licenses="MIT"
ENTRYPOINT ["recon"]
CMD ["--help"]
