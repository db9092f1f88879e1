"""Checkpoint files as people save them: finding, hashing, reading and matching to a model.

Reading is always safe: ``torch.load(..., weights_only=True)`` (or ``safetensors``), so a
checkpoint never runs code unless the user says ``--trust-checkpoint``.

Accepted layouts (:func:`read_checkpoint`)
------------------------------------------
* a raw ``state_dict`` (``torch.save(model.state_dict(), f)``);
* a dict holding it under ``"state_dict"`` (PyTorch Lightning ``.ckpt``), ``"model"``,
  ``"model_state_dict"`` or ``"module"``, with ``"epoch"``, ``"step"`` or Lightning's
  ``"global_step"`` beside it;
* ``.safetensors`` state dicts (``epoch``/``step`` from the file's string metadata, if there);
* with ``weights="ema"``: the EMA weights under ``"state_dict_ema"`` (timm), ``"model_ema"``
  or ``"ema"``, or, inside a Lightning ``state_dict``, under an attribute prefix containing
  ``ema``.

Matching to the model (:func:`match_state_dict`)
------------------------------------------------
The keys must equal the model's ``state_dict`` keys after removing wrapper prefixes shared by
every key — ``module.`` (``DistributedDataParallel``, ``DataParallel``, ``AveragedModel``) and
``_orig_mod.`` (``torch.compile``) — or after selecting one attribute prefix that the wrapped
network carries (Lightning: ``model.``, ``net.``, …; keys outside it, such as a loss's
buffers, belong to the wrapper and are not loaded). Exactly one way may match; two are refused
as ambiguous. Shapes are compared before loading, and a mismatch names the parameter and both
shapes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Checkpoint",
    "content_hash",
    "list_checkpoints",
    "load_into",
    "match_state_dict",
    "parse_position",
    "read_checkpoint",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")

_EPOCH = re.compile(r"(?:^|[^a-z])(?:epoch|ep)[_\-=]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"(?:^|[^a-z])(?:step|iter|it)[_\-=]?(\d+)", re.IGNORECASE)
_WRAPPERS = ("module.", "_orig_mod.")
_MODEL_KEYS = ("state_dict", "model", "model_state_dict", "module")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def parse_position(name: str) -> tuple[int | None, int | None]:
    """``(epoch, step)`` parsed from a checkpoint file name (``None`` where absent).

    >>> parse_position("resnet_epoch012.pt")
    (12, None)
    >>> parse_position("ckpt-step-3000.pth")
    (None, 3000)
    """
    stem = Path(name).name
    e, s = _EPOCH.search(stem), _STEP.search(stem)
    return (int(e.group(1)) if e else None, int(s.group(1)) if s else None)


def list_checkpoints(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Checkpoint files from files and folders (a folder: its files with a checkpoint suffix).

    Suffixes: ``.pt .pth .ckpt .bin .safetensors``. Ordered by parsed epoch/step, then name
    (``epoch2`` before ``epoch10``); duplicates removed.

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a folder without checkpoints.
    """
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES
            )
            if not found:
                raise FileNotFoundError(
                    f"no checkpoint files ({' '.join(CHECKPOINT_SUFFIXES)}) in {p}"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"checkpoint not found: {p}")

    def key(f: Path) -> tuple[int, int, str]:
        epoch, step = parse_position(f.name)
        return (epoch if epoch is not None else -1, step if step is not None else -1, f.name)

    return sorted(dict.fromkeys(files), key=key)


def content_hash(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in ``chunk``-sized pieces (never the whole file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found: the tensors, position and where they came from."""

    state_dict: dict[str, torch.Tensor]
    epoch: int | None
    step: int | None
    layout: str
    ema_by_prefix: bool = False  # the EMA weights are the keys under an 'ema' attribute prefix


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _torch_load(p: Path, trust: bool) -> Any:
    corrupt = (
        f"{p}: not a readable torch checkpoint (corrupt, truncated or not written by torch.save)"
    )
    # torch may warn about what it reads (e.g. a pickle protocol) before failing on a corrupt
    # file: those warnings are shown only when the file loads, so an error stays one line
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as err:
            text = str(err)
            if not trust and "Unsupported global" in text:
                raise ValueError(
                    f"{p}: holds pickled Python objects (e.g. a whole nn.Module), which "
                    "torch.load(weights_only=True) refuses to run; save model.state_dict(), "
                    "or pass --trust-checkpoint if you trust this file"
                ) from err
            raise ValueError(corrupt) from err
        except Exception as err:  # truncated zip, random bytes, ...
            raise ValueError(corrupt) from err
    for w in seen:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{p}: not a readable safetensors file ({_first_line(err)})") from err
    return tensors, dict(meta)


def read_checkpoint(
    path: str | os.PathLike[str], *, weights: str = "model", trust: bool = False
) -> Checkpoint:
    """Read a checkpoint's tensors and position from any accepted layout (module docstring).

    Parameters
    ----------
    path : path-like
    weights : {"model", "ema"}
        Which weights to take when the file holds both.
    trust : bool
        Allow full unpickling (``weights_only=False``) — only for files you trust; a pickled
        ``nn.Module`` is then reduced to its ``state_dict()``.

    Returns
    -------
    Checkpoint
        ``epoch``/``step`` from the file's keys (``None`` when absent); the caller may fall
        back to the file name (:func:`parse_position`).

    Raises
    ------
    FileNotFoundError
        Missing file.
    ValueError
        Unreadable file, a pickle that needs code (without ``trust``), or no state_dict of the
        requested ``weights`` inside — each one line naming the file.
    """
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        tensors, meta = _read_safetensors(p)
        if weights == "ema":
            raise ValueError(f"{p}: a .safetensors file holds one set of weights; no EMA weights")
        if not tensors:
            raise ValueError(f"{p}: the safetensors file holds no tensors")
        return Checkpoint(
            tensors, _int_or_none(meta.get("epoch")), _int_or_none(meta.get("step")), "safetensors"
        )
    obj = _torch_load(p, trust)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p}: expected a dict (a state_dict), got {type(obj).__name__}")
    epoch = _int_or_none(obj.get("epoch"))
    step = _int_or_none(obj.get("step"))
    if step is None:
        step = _int_or_none(obj.get("global_step"))
    keys = _EMA_KEYS if weights == "ema" else _MODEL_KEYS
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if isinstance(inner, Mapping) and _is_state_dict(_drop_bookkeeping(inner)):
            return Checkpoint(dict(_drop_bookkeeping(inner)), epoch, step, f"{key!r} entry")
    if _is_state_dict(obj):
        if weights == "ema":
            if not any(_is_ema_name(k.split(".", 1)[0]) for k in obj):
                raise ValueError(
                    f"{p}: --weights ema, but the file has no EMA weights (looked for "
                    f"{', '.join(repr(k) for k in _EMA_KEYS)} and an 'ema' key prefix)"
                )
            return Checkpoint(dict(obj), epoch, step, "raw state_dict (EMA prefix)", True)
        return Checkpoint(dict(obj), epoch, step, "raw state_dict")
    if weights == "ema":
        # Lightning: EMA copies live inside the state_dict under an attribute like 'ema_model.'
        inner = obj.get("state_dict")
        if (
            isinstance(inner, Mapping)
            and _is_state_dict(inner)
            and any(_is_ema_name(k.split(".", 1)[0]) for k in inner)
        ):
            return Checkpoint(dict(inner), epoch, step, "'state_dict' entry (EMA prefix)", True)
        raise ValueError(
            f"{p}: --weights ema, but the file has no EMA weights (looked for "
            f"{', '.join(repr(k) for k in _EMA_KEYS)}); top-level keys: {_short(list(obj))}"
        )
    raise ValueError(
        f"{p}: no state_dict found (expected a dict of tensors, or one under "
        f"{', '.join(repr(k) for k in _MODEL_KEYS)}); top-level keys: {_short(list(obj))}"
    )


def _is_ema_name(attribute: str) -> bool:
    """``ema``, ``model_ema``, ``ema-model``, ``netEMA``... — not ``semantic_head``."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", attribute).lower()
    return "ema" in re.split(r"[_\-.]+", words)


def _drop_bookkeeping(sd: Mapping[str, Any]) -> Mapping[str, Any]:
    # torch.optim.swa_utils.AveragedModel keeps its update count beside 'module.*'
    if "n_averaged" in sd and all(k == "n_averaged" or k.startswith("module.") for k in sd):
        return {k: v for k, v in sd.items() if k != "n_averaged"}
    return sd


def _short(keys: list[str], n: int = 6) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    out, removed = dict(sd), ""
    changed = True
    while changed and out:
        changed = False
        for w in _WRAPPERS:
            if all(k.startswith(w) for k in out):
                out = {k[len(w) :]: v for k, v in out.items()}
                removed += w
                changed = True
    return out, removed


def match_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    weights: str = "model",
    ema_by_prefix: bool = False,
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], str]:
    """Map a checkpoint's keys onto ``model``'s (module docstring: wrappers, one prefix).

    Parameters
    ----------
    model : nn.Module
    state_dict : mapping
    weights : {"model", "ema"}
        When two prefixes match, the one with (``"ema"``) or without (``"model"``) an ``ema``
        attribute name is taken.
    ema_by_prefix : bool
        The EMA weights are those under an ``ema`` attribute prefix (what
        :func:`read_checkpoint` reports in ``Checkpoint.ema_by_prefix``): only such a prefix
        may match.
    source : str
        Names the checkpoint in error messages.

    Returns
    -------
    (state_dict, prefix)
        The tensors under the model's own key names, and the prefix that was removed
        (``""`` when the keys matched as they are).

    Raises
    ------
    ValueError
        No way of matching (the closest one's missing/unexpected keys are named), two ways
        (ambiguous), or a shape mismatch (the first parameters and both shapes named).
    """
    expected = model.state_dict()
    target = set(expected)
    candidates: list[tuple[str, dict[str, torch.Tensor]]] = [("", dict(state_dict))]
    base, removed = _strip_wrappers(state_dict)
    if removed:
        candidates.append((removed, base))
    for first in sorted({k.split(".", 1)[0] for k in base if "." in k}):
        sub = {k[len(first) + 1 :]: v for k, v in base.items() if k.startswith(first + ".")}
        sub, inner = _strip_wrappers(_drop_bookkeeping(sub))
        candidates.append((f"{removed}{first}.{inner}", sub))
    exact = [(pre, sd) for pre, sd in candidates if set(sd) == target]

    def ema_prefix(pre: str) -> bool:
        return any(_is_ema_name(part) for part in pre.split(".") if part)

    if ema_by_prefix:
        exact = [(pre, sd) for pre, sd in exact if ema_prefix(pre)]
        if not exact:
            names = sorted({pre for pre, _ in candidates if ema_prefix(pre)})
            raise ValueError(
                f"{source}: --weights ema, but no EMA prefix ({', '.join(names) or 'none'}) "
                "holds weights matching the model"
            )
    if len(exact) > 1:
        want_ema = weights == "ema"
        preferred = [(pre, sd) for pre, sd in exact if ema_prefix(pre) == want_ema]
        if len(preferred) == 1:
            exact = preferred
    if len(exact) > 1:
        prefixes = ", ".join(repr(pre) for pre, _ in exact)
        raise ValueError(
            f"{source}: the model's keys match under several prefixes ({prefixes}); "
            "ambiguous — save the network's own state_dict"
        )
    if not exact:
        pre, sd = max(candidates, key=lambda c: (len(set(c[1]) & target), -len(c[0])))
        missing = sorted(target - set(sd))
        unexpected = sorted(set(sd) - target)
        problems = []
        if missing:
            problems.append(f"missing keys {_short(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_short(unexpected)}")
        via = f" (after removing prefix {pre!r})" if pre else ""
        raise ValueError(
            f"{source}: checkpoint does not match the model{via}: {'; '.join(problems)}"
        )
    pre, sd = exact[0]
    bad = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(
            f"{source}: shape mismatch: {k!r} is {list(sd[k].shape)} in the checkpoint but "
            f"{list(expected[k].shape)} in the model{more}"
        )
    return sd, pre


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    weights: str = "model",
    ema_by_prefix: bool = False,
    source: str = "checkpoint",
) -> str:
    """Load ``state_dict`` into ``model`` after :func:`match_state_dict`; return the prefix."""
    sd, prefix = match_state_dict(
        model, state_dict, weights=weights, ema_by_prefix=ema_by_prefix, source=source
    )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{source}: could not be loaded into the model ({_first_line(err)})"
        ) from err
    return prefix
