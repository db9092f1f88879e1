"""Layers: covariance pooling (GCP), whitening (IterNorm), fixed-frame and Grassmann heads."""

from geomtools.nn.covpool import CovariancePooling
from geomtools.nn.frame_head import FeatureTransform, FixedFrameHead
from geomtools.nn.gcr import GrassmannHead, grassmann_param_groups
from geomtools.nn.iternorm import IterNorm

__all__ = [
    "CovariancePooling",
    "FeatureTransform",
    "FixedFrameHead",
    "GrassmannHead",
    "IterNorm",
    "grassmann_param_groups",
]
