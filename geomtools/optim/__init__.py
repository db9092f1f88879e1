"""Riemannian optimisers that complement geoopt's."""

from geomtools.optim.adamw import RiemannianAdamW

__all__ = ["RiemannianAdamW"]
