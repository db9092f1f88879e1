"""pytest turns every warning into an error except geoopt's torch.jit ones on import."""

import importlib
import warnings

import pytest


def test_geoopt_imports_under_the_error_filter() -> None:
    geoopt = importlib.import_module("geoopt")
    assert hasattr(geoopt, "Lorentz") and hasattr(geoopt, "ManifoldParameter")


def test_other_deprecation_warnings_stay_errors() -> None:
    with pytest.raises(DeprecationWarning):
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)


def test_torch_jit_message_from_elsewhere_is_still_an_error() -> None:
    # same text, but not raised from torch.jit._script: the filter must not match it
    with pytest.raises(DeprecationWarning):
        warnings.warn(
            "`torch.jit.script` is deprecated. Please switch to `torch.compile`.",
            DeprecationWarning,
            stacklevel=1,
        )
