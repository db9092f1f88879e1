"""geomtools.analysis: measure what training did to a representation.

Pipeline: :mod:`analysis.stats` (one-pass class statistics) → metric modules
(:mod:`analysis.collapse`, :mod:`analysis.variability`) → :mod:`analysis.cli`.
"""

from analysis.stats import EmptyClassWarning, FeatureStats

__all__ = ["EmptyClassWarning", "FeatureStats"]
