"""Classifier frames (simplex ETF, HAFrame) and class hierarchies."""

from geomtools.frames.etf import HAFrame, haframe, haframe_shape, simplex_etf
from geomtools.frames.hierarchy import Hierarchy

__all__ = ["HAFrame", "Hierarchy", "haframe", "haframe_shape", "simplex_etf"]
