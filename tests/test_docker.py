"""The Docker images: static checks of the Dockerfiles always; the real build and run of the CPU image
(scripts/docker_ci_check.sh: build, the sample pipeline with mounted folders, output ownership) only
with RECON_TEST_DOCKER=1 (as root, with network access to PyPI and the Debian archive; 5-10 minutes)."""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _last(instructions, name: str) -> str:
    values = [args for word, args in instructions if word == name]
    assert values, f"no {name}"
    return values[-1]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_layout(dockerfile):
    ins = _instructions(ROOT / dockerfile)
    assert _last(ins, "ENTRYPOINT") == '["recon"]'
    assert _last(ins, "USER") == "recon"
    assert _last(ins, "WORKDIR") == "/app"
    run = " ".join(args for word, args in ins if word == "RUN")
    assert "useradd --uid 1000" in run and "/data /out" in run and "ln -s /out /app/out" in run
    copied = {args.split()[0] for word, args in ins if word == "COPY"}
    assert {"pyproject.toml", "recon_cli", "sample_data", "pipelines"} <= copied
    for word, args in ins:  # every copied path exists (a build would fail on a missing one)
        if word == "COPY":
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: not in the repository"


def _stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM included), in file order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, args in _instructions(path):
        if word == "FROM":
            parts = args.split()
            current = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append((word, args))
    return stages


def test_cpu_runtime_image_has_no_torch_and_training_is_a_separate_target():
    stages = _stages(ROOT / "Dockerfile")
    assert list(stages)[-1] == "runtime"  # the default target (docker build without --target)
    assert stages["base"][0] == ("FROM", "python:3.11-slim AS base")
    assert stages["runtime"][0][1].startswith("base ") and stages["train"][0][1].startswith("base ")
    shipped = " ".join(args for name in ("base", "runtime") for word, args in stages[name] if word == "RUN")
    assert "torch" not in shipped.replace("find_spec('torch')", "").replace("torch is installed", "")
    assert "[train" not in shipped and "--no-deps" in shipped  # the package without the train extra
    assert "find_spec('torch')" in shipped  # the runtime build fails if torch slipped in
    train = " ".join(args for word, args in stages["train"] if word == "RUN")
    assert "--mount=type=bind,source=docker/wheels,target=/tmp/wheels" in train
    assert "torch.version.cuda is None" in train  # the build fails if a CUDA torch slipped in
    for name in ("runtime", "train"):
        assert _last(stages[name], "USER") == "recon" and _last(stages[name], "ENTRYPOINT") == '["recon"]'


def test_gpu_image_has_cuda_cupy_and_onnxruntime_gpu():
    ins = _instructions(ROOT / "Dockerfile.gpu")
    assert "nvidia/cuda:" in " ".join(args for word, args in ins if word in ("ARG", "FROM"))
    run = " ".join(args for word, args in ins if word == "RUN")
    assert "cupy" in run.lower() and "onnxruntime-gpu" in run and "CUDAExecutionProvider" in run


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path`` (its own last matching rule wins; '!' re-includes)."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in ("docker/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "pyproject.toml",
                   "README.md", "recon_cli/cli/main.py", "sample_data/shepp_logan_fan60.h5", "pipelines/fbp.yaml",
                   "training/postproc_fan60.yaml"):
        assert not _ignored(needed, patterns), needed
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "out/x.h5"):
        assert _ignored(dropped, patterns), dropped
    assert (ROOT / "docker" / "wheels").is_dir()  # the Dockerfile bind-mounts it: it must exist


def _docker_build_wanted() -> bool:
    """RECON_TEST_DOCKER=1 forces the real build; CI runs it by default when it is root and has
    ../shared/tools/docker_ci.sh (RECON_TEST_DOCKER=0 turns it off)."""
    flag = os.environ.get("RECON_TEST_DOCKER", "").strip()
    if flag:
        return flag == "1"
    return bool(os.environ.get("CI")) and os.geteuid() == 0 and \
        (ROOT.parent / "shared" / "tools" / "docker_ci.sh").is_file()


@pytest.mark.skipif(not _docker_build_wanted(),
                    reason="builds and runs the Docker image (minutes, root); RECON_TEST_DOCKER=1 runs it, CI does")
def test_cpu_image_builds_and_runs_the_sample_pipeline(tmp_path):
    env = {**os.environ, "WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "docker_ci_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=2400)
    tail = f"stdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, tail
    assert "docker_ci_check: OK" in proc.stdout, tail
