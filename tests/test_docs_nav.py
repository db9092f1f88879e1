"""Every documentation page is listed in mkdocs.yml's nav (and every nav entry exists).

mkdocs is not run here; CI builds the site with ``mkdocs build --strict``. PyYAML comes with
the ``docs`` extra but not with ``dev``: without it the nav is read with a regex.
"""

import re
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # only the dev extra installed
    yaml = None

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

# A nav line: "- page.md" or "- Title: page.md" (title possibly quoted).
_NAV_PAGE = re.compile(r"^\s*-\s+(?:[^\n]*?:\s+)?['\"]?([^'\"\s:]+\.md)['\"]?\s*$")


def _pages_from_yaml_nav(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, list):
        return [p for item in node for p in _pages_from_yaml_nav(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _pages_from_yaml_nav(value)]
    return []


def _pages_from_regex_nav(text: str) -> list[str]:
    match = re.search(r"^nav:[ \t]*\n(.*?)(?=^\S|\Z)", text, flags=re.M | re.S)
    assert match is not None, "mkdocs.yml has no top-level nav"
    pages = []
    for line in match.group(1).splitlines():
        page = _NAV_PAGE.match(line)
        if page is not None:
            pages.append(page.group(1))
    return pages


def _nav_pages() -> list[str]:
    text = MKDOCS_YML.read_text()
    from_regex = _pages_from_regex_nav(text)
    if yaml is None:
        return from_regex
    from_yaml = _pages_from_yaml_nav(yaml.safe_load(text)["nav"])
    # Keeps the fallback honest wherever PyYAML is installed.
    assert from_regex == from_yaml
    return from_yaml


def _doc_pages() -> set[str]:
    return {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}


def test_regex_nav_parser_reads_nested_entries() -> None:
    text = (
        "site_name: x\n"
        "nav:\n"
        "  - Home: index.md\n"
        "  - Group (a):\n"
        "      - 'Quoted: title': a.md\n"
        "      - api/b.md\n"
        "plugins:\n"
        "  - search\n"
    )
    assert _pages_from_regex_nav(text) == ["index.md", "a.md", "api/b.md"]


def test_every_docs_page_is_in_nav() -> None:
    nav = _nav_pages()
    pages = _doc_pages()
    assert {"index.md", "api/geomtools.md", "api/analysis.md"} <= pages
    assert sorted(pages - set(nav)) == []


def test_every_nav_entry_is_a_docs_page_listed_once() -> None:
    nav = _nav_pages()
    assert sorted(set(nav) - _doc_pages()) == []
    assert len(nav) == len(set(nav))
