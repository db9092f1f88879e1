"""One accumulator protocol, one versioned-state reader.

Shared by :class:`~analysis.stats.FeatureStats`,
:class:`~analysis.hierarchy.HierarchicalMetrics` and :class:`~analysis.collapse.NCCMismatch`.

Every accumulator has ``update(...)``, ``merge(other)`` (returns ``self``), ``reset()``,
``all_reduce(group=None)`` over ``torch.distributed`` (returns ``self``), ``state_dict()``
(CPU tensors and plain values, loadable with ``torch.load(weights_only=True)``) and the
classmethod ``from_state_dict(state, *, device=None)``. A state carries an integer
``'version'``; :func:`read_state` is the one reader that checks it, the required keys and the
tensor shapes, with one-line errors naming the accumulator and the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["read_state", "require_distributed"]


def read_state(
    owner: str,
    state: Any,
    version: int,
    keys: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Mapping[str, Any]:
    """Check a versioned accumulator state and return it.

    ``owner`` names the accumulator in errors; ``keys`` are required; ``shapes`` maps tensor
    keys (required or present) to their expected shapes. A state without ``'version'`` is
    read as ``version`` (states written before the key existed).

    Raises
    ------
    TypeError
        ``state`` is not a mapping.
    ValueError
        Wrong version, a missing key, or a tensor key that is not a tensor of its shape.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner} state must be a mapping, got {type(state).__name__}")
    got = state.get("version", version)
    if isinstance(got, bool) or got != version:
        raise ValueError(f"{owner} state 'version': expected {version}, got {got!r}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner} state is missing keys {missing}")
    for key, shape in (shapes or {}).items():
        if key not in state:
            continue
        val = state[key]
        if not isinstance(val, torch.Tensor) or tuple(val.shape) != tuple(shape):
            found = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
            raise ValueError(f"{owner} state {key!r}: expected shape {tuple(shape)}, got {found}")
    return state


def require_distributed(owner: str) -> Any:
    """``torch.distributed``, or a RuntimeError naming ``owner`` when it is not initialised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{owner}.all_reduce: torch.distributed is not initialised; call init_process_group"
        )
    return dist
