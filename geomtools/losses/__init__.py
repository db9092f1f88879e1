"""Losses: fixed-frame cosine regression (HAFrame) and INTL's trace loss."""

from geomtools.losses.frame_loss import FrameCosineLoss

__all__ = ["FrameCosineLoss"]
