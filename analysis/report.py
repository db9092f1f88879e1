"""The tidy report: one row per (run, checkpoint, split, metric), written atomically.

Schema (``COLUMNS``): ``run`` (model / head name), ``checkpoint`` (file stem), ``epoch`` and
``step`` (int, or empty when unknown — read from checkpoint metadata, else parsed from the
file name: ``epoch12``, ``ep_12``, ``step-3000``, ``iter3000``), ``split``, ``metric``,
``value`` (float). Written as ``report.csv`` and ``report.json`` (the JSON also carries
``schema`` and free-form ``artifacts``, e.g. cached statistics per checkpoint, for the
figures); both through a temporary file and a rename.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.io import write_csv, write_json

__all__ = ["COLUMNS", "SCHEMA", "Report", "linear_probe", "parse_position"]

COLUMNS = ["run", "checkpoint", "epoch", "step", "split", "metric", "value"]
SCHEMA = "geomtools.report/1"

_EPOCH = re.compile(r"(?:^|[^a-z])(?:epoch|ep)[_\-=]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"(?:^|[^a-z])(?:step|iter|it)[_\-=]?(\d+)", re.IGNORECASE)


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


@dataclass
class Report:
    """Rows of the tidy table plus artifacts (paths of cached statistics etc.)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        *,
        run: str,
        checkpoint: str,
        split: str,
        metrics: Mapping[str, float],
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        """Append one row per metric; non-finite values are refused (``ValueError``)."""
        bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"{run}/{checkpoint}/{split}: non-finite metric values for {bad}")
        for metric, value in metrics.items():
            self.rows.append(
                {
                    "run": run,
                    "checkpoint": checkpoint,
                    "epoch": epoch,
                    "step": step,
                    "split": split,
                    "metric": metric,
                    "value": float(value),
                }
            )

    def write(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``report.csv`` and ``report.json`` into ``out_dir`` atomically."""
        if not self.rows:
            raise ValueError("empty report: no checkpoint was analysed")
        out = Path(out_dir)
        csv_rows = [{k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in self.rows]
        write_csv(out / "report.csv", csv_rows, COLUMNS)
        write_json(
            out / "report.json",
            {"schema": SCHEMA, "columns": COLUMNS, "rows": self.rows, "artifacts": self.artifacts},
        )
        return out / "report.csv", out / "report.json"

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Report:
        """Read ``report.json`` (or ``report.csv``; a folder means its ``report.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        if not p.is_file():
            raise FileNotFoundError(f"report not found: {p}")
        if p.suffix == ".csv":
            with p.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != COLUMNS:
                    raise ValueError(f"{p}: columns {reader.fieldnames}, expected {COLUMNS}")
                rows = [
                    {
                        **r,
                        "epoch": int(r["epoch"]) if r["epoch"] else None,
                        "step": int(r["step"]) if r["step"] else None,
                        "value": float(r["value"]),
                    }
                    for r in reader
                ]
            return cls(rows=rows)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: not valid JSON ({err})") from err
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"{p}: not a geomtools report (schema {SCHEMA!r} expected)")
        return cls(rows=list(data["rows"]), artifacts=dict(data.get("artifacts", {})))

    def value(self, run: str, split: str, metric: str, checkpoint: str | None = None) -> float:
        """One value (the last checkpoint of ``run`` when ``checkpoint`` is omitted)."""
        hits = [
            r
            for r in self.rows
            if r["run"] == run
            and r["split"] == split
            and r["metric"] == metric
            and (checkpoint is None or r["checkpoint"] == checkpoint)
        ]
        if not hits:
            raise KeyError(f"no value for run={run!r} split={split!r} metric={metric!r}")
        return float(hits[-1]["value"])


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
    holdout: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe transfer accuracy (Kornblith et al. 2021 style).

    A multinomial ``sklearn.linear_model.LogisticRegression`` on standardised features;
    the inverse regularisation ``C`` is chosen on a stratified held-out ``holdout`` fraction
    of the train split, then the model is refitted on the whole train split and scored on
    ``test``.

    Returns
    -------
    dict
        ``linear_probe_accuracy`` (test), ``linear_probe_c`` (chosen C).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_tr, y_tr = train
    x_te, y_te = test
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError("linear_probe: features and labels differ in length")
    a, b, ya, yb = train_test_split(x_tr, y_tr, test_size=holdout, random_state=seed, stratify=y_tr)

    def fit(c: float, x: np.ndarray, y: np.ndarray) -> Any:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        return clf.fit(x, y)

    scores = [float(fit(c, a, ya).score(b, yb)) for c in cs]
    best = float(cs[int(np.argmax(scores))])
    acc = float(fit(best, x_tr, y_tr).score(x_te, y_te))
    return {"linear_probe_accuracy": acc, "linear_probe_c": best}
