"""geomtools.analysis: measure what training did to a representation.

Pipeline: :mod:`analysis.stats` (one-pass class statistics) → metric modules
(:mod:`analysis.collapse`, :mod:`analysis.variability`, :mod:`analysis.spectrum`) → the
checkpoint pipeline (:mod:`analysis.pipeline`) → :mod:`analysis.cli`.

``FeatureStats`` and ``EmptyClassWarning`` are imported on first use, so that
``import analysis.cli`` (the console script) is instant and a Ctrl-C while torch loads is
answered with one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.stats import EmptyClassWarning, FeatureStats

__all__ = ["EmptyClassWarning", "FeatureStats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from analysis import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
