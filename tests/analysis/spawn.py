"""Run a test's worker function on several gloo processes, with a deadline."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
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


def join_gloo(rank: int, init_file: str, world_size: int) -> None:
    """In a worker: one thread, loopback rendezvous, join a gloo group through ``init_file``."""
    if sys.platform.startswith("linux"):  # rendezvous over loopback, whatever the hostname is
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
