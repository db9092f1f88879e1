"""A temporary file-backed copy of one split's features and decisions, under a byte budget.

NC4 on the train split compares each train sample's nearest *final* train class mean with the
network's decision, so the means must be complete before any sample can be scored. Instead of
forwarding the train split a second time, :class:`Spill` keeps, while the first pass streams,
every sample's classifier-input features (in their own dtype) and the decision (``int64``) in
two temporary files; afterwards :meth:`Spill.chunks` reads them back memory-mapped
(``torch.from_file``), a block of rows at a time, so NC4 costs one read of the file and no
``N × K`` matrix.

Above ``budget`` bytes the spill stops, removes its files and reports ``exceeded``; the caller
then takes the second pass. The files are removed by :meth:`Spill.close` (call it in a
``finally``; the class is a context manager), on success, error and Ctrl-C alike.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["Spill"]


class Spill:
    """Append-only temporary storage of ``features [B, D]`` and ``decisions [B]`` batches.

    Parameters
    ----------
    budget : int
        Bytes allowed on disk (features + decisions); ``0`` never spills.
    directory : path-like, optional
        Where the temporary files go (default: the system's temporary folder).
    """

    def __init__(self, budget: int, directory: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"spill budget must be a non-negative integer of bytes, got {budget}")
        self.budget = budget
        self.directory = directory
        self.active = budget > 0
        self.exceeded = False
        self.rows = 0
        self.nbytes = 0
        self.dim: int | None = None
        self.dtype: torch.dtype | None = None
        self._paths: list[Path] = []
        self._files: list[BinaryIO] = []

    def add(self, features: torch.Tensor, decisions: torch.Tensor) -> None:
        """Append a batch; stops (and removes the files) when the budget would be passed."""
        if not self.active:
            return
        f = features.detach().to("cpu").contiguous()
        d = decisions.detach().to(device="cpu", dtype=torch.int64).contiguous()
        if f.ndim != 2 or d.shape != (f.shape[0],):
            raise ValueError(f"spill: features {list(f.shape)} and decisions {list(d.shape)}")
        if self.dim is None:
            self.dim, self.dtype = int(f.shape[1]), f.dtype
        elif f.shape[1] != self.dim or f.dtype != self.dtype:
            raise ValueError(
                f"spill: a batch of {list(f.shape)} {f.dtype} after [B, {self.dim}] {self.dtype}"
            )
        size = f.numel() * f.element_size() + d.numel() * 8
        if self.nbytes + size > self.budget:
            self.exceeded = True
            self.active = False
            self.close()
            return
        if not self._files:
            for what in ("features", "decisions"):
                fd, name = tempfile.mkstemp(prefix=f"geomtools-spill-{what}-", dir=self.directory)
                self._paths.append(Path(name))
                self._files.append(os.fdopen(fd, "wb"))
        for fh, t in zip(self._files, (f, d), strict=True):
            fh.write(t.view(torch.uint8).numpy().tobytes())
        self.rows += int(f.shape[0])
        self.nbytes += size

    def chunks(self, rows: int = 8192) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(features, decisions)`` blocks of at most ``rows`` rows, memory-mapped."""
        if not self.active or self.rows == 0:
            raise ValueError("spill: nothing stored (budget exceeded, or no batch added)")
        for fh in self._files:
            fh.flush()
        assert self.dim is not None and self.dtype is not None
        item = torch.empty((), dtype=self.dtype).element_size()
        feats = torch.from_file(
            str(self._paths[0]), shared=False, size=self.rows * self.dim * item, dtype=torch.uint8
        ).view(self.dtype)
        feats = feats.view(self.rows, self.dim)
        decs = torch.from_file(str(self._paths[1]), shared=False, size=self.rows, dtype=torch.int64)
        for start in range(0, self.rows, rows):
            yield feats[start : start + rows], decs[start : start + rows]

    def close(self) -> None:
        """Close and remove the temporary files (idempotent)."""
        for fh in self._files:
            fh.close()
        for p in self._paths:
            p.unlink(missing_ok=True)
        self._files, self._paths = [], []

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
