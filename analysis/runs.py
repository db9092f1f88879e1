"""Runs: validated names, the TOML manifest, and the user's model/data factories.

A *run* is one training run: a name, the checkpoints it produced, the factory that builds its
model, the factory that returns its data, and the analysis options (feature layer, weights).
Run names are data, never paths: they match ``[A-Za-z0-9._-]+`` and are not ``.``/``..``, so a
name can never point outside the output folder.

Factories are given as ``"package.module:callable"``. They are imported the way
``python -m`` imports: the current working directory comes first on ``sys.path``, so a module
``mymodels.py`` next to where you run ``geomtools`` is found without setting ``PYTHONPATH``.
Keyword arguments come as JSON objects (``--model-kwargs '{"width": 64}'``) or as TOML tables
in a manifest.

Manifest (``--config runs.toml``)::

    [[run]]
    name = "linear"                      # optional: default is the checkpoints' folder name
    checkpoints = ["ck/linear/*.pt"]     # paths, folders or globs, relative to the manifest
    model = "mymodels:build"
    model_kwargs = { head = "linear" }
    data = "mydata:splits"               # data_kwargs, layer (a name or a list), pool,
                                         # weights, num_classes, hierarchy, classes optional

Keys of a ``[[run]]`` table that are not listed above are an error (a typo is never ignored).
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from analysis.checkpoints import CHECKPOINT_SUFFIXES, list_checkpoints

__all__ = [
    "RunSpec",
    "load_manifest",
    "parse_kwargs",
    "resolve",
    "runs_from_paths",
    "validate_run_name",
]

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MANIFEST_KEYS = {
    "name",
    "checkpoints",
    "model",
    "model_kwargs",
    "data",
    "data_kwargs",
    "layer",
    "pool",
    "weights",
    "num_classes",
    "hierarchy",
    "classes",
}


def validate_run_name(name: str, *, source: str = "run name") -> str:
    """Return ``name`` if it is a safe run name, else raise a one-line ``ValueError``.

    Allowed: one or more of ``A-Z a-z 0-9 . _ -``, and not ``.`` or ``..``. Names are stored
    in the results database and used in figure file names; they never become paths.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(
            f"{source} {name!r} is not a valid run name: use letters, digits, '.', '_' and "
            "'-' only (not '.' or '..'); name the run with --run or a manifest"
        )
    return name


@dataclass
class RunSpec:
    """One run to analyse: its name, checkpoint files, factories and options.

    ``model``/``data`` are ``"package.module:callable"`` strings or callables; when a callable
    is given, ``model_label``/``data_label`` name it in the database (resume keys on them).
    ``similarity`` (a target frame's ``[K, K]`` Gram matrix) adds ``frame_distance``;
    ``attributes`` (JSON-able) are stored with the run for the figures (e.g. a swept value).
    """

    name: str
    checkpoints: list[Path]
    model: str | Callable[..., Any]
    data: str | Callable[..., Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    pool: Literal["avg", "max", "flatten"] = "avg"
    weights: str = "model"
    num_classes: int | None = None
    model_label: str | None = None
    data_label: str | None = None
    similarity: Any = None
    attributes: dict[str, Any] = field(default_factory=dict)
    hierarchy: Path | None = None
    classes: Path | None = None

    def __post_init__(self) -> None:
        validate_run_name(self.name)
        if self.weights not in ("model", "ema"):
            raise ValueError(f"run {self.name!r}: weights must be 'model' or 'ema'")
        if self.pool not in ("avg", "max", "flatten"):
            raise ValueError(f"run {self.name!r}: pool must be 'avg', 'max' or 'flatten'")
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        if not all(isinstance(la, str) and la for la in self.layers):
            raise ValueError(f"run {self.name!r}: layer must be a module name or a list of them")
        if self.classes is not None and self.hierarchy is None:
            raise ValueError(f"run {self.name!r}: a class-name file needs a hierarchy")
        for what in ("hierarchy", "classes"):
            value = getattr(self, what)
            if value is not None:
                setattr(self, what, Path(value))
                if not Path(value).is_file():
                    raise FileNotFoundError(f"run {self.name!r}: {what} file not found: {value}")
        if self.num_classes is not None and (
            not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise ValueError(f"run {self.name!r}: num_classes must be a positive integer")

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored with the run (and part of the resume key)."""
        return {
            "model": self.model_label or _label(self.model),
            "model_kwargs": self.model_kwargs,
            "data": self.data_label or _label(self.data),
            "data_kwargs": self.data_kwargs,
            "layers": list(self.layers),
            "pool": self.pool,
            "weights": self.weights,
            "num_classes": self.num_classes,
            "hierarchy": _file_key(self.hierarchy),
            "classes": _file_key(self.classes),
        }

    def build_model(self) -> Any:
        """Call the model factory with its keyword arguments."""
        return _call(self.model, self.model_kwargs, "--model")

    def build_data(self) -> Any:
        """Call the data factory with its keyword arguments."""
        return _call(self.data, self.data_kwargs, "--data")


def _file_key(path: Path | None) -> str | None:
    """``name@sha256-prefix`` of a side file: a changed hierarchy recomputes the run."""
    if path is None:
        return None
    from analysis.checkpoints import content_hash

    return f"{path.name}@{content_hash(path)[:16]}"


def _label(obj: str | Callable[..., Any]) -> str:
    if isinstance(obj, str):
        return obj
    mod = getattr(obj, "__module__", None) or "?"
    return f"{mod}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def _call(spec: str | Callable[..., Any], kwargs: Mapping[str, Any], flag: str) -> Any:
    fn = resolve(spec)
    try:
        return fn(**kwargs)
    except TypeError as err:
        if kwargs and "argument" in str(err):
            raise ValueError(
                f"{flag} {_label(spec)} rejected its keyword arguments: {err}"
            ) from err
        raise


def resolve(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``"package.module:callable"`` into the callable (callables pass through).

    The current working directory is put first on ``sys.path`` (as ``python -m`` does), so
    modules beside the caller import without ``PYTHONPATH``.

    Raises
    ------
    ValueError
        Malformed spec, module not importable, or attribute missing / not callable — one line
        naming what was looked for.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"expected 'package.module:callable', got {spec!r}")
    mod_name, attr = spec.split(":")
    if not mod_name or not attr:
        raise ValueError(f"expected 'package.module:callable', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import module {mod_name!r} (from {spec!r}; looked in the current "
            f"directory {cwd} and on sys.path): {err}"
        ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable (got {type(obj).__name__})")
    return obj


def parse_kwargs(text: str | None, flag: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line (``None`` → ``{}``)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag}: not valid JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{flag}: expected a JSON object like '{{\"width\": 64}}'")
    return value


def _run_name_of(path: Path) -> str:
    folder = path if path.is_dir() else path.parent
    return folder.resolve().name


def runs_from_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    model: str | Callable[..., Any],
    data: str | Callable[..., Any],
    run: str | None = None,
    **options: Any,
) -> list[RunSpec]:
    """One run per checkpoint folder: the positional arguments of ``geomtools analyze``.

    Each folder is its own run, named after the folder; a file belongs to the run of its
    folder (files of one folder form one run). ``run`` renames the run and is allowed with
    one path only.

    Raises
    ------
    ValueError
        ``run`` with several paths, two different folders giving one run name (both named),
        or an invalid run name.
    FileNotFoundError
        A path that does not exist, or a folder without checkpoints.
    """
    if not paths:
        raise ValueError("no checkpoint paths given")
    if run is not None and len(paths) > 1:
        raise ValueError(
            f"--run names one run but {len(paths)} paths were given; use one path per call "
            "or a --config manifest"
        )
    groups: dict[str, tuple[Path, list[Path]]] = {}
    for raw in paths:
        p = Path(raw)
        files = list_checkpoints([p])
        folder = (p if p.is_dir() else p.parent).resolve()
        name = run if run is not None else _run_name_of(p)
        validate_run_name(name, source=f"run name of {raw}")
        if name in groups and groups[name][0] != folder:
            raise ValueError(
                f"{groups[name][0]} and {folder} both give run name {name!r}; analyse them in "
                "separate calls with --run, or name them in a --config manifest"
            )
        groups.setdefault(name, (folder, []))[1].extend(files)
    return [
        RunSpec(name=name, checkpoints=list_checkpoints(files), model=model, data=data, **options)
        for name, (_, files) in groups.items()
    ]


def load_manifest(path: str | os.PathLike[str], **defaults: Any) -> list[RunSpec]:
    """Read a TOML manifest of ``[[run]]`` tables (see the module docstring).

    Relative checkpoint paths and globs are relative to the manifest's folder. ``defaults``
    (from the command line) fill keys a table leaves out.

    Raises
    ------
    FileNotFoundError
        Missing manifest, or a checkpoint path/glob that matches nothing.
    ValueError
        Invalid TOML, unknown keys, missing ``checkpoints``/``model``/``data``, duplicate or
        invalid run names.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10: the same parser, as a package
        import tomli as tomllib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p}: not valid TOML ({err})") from err
    tables = doc.get("run")
    extra = sorted(set(doc) - {"run"})
    if extra:
        raise ValueError(f"{p}: unknown top-level keys {extra}; expected [[run]] tables")
    if not isinstance(tables, list) or not tables:
        raise ValueError(f"{p}: no [[run]] tables")
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for i, table in enumerate(tables, 1):
        where = f"{p}, [[run]] #{i}"
        unknown = sorted(set(table) - _MANIFEST_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} (allowed: {sorted(_MANIFEST_KEYS)})")
        merged = {**{k: v for k, v in defaults.items() if v is not None}, **table}
        for key in ("checkpoints", "model", "data"):
            if key not in merged:
                raise ValueError(f"{where}: missing {key!r}")
        patterns = merged.pop("checkpoints")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(s, str) for s in patterns):
            raise ValueError(f"{where}: 'checkpoints' must be a string or a list of strings")
        files: list[Path] = []
        for pattern in patterns:
            full = pattern if os.path.isabs(pattern) else str(p.parent / pattern)
            hits = sorted(glob.glob(full)) if glob.has_magic(pattern) else [full]
            hits = [h for h in hits if Path(h).is_dir() or Path(h).suffix in CHECKPOINT_SUFFIXES]
            if not hits:
                raise FileNotFoundError(f"{where}: no checkpoint matches {pattern!r}")
            files.extend(list_checkpoints(hits))
        name = merged.pop("name", None) or _run_name_of(files[0])
        validate_run_name(str(name), source=f"{where}: name")
        if name in seen:
            raise ValueError(f"{where}: run name {name!r} appears twice in the manifest")
        seen.add(name)
        for key in ("model_kwargs", "data_kwargs"):
            if not isinstance(merged.get(key, {}), dict):
                raise ValueError(f"{where}: {key!r} must be a table")
        if "layer" in merged:
            layer = merged.pop("layer")
            merged["layers"] = [layer] if isinstance(layer, str) else layer
        for key in ("hierarchy", "classes"):
            if isinstance(table.get(key), str) and not os.path.isabs(table[key]):
                merged[key] = p.parent / table[key]  # relative to the manifest, as checkpoints
        runs.append(RunSpec(name=str(name), checkpoints=list_checkpoints(files), **merged))
    return runs
