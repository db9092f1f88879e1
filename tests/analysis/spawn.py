"""Run a test's worker function on several gloo processes, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch.multiprocessing as mp


def run_workers(
    worker: Callable[..., Any], args: tuple[Any, ...], nprocs: int, timeout: float
) -> None:
    """``mp.start_processes(worker, args, nprocs)``; a worker's exception is re-raised, and
    workers still running after ``timeout`` seconds are killed and the test fails."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # re-raises a worker's exception
        if time.monotonic() > deadline:
            for proc in context.processes:
                proc.kill()
                proc.join()
            pytest.fail(f"distributed workers did not finish within {timeout} s")
