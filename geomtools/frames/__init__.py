"""Classifier frames (simplex ETF, HAFrame) and class hierarchies."""

from geomtools.frames.etf import HAFrame, haframe, haframe_shape, simplex_etf

__all__ = ["HAFrame", "haframe", "haframe_shape", "simplex_etf"]
