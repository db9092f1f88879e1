"""The results database (``OUT/results.sqlite``) through ``geomtools analyze/merge/forget``.

Runs, resume, concurrent writers, kill -9, Ctrl-C, merge conflicts, schema checks, file modes
and the one-line errors of unusable output folders and options.
"""

from __future__ import annotations

import csv
import json
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import analysis.pipeline
from analysis.cli import main
from analysis.store import DB_NAME, SCHEMA_VERSION, ResultsStore, open_existing
from tests.analysis import tiny_model

REPO = Path(__file__).resolve().parents[2]
SPEC = ["--model", "tests.analysis.tiny_model:model", "--data", "tests.analysis.tiny_model:data"]
KEY = ("run", "checkpoint", "split", "layer", "metric")
TIMEOUT = 120

# A ``geomtools analyze`` process made slower in two places, so that a kill or a second
# process lands between checkpoints and inside write transactions (between the writes and
# the COMMIT). It prints "ready" when it starts on its first checkpoint.
SLOW_CLI = """
import sys, time
from contextlib import contextmanager
import analysis.pipeline as pipeline
import analysis.store as store

_analyze = pipeline.analyze_model
_started = []

def slow_analyze(*args, **kwargs):
    if not _started:
        _started.append(print("ready", flush=True))
    time.sleep(0.03)
    return _analyze(*args, **kwargs)

pipeline.analyze_model = slow_analyze
_transaction = store.ResultsStore.transaction

@contextmanager
def slow_transaction(self):
    with _transaction(self) as db:
        yield db
        time.sleep(0.03)

store.ResultsStore.transaction = slow_transaction
from analysis.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ---------------------------------------------------------------------------- helpers
def _save(folder: Path, seeds: dict[int, int]) -> Path:
    """``folder/epoch{e}.pt`` for each ``epoch: seed`` (weights drawn after manual_seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for e, seed in seeds.items():
        torch.manual_seed(seed)
        torch.save({"model": tiny_model.model().state_dict(), "epoch": e}, folder / f"epoch{e}.pt")
    return folder


def _run(tmp: Path, name: str, epochs: int = 3, offset: int = 0) -> Path:
    return _save(tmp / name, {e: e + offset for e in range(1, epochs + 1)})


def _analyze(out: Path, *paths: Path | str, extra: tuple[str, ...] = ()) -> int:
    args = ["analyze", *map(str, paths), *SPEC, "--out", str(out), "--no-progress", *extra]
    return main(args)


def _values(out: Path) -> dict[tuple[Any, ...], float]:
    """(run, checkpoint, split, layer, metric) → value of every row in ``out``'s database."""
    with open_existing(out) as store:
        rows = store.rows()
    table = {tuple(r[k] for k in KEY): r["value"] for r in rows}
    assert len(table) == len(rows)
    return table


def _checkpoints(out: Path) -> dict[str, list[str]]:
    with open_existing(out) as store:
        return {run: [c["name"] for c in store.checkpoints(run)] for run in store.run_names()}


def _csv(out: Path) -> list[dict[str, str]]:
    with open(out / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _csv_values(out: Path) -> dict[tuple[str, ...], float]:
    rows = _csv(out)
    table = {tuple(r[k] for k in KEY): float(r["value"]) for r in rows}
    assert len(table) == len(rows)
    return table


def _json_values(out: Path) -> dict[tuple[Any, ...], float]:
    doc = json.loads((out / "report.json").read_text())
    return {tuple(r[k] for k in KEY): r["value"] for r in doc["rows"]}


def _assert_same_values(got: dict, expected: dict, rel: float = 1e-12) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-15), key


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("geomtools: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with the bytes of each file (``None`` for folders)."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _dump(out: Path) -> list[str]:
    """The whole database as SQL (timestamps included), read without geomtools."""
    db = sqlite3.connect(out / DB_NAME)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def _tensor_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_tensor_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_tensor_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


def _cli_process(args: list[str], *, slow: bool = False) -> subprocess.Popen[str]:
    head = ["-c", SLOW_CLI] if slow else ["-m", "analysis.cli"]
    # a SIGKILLed process cannot remove its spill files: keep them beside its OUT
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    tmp = {"TMPDIR": str(out.parent)} if out is not None else {}
    return subprocess.Popen(
        [sys.executable, *head, *args],
        cwd=REPO,
        env={**os.environ, **tmp},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out or "", err or ""


# ---------------------------------------------------------------------------- 1. two runs
def test_same_checkpoint_names_in_two_folders_are_two_runs(tmp_path: Path) -> None:
    a = _save(tmp_path / "runA", {1: 1})
    b = _save(tmp_path / "runB", {1: 2})
    out = tmp_path / "out"
    assert _analyze(out, a, b) == 0
    assert _checkpoints(out) == {"runA": ["epoch1"], "runB": ["epoch1"]}
    values = _values(out)
    per_run = {
        run: {k[2:]: v for k, v in values.items() if k[0] == run} for run in ("runA", "runB")
    }
    assert per_run["runA"].keys() == per_run["runB"].keys()
    assert per_run["runA"]  # rows exist
    differ = [k for k in per_run["runA"] if per_run["runA"][k] != per_run["runB"][k]]
    assert ("test", "fc", "nc1") in differ
    csv_rows = _csv(out)
    assert {r["run"] for r in csv_rows} == {"runA", "runB"}
    assert sum(r["run"] == "runA" for r in csv_rows) == len(per_run["runA"])
    assert sum(r["run"] == "runB" for r in csv_rows) == len(per_run["runB"])
    _assert_same_values(_csv_values(out), values)
    _assert_same_values(_json_values(out), values)


# ---------------------------------------------------------------------------- 2. later calls
def test_second_call_keeps_other_runs_and_reanalysis_replaces_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(tmp_path, "runA", 3)
    b = _run(tmp_path, "runB", 2, offset=10)
    out = tmp_path / "out"
    assert _analyze(out, a) == 0
    first = _values(out)
    assert {k[0] for k in first} == {"runA"}
    assert _analyze(out, b) == 0
    both = _values(out)
    assert {k: v for k, v in both.items() if k[0] == "runA"} == first
    assert {k[0] for k in both} == {"runA", "runB"}
    assert _checkpoints(out) == {
        "runA": ["epoch1", "epoch2", "epoch3"],
        "runB": ["epoch1", "epoch2"],
    }
    _assert_same_values(_csv_values(out), both)
    _assert_same_values(_json_values(out), both)

    # runA again with two of its three checkpoints: runA loses epoch3, runB is untouched
    capsys.readouterr()
    assert _analyze(out, a / "epoch1.pt", a / "epoch2.pt") == 0
    assert "runA: 0 checkpoint(s) analysed, 2 reused, 1 no longer given removed" in (
        capsys.readouterr().out
    )
    assert _checkpoints(out) == {"runA": ["epoch1", "epoch2"], "runB": ["epoch1", "epoch2"]}
    expected = {k: v for k, v in both.items() if k[1] != "epoch3" or k[0] != "runA"}
    assert _values(out) == expected
    assert {(r["run"], r["checkpoint"]) for r in _csv(out)} == {
        ("runA", "epoch1"),
        ("runA", "epoch2"),
        ("runB", "epoch1"),
        ("runB", "epoch2"),
    }
    _assert_same_values(_csv_values(out), expected)
    with sqlite3.connect(out / DB_NAME) as db:
        for table in ("metrics", "omitted", "tensors"):
            left = db.execute(
                f"SELECT count(*) FROM {table} WHERE run = 'runA' AND checkpoint = 'epoch3'"
            ).fetchone()[0]
            assert left == 0, table
    db.close()


# ---------------------------------------------------------------------------- 3. --run names
@pytest.mark.parametrize("name", ["../x", "a/b", "..", "/abs", ""])
def test_path_like_run_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    a = _run(tmp_path, "runA", 1)
    out = tmp_path / "w" / "out"
    before = _tree(tmp_path)
    assert _analyze(out, a, extra=("--run", name)) == 2
    _one_error_line(capsys, "not a valid run name")
    assert not out.exists()
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------------- 4. concurrency
@pytest.mark.parametrize("slow", [False, True], ids=["cli", "interleaved"])
def test_two_concurrent_processes_into_one_out(tmp_path: Path, slow: bool) -> None:
    a = _run(tmp_path, "runA", 4)
    b = _run(tmp_path, "runB", 4, offset=10)
    ref = tmp_path / "ref"
    assert _analyze(ref, a, b) == 0
    out = tmp_path / "out"
    procs = [
        _cli_process(["analyze", str(f), *SPEC, "--out", str(out), "--no-progress"], slow=slow)
        for f in (a, b)
    ]
    results = [_finish(p) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err
        assert "locked" not in err.lower(), err
        assert "Traceback" not in err, err
    assert _checkpoints(out) == {"runA": [f"epoch{e}" for e in range(1, 5)]} | {
        "runB": [f"epoch{e}" for e in range(1, 5)]
    }
    expected = _values(ref)
    _assert_same_values(_values(out), expected)
    _assert_same_values(_csv_values(out), expected)
    _assert_same_values(_json_values(out), expected)


# ---------------------------------------------------------------------------- 5. kill -9
def _consistent_prefix(out: Path, clean: dict[tuple[Any, ...], float]) -> int:
    """Checkpoints a killed process left: each must hold all of its rows, or be absent."""
    if not (out / DB_NAME).exists():
        return 0
    db = sqlite3.connect(out / DB_NAME)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "checkpoints" not in tables:
            return 0
        stored = [tuple(r) for r in db.execute("SELECT run, name FROM checkpoints")]
        rows = db.execute("SELECT run, checkpoint, split, layer, metric, value FROM metrics")
        got = {tuple(r[:5]): r[5] for r in rows}
    finally:
        db.close()
    expected = {k: v for k, v in clean.items() if (k[0], k[1]) in stored}
    _assert_same_values(got, expected)
    return len(stored)


def _kill_trials(tmp_path: Path, trials: int, seed: int) -> list[int]:
    run = _run(tmp_path, "runK", 6)
    clean = tmp_path / "clean"
    assert _analyze(clean, run) == 0
    clean_values = _values(clean)
    clean_csv = _csv(clean)
    clean_json = json.loads((clean / "report.json").read_text())
    rng = random.Random(seed)
    left = []
    for trial in range(trials):
        out = tmp_path / f"killed{trial}"
        proc = _cli_process(
            ["analyze", str(run), *SPEC, "--out", str(out), "--no-progress"], slow=True
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
            assert ready, "the analyze process never got ready"
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 1.2))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
        left.append(_consistent_prefix(out, clean_values))
        assert _analyze(out, run) == 0
        _assert_same_values(_values(out), clean_values)
        got_csv = _csv(out)
        assert [{k: v for k, v in r.items() if k != "value"} for r in got_csv] == [
            {k: v for k, v in r.items() if k != "value"} for r in clean_csv
        ]
        for g, c in zip(got_csv, clean_csv, strict=True):
            assert float(g["value"]) == pytest.approx(float(c["value"]), rel=1e-12, abs=1e-15)
        got_json = json.loads((out / "report.json").read_text())
        assert got_json["runs"] == clean_json["runs"]
        assert got_json["omitted"] == clean_json["omitted"]
        assert [{k: v for k, v in r.items() if k != "value"} for r in got_json["rows"]] == [
            {k: v for k, v in r.items() if k != "value"} for r in clean_json["rows"]
        ]
        with open_existing(out) as store:
            assert [c["name"] for c in store.checkpoints("runK")] == [
                f"epoch{e}" for e in range(1, 7)
            ]
    return left


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path: Path) -> None:
    left = _kill_trials(tmp_path, trials=3, seed=20240607)
    print("checkpoints stored when killed:", left)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_many_points_then_rerun_equals_uninterrupted_run(tmp_path: Path) -> None:
    left = _kill_trials(tmp_path, trials=15, seed=7)
    # the delays cover the analysis: some kills leave a part of the checkpoints stored
    assert any(0 < n < 6 for n in left), left


# ---------------------------------------------------------------------------- 6. merge
def test_merge_equals_one_call_and_handles_conflicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(tmp_path, "runA", 3)
    b = _run(tmp_path, "runB", 2, offset=10)
    out1, out2, out3, ref = (tmp_path / n for n in ("out1", "out2", "out3", "ref"))
    assert _analyze(out1, a) == 0
    assert _analyze(out2, b) == 0
    assert _analyze(ref, a, b) == 0
    capsys.readouterr()
    assert main(["merge", str(out1), str(out2), "--out", str(out3)]) == 0
    assert "3 checkpoint(s) merged" in capsys.readouterr().out
    assert _values(out3) == _values(ref)
    assert _checkpoints(out3) == _checkpoints(ref)
    assert (out3 / "report.csv").read_bytes() == (ref / "report.csv").read_bytes()
    _assert_same_values(_json_values(out3), _values(ref))
    with open_existing(out3) as merged, open_existing(ref) as single:
        assert merged.runs() == single.runs()
        assert merged.omitted() == single.omitted()
        for run, names in _checkpoints(ref).items():
            for name in names:
                mt, st = merged.tensors(run, name), single.tensors(run, name)
                assert mt.keys() == st.keys() and mt
                assert all(_tensor_equal(mt[k], st[k]) for k in st), (run, name)

    # identical content again: nothing copied, nothing changed (timestamps included)
    dump = _dump(out3)
    report = (out3 / "report.csv").read_bytes()
    assert main(["merge", str(out1), str(out2), "--out", str(out3)]) == 0
    assert capsys.readouterr().out.count(": 0 checkpoint(s) merged") == 2
    assert _dump(out3) == dump
    assert (out3 / "report.csv").read_bytes() == report

    # runA/epoch1 with other weights: a conflict, OUT unchanged
    other = _save(tmp_path / "elsewhere" / "runA", {1: 99})
    out4 = tmp_path / "out4"
    assert _analyze(out4, other) == 0
    values3 = _values(out3)
    tree3 = _tree(out3)
    capsys.readouterr()
    assert main(["merge", str(out4), "--out", str(out3)]) == 2
    _one_error_line(capsys, "'runA'", "'epoch1'")
    assert _dump(out3) == dump
    assert _values(out3) == values3
    assert _tree(out3) == tree3

    # --replace takes the source's checkpoint; the others stay
    assert main(["merge", str(out4), "--out", str(out3), "--replace"]) == 0
    replaced = _values(out3)
    four = _values(out4)
    assert {k: v for k, v in replaced.items() if k[:2] == ("runA", "epoch1")} == four
    assert {k: v for k, v in replaced.items() if k[:2] != ("runA", "epoch1")} == {
        k: v for k, v in values3.items() if k[:2] != ("runA", "epoch1")
    }
    assert {k: v for k, v in values3.items() if k[:2] == ("runA", "epoch1")} != four
    _assert_same_values(_csv_values(out3), replaced)


def test_merge_other_settings_self_and_missing_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(tmp_path, "runA", 1)
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert _analyze(out1, a) == 0
    assert _analyze(out2, a, extra=("--num-classes", "3")) == 0
    dump = _dump(out1)
    capsys.readouterr()
    assert main(["merge", str(out2), "--out", str(out1)]) == 2
    _one_error_line(capsys, "'runA'", "other settings")
    assert _dump(out1) == dump
    assert main(["merge", str(out1), "--out", str(out1)]) == 2
    _one_error_line(capsys, "into itself")
    assert _dump(out1) == dump
    assert main(["merge", str(tmp_path / "absent"), "--out", str(out1)]) == 2
    _one_error_line(capsys, "absent")
    assert _dump(out1) == dump
    new = tmp_path / "new"
    assert main(["merge", str(tmp_path / "absent"), "--out", str(new)]) == 2
    _one_error_line(capsys, "absent")
    assert not new.exists()


# ---------------------------------------------------------------------------- 7. forget
def test_forget_removes_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "runA", 2)
    b = _run(tmp_path, "runB", 2, offset=10)
    out = tmp_path / "out"
    assert _analyze(out, a, b) == 0
    before = _values(out)
    capsys.readouterr()
    assert main(["forget", "runA", "--out", str(out)]) == 0
    assert "removed run runA (2 checkpoint(s))" in capsys.readouterr().out
    expected = {k: v for k, v in before.items() if k[0] == "runB"}
    assert _values(out) == expected
    assert _checkpoints(out) == {"runB": ["epoch1", "epoch2"]}
    _assert_same_values(_csv_values(out), expected)
    doc = json.loads((out / "report.json").read_text())
    assert set(doc["runs"]) == {"runB"}
    assert {r["run"] for r in doc["rows"]} == {"runB"}
    db = sqlite3.connect(out / DB_NAME)
    try:
        for table in ("runs", "checkpoints", "metrics", "omitted", "tensors"):
            col = "name" if table == "runs" else "run"
            n = db.execute(f"SELECT count(*) FROM {table} WHERE {col} = 'runA'").fetchone()[0]
            assert n == 0, table
    finally:
        db.close()

    dump = _dump(out)
    report = (out / "report.csv").read_bytes()
    assert main(["forget", "runA", "--out", str(out)]) == 2
    _one_error_line(capsys, "'runA'")
    assert main(["forget", "nope", "--out", str(out)]) == 2
    _one_error_line(capsys, "'nope'", "runB")
    assert main(["forget", "../runB", "--out", str(out)]) == 2
    _one_error_line(capsys, "not a valid run name")
    assert _dump(out) == dump
    assert (out / "report.csv").read_bytes() == report
    missing = tmp_path / "missing"
    assert main(["forget", "runB", "--out", str(missing)]) == 2
    _one_error_line(capsys)
    assert not missing.exists()


# ---------------------------------------------------------------------------- 8. schema
def _set_user_version(out: Path, version: int) -> None:
    db = sqlite3.connect(out / DB_NAME)
    try:
        db.execute(f"PRAGMA user_version = {version}")
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("case", ["version0", "version99", "random", "foreign", "old-report"])
@pytest.mark.parametrize("command", ["analyze", "forget", "merge-into", "merge-from"])
def test_unusable_results_database_is_refused_and_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    a = _run(tmp_path, "runA", 1)
    out = tmp_path / "out"
    if case.startswith("version"):
        assert _analyze(out, a) == 0
        _set_user_version(out, int(case[len("version") :]))
        needle = "older" if case == "version0" else "newer"
    elif case == "random":
        out.mkdir()
        (out / DB_NAME).write_bytes(random.Random(3).randbytes(8192))
        needle = "not a usable geomtools results database"
    elif case == "foreign":
        out.mkdir()
        db = sqlite3.connect(out / DB_NAME)
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        db.close()
        needle = "not a geomtools results database"
    else:
        out.mkdir()
        (out / "report.json").write_text(json.dumps({"schema": "geomtools.report/1", "rows": []}))
        needle = DB_NAME if command in ("forget", "merge-from") else "older geomtools"
    before = _tree(tmp_path)
    capsys.readouterr()
    if command == "analyze":
        rc = _analyze(out, a)
    elif command == "forget":
        rc = main(["forget", "runA", "--out", str(out)])
    elif command == "merge-into":
        good = tmp_path / "good"
        assert _analyze(good, a) == 0
        before = _tree(tmp_path)
        capsys.readouterr()
        rc = main(["merge", str(good), "--out", str(out)])
    else:
        rc = main(["merge", str(out), "--out", str(tmp_path / "dest")])
    assert rc == 2
    line = _one_error_line(capsys, needle)
    if case != "old-report":
        assert DB_NAME in line
    if case == "version99":
        assert f"schema 99; this version reads schema {SCHEMA_VERSION}" in line
    assert _tree(tmp_path) == before  # for merge-from: the destination is not created either


def test_store_refuses_newer_schema_directly(tmp_path: Path) -> None:
    a = _run(tmp_path, "runA", 1)
    out = tmp_path / "out"
    assert _analyze(out, a) == 0
    _set_user_version(out, SCHEMA_VERSION + 1)
    data = (out / DB_NAME).read_bytes()
    with pytest.raises(ValueError, match="newer geomtools"):
        ResultsStore(out)
    with pytest.raises(ValueError, match="newer geomtools"):
        ResultsStore(out, create=False)
    assert (out / DB_NAME).read_bytes() == data
    db = sqlite3.connect(out / DB_NAME)
    try:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x67656F6D
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


# ---------------------------------------------------------------------------- 9. Ctrl-C
def test_ctrl_c_stores_whole_checkpoints_and_rerun_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _run(tmp_path, "runA", 3)
    b = _run(tmp_path, "runB", 1, offset=10)
    clean = tmp_path / "clean"
    assert _analyze(clean, a, b) == 0
    out = tmp_path / "out"
    assert _analyze(out, b) == 0

    real = analysis.pipeline.analyze_model
    calls = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis.pipeline, "analyze_model", interrupted)
    capsys.readouterr()
    assert _analyze(out, a) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "geomtools: interrupted: 1 of 3 checkpoints stored; rerun resumes"
    ]
    assert len(calls) == 2
    assert _checkpoints(out) == {"runA": ["epoch1"], "runB": ["epoch1"]}
    expected = {k: v for k, v in _values(clean).items() if k[0] == "runB" or k[1] == "epoch1"}
    assert _values(out) == expected
    # the report was regenerated from the database: runB and runA's first checkpoint
    _assert_same_values(_csv_values(out), expected)
    _assert_same_values(_json_values(out), expected)

    monkeypatch.setattr(analysis.pipeline, "analyze_model", real)
    assert _analyze(out, a) == 0
    assert "runA: 2 checkpoint(s) analysed, 1 reused" in capsys.readouterr().out
    _assert_same_values(_values(out), _values(clean))
    _assert_same_values(_csv_values(out), _values(clean))


def test_ctrl_c_before_anything_stored_leaves_new_out_uncreated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _run(tmp_path, "runA", 2)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis.pipeline, "analyze_model", interrupted)
    out = tmp_path / "out"
    assert _analyze(out, a) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "geomtools: interrupted: 0 of 2 checkpoints stored; rerun resumes"
    ]
    assert not out.exists()


# ---------------------------------------------------------------------------- 10. umask
def _modes_under_umask(tmp_path: Path, umask: int) -> dict[tuple[str, str], int]:
    a = _run(tmp_path, "runA", 1)
    out, merged = tmp_path / "out", tmp_path / "merged"
    old = os.umask(umask)
    try:
        assert _analyze(out, a) == 0
        assert main(["merge", str(out), "--out", str(merged)]) == 0
        assert main(["forget", "runA", "--out", str(out)]) == 0  # exports rewritten
    finally:
        os.umask(old)
    modes = {}
    for folder in (out, merged):
        assert not list(folder.glob(".*.tmp"))
        for name in ("report.csv", "report.json", DB_NAME):
            modes[folder.name, name] = stat.S_IMODE((folder / name).stat().st_mode)
    return modes


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_files_get_the_users_umask(tmp_path: Path, umask: int, mode: int) -> None:
    modes = _modes_under_umask(tmp_path, umask)
    assert {k: oct(v) for k, v in modes.items()} == {k: oct(mode) for k in modes}


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_group_writable_umask_reaches_the_database(tmp_path: Path) -> None:
    # umask 002 (shared group folders): a plain open() and the reports give 0664, so the
    # database must too, or group members cannot analyse into the shared OUT. SQLite creates
    # it with its built-in 0644 & ~umask.
    modes = _modes_under_umask(tmp_path, 0o002)
    assert {k: oct(v) for k, v in modes.items()} == {k: oct(0o664) for k in modes}


# ---------------------------------------------------------------------------- 11. bad options
def test_out_is_a_file_or_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "runA", 1)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    good = tmp_path / "good"
    assert _analyze(good, a) == 0
    before = _tree(tmp_path)
    for out in (blocker, blocker / "sub", blocker / "sub" / "deeper"):
        assert _analyze(out, a) == 2
        _one_error_line(capsys, "blocker")
        assert main(["merge", str(good), "--out", str(out)]) == 2
        _one_error_line(capsys, "blocker")
        assert main(["forget", "runA", "--out", str(out)]) == 2
        _one_error_line(capsys)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--device", "nonsense"), "nonsense"),
        (("--device", "cuda"), "CUDA"),
        (("--device", "cuda:7"), "CUDA"),
        (("--batch-size", "0"), "--batch-size"),
        (("--batch-size", "-3"), "--batch-size"),
    ],
)
def test_bad_device_and_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], needle: str
) -> None:
    if extra[0] == "--device" and extra[1].startswith("cuda") and torch.cuda.is_available():
        if extra[1] == "cuda" or torch.cuda.device_count() > 7:
            pytest.skip("this machine has the CUDA device")
    a = _run(tmp_path, "runA", 1)
    out = tmp_path / "out"
    before = _tree(tmp_path)
    assert _analyze(out, a, extra=extra) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------------- found by a user
def test_emptied_database_beside_a_report_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _run(tmp_path, "runA", 1), _run(tmp_path, "runB", 1, offset=5)
    out = tmp_path / "out"
    assert _analyze(out, a) == 0
    (out / DB_NAME).write_bytes(b"")  # truncated by accident
    before = _tree(out)
    capsys.readouterr()
    assert _analyze(out, b) == 2
    _one_error_line(capsys, "is empty", "report.json")
    assert _tree(out) == before


def test_merge_replace_takes_a_run_with_other_settings_whole(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert _analyze(out1, _run(tmp_path / "x", "runA", 3)) == 0
    other = _run(tmp_path / "y", "runA", 2, offset=7)
    assert _analyze(out2, other, extra=("--num-classes", "3")) == 0
    assert main(["merge", str(out2), "--out", str(out1), "--replace"]) == 0
    assert _checkpoints(out1) == {"runA": ["epoch1", "epoch2"]}
    assert _values(out1) == _values(out2)


def test_error_after_stored_checkpoints_says_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _run(tmp_path, "runA", 3)
    (a / "epoch3.pt").write_bytes((a / "epoch3.pt").read_bytes()[:200])  # truncated
    out = tmp_path / "out"
    capsys.readouterr()
    assert _analyze(out, a) == 2
    _one_error_line(capsys, "epoch3.pt", "(2 of 3 checkpoints stored; rerun resumes)")
    assert _checkpoints(out) == {"runA": ["epoch1", "epoch2"]}
