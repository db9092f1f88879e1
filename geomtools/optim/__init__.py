"""Riemannian optimisers that complement geoopt's."""

from geomtools.optim.adamw import RiemannianAdamW
from geomtools.optim.curvature import CurvatureAwareStep, remap_curvature

__all__ = ["CurvatureAwareStep", "RiemannianAdamW", "remap_curvature"]
