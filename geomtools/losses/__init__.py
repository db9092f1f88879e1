"""Losses: fixed-frame cosine regression (HAFrame) and INTL's trace loss."""

from geomtools.losses.frame_loss import FrameCosineLoss
from geomtools.losses.intl import INTLLoss, default_beta, trace_loss

__all__ = ["FrameCosineLoss", "INTLLoss", "default_beta", "trace_loss"]
