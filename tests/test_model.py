"""The network's own layers against independent references (NumPy, SciPy)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import median_abs_deviation

from otrain.model import RobustScaling


def reference_scaling(cutouts: np.ndarray, clip: float) -> np.ndarray:
    """(x - median) / MAD-sigma per cutout and plane, from NumPy's median and SciPy's MAD."""
    flat = cutouts.reshape(len(cutouts), -1, cutouts.shape[-1]).astype(np.float64)
    median = np.median(flat, axis=1)
    sigma = median_abs_deviation(flat, axis=1, scale="normal")
    sigma = np.where(sigma > 0, sigma, 1.0)  # a flat plane is only shifted
    scaled = (cutouts - median[:, None, None, :]) / sigma[:, None, None, :]
    return np.clip(scaled, -clip, clip)


@pytest.mark.parametrize("shape", [(5, 16, 16, 1), (3, 15, 17, 3), (2, 8, 8, 2)])
def test_robust_scaling_matches_numpy_and_scipy_on_random_cutouts(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    cutouts = (rng.normal(200.0, 15.0, shape) + rng.standard_cauchy(shape)).astype(np.float32)
    ours = np.asarray(RobustScaling()(cutouts))
    assert_allclose(ours, reference_scaling(cutouts, 1000.0), rtol=1e-5, atol=1e-4)


def test_robust_scaling_of_constant_and_clipped_cutouts() -> None:
    constant = np.full((2, 8, 8, 1), 7.5, np.float32)
    assert_allclose(np.asarray(RobustScaling()(constant)), 0.0)
    spike = np.zeros((1, 9, 9, 1), np.float32)
    spike[0, :, :, 0] = np.arange(81).reshape(9, 9) % 3  # MAD 1, median 1
    spike[0, 4, 4, 0] = 1e9
    scaled = np.asarray(RobustScaling(clip=50.0)(spike))
    assert scaled.max() == pytest.approx(50.0)
    assert_allclose(scaled, reference_scaling(spike, 50.0), rtol=1e-6)
