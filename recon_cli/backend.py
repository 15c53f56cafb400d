"""Device choice (auto/cpu/gpu) and the array module (numpy or cupy).

ASTRA kills the process with SIGFPE when a CUDA function runs without a GPU, so
every CUDA path must first pass :func:`gpu_available`, which only calls functions
that are safe without a GPU (``astra.use_cuda`` and CuPy's device count).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from recon_cli.errors import DeviceError

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """(available, reason). Available means ASTRA was built with CUDA, it sees a GPU and CuPy works."""
    try:
        import astra

        if not astra.use_cuda():
            return False, "ASTRA reports no usable CUDA GPU"
    except Exception as exc:  # pragma: no cover - astra is a core dependency
        return False, f"ASTRA not importable ({exc})"
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy not usable ({type(exc).__name__}: {exc}); pip install 'recon-ct-cli[gpu]'"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    return True, f"{n} CUDA device(s)"


def gpu_available() -> bool:
    return gpu_status()[0]


@dataclass(frozen=True)
class Device:
    """The resolved device: ``name`` is 'cpu' or 'gpu'."""

    name: str

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    @property
    def xp(self):
        """Array module for this device."""
        if self.is_gpu:
            import cupy

            return cupy
        return np


def select_device(request: str = "auto") -> Device:
    """Resolve 'auto' | 'cpu' | 'gpu'. 'gpu' without a GPU raises DeviceError; 'auto' falls back and logs it."""
    request = (request or "auto").lower()
    if request == "cpu":
        return Device("cpu")
    ok, reason = gpu_status()
    if request == "gpu":
        if not ok:
            raise DeviceError(f"--device gpu requested but no GPU is usable: {reason}", field="device")
        return Device("gpu")
    if request != "auto":
        raise DeviceError(f"unknown device {request!r}; expected auto, cpu or gpu", field="device")
    if ok:
        log.info("device auto: using the GPU (%s)", reason)
        return Device("gpu")
    log.info("device auto: no GPU (%s); using the CPU", reason)
    return Device("cpu")


def array_module(x):
    """numpy or cupy, whichever owns ``x``."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(x) -> np.ndarray:
    """Host copy of a numpy or cupy array."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
