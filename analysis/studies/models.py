"""Small backbones shared by the studies (CPU-sized)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv1dNet", "conv1d_backbone"]


def conv1d_backbone(channels: int = 32, length: int = 40) -> nn.Sequential:
    """The MNIST-1D CNN's feature extractor (Greydanus 2020): three stride-2 convolutions.

    ``[B, length] → [B, channels, L']``: Conv1d(1→c, 5, stride 2, pad 1) · ReLU ·
    Conv1d(c→c, 3, stride 2, pad 1) · ReLU · Conv1d(c→c, 3, stride 2, pad 1) · ReLU,
    after a ``[B, 1, length]`` reshape. With ``length`` 40, ``L' = 5``.
    """
    if channels < 1 or length < 8:
        raise ValueError(f"conv1d_backbone: channels ≥ 1 and length ≥ 8, got {channels}, {length}")
    return nn.Sequential(
        nn.Unflatten(1, (1, length)),
        nn.Conv1d(1, channels, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
    )


class Conv1dNet(nn.Module):
    """MNIST-1D CNN: :func:`conv1d_backbone`, flatten, Linear → ``feature_dim``, ReLU, head.

    ``features(x)`` is the head's input ``[B, feature_dim]``; ``forward(x)`` the head's output.
    """

    def __init__(
        self, head: nn.Module, *, feature_dim: int = 32, channels: int = 32, length: int = 40
    ) -> None:
        super().__init__()
        conv = conv1d_backbone(channels, length)
        with torch.no_grad():
            flat = conv(torch.zeros(1, length)).numel()
        self.backbone = nn.Sequential(
            conv, nn.Flatten(), nn.Linear(flat, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU()
        )
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input ``[B, feature_dim]``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output (logits for a classification head)."""
        return self.head(self.backbone(x))
