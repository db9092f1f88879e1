"""geomtools: geometry for training (manifolds, Riemannian optimisers, frames, layers).

The measurement side lives in the sibling package :mod:`analysis`; imports go one way
(``analysis`` may import ``geomtools``, never the reverse).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
