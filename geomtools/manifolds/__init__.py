"""Manifolds for geoopt that geoopt lacks (one manifold per file)."""

from geomtools.manifolds.grassmann import Grassmann

__all__ = ["Grassmann"]
