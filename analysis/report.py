"""The tidy report: one row per (run, checkpoint, split, layer, metric), read back.

The results database (:mod:`analysis.store`) is the source of truth; ``report.csv`` and
``report.json`` are its exports. Columns (:data:`COLUMNS`): ``run``, ``checkpoint`` (file stem),
``epoch`` and ``step`` (int, or empty when unknown — read from the checkpoint, else parsed from
the file name: ``epoch12``, ``ep_12``, ``step-3000``, ``iter3000``), ``split``, ``layer`` (the
module whose input are the features), ``metric``, ``value`` (float). ``report.json`` also holds
``schema``, every run's settings (``runs``) and the omitted metrics with reasons (``omitted``).

:func:`load` gives the table as a pandas ``DataFrame``; :class:`Report` as a list of dicts.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.store import COLUMNS, DB_NAME, REPORT_SCHEMA, open_existing

__all__ = ["COLUMNS", "SCHEMA", "Report", "linear_probe", "load"]

SCHEMA = REPORT_SCHEMA


def load(out: str | os.PathLike[str]) -> Any:
    """The tidy table of an output folder as a ``pandas.DataFrame`` (from its database).

    Columns :data:`COLUMNS`; ``epoch``/``step`` are nullable integers (``Int64``).
    """
    import pandas as pd

    with open_existing(out) as store:
        rows = store.rows()
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"epoch": "Int64", "step": "Int64", "value": "float64"})


@dataclass
class Report:
    """Rows of the tidy table and every run's settings, read from an output folder."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Report:
        """Read an output folder (its database), ``report.json`` or ``report.csv``.

        Raises
        ------
        FileNotFoundError
            Nothing to read at ``path``.
        ValueError
            Not a geomtools report of this schema.
        """
        p = Path(path)
        if p.is_dir():
            if (p / DB_NAME).is_file():
                with open_existing(p) as store:
                    return cls(rows=store.rows(), runs=store.runs())
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
        return cls(rows=list(data["rows"]), runs=dict(data.get("runs", {})))

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
