"""The networks' own layers against independent references (NumPy, SciPy), and the vgg network's shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import median_abs_deviation

from otrain.nets.model import MAD_TO_SIGMA, RobustScaling, build_model


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


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8])
def test_the_median_is_exact_with_ties_and_tiny_planes(size: int) -> None:
    """Integer pixels (many ties), odd and even counts: the median and MAD equal NumPy's exactly."""
    rng = np.random.default_rng(size)
    cutouts = rng.integers(-3, 4, (6, size, size, 2)).astype(np.float32)
    flat = cutouts.reshape(6, -1, 2)
    median = np.median(flat, axis=1)
    mad = np.median(np.abs(flat - median[:, None, :]), axis=1)
    expected = (cutouts - median[:, None, None, :]) / np.where(mad > 0, MAD_TO_SIGMA * mad, 1.0)[:, None, None, :]
    assert_allclose(np.asarray(RobustScaling()(cutouts)), expected.astype(np.float32), rtol=1e-7)


def test_robust_scaling_of_constant_and_clipped_cutouts() -> None:
    constant = np.full((2, 8, 8, 1), 7.5, np.float32)
    assert_allclose(np.asarray(RobustScaling()(constant)), 0.0)
    spike = np.zeros((1, 9, 9, 1), np.float32)
    spike[0, :, :, 0] = np.arange(81).reshape(9, 9) % 3  # MAD 1, median 1
    spike[0, 4, 4, 0] = 1e9
    scaled = np.asarray(RobustScaling(clip=50.0)(spike))
    assert scaled.max() == pytest.approx(50.0)
    assert_allclose(scaled, reference_scaling(spike, 50.0), rtol=1e-6)


def test_asinh_scaling_is_the_arcsinh_of_the_robust_scaling_and_survives_saving(tmp_path: Path) -> None:
    import keras

    from otrain.nets.model import load_model, save_model

    rng = np.random.default_rng(3)
    cutouts = (rng.normal(200.0, 15.0, (4, 16, 16, 3)) + 1e4 * rng.standard_cauchy((4, 16, 16, 3))).astype(np.float32)
    expected = np.arcsinh(reference_scaling(cutouts, 1000.0))
    assert_allclose(np.asarray(RobustScaling(asinh=True)(cutouts)), expected, rtol=1e-5, atol=1e-4)
    model = build_model((16, 16, 3), architecture="vgg", normalisation="asinh")
    for suffix in (".keras", ".h5"):
        loaded = load_model(save_model(model, tmp_path / f"m{suffix}"))
        (scaling,) = [layer for layer in loaded.layers if isinstance(layer, RobustScaling)]
        assert scaling.asinh, suffix
        assert_allclose(loaded.predict_on_batch(cutouts), model.predict_on_batch(cutouts), rtol=1e-5, atol=1e-6)
    assert not build_model((16, 16, 3), normalisation="robust").layers[0].asinh
    keras.backend.clear_session()


def vgg_weights(planes: int) -> int:
    """The vgg network's weights, counted by hand: 3x3 convolutions without bias, 32, 32, 64, 64
    filters, each with a batch normalisation (4 numbers per filter), a 4x4 grid of the 64 last
    maps, a dense layer of 64, two outputs."""
    convolutions = 9 * (planes * 32 + 32 * 32 + 32 * 64 + 64 * 64)
    normalisations = 4 * (32 + 32 + 64 + 64)
    head = (4 * 4 * 64 + 1) * 64 + (64 + 1) * 2
    return convolutions + normalisations + head


@pytest.mark.parametrize("shape", [(32, 32, 1), (20, 28, 3), (64, 64, 3), (9, 5, 2)])
def test_vgg_network_takes_any_cutout_and_gives_two_probabilities(shape: tuple[int, int, int]) -> None:
    from keras import layers

    model = build_model(shape, architecture="vgg", normalisation="robust")
    assert model.name == "vgg_cnn"
    assert model.count_params() == vgg_weights(shape[2])  # the same for every cutout size
    assert model.count_params() < 200_000
    kinds = [type(layer) for layer in model.layers]
    assert kinds.count(layers.Conv2D) == kinds.count(layers.BatchNormalization) == 4
    cutouts = np.random.default_rng(1).normal(300.0, 20.0, (5, *shape)).astype(np.float32)
    probabilities = np.asarray(model(cutouts, training=False))
    assert probabilities.shape == (5, 2)
    assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_unknown_architecture_and_too_small_cutouts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"architecture must be one of \('otrain', 'vgg'\), got 'resnet'"):
        build_model((32, 32, 1), architecture="resnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 4x4 pixels for the vgg network, got 3x16"):
        build_model((3, 16, 1), architecture="vgg")
    with pytest.raises(ValueError, match="at least 8x8 pixels for the otrain network, got 16x7"):
        build_model((16, 7, 1))


def test_the_modules_type_aliases_are_exported() -> None:
    """The Literal aliases model.py defines (``LogOdds``: the calibration layer's ``log_odds``) are public."""
    import ast
    import inspect

    from otrain.nets import model

    tree = ast.parse(inspect.getsource(model))
    aliases = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Subscript)
        and ast.unparse(node.value.value) == "Literal"
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert {"LogOdds", "Normalisation"} <= aliases
    assert aliases <= set(model.__all__)
