"""Matrix functions of symmetric PSD batches with controllable gradients (GCP, INTL)."""

from geomtools.linalg.sqrtm import inv_sqrtm, matrix_power_sym, spectral_transform, sqrtm

__all__ = ["inv_sqrtm", "matrix_power_sym", "spectral_transform", "sqrtm"]
