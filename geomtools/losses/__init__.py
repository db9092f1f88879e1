"""Losses: fixed-frame cosine regression (HAFrame), INTL's trace loss, HIER regularisation."""

from geomtools.losses.frame_loss import FrameCosineLoss
from geomtools.losses.hier import HIERLoss
from geomtools.losses.intl import INTLLoss, default_beta, trace_loss

__all__ = ["FrameCosineLoss", "HIERLoss", "INTLLoss", "default_beta", "trace_loss"]
