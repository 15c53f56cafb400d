"""Unit functions for tests/test_dask.py, in a module of their own so that worker processes import
only this (not pytest, not the test module)."""
from __future__ import annotations

import os
from pathlib import Path


def crash_once(task, marker: str):
    """Kill the worker process the first time slices 0.. run (the marker file remembers); else solve."""
    if task.start == 0 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    from recon_cli.stack_units import stack_unit

    return stack_unit(task)


def always_fails(task):
    raise ValueError(f"bad unit {task.start}")
