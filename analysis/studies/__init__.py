"""``geomtools reproduce``: the papers' claims, end to end with the toolkit's public API.

Each study trains small models on data generated here (MNIST-1D by the ``mnist1d`` package,
scikit-learn's digits; nothing is downloaded), saves checkpoints, measures them with the
toolkit's own analysis, draws figures and writes a verdict per claim — ``reproduced`` or
``not reproduced at this scale`` — with the numbers that decide it (:mod:`.study`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["STUDIES", "study_module"]

#: study name → module, in the order ``all`` runs them
STUDIES: dict[str, str] = {
    "gcr": "analysis.studies.gcr",
    "haframe": "analysis.studies.haframe",
    "lorentz": "analysis.studies.lorentz",
    "gcp": "analysis.studies.gcp",
    "intl": "analysis.studies.intl",
}


def study_module(name: str) -> ModuleType:
    """The module of study ``name`` (one of :data:`STUDIES`)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose from {', '.join(STUDIES)} or all")
    return importlib.import_module(STUDIES[name])
