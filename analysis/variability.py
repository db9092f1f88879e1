r"""Intra-class variability of a representation (cosine-distance ratio of Kornblith et al.).

References
----------
.. [1] S. Kornblith, T. Chen, H. Lee, M. Norouzi. Why do better loss functions lead to less
   transferable features? NeurIPS 2021.
"""

from __future__ import annotations

import torch

from analysis.stats import FeatureStats

__all__ = ["intra_class_variability", "variability_terms"]


def variability_terms(stats: FeatureStats) -> tuple[float, float]:
    r"""Average within-class and total cosine distances :math:`(\bar d_{within}, \bar d_{total})`.

    With :math:`\hat x = x/\|x\|`, :math:`\hat m_c` the class mean of :math:`\hat x` and
    :math:`\bar m = \frac1K\sum_c \hat m_c`, the averages of :math:`1-\cos` over all ordered
    pairs (``i = j`` included) are

    .. math::

        \bar d_{within} = \frac1K\sum_c \frac{1}{n_c}\sum_{i\in c}\|\hat x_i - \hat m_c\|^2
        \;\Big(= \frac1K\sum_c 1 - \|\hat m_c\|^2\Big), \qquad
        \bar d_{total} = 1 - \|\bar m\|^2
        = \bar d_{within} + \frac1K\sum_c \|\hat m_c - \bar m\|^2 .

    Both are evaluated in the right-hand, cancellation-free forms: near collapse the
    distances are ~1e-12 and :math:`1-\|\hat m_c\|^2` would lose every digit. The total is
    class-balanced (each class weighs :math:`1/K`), as in the reference definition.

    Raises
    ------
    ValueError
        If all-zero feature rows were seen (their direction is undefined).
    """
    if not isinstance(stats, FeatureStats):
        raise TypeError(f"expected a FeatureStats, got {type(stats).__name__}")
    idx = stats.present_classes()
    if stats.num_zero_norm:
        raise ValueError(
            f"intra_class_variability: {stats.num_zero_norm} feature rows are all zero, so "
            "their cosine distance is undefined; drop them before update()"
        )
    n = stats.counts[idx].to(torch.float64)
    m = stats.unit_means[idx]
    within = float((stats.unit_sq_dev[idx] / n).mean())
    between = float((m - m.mean(0)).square().sum(1).mean())
    return within, within + between


def intra_class_variability(stats: FeatureStats) -> float:
    r"""Class separation ratio's complement: :math:`\bar d_{within}/\bar d_{total}`.

    Kornblith et al. 2021 [1]_ (their class separation is :math:`R^2 = 1 - ` this value):
    average cosine distance :math:`1-\cos(x_i, x_j)` within classes over the average across all
    pairs, pairs include ``i = j``; see :func:`variability_terms` for the stable formulas.
    0 at perfect collapse; 1 when classes are indistinguishable in direction.

    Parameters
    ----------
    stats : FeatureStats

    Returns
    -------
    float
    """
    within, total = variability_terms(stats)
    if total == 0:
        raise ValueError("intra_class_variability: every feature has the same direction")
    return within / total
