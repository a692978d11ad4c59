"""The ensemble model: its three columns, saving and loading, its ONNX twin, Grad-CAM of its members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from otrain.errors import DataError
from otrain.nets.ensemble import EnsembleHead, build_ensemble, ensemble_members, is_ensemble
from otrain.nets.model import build_model, last_conv_layer, load_model, save_model, with_calibration

SHAPE = (16, 16, 2)
EPSILON = 1e-7


def _members() -> tuple[list, list]:
    """Three untrained members (one calibrated) and the networks whose softmax each averages."""
    import keras

    keras.utils.set_random_seed(3)
    vgg = build_model(SHAPE, architecture="vgg", normalisation="asinh")
    otrain_cnn = build_model(SHAPE, architecture="otrain", normalisation="robust")
    third = build_model(SHAPE, architecture="vgg")
    # Spread the members' outputs away from 0.5: an untrained softmax is nearly constant.
    for network in (vgg, otrain_cnn, third):
        kernel, bias = network.layers[-1].get_weights()
        network.layers[-1].set_weights([kernel * 20, bias])
    return [vgg, with_calibration(otrain_cnn, 3.0, 1.0), third], [vgg, otrain_cnn, third]


@pytest.fixture(scope="module")
def members() -> tuple[list, list]:
    return _members()


@pytest.fixture(scope="module")
def cutouts() -> np.ndarray:
    return (np.random.default_rng(5).normal(size=(12, *SHAPE)) * 50).astype(np.float32)


def _expected(networks: list, pixels: np.ndarray, temperature: float, bias: float, average: str) -> np.ndarray:
    """The ensemble's three columns from each network's own softmax, in float64."""
    columns = np.stack([np.asarray(network.predict_on_batch(pixels), dtype=np.float64) for network in networks])
    real, bogus = columns[:, :, 1], columns[:, :, 0]
    if average == "logits":
        z = np.mean(np.log(np.maximum(real, EPSILON)) - np.log(np.maximum(bogus, EPSILON)), axis=0)
    else:
        z = np.log(np.maximum(real.mean(axis=0), EPSILON)) - np.log(np.maximum(bogus.mean(axis=0), EPSILON))
    calibrated = 1.0 / (1.0 + np.exp(-(z / temperature + bias)))
    return np.stack([1.0 - calibrated, calibrated, real.std(axis=0)], axis=1)


@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_the_ensemble_averages_calibrates_and_gives_the_members_spread(
    members: tuple[list, list], cutouts: np.ndarray, average: str
) -> None:
    models, networks = members
    ensemble = build_ensemble(models, temperature=1.7, bias=-0.4, average=average)
    out = np.asarray(ensemble.predict_on_batch(cutouts), dtype=np.float64)
    expected = _expected(networks, cutouts, 1.7, -0.4, average)
    assert out.shape == (len(cutouts), 3)
    assert_allclose(out, expected, atol=2e-6)
    assert np.ptp(expected[:, 2]) > 1e-3  # the members disagree, and by different amounts
    assert is_ensemble(ensemble)
    assert not is_ensemble(networks[0])
    assert len(ensemble_members(ensemble)) == 3
    assert ensemble_members(networks[0]) == [networks[0]]


def test_the_averages_differ_and_bad_arguments_are_refused(members: tuple[list, list], cutouts: np.ndarray) -> None:
    models, _ = members
    logits = build_ensemble(models, average="logits").predict_on_batch(cutouts)
    probabilities = build_ensemble(models, average="probabilities").predict_on_batch(cutouts)
    assert np.abs(logits[:, 1] - probabilities[:, 1]).max() > 1e-3
    assert_allclose(logits[:, 2], probabilities[:, 2])  # the spread is not calibrated
    with pytest.raises(ValueError, match="average"):
        build_ensemble(models, average="median")
    with pytest.raises(ValueError, match="at least one member"):
        build_ensemble([])
    with pytest.raises(ValueError, match="member 1"):
        build_ensemble([models[0], build_model((8, 8, 2), architecture="vgg")])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_an_ensemble_saves_and_loads(
    members: tuple[list, list], cutouts: np.ndarray, tmp_path: Path, suffix: str
) -> None:
    ensemble = build_ensemble(members[0], temperature=0.8, bias=0.3, average="probabilities")
    path = save_model(ensemble, tmp_path / f"ensemble{suffix}")
    loaded = load_model(path)
    assert is_ensemble(loaded)
    head = loaded.layers[-1]
    assert isinstance(head, EnsembleHead)
    assert (head.temperature, head.bias, head.average) == (0.8, 0.3, "probabilities")
    assert_allclose(loaded.predict_on_batch(cutouts), ensemble.predict_on_batch(cutouts), atol=1e-7)
    # The last Conv2D is found inside the nested members: the last member's.
    assert last_conv_layer(loaded).name == last_conv_layer(ensemble_members(loaded)[-1]).name


def test_a_three_column_model_that_is_no_ensemble_is_refused(tmp_path: Path) -> None:
    import keras

    cutout = keras.Input(shape=SHAPE)
    model = keras.Model(cutout, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(cutout)))
    path = save_model(model, tmp_path / "three.keras")
    with pytest.raises(DataError, match="must output 2 class probabilities"):
        load_model(path)


@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_the_ensembles_onnx_twin_gives_its_three_columns(
    members: tuple[list, list], cutouts: np.ndarray, tmp_path: Path, average: str
) -> None:
    from otrain.score.backends import OnnxClassifier
    from otrain.score.twin import export_onnx

    path = save_model(build_ensemble(members[0], temperature=2.0, bias=0.5, average=average), tmp_path / "e.keras")
    model = load_model(path)
    record = export_onnx(model, path, cutouts)
    assert record["parity"]["cutouts"] == len(cutouts)
    twin = OnnxClassifier(tmp_path / "e.onnx").predict_on_batch(cutouts)
    assert twin.shape == (len(cutouts), 3)
    assert_allclose(twin, model.predict_on_batch(cutouts), atol=1e-5)


@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_the_parity_allowance_of_an_ensemble_weighs_its_members_logit_scales(
    members: tuple[list, list], cutouts: np.ndarray, average: str
) -> None:
    from otrain.score.twin import keras_scores

    models, networks = members
    ensemble = build_ensemble(models, temperature=1.5, bias=0.1, average=average)
    scores = keras_scores(ensemble, cutouts)
    own = [keras_scores(network, cutouts) for network in networks]
    p = np.stack([member.p_real for member in own])
    if average == "logits":
        weights = np.full_like(p, 1 / 3)
    else:
        mean = p.mean(axis=0)
        weights = p * (1 - p) / (3 * mean * (1 - mean))
    expected = np.sum(weights * np.stack([member.logit_scale for member in own]), axis=0)
    assert np.all(expected > 0)
    assert_allclose(scores.logit_scale, expected, rtol=1e-6)
    assert_allclose(scores.p_real, ensemble.predict_on_batch(cutouts)[:, 1], atol=1e-7)
    assert scores.temperature == 1.5
