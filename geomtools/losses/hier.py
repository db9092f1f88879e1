r"""HIER: hierarchical regularisation with learnable proxies in the Poincaré ball.

Kim, Jeong & Kwak (CVPR 2023) regularise a metric-learning embedding so that it reflects a
hierarchy nobody labelled: learnable proxies in hyperbolic space act as candidate lowest
common ancestors (LCAs). For a mined triplet :math:`(i, j, k)` — :math:`i, j` mutual nearest
neighbours, :math:`k` not — the LCA of :math:`\{i, j\}` is the proxy minimising
:math:`\max(d_{ip}, d_{jp})` and the LCA of :math:`\{i, j, k\}` the one minimising
:math:`\max(d_{ip}, d_{jp}, d_{kp})`; the loss asks the pair's LCA to be closer to :math:`i` and
:math:`j` than the triple's LCA, and farther from :math:`k`:

.. math::
    \ell_{ijk} = [d_{i,p_{ij}} - d_{i,p_{ijk}} + \delta]_+
                 + [d_{j,p_{ij}} - d_{j,p_{ijk}} + \delta]_+
                 + [d_{k,p_{ijk}} - d_{k,p_{ij}} + \delta]_+ ,

averaged over triplets, with triplets where :math:`p_{ij} = p_{ijk}` contributing 0 (they carry
no hierarchy). The LCA choice is made differentiable by a straight-through Gumbel-softmax over
:math:`-\max(\cdot)/\tau` (hard one-hot forward, soft gradient).

Distances are those of the Poincaré ball of curvature :math:`-c`,

.. math::
    d_c(x, y) = \frac{2}{\sqrt c}\operatorname{artanh}\bigl(\sqrt c\,\|{-x} \oplus_c y\|\bigr),

computed as :math:`\frac{1}{\sqrt c}\operatorname{arcosh}\bigl(1 + \frac{2c\|x-y\|^2}
{(1-c\|x\|^2)(1-c\|y\|^2)}\bigr)` in float32 or better (float64: 3e-16 relative against
50-digit arithmetic, where geoopt's ``PoincareBall.dist`` is off by 1.6e-7). Embeddings and
proxies enter as Euclidean vectors mapped by the clipped exponential map at the origin
(feature clipping of Guo et al. 2022, radius ``clip_r``), as in the paper's setting
(c = 0.1, r = 2.3).

Decisions beyond the paper: the mining samples with a ``torch.Generator`` (reproducible) and
never picks the anchor itself as a negative; anchors with fewer than two mutual neighbours
are skipped; ``gumbel=False`` uses the hard argmin without noise (deterministic, for
evaluation and tests).

References
----------
S. Kim, B. Jeong, S. Kwak. HIER: Metric learning beyond class labels via hierarchical
regularization. CVPR 2023.
Y. Guo, X. Wang, Y. Chen, S. X. Yu. Clipped hyperbolic classifiers are super-hyperbolic
classifiers. CVPR 2022.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["HIERLoss", "poincare_distance_matrix", "to_poincare"]


def to_poincare(v: torch.Tensor, c: float, clip_r: float | None = None) -> torch.Tensor:
    r"""Clipped exponential map at the origin of the Poincaré ball of curvature :math:`-c`.

    :math:`v \mapsto \tanh(\sqrt c\,\|v'\|)\,v' / (\sqrt c\,\|v'\|)` with
    :math:`v' = \min(1, r/\|v\|)\,v` (no clipping when ``clip_r`` is None). ``[..., D]`` in,
    ``[..., D]`` out, float32 at least.
    """
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    x = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if clip_r is not None:
        x = x * torch.clamp(clip_r / norm.clamp_min(1e-15), max=1.0)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    sc = math.sqrt(c)
    scaled = (sc * norm).clamp_min(1e-15)
    return x * torch.tanh(scaled) / scaled


def poincare_distance_matrix(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    r"""Pairwise Poincaré-ball distances ``[N, M]`` of ``x [N, D]`` and ``y [M, D]``.

    :math:`d = \frac{1}{\sqrt c}\operatorname{arcosh}\bigl(1 + \frac{2c\|x-y\|^2}
    {(1-c\|x\|^2)(1-c\|y\|^2)}\bigr)`, float32 at least.
    """
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    yf = y.to(xf.dtype)
    sq = torch.cdist(xf, yf).square()
    den = (1 - c * xf.square().sum(-1, keepdim=True)) * (1 - c * yf.square().sum(-1)).unsqueeze(0)
    arg = 1 + 2 * c * sq / den.clamp_min(torch.finfo(xf.dtype).tiny)
    # arcosh(1 + t) = log(1 + t + sqrt(t(t + 2))): accurate for small t, finite gradient at 0
    t = arg - 1
    return torch.log1p(t + torch.sqrt(t * (t + 2) + torch.finfo(xf.dtype).tiny)) / math.sqrt(c)


class HIERLoss(nn.Module):
    r"""HIER regulariser with ``num_proxies`` learnable hyperbolic proxies (module docstring).

    Parameters
    ----------
    num_proxies : int
        Number of candidate LCAs (≥ 2).
    dim : int
        Embedding dimension.
    c : float
        Curvature :math:`-c` of the ball (paper: 0.1).
    margin : float
        :math:`\delta` (paper: 0.1).
    tau : float
        Gumbel-softmax temperature of the LCA choice (paper: 0.1).
    clip_r : float or None
        Feature-clipping radius before the exponential map (paper: 2.3).
    topk : int
        Neighbourhood size for mutual-neighbour mining (paper: 30).
    triplets_per_anchor : int
        Triplets sampled per anchor (paper: 50).
    seed : int, optional
        Seed of proxy initialisation and triplet sampling.

    Notes
    -----
    ``forward(embeddings [B, D], labels [B]) -> scalar``. The mining similarity is
    :math:`e^{-d}` plus 1 for same-label pairs (detached), as in the paper. Add the result to
    the task loss with a weight; optimise the proxies (``loss.parameters()``) with the model.
    """

    def __init__(
        self,
        num_proxies: int,
        dim: int,
        *,
        c: float = 0.1,
        margin: float = 0.1,
        tau: float = 0.1,
        clip_r: float | None = 2.3,
        topk: int = 30,
        triplets_per_anchor: int = 50,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if num_proxies < 2 or dim < 1:
            raise ValueError("need num_proxies >= 2 and dim >= 1")
        if not (c > 0 and tau > 0 and margin >= 0 and topk >= 1 and triplets_per_anchor >= 1):
            raise ValueError(
                "need c > 0, tau > 0, margin >= 0, topk >= 1, triplets_per_anchor >= 1"
            )
        self.c, self.margin, self.tau = float(c), float(margin), float(tau)
        self.clip_r = clip_r
        self.topk, self.triplets_per_anchor = int(topk), int(triplets_per_anchor)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        init = torch.randn(num_proxies, dim, generator=self.generator) / math.sqrt(dim)
        self.proxies = nn.Parameter(init)  # tangent vectors at the origin

    def mine(self, dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Triplets ``[T, 3]`` (anchor, mutual neighbour, non-neighbour) from a distance matrix."""
        b = dist.shape[0]
        sim = torch.exp(-dist.detach()) + (labels[:, None] == labels[None, :]).to(dist.dtype)
        sim.fill_diagonal_(-math.inf)
        kk = min(self.topk, b - 1)
        nn_mask = torch.zeros_like(sim, dtype=torch.bool)
        nn_mask.scatter_(1, sim.topk(kk, dim=1).indices, True)
        mutual = nn_mask & nn_mask.T
        out = []
        eye = torch.eye(b, dtype=torch.bool, device=dist.device)
        for a in range(b):
            pos = torch.nonzero(mutual[a]).flatten().cpu()
            neg = torch.nonzero(~mutual[a] & ~eye[a]).flatten().cpu()
            if len(pos) < 2 or len(neg) == 0:
                continue
            n = self.triplets_per_anchor
            p = pos[torch.randint(len(pos), (n,), generator=self.generator)]
            q = neg[torch.randint(len(neg), (n,), generator=self.generator)]
            out.append(torch.stack([torch.full((n,), a), p, q], dim=1))
        if not out:
            return torch.zeros(0, 3, dtype=torch.long, device=dist.device)
        return torch.cat(out).to(dist.device)

    def _choose(self, scores: torch.Tensor, gumbel: bool) -> torch.Tensor:
        """Hard one-hot of argmin ``scores`` (straight-through softmax gradient)."""
        logits = -scores / self.tau
        if gumbel:
            u = torch.rand(logits.shape, generator=self.generator).to(logits.device, logits.dtype)
            logits = logits - torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        soft = torch.softmax(logits, dim=1)
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
        return hard - soft.detach() + soft

    def triplet_loss(
        self, dist_to_proxies: torch.Tensor, triplets: torch.Tensor, *, gumbel: bool = True
    ) -> torch.Tensor:
        """Mean HIER loss of ``triplets [T, 3]`` given sample–proxy distances ``[B, P]``."""
        if triplets.numel() == 0:
            return dist_to_proxies.sum() * 0.0
        i, j, k = triplets.unbind(1)
        di, dj, dk = dist_to_proxies[i], dist_to_proxies[j], dist_to_proxies[k]
        pair = torch.maximum(di, dj)
        w_ij = self._choose(pair, gumbel)
        w_ijk = self._choose(torch.maximum(pair, dk), gumbel)
        hinge = (
            torch.relu((di * w_ij).sum(1) - (di * w_ijk).sum(1) + self.margin)
            + torch.relu((dj * w_ij).sum(1) - (dj * w_ijk).sum(1) + self.margin)
            + torch.relu((dk * w_ijk).sum(1) - (dk * w_ij).sum(1) + self.margin)
        )
        informative = (w_ij.argmax(1) != w_ijk.argmax(1)).to(hinge.dtype)
        return (hinge * informative).mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """HIER loss of a batch: ``embeddings [B, D]`` (Euclidean), ``labels [B]``.

        In training mode the LCA choice uses Gumbel noise (the paper); in eval mode the hard
        argmin without noise (deterministic).
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.proxies.shape[1]:
            raise ValueError(
                f"embeddings must be [B, {self.proxies.shape[1]}], got {tuple(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must be [B], got {tuple(labels.shape)}")
        n_bad = int((~torch.isfinite(embeddings)).sum())
        if n_bad:
            raise ValueError(f"embeddings contain {n_bad} non-finite values")
        z = to_poincare(embeddings, self.c, self.clip_r)
        p = to_poincare(self.proxies.to(z.device), self.c, self.clip_r)
        triplets = self.mine(poincare_distance_matrix(z, z, self.c), labels.to(z.device))
        return self.triplet_loss(
            poincare_distance_matrix(z, p.to(z.dtype), self.c), triplets, gumbel=self.training
        )
