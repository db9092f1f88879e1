r"""Riemannian AdamW: decoupled weight decay that is geometric or refused.

Per parameter :math:`x` with manifold :math:`\mathcal M` (``p.manifold`` of a
:class:`geoopt.ManifoldParameter`, Euclidean for a plain tensor), step :math:`t`, learning
rate :math:`\eta`, decay :math:`\lambda`:

.. math::
    g_t &= \operatorname{egrad2rgrad}_x(\pm\nabla f(x)) \quad(- \text{ with } maximize)\\
    x &\leftarrow D_{\eta\lambda}(x), \qquad (g_t, m_{t-1}) \leftarrow
        \Gamma_{x\to D(x)}(g_t, m_{t-1})\\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\langle g_t, g_t\rangle_x^{\text{comp}}\\
    \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ (amsgrad) or } v_t\\
    x &\leftarrow R_x\!\left(-\frac{\eta}{1-\beta_1^t}\,
        \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}\right), \qquad
    m_t \leftarrow \Gamma(m_t)

with :math:`R, \Gamma` the manifold's ``retr_transp`` (on :class:`geoopt.Lorentz`: the
exact :func:`geomtools.manifolds.lorentz.expmap` and parallel transport, because
geoopt's expmap distorts steps shorter than 1e-4) and :math:`\langle\cdot,\cdot\rangle^
{\text{comp}}` its ``component_inner`` (elementwise square on Euclidean parameters, the
squared Riemannian norm on other manifolds — the adaptive scheme of Bécigneul & Ganea
2019). The decay :math:`D_{\eta\lambda}` (Loshchilov & Hutter 2019) is

- Euclidean: :math:`x \leftarrow (1-\eta\lambda)\,x`, exactly ``torch.optim.AdamW``;
- Lorentz (:class:`geoopt.Lorentz`, also under :class:`geoopt.Scaled`): the weighted
  Lorentzian centroid of :math:`x` and the origin :math:`o = (\sqrt k, 0,\dots,0)` with
  weights :math:`(1-\eta\lambda, \eta\lambda)`, normalised onto the hyperboloid — a move
  toward the origin along the geodesic through :math:`x` and :math:`o`; the gradient
  and the first moment are parallel-transported to the decayed point (the second moment
  holds squared norms, which transport leaves unchanged);
- anything else (Stiefel, Grassmann, Sphere, Poincaré ball, products, ...): no origin to
  decay toward, so a group with ``weight_decay > 0`` holding such a parameter raises
  :class:`ValueError` (at construction, when the group is added, and at every step in
  case a group was edited).

On Euclidean parameters the arithmetic is that of PyTorch's single-tensor AdamW, so the
two agree to float64 round-off.

References
----------
D. P. Kingma, J. Ba. Adam: a method for stochastic optimization. ICLR 2015.
I. Loshchilov, F. Hutter. Decoupled weight decay regularization. ICLR 2019.
G. Bécigneul, O.-E. Ganea. Riemannian adaptive optimization methods. ICLR 2019.
A. Bdeir, K. Schwethelm, N. Landwehr. Fully hyperbolic convolutional neural networks for
computer vision. ICLR 2024 (Riemannian AdamW on Lorentz parameters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import geoopt
import torch

from geomtools.manifolds import lorentz
from geomtools.manifolds.lorentz import centroid, origin_like

__all__ = ["RiemannianAdamW"]

_EUCLIDEAN = geoopt.Euclidean()

# Flags of torch.optim.AdamW that this optimizer cannot honour, with the accepted values.
_REFUSED = {
    "foreach": (None, False),
    "fused": (None, False),
    "capturable": (False,),
    "differentiable": (False,),
}


def _manifold_of(p: torch.Tensor) -> geoopt.Manifold:
    man = getattr(p, "manifold", None)
    return man if isinstance(man, geoopt.Manifold) else _EUCLIDEAN


def _base(man: geoopt.Manifold) -> geoopt.Manifold:
    while isinstance(man, geoopt.Scaled):
        man = man.base
    return man


def _decay_kind(man: geoopt.Manifold) -> str | None:
    """Decay rule of a manifold: euclidean, lorentz, or None (no geometric meaning)."""
    base = _base(man)
    if isinstance(base, geoopt.Euclidean):
        return "euclidean"
    if isinstance(base, geoopt.Lorentz):
        return "lorentz"
    return None


def _scalar(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


class RiemannianAdamW(torch.optim.Optimizer):
    r"""AdamW for Euclidean and manifold parameters, with decoupled geometric weight decay.

    The constructor mirrors :class:`torch.optim.AdamW` (same defaults) plus geoopt's
    ``stabilize``. Every flag is honoured or refused; none is ignored:

    ========================  =====================================================
    ``maximize``              honoured (ascends the objective)
    ``amsgrad``               honoured (max of the second moment, as in PyTorch)
    ``stabilize``             honoured (every ``stabilize`` steps of a group: ``projx``
                              of its manifold parameters, ``proju`` of their momentum)
    ``weight_decay``          decoupled; geometric on Lorentz, refused on manifolds
                              without an origin (see the module docstring)
    ``foreach``, ``fused``    ``None``/``False`` only (per-parameter manifold ops)
    ``capturable``            ``False`` only (no CUDA-graph capture)
    ``differentiable``        ``False`` only (no autograd through the step)
    ========================  =====================================================

    Parameters
    ----------
    params : iterable of Tensor or dict
        Parameters or parameter groups; each group may override any option below.
    lr : float
        Learning rate :math:`\eta` (a 0-d tensor is read as its value).
    betas : (float, float)
        :math:`(\beta_1, \beta_2)` in [0, 1).
    eps : float
        Added to :math:`\sqrt{\hat v_t / (1-\beta_2^t)}`.
    weight_decay : float
        :math:`\lambda`; the factor per step is :math:`1 - \eta\lambda`. Default 0.01 as in
        ``torch.optim.AdamW`` — so groups of Grassmann/Stiefel/Sphere parameters must set
        ``weight_decay=0`` (``geomtools.nn.grassmann_param_groups`` does).
    amsgrad, maximize : bool
    foreach, capturable, differentiable, fused :
        Accepted only at the values listed above (``ValueError`` otherwise).
    stabilize : int or None
        Re-projection period in steps, or ``None`` for never.

    Notes
    -----
    State per parameter: ``step`` (int), ``exp_avg`` (tangent at the point),
    ``exp_avg_sq`` (``component_inner``'s shape: the parameter's for Euclidean, one value
    per manifold point otherwise), ``max_exp_avg_sq`` with amsgrad. All tensors, ints and
    floats: ``state_dict()`` round-trips through ``torch.save`` /
    ``torch.load(weights_only=True)``.

    Examples
    --------
    >>> import geoopt
    >>> from geomtools.manifolds import Grassmann
    >>> y = geoopt.ManifoldParameter(Grassmann().random(6, 2), manifold=Grassmann())
    >>> w = torch.nn.Parameter(torch.randn(3))
    >>> opt = RiemannianAdamW(
    ...     [{"params": [y], "weight_decay": 0.0, "stabilize": 10}, {"params": [w]}], lr=1e-2
    ... )
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        stabilize: int | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "stabilize": stabilize,
        }
        self._validate_options(defaults, where="defaults")
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_options(group: dict[str, Any], *, where: str) -> None:
        for flag, allowed in _REFUSED.items():
            if group.get(flag) not in allowed:
                raise ValueError(
                    f"RiemannianAdamW: {flag}={group.get(flag)!r} ({where}) is not supported; "
                    f"allowed: {', '.join(map(repr, allowed))}. Manifold steps run per "
                    "parameter in eager mode."
                )
        lr = _scalar(group["lr"], "lr")
        eps = _scalar(group["eps"], "eps")
        wd = _scalar(group["weight_decay"], "weight_decay")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair, got {betas!r} ({where})")
        b1, b2 = (_scalar(b, "betas") for b in betas)
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr} ({where}); need lr >= 0")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps} ({where}); need eps >= 0")
        if not wd >= 0.0:
            raise ValueError(f"invalid weight_decay {wd} ({where}); need weight_decay >= 0")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid betas ({b1}, {b2}) ({where}); need 0 <= beta < 1")
        for flag in ("amsgrad", "maximize"):
            if not isinstance(group[flag], bool):
                raise TypeError(f"{flag} must be a bool, got {group[flag]!r} ({where})")
        stab = group["stabilize"]
        if stab is not None and (isinstance(stab, bool) or not isinstance(stab, int) or stab < 1):
            raise ValueError(f"stabilize must be a positive int or None, got {stab!r} ({where})")

    def _check_decay(self, group: dict[str, Any], index: int) -> None:
        if _scalar(group["weight_decay"], "weight_decay") == 0.0:
            return
        for p in group["params"]:
            man = _manifold_of(p)
            if _decay_kind(man) is None:
                raise ValueError(
                    f"RiemannianAdamW: param group {index} has weight_decay="
                    f"{group['weight_decay']} but holds a parameter of shape "
                    f"{tuple(p.shape)} on {_base(man).name}, where decoupled weight decay "
                    "has no geometric meaning (there is no origin to decay toward). Put "
                    "such parameters in a group with weight_decay=0, e.g. with "
                    "geomtools.nn.grassmann_param_groups."
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as ``torch.optim.Optimizer``), validating its options and decay."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        self._validate_options(group, where=f"param group {index}")
        for p in group["params"]:
            if p.is_complex():
                raise TypeError("RiemannianAdamW does not support complex parameters")
        self._check_decay(group, index)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients enabled).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._validate_options(group, where=f"param group {index}")
            self._check_decay(group, index)
            do_stabilize = False
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RiemannianAdamW does not support sparse gradients")
                state = self.state[p]
                self._step_param(p, group, state)
                stab = group["stabilize"]
                if stab is not None and state["step"] % stab == 0:
                    do_stabilize = True
            if do_stabilize:
                self.stabilize_group(group)
        return loss

    def _step_param(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        man = _manifold_of(p)
        kind = _decay_kind(man)
        lr = _scalar(group["lr"], "lr")
        wd = _scalar(group["weight_decay"], "weight_decay")
        beta1, beta2 = (_scalar(b, "betas") for b in group["betas"])
        eps = _scalar(group["eps"], "eps")
        amsgrad = group["amsgrad"]
        euclid = isinstance(man, geoopt.Euclidean)  # plain tensors get _EUCLIDEAN

        egrad = p.grad
        assert egrad is not None  # step() skips parameters without a gradient
        grad = -egrad if group["maximize"] else egrad
        if not euclid:  # geoopt's egrad2rgrad may work in place: never touch p.grad
            grad = man.egrad2rgrad(p, grad.clone() if grad is egrad else grad)
        sq = None if euclid else man.component_inner(p, grad)

        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p if sq is None else sq)
            if amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
        elif amsgrad and "max_exp_avg_sq" not in state:  # amsgrad switched on mid-run
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
        state["step"] += 1
        step = state["step"]
        exp_avg: torch.Tensor = state["exp_avg"]
        exp_avg_sq: torch.Tensor = state["exp_avg_sq"]

        # decoupled weight decay, before the Adam step (PyTorch's order)
        if wd != 0.0:
            if kind == "euclidean":
                p.mul_(1.0 - lr * wd)
            elif kind == "lorentz":
                t = lr * wd
                if not 0.0 <= t <= 1.0:
                    raise ValueError(
                        f"lr * weight_decay = {t} must lie in [0, 1] on Lorentz parameters "
                        "(weights of the centroid with the origin)"
                    )
                k = _base(man).k
                pts = torch.stack([p.detach(), origin_like(p, k)], dim=-2)
                w = torch.tensor([1.0 - t, t], dtype=p.dtype, device=p.device)
                decayed = centroid(pts, k, w)
                # the gradient and the momentum live at the old point: carry both over
                grad = man.transp(p, decayed, grad)
                exp_avg.copy_(man.transp(p, decayed, exp_avg))
                p.copy_(decayed)
            else:  # _check_decay ran at the top of step()
                raise AssertionError("unreachable: decay on a manifold without origin")

        exp_avg.lerp_(grad, 1.0 - beta1)
        if sq is None:  # PyTorch's exact arithmetic
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        else:
            exp_avg_sq.mul_(beta2).add_(sq, alpha=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        step_size = lr / bias_correction1
        if amsgrad:
            v_hat = state["max_exp_avg_sq"]
            torch.maximum(v_hat, exp_avg_sq, out=v_hat)
        else:
            v_hat = exp_avg_sq
        denom = (v_hat.sqrt() / bias_correction2_sqrt).add_(eps)
        if euclid:
            p.addcdiv_(exp_avg, denom, value=-step_size)
            return
        direction = exp_avg / denom
        if isinstance(man, geoopt.Lorentz):  # exact at tiny steps, unlike geoopt's expmap
            new_p = lorentz.expmap(p, -step_size * direction, man.k)
            new_avg = man.transp(p, new_p, exp_avg)
        else:
            new_p, new_avg = man.retr_transp(p, -step_size * direction, exp_avg)
        p.copy_(new_p)
        exp_avg.copy_(new_avg)

    @torch.no_grad()
    def stabilize_group(self, group: dict[str, Any]) -> None:
        """Project every manifold parameter of ``group`` back onto its manifold.

        ``p ← projx(p)`` and ``exp_avg ← proju(p, exp_avg)``; Euclidean parameters are
        left alone.
        """
        for p in group["params"]:
            man = _manifold_of(p)
            if isinstance(_base(man), geoopt.Euclidean):
                continue
            p.copy_(man.projx(p))
            state = self.state[p]
            if "exp_avg" in state:
                state["exp_avg"].copy_(man.proju(p, state["exp_avg"]))
