"""Which module feeds the classifier, and what its classifier rows are.

The analysed features are the input of the *head*: by default the last classifier-like module
of ``model.named_modules()``, where a geomtools head (:class:`~geomtools.nn.FixedFrameHead`,
:class:`~geomtools.nn.GrassmannHead`) counts as one module — the ``nn.Linear`` layers inside a
frame head's learnable transformation are part of the head, never the head themselves. For a
frame head with a transformation the features are the transformation's output, i.e. exactly
the ``h`` of the frame product ``h Wᵀ``.

``--layer NAME`` names the head instead; every step honours it: the features, the class count
(read from the model's classifier, whatever layer is analysed) and the classifier rows (only a
layer whose rows are ``[K, D]`` for the model's ``K`` classes has them; otherwise the metrics
that need a classifier are omitted and listed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureCapture", "Head", "classifier_of", "find_head", "num_classes_of"]


def _geomtools_heads() -> tuple[type[nn.Module], ...]:
    """The geomtools head classes *that are loaded*.

    A model can only hold a head whose module was imported, so an unloaded module is skipped
    instead of imported (``geomtools.nn`` pulls in geoopt and scipy: ~0.5 s for a model that
    has no geomtools head).
    """
    heads: list[type[nn.Module]] = []
    for module, name in (
        ("geomtools.nn.frame_head", "FixedFrameHead"),
        ("geomtools.nn.gcr", "GrassmannHead"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            heads.append(getattr(loaded, name))
    return tuple(heads)


@dataclass
class Head:
    """The feature layer: its module name, the module, and the module whose output is ``h``."""

    name: str
    module: nn.Module
    output_of: nn.Module | None = None  # hook this module's output instead of the head's input


def _head(name: str, module: nn.Module) -> Head:
    frame_head = sys.modules.get("geomtools.nn.frame_head")
    if (
        frame_head is not None
        and isinstance(module, frame_head.FixedFrameHead)
        and module.transform is not None
    ):
        return Head(name, module, module.transform)
    return Head(name, module)


def find_head(model: nn.Module, layer: str | None = None) -> Head:
    """The module whose input are the analysed features (module docstring).

    Raises
    ------
    ValueError
        ``layer`` names no module (the first module names are listed), or the model has no
        classifier-like module.
    """
    if layer is not None:
        try:
            return _head(layer, model.get_submodule(layer))
        except AttributeError as err:
            names = [n for n, _ in model.named_modules() if n][:20]
            raise ValueError(f"model has no module {layer!r}; modules: {', '.join(names)}") from err
    special = _geomtools_heads()
    found: tuple[str, nn.Module] | None = None
    inside: list[str] = []  # names of geomtools heads: their submodules are not candidates
    for name, module in model.named_modules():
        if any(name.startswith(h + ".") for h in inside):
            continue
        if isinstance(module, special):
            inside.append(name)
            found = (name, module)
        elif isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(
            "no nn.Linear or geomtools head in the model: name the feature layer with --layer"
        )
    return _head(*found)


def num_classes_of(model: nn.Module) -> int:
    """Number of classes: ``out_features``/``num_classes`` of the model's classifier.

    Raises
    ------
    ValueError
        The classifier does not say; pass ``--num-classes``.
    """
    head = find_head(model).module
    for attr in ("num_classes", "out_features"):
        value = getattr(head, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("cannot infer the number of classes from the model: pass --num-classes")


def classifier_of(
    head: Head, num_classes: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """Classifier rows ``[K, D]`` and bias ``[K]`` of a head (float64, CPU), or why not.

    ``nn.Linear`` with ``out_features == K``: weight and bias; ``FixedFrameHead``: the frozen
    frame, no bias; anything else (a GCR head, an intermediate layer): ``(None, None, reason)``
    and the metrics that need classifier rows are omitted with that reason.
    """
    m = head.module
    frame_head, gcr = (sys.modules.get(f"geomtools.nn.{n}") for n in ("frame_head", "gcr"))
    if frame_head is not None and isinstance(m, frame_head.FixedFrameHead):
        return m.weight.detach().double().cpu(), None, ""
    if gcr is not None and isinstance(m, gcr.GrassmannHead):
        return None, None, "a GrassmannHead has subspaces, not classifier rows"
    if isinstance(m, nn.Linear):
        if m.out_features != num_classes:
            return (
                None,
                None,
                f"layer {head.name!r} has {m.out_features} outputs, not {num_classes} classes",
            )
        bias = m.bias.detach().double().cpu() if m.bias is not None else None
        return m.weight.detach().double().cpu(), bias, ""
    return None, None, f"layer {head.name!r} ({type(m).__name__}) is not a classifier"


class FeatureCapture:
    """Forward hook keeping the features a head sees during one forward pass.

    Use as a context manager; :meth:`take` returns what the layer saw in the last forward.
    """

    def __init__(self, head: Head) -> None:
        self.head = head
        self.value: torch.Tensor | None = None
        if head.output_of is not None:
            self._handle = head.output_of.register_forward_hook(self._output)
        else:
            self._handle = head.module.register_forward_pre_hook(self._input)

    def _input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0] if args else None

    def _output(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        self.value = out

    def take(self) -> torch.Tensor:
        """What the layer saw in the last forward pass, as it was (cleared afterwards).

        ``[B, D]`` for a classifier; feature maps ``[B, C, ...]`` are pooled by the caller
        (:func:`analysis.extract.pool_features`).
        """
        if not isinstance(self.value, torch.Tensor):
            raise ValueError(
                f"the feature layer {self.head.name!r} was not called with a tensor during the "
                "forward pass"
            )
        v, self.value = self.value, None
        return v

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
