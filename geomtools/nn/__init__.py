"""Layers: covariance pooling (GCP) and whitening (IterNorm)."""

from geomtools.nn.covpool import CovariancePooling

__all__ = ["CovariancePooling"]
