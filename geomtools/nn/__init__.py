"""Layers: covariance pooling (GCP), whitening (IterNorm), fixed-frame, Grassmann and Lorentz."""

from geomtools.nn.covpool import CovariancePooling
from geomtools.nn.frame_head import FeatureTransform, FixedFrameHead
from geomtools.nn.gcr import GrassmannHead, grassmann_param_groups
from geomtools.nn.iternorm import IterNorm
from geomtools.nn.lorentz import (
    EuclideanToLorentz,
    LorentzBatchNorm,
    LorentzConv2d,
    LorentzGlobalAvgPool,
    LorentzLinear,
    LorentzMLR,
)

__all__ = [
    "CovariancePooling",
    "EuclideanToLorentz",
    "FeatureTransform",
    "FixedFrameHead",
    "GrassmannHead",
    "IterNorm",
    "LorentzBatchNorm",
    "LorentzConv2d",
    "LorentzGlobalAvgPool",
    "LorentzLinear",
    "LorentzMLR",
    "grassmann_param_groups",
]
