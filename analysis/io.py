"""Reading feature files and writing results atomically.

Feature file format
-------------------
A ``.pt``/``.pth`` file written by ``torch.save`` (loaded with ``weights_only=True``, so only
tensors and plain containers, never pickled objects) or a ``.npz`` file, holding either

* flat keys ``features [N, D]`` and ``labels [N]``, or
* one mapping per split, e.g. ``{"train": {"features", "labels"}, "test": {...}}``,

plus optionally the classifier ``weight [K, D]`` and ``bias [K]`` (top level), ``num_classes``
(else ``max(label) + 1`` over all splits, or ``weight.shape[0]``) and ``class_names``. In a
``.npz`` or ``.safetensors`` file, split arrays are named ``train/features``,
``train/labels``, …; a ``.safetensors`` file keeps ``num_classes`` (an integer string) and
``class_names`` (a JSON list) in its string metadata, since it holds only tensors.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FeatureFile",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "digits_feature_file",
    "load_feature_file",
    "write_csv",
    "write_json",
]


@dataclass
class FeatureFile:
    """Contents of a feature file: per-split ``(features, labels)`` and the classifier."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    class_names: list[str] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _from_mapping(data: Mapping[str, Any], source: str) -> FeatureFile:
    def tensor(v: Any, name: str) -> torch.Tensor:
        if isinstance(v, np.ndarray):
            return torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{source}: {name} must be a tensor/array, got {type(v).__name__}")
        return v

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if "features" in data or "labels" in data:
        if "features" not in data or "labels" not in data:
            raise ValueError(f"{source}: needs both 'features' and 'labels'")
        splits["all"] = (tensor(data["features"], "features"), tensor(data["labels"], "labels"))
    for key, value in data.items():
        if isinstance(value, Mapping) and ("features" in value or "labels" in value):
            if "features" not in value or "labels" not in value:
                raise ValueError(f"{source}: split {key!r} needs both 'features' and 'labels'")
            splits[str(key)] = (
                tensor(value["features"], f"{key}.features"),
                tensor(value["labels"], f"{key}.labels"),
            )
    for key, (x, y) in splits.items():
        if x.ndim != 2:
            raise ValueError(
                f"{source}: split {key!r}: features must be [N, D], got {list(x.shape)}"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{source}: split {key!r}: {x.shape[0]} feature rows but labels of shape "
                f"{list(y.shape)}"
            )
    if not splits:
        raise ValueError(
            f"{source}: no features found; expected keys 'features' and 'labels' or per-split "
            "mappings such as {'train': {'features': ..., 'labels': ...}}"
        )
    weight = tensor(data["weight"], "weight") if data.get("weight") is not None else None
    bias = tensor(data["bias"], "bias") if data.get("bias") is not None else None
    if "num_classes" in data:
        num_classes = int(data["num_classes"])
    elif weight is not None:
        num_classes = int(weight.shape[0])
    else:
        num_classes = 1 + max(int(y.max()) for _, y in splits.values() if y.numel())
    names = data.get("class_names")
    class_names = [str(n) for n in names] if names is not None else None
    return FeatureFile(splits, num_classes, weight, bias, class_names, source)


def load_feature_file(path: str | os.PathLike[str]) -> FeatureFile:
    """Load a feature file: ``.pt``/``.pth`` (``weights_only=True``), ``.npz`` or ``.safetensors``.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        Missing file, unknown layout, or a pickle that needs arbitrary code to load.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"feature file not found: {p}")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            flat: dict[str, Any] = {}
            for key in npz.files:
                value = npz[key]
                if "/" in key:
                    split, name = key.split("/", 1)
                    flat.setdefault(split, {})[name] = value
                elif value.ndim == 0:
                    flat[key] = value.item()
                else:
                    flat[key] = value
        return _from_mapping(flat, str(p))
    if p.suffix == ".safetensors":
        return _from_mapping(_load_safetensors(p), str(p))
    data = _safe_load(p)
    if not isinstance(data, Mapping):
        raise ValueError(f"{p}: expected a dict of tensors, got {type(data).__name__}")
    return _from_mapping(data, str(p))


def _load_safetensors(p: Path) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` file, split keys nested, metadata parsed."""
    from safetensors import SafetensorError, safe_open

    flat: dict[str, Any] = {}
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():
                value = fh.get_tensor(key)
                if "/" in key:
                    split, name = key.split("/", 1)
                    flat.setdefault(split, {})[name] = value
                else:
                    flat[key] = value
    except SafetensorError as err:
        raise ValueError(f"{p}: not a readable safetensors file ({err})") from err
    if "num_classes" in meta:
        try:
            flat["num_classes"] = int(meta["num_classes"])
        except ValueError as err:
            raise ValueError(
                f"{p}: metadata num_classes={meta['num_classes']!r} is not an int"
            ) from err
    if "class_names" in meta:
        try:
            flat["class_names"] = json.loads(meta["class_names"])
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: metadata class_names is not a JSON list") from err
    return flat


def _safe_load(p: Path) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file format allows it."""
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for objects outside the weights-only allowlist
        raise ValueError(
            f"{p}: could not be loaded with torch.load(weights_only=True) ({err}). Save plain "
            "tensors and dicts (e.g. model.state_dict()), not pickled Python objects."
        ) from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The file gets the mode a plain ``open(path, "w")`` would (``0666 & ~umask``, so 0644
    under the usual umask 022), not ``mkstemp``'s 0600. On any exception, Ctrl-C included,
    the temporary file is removed and ``path`` is untouched: a crash leaves either the old
    file or the new one, never half of one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/Inf are refused, not written)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_csv(
    path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], columns: list[str]
) -> None:
    """Atomically write ``rows`` (mappings) as CSV with the given column order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row[c] for c in columns})
    atomic_write_text(path, buf.getvalue())


def digits_feature_file(*, test_size: float = 0.3, seed: int = 0) -> FeatureFile:
    """Built-in real data: scikit-learn's 8×8 digits (1797 images, 10 classes, 64 features).

    Features are the pixel intensities scaled to [0, 1]; the classifier is a multinomial
    logistic regression fitted on the stratified train split (``test_size``, ``seed``).
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit(x_tr, y_tr)
    return FeatureFile(
        splits={
            "train": (torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
            "test": (torch.from_numpy(x_te), torch.from_numpy(y_te)),
        },
        num_classes=10,
        weight=torch.from_numpy(clf.coef_.copy()),
        bias=torch.from_numpy(clf.intercept_.copy()),
        class_names=[str(c) for c in range(10)],
        source="sklearn-digits",
    )
