"""``OUT/results.sqlite``: the single source of truth of every analysis written into ``OUT``.

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

=============== =====================================================================
``runs``        name, spec (JSON: model/data factories, kwargs, layer, weights, options),
                attributes (JSON: e.g. a sweep value or a class order for the figures)
``checkpoints`` run, name, path, sha256 of the file's bytes, the resume key (JSON of the
                run's spec and the analysis options), epoch, step, how it was read
``metrics``     run, checkpoint, split, layer, metric, value (+ ``seq``: the row order)
``omitted``     run, checkpoint, split, layer, metric, reason — undefined metrics, listed
``tensors``     run, checkpoint, split, layer, name, data — per-checkpoint statistics
                (``FeatureStats`` state per split, classifier rows, target similarity) as
                ``torch.save`` bytes, read back with ``weights_only=True``
=============== =====================================================================

Every checkpoint's rows are written in one transaction (``BEGIN IMMEDIATE``), so a crash or
kill leaves a checkpoint either fully stored or absent. The database runs in WAL mode with a
busy timeout, so several ``geomtools analyze`` processes can write into one ``OUT``. The
exports ``report.csv``/``report.json`` are regenerated from the database (inside a write
transaction, so the last export of concurrent processes holds everything committed) and always
hold every run analysed into ``OUT``.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from analysis.io import write_csv, write_json

__all__ = ["DB_NAME", "SCHEMA_VERSION", "ResultsStore", "open_existing"]

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1
_APP_ID = 0x67656F6D  # "geom": marks the file as a geomtools results database
REPORT_SCHEMA = "geomtools.report/2"
COLUMNS = ["run", "checkpoint", "epoch", "step", "split", "layer", "metric", "value"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run TEXT NOT NULL REFERENCES runs(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    key TEXT NOT NULL,
    epoch INTEGER,
    step INTEGER,
    layout TEXT NOT NULL DEFAULT '',
    analysed REAL NOT NULL,
    PRIMARY KEY (run, name)
);
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    split TEXT NOT NULL,
    layer TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (run, checkpoint, split, layer, metric),
    FOREIGN KEY (run, checkpoint) REFERENCES checkpoints(run, name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS omitted (
    run TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    split TEXT NOT NULL,
    layer TEXT NOT NULL,
    metric TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (run, checkpoint, split, layer, metric),
    FOREIGN KEY (run, checkpoint) REFERENCES checkpoints(run, name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS tensors (
    run TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    split TEXT NOT NULL,
    layer TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run, checkpoint, split, layer, name),
    FOREIGN KEY (run, checkpoint) REFERENCES checkpoints(run, name) ON DELETE CASCADE
);
"""
_TABLES = ("runs", "checkpoints", "metrics", "omitted", "tensors")
# rows in the order runs were first stored, then training order within a run
_RUN = "JOIN runs r ON r.name = c.run"
_ORDER = "ORDER BY r.rowid, COALESCE(c.epoch, -1), COALESCE(c.step, -1), c.name"


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(blob: bytes, where: str) -> Any:
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{where}: stored tensors are unreadable ({type(err).__name__})") from err


def prepare_out(out: str | os.PathLike[str], *, create: bool = True) -> Path:
    """Create the output folder (or, with ``create=False``, check that it could be).

    Raises
    ------
    ValueError
        ``out`` is a file, lies under a file, cannot be created or is not writable, or holds
        a report from an older geomtools without ``results.sqlite``.
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"output folder {p} is a file, not a folder")
    ancestor = p
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot create output folder {p}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {p}: {ancestor} is not writable")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create output folder {p}: {err.strerror or err}") from err
    if (p / "report.json").is_file() and not (p / DB_NAME).exists():
        raise ValueError(
            f"{p} holds a report.json from an older geomtools but no {DB_NAME}; analyse into a "
            "new folder (its rows would otherwise be replaced)"
        )
    return p


class ResultsStore:
    """The results database of one output folder (module docstring).

    Parameters
    ----------
    out : path-like
        The output folder; created if missing (unless ``create=False``).
    create : bool
        Create the folder and the database when missing.
    timeout : float
        Seconds to wait for another process's write transaction.

    Raises
    ------
    ValueError
        Unusable folder, a file that is not a geomtools results database, or one of another
        schema version — one line naming the file.
    """

    def __init__(
        self, out: str | os.PathLike[str], *, create: bool = True, timeout: float = 600.0
    ) -> None:
        self.out = prepare_out(out) if create else Path(out)
        self.path = self.out / DB_NAME
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"no results database: {self.path}")
        self._created = False
        if create and not self.path.exists():
            # create the file ourselves: sqlite would use 0644 & ~umask, not the umask alone
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                self._created = True
            except FileExistsError:  # another process was first
                pass
        try:
            self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise ValueError(f"{self.path}: cannot open the results database ({err})") from err
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._check_or_create(create)
            self.db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise ValueError(
                f"{self.path}: not a usable geomtools results database ({err}); move it away "
                "or analyse into another folder"
            ) from err
        except BaseException:
            self.db.close()
            raise

    # ------------------------------------------------------------------ schema, transactions
    def _check_or_create(self, create: bool) -> None:
        app = self.db.execute("PRAGMA application_id").fetchone()[0]
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if app == _APP_ID and version == SCHEMA_VERSION:
            return
        with self.transaction():
            app = self.db.execute("PRAGMA application_id").fetchone()[0]
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app == 0 and tables == 0 and create:
                if not self._created and (self.out / "report.json").is_file():
                    raise ValueError(
                        f"{self.path} is empty but {self.out / 'report.json'} holds results; "
                        "restore the database or analyse into another folder (the report "
                        "would otherwise be replaced)"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA application_id = {_APP_ID}")
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                return
            if app != _APP_ID:
                raise ValueError(
                    f"{self.path}: not a geomtools results database; move it away or analyse "
                    "into another folder"
                )
            if version != SCHEMA_VERSION:
                who = "an older" if version < SCHEMA_VERSION else "a newer"
                raise ValueError(
                    f"{self.path}: written by {who} geomtools (results schema {version}; this "
                    f"version reads schema {SCHEMA_VERSION}); analyse into a new folder"
                    + (" or upgrade geomtools" if version > SCHEMA_VERSION else "")
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception, Ctrl-C included)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def upsert_run(
        self, name: str, spec: Mapping[str, Any], attributes: Mapping[str, Any] | None = None
    ) -> None:
        """Create or update a run's description (its checkpoints' rows are left alone)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO runs(name, spec, attributes, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, "
                "attributes = excluded.attributes, updated = excluded.updated",
                (
                    name,
                    json.dumps(spec, sort_keys=True),
                    json.dumps(dict(attributes or {}), sort_keys=True),
                    time.time(),
                ),
            )

    def stored_key(self, run: str, checkpoint: str) -> tuple[str, str] | None:
        """``(sha256, key)`` of a stored checkpoint, or ``None``."""
        row = self.db.execute(
            "SELECT sha256, key FROM checkpoints WHERE run = ? AND name = ?", (run, checkpoint)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def store_checkpoint(
        self,
        run: str,
        checkpoint: str,
        *,
        path: str,
        sha256: str,
        key: str,
        epoch: int | None,
        step: int | None,
        layout: str,
        metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
        omitted: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
        tensors: Mapping[tuple[str, str, str], Any] | None = None,
    ) -> None:
        """Replace one checkpoint's rows in one transaction.

        ``metrics[layer][split][metric]``; ``omitted[layer][split][metric] = reason``;
        ``tensors[(split, layer, name)]`` any object ``torch.save`` writes with tensors and
        plain containers only (split ``""`` for per-checkpoint tensors such as classifier
        rows). Rows are ordered split by split (in the order of the first layer), then layer,
        then metric.

        Raises
        ------
        ValueError
            A non-finite metric value (named); nothing is written then.
        """
        import math

        rows: list[tuple[str, str, str, str, str, float, int]] = []
        splits = list(dict.fromkeys(s for per_split in metrics.values() for s in per_split))
        for split in splits:
            for layer, per_split in metrics.items():
                m = per_split.get(split, {})
                bad = [k for k, v in m.items() if not math.isfinite(float(v))]
                if bad:
                    raise ValueError(
                        f"{run}/{checkpoint}/{split}/{layer}: non-finite metric values {bad}"
                    )
                for metric, value in m.items():
                    rows.append((run, checkpoint, split, layer, metric, float(value), len(rows)))
        blobs = [(s, la, n, _dumps(v)) for (s, la, n), v in (tensors or {}).items()]
        with self.transaction():
            self.db.execute("DELETE FROM checkpoints WHERE run = ? AND name = ?", (run, checkpoint))
            self.db.execute(
                "INSERT INTO checkpoints(run, name, path, sha256, key, epoch, step, layout, "
                "analysed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run, checkpoint, path, sha256, key, epoch, step, layout, time.time()),
            )
            self.db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self.db.executemany(
                "INSERT INTO omitted VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (run, checkpoint, split, layer, metric, reason)
                    for layer, per_split in (omitted or {}).items()
                    for split, o in per_split.items()
                    for metric, reason in o.items()
                ],
            )
            self.db.executemany(
                "INSERT INTO tensors VALUES (?, ?, ?, ?, ?, ?)",
                [(run, checkpoint, s, la, n, b) for s, la, n, b in blobs],
            )

    def prune_run(self, run: str, keep: Sequence[str]) -> int:
        """Delete the run's checkpoints not in ``keep``; return how many were deleted."""
        with self.transaction():
            names = [
                r[0] for r in self.db.execute("SELECT name FROM checkpoints WHERE run = ?", (run,))
            ]
            gone = [n for n in names if n not in set(keep)]
            self.db.executemany(
                "DELETE FROM checkpoints WHERE run = ? AND name = ?", [(run, n) for n in gone]
            )
        return len(gone)

    def forget(self, run: str) -> int:
        """Remove a run and every row of it; return its number of checkpoints.

        Raises
        ------
        KeyError
            No such run (the stored runs are named).
        """
        with self.transaction():
            if self.db.execute("SELECT 1 FROM runs WHERE name = ?", (run,)).fetchone() is None:
                raise KeyError(f"no run {run!r} in {self.path}; runs: {self.run_names() or 'none'}")
            n = self.db.execute(
                "SELECT count(*) FROM checkpoints WHERE run = ?", (run,)
            ).fetchone()[0]
            self.db.execute("DELETE FROM runs WHERE name = ?", (run,))
        return int(n)

    # ------------------------------------------------------------------ reading
    def run_names(self) -> list[str]:
        """Every stored run, by name."""
        return [r[0] for r in self.db.execute("SELECT name FROM runs ORDER BY rowid")]

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run → ``{"spec": ..., "attributes": ...}``."""
        return {
            name: {"spec": json.loads(spec), "attributes": json.loads(attrs)}
            for name, spec, attrs in self.db.execute(
                "SELECT name, spec, attributes FROM runs ORDER BY rowid"
            )
        }

    def checkpoints(self, run: str) -> list[dict[str, Any]]:
        """The run's stored checkpoints in training order (epoch, step, name)."""
        cur = self.db.execute(
            "SELECT c.name, c.path, c.sha256, c.epoch, c.step, c.layout FROM checkpoints c "
            f"{_RUN} WHERE c.run = ? {_ORDER}",
            (run,),
        )
        keys = ("name", "path", "sha256", "epoch", "step", "layout")
        return [dict(zip(keys, r, strict=True)) for r in cur]

    def rows(self) -> list[dict[str, Any]]:
        """The tidy table: one dict per metric value, with :data:`COLUMNS` as keys."""
        cur = self.db.execute(
            "SELECT m.run, m.checkpoint, c.epoch, c.step, m.split, m.layer, m.metric, m.value "
            "FROM metrics m JOIN checkpoints c ON c.run = m.run AND c.name = m.checkpoint "
            f"{_RUN} {_ORDER}, m.seq"
        )
        return [dict(zip(COLUMNS, r, strict=True)) for r in cur]

    def omitted(self) -> list[dict[str, Any]]:
        """Every omitted metric with its reason."""
        cols = ("run", "checkpoint", "split", "layer", "metric", "reason")
        cur = self.db.execute(
            f"SELECT o.{', o.'.join(cols)} FROM omitted o JOIN checkpoints c "
            f"ON c.run = o.run AND c.name = o.checkpoint {_RUN} {_ORDER}, o.split, o.metric"
        )
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def tensors(self, run: str, checkpoint: str) -> dict[tuple[str, str, str], Any]:
        """``(split, layer, name) → object`` of one checkpoint (``weights_only`` loading)."""
        cur = self.db.execute(
            "SELECT split, layer, name, data FROM tensors WHERE run = ? AND checkpoint = ?",
            (run, checkpoint),
        )
        where = f"{self.path}, run {run!r}, checkpoint {checkpoint!r}"
        return {(s, la, n): _loads(bytes(d), where) for s, la, n, d in cur}

    # ------------------------------------------------------------------ exports
    def export(self) -> tuple[Path, Path]:
        """Regenerate ``report.csv`` and ``report.json`` from the database, atomically.

        Runs inside a write transaction, so concurrent exporters are serialised and the last
        one to finish wrote everything committed before it.
        """
        csv_path, json_path = self.out / "report.csv", self.out / "report.json"
        with self.transaction():
            rows = self.rows()
            runs = self.runs()
            omitted = self.omitted()
            write_csv(
                csv_path,
                [{k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows],
                COLUMNS,
            )
            write_json(
                json_path,
                {
                    "schema": REPORT_SCHEMA,
                    "columns": COLUMNS,
                    "rows": rows,
                    "runs": runs,
                    "omitted": omitted,
                },
            )
        return csv_path, json_path

    # ------------------------------------------------------------------ merge
    def merge_from(self, other: str | os.PathLike[str], *, replace: bool = False) -> int:
        """Copy every run of another output folder's database into this one.

        Identical checkpoints (same bytes, options and metric values) are skipped; a run or
        checkpoint stored in both with different contents is an error unless ``replace``,
        which keeps ``other``'s: a run analysed with other settings is replaced as a whole (as
        analysing it again would), a differing checkpoint of a run with the same settings is
        replaced alone. All or nothing: one transaction.

        Returns
        -------
        int
            Checkpoints copied.

        Raises
        ------
        ValueError
            The same database, another schema, or a conflict (run and checkpoint named).
        """
        src = ResultsStore(other, create=False)
        try:
            if src.path.resolve() == self.path.resolve():
                raise ValueError(f"cannot merge {src.path} into itself")
            src_runs = src.runs()
            copied = 0
            with self.transaction():
                mine = self.runs()
                for run, info in src_runs.items():
                    if run in mine and mine[run]["spec"] != info["spec"]:
                        if not replace:
                            raise ValueError(
                                f"merge: run {run!r} was analysed with other settings in "
                                f"{src.path} than in {self.path}; pass --replace to take "
                                f"{src.path}'s"
                            )
                        # other settings: the source's run replaces this one entirely
                        self.db.execute("DELETE FROM checkpoints WHERE run = ?", (run,))
                    self.db.execute(
                        "INSERT INTO runs(name, spec, attributes, updated) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, "
                        "attributes = excluded.attributes, updated = excluded.updated "
                        "WHERE ?",
                        (
                            run,
                            json.dumps(info["spec"], sort_keys=True),
                            json.dumps(info["attributes"], sort_keys=True),
                            time.time(),
                            replace or run not in mine,
                        ),
                    )
                    for ck in src.checkpoints(run):
                        name = ck["name"]
                        theirs = src._content(run, name)
                        if self.stored_key(run, name) is not None:
                            if self._content(run, name) == theirs:
                                continue
                            if not replace:
                                raise ValueError(
                                    f"merge: run {run!r}, checkpoint {name!r} differs between "
                                    f"{src.path} and {self.path}; pass --replace to take "
                                    f"{src.path}'s"
                                )
                            self.db.execute(
                                "DELETE FROM checkpoints WHERE run = ? AND name = ?", (run, name)
                            )
                        self._copy_checkpoint(src, run, name)
                        copied += 1
            return copied
        finally:
            src.close()

    def _content(self, run: str, name: str) -> tuple[Any, ...]:
        head = self.db.execute(
            "SELECT sha256, key, epoch, step FROM checkpoints WHERE run = ? AND name = ?",
            (run, name),
        ).fetchone()
        rows = self.db.execute(
            "SELECT split, layer, metric, value FROM metrics WHERE run = ? AND checkpoint = ? "
            "ORDER BY seq",
            (run, name),
        ).fetchall()
        return (tuple(head), tuple(rows))

    def _copy_checkpoint(self, src: ResultsStore, run: str, name: str) -> None:
        for table in _TABLES[1:]:
            col = "name" if table == "checkpoints" else "checkpoint"
            cur = src.db.execute(f"SELECT * FROM {table} WHERE run = ? AND {col} = ?", (run, name))
            rows = cur.fetchall()
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                cols = ", ".join(d[0] for d in cur.description)
                self.db.executemany(f"INSERT INTO {table}({cols}) VALUES ({marks})", rows)


def open_existing(out: str | os.PathLike[str]) -> ResultsStore:
    """Open the results database of an existing output folder (never creates one)."""
    p = Path(out)
    if p.is_file() and p.name in ("report.json", "report.csv", DB_NAME):
        p = p.parent
    if not (p / DB_NAME).is_file():
        raise FileNotFoundError(f"results not found: no {DB_NAME} in {p} (analyse into it first)")
    return ResultsStore(p, create=False)
