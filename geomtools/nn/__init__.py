"""Layers: covariance pooling (GCP), whitening (IterNorm) and fixed-frame heads."""

from geomtools.nn.covpool import CovariancePooling
from geomtools.nn.frame_head import FeatureTransform, FixedFrameHead
from geomtools.nn.iternorm import IterNorm

__all__ = ["CovariancePooling", "FeatureTransform", "FixedFrameHead", "IterNorm"]
