"""Every repository path cited in the code and the documentation exists.

A docstring, comment or page that says "see ``docs/metrics.md``" or "``benchmarks/bench_sqrtm.py``"
sends the reader to a file; when the file is renamed or deleted the citation silently rots
(fifteen files once cited a conventions file and an API specification that the repository
did not hold). This test reads every ``*.py`` and ``*.md`` file of the package, the analysis
toolkit, the tests, the benchmarks and the docs, plus ``README.md`` and ``CHANGELOG.md``, and
checks two kinds of citation:

* a path under a top-level folder of the repository (``geomtools/``, ``analysis/``,
  ``tests/``, ``benchmarks/``, ``docs/``), backticked or plain: it must exist relative to the
  repository root (a file or a folder);
* an upper-case Markdown file name on its own (``README.md``, ``CHANGELOG.md``): it must exist
  at the repository root or next to the file that cites it.

Not citations, and so skipped by the patterns themselves: globs and templates (a path followed
by ``*``, ``{`` or ``<``), path segments written in capitals, which are metavariables
(``docs/studies/NAME.md``; the conventional upper-case file names below are real files), paths
that are part of a longer path or URL (``github.com/x/geomtools/...``, ``OUT/...``), and
relative links between docs pages (``conventions.md#nc1``), which ``mkdocs build --strict``
checks.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("geomtools", "analysis", "tests", "benchmarks", "docs")
SCANNED_FILES = ("README.md", "CHANGELOG.md")
TOP_DIRS = SCANNED_DIRS

# Upper-case file names that are real files, not metavariables, when they end a path.
CONVENTIONAL_NAMES = frozenset({"README", "CHANGELOG", "LICENSE", "CONTRIBUTING", "CONVENTIONS"})

# Cited strings that look like repository paths but are not meant to exist, each with why.
# Keep it small: a rotten citation should be fixed, not listed here.
ALLOWED: dict[str, str] = {}

_TOP = "|".join(TOP_DIRS)
# A path under a top-level folder: not preceded by a character that would make it the tail
# of a longer path, URL or identifier; segments of word characters, dots and dashes.
_PATH = re.compile(rf"(?<![\w./\-])(?:{_TOP})/[\w.\-/]*[\w\-/]")
# An upper-case Markdown name on its own (not the last segment of a longer path).
_CAPS_MD = re.compile(r"(?<![\w./\-])[A-Z][A-Z0-9_]*\.md\b")
_TEMPLATE_NEXT = frozenset("*{<[")


def _is_metavariable(segment: str) -> bool:
    stem = segment.split(".", 1)[0]
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", stem)) and stem not in CONVENTIONAL_NAMES


def cited_paths(text: str) -> list[str]:
    """Repository paths (under a top-level folder) cited in ``text``, placeholders skipped."""
    found = []
    for m in _PATH.finditer(text):
        if text[m.end() : m.end() + 1] in _TEMPLATE_NEXT:
            continue  # a glob or template: docs/*.md, tests/{a,b}.py, docs/<page>.md
        path = m.group(0).rstrip("/")
        if any(_is_metavariable(seg) for seg in path.split("/")):
            continue  # docs/studies/NAME.md
        found.append(path)
    return found


def cited_root_names(text: str) -> list[str]:
    """Upper-case Markdown file names cited on their own (README.md, CHANGELOG.md)."""
    return [m.group(0) for m in _CAPS_MD.finditer(text) if not _is_metavariable(m.group(0))]


def _scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED_DIRS:
        for suffix in ("*.py", "*.md"):
            files.extend(p for p in (ROOT / folder).rglob(suffix) if "__pycache__" not in p.parts)
    return sorted(set(files))


def test_extraction_keeps_paths_and_skips_placeholders() -> None:
    text = (
        "see ``docs/metrics.md``, `analysis/stats.py` and tests/analysis/ (a folder); "
        "docs/cli.md. benchmarks/README.md, then docs/studies/NAME.md, docs/*.md, "
        "tests/{a,b}.py, docs/<page>.md, OUT/report.csv, https://github.com/x/geomtools/y.py, "
        "runs/docs/x.md, analysis.stats, conventions.md#nc1"
    )
    assert cited_paths(text) == [
        "docs/metrics.md",
        "analysis/stats.py",
        "tests/analysis",
        "docs/cli.md",
        "benchmarks/README.md",
    ]
    assert cited_root_names("see README.md, ``CHANGELOG.md``, benchmarks/README.md, NAME.md") == [
        "README.md",
        "CHANGELOG.md",
    ]


def test_allowed_entries_are_still_cited() -> None:
    cited = {p for f in _scanned_files() for p in cited_paths(f.read_text(encoding="utf-8"))}
    assert sorted(set(ALLOWED) - cited) == [], "drop allow-list entries nobody cites any more"


def test_every_cited_path_exists() -> None:
    missing = []
    for file in _scanned_files():
        text = file.read_text(encoding="utf-8")
        rel = file.relative_to(ROOT).as_posix()
        for path in cited_paths(text):
            if path not in ALLOWED and not (ROOT / path).exists():
                missing.append(f"{rel}: {path}")
        for name in cited_root_names(text):
            if not (ROOT / name).exists() and not (file.parent / name).exists():
                missing.append(f"{rel}: {name}")
    assert sorted(set(missing)) == []
