"""otrain.score.scoring: the crop, the batched prediction, the outcomes and the sampling, on a real model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import labelled_cube

from otrain.errors import DataError
from otrain.score.scoring import fit_to_model, outcomes, predict, sample_outcomes


@pytest.fixture(scope="module")
def model_16() -> object:
    from otrain.nets.model import build_model

    return build_model((16, 16, 1))


@pytest.mark.parametrize("size", [16, 17, 21, 24])
def test_cubes_are_centre_cropped_like_otrain_convert(model_16: object, size: int) -> None:
    cube = np.arange(3 * size * size, dtype=np.float32).reshape(3, size, size, 1)
    cropped = fit_to_model(cube, model_16, "cube.npz")
    start = size // 2 - 8  # the original's crop: from dim // 2 - size // 2
    assert cropped.shape == (3, 16, 16, 1)
    assert cropped.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(cropped, cube[:, start : start + 16, start : start + 16, :])
    if size == 16:
        assert cropped is cube  # nothing copied when the cube fits already


def test_a_model_for_oblong_cutouts_takes_its_cube_and_larger_ones_cropped_per_axis() -> None:
    from otrain.nets.model import build_model

    model = build_model((16, 24, 1))
    fitting = np.zeros((2, 16, 24, 1), np.float32)
    assert fit_to_model(fitting, model, "cube.npz") is fitting
    larger = np.arange(2 * 21 * 30, dtype=np.float32).reshape(2, 21, 30, 1)
    top, left = 21 // 2 - 8, 30 // 2 - 12
    np.testing.assert_array_equal(
        fit_to_model(larger, model, "cube.npz"), larger[:, top : top + 16, left : left + 24, :]
    )
    with pytest.raises(DataError, match="cutouts are 24x16x1, the model takes 16x24x1"):
        fit_to_model(np.zeros((2, 24, 16, 1), np.float32), model, "cube.npz")


@pytest.mark.parametrize(("shape", "described"), [((2, 12, 12, 1), "12x12x1"), ((2, 16, 16, 3), "16x16x3")])
def test_cubes_that_do_not_fit_are_one_data_error(model_16: object, shape: tuple[int, ...], described: str) -> None:
    with pytest.raises(DataError, match=f"^cube.npz: cutouts are {described}, the model takes 16x16x1$"):
        fit_to_model(np.zeros(shape, np.float32), model_16, "cube.npz")


def test_batched_prediction_is_the_models_own_in_any_batch_size(model_16: object) -> None:
    cube = np.random.default_rng(1).normal(size=(37, 16, 16, 1)).astype(np.float32)
    whole = np.asarray(model_16(cube, training=False))[:, 1]  # one call, no batching
    for batch_size in (1, 5, 256):
        p_real = predict(model_16, cube, batch_size)
        assert p_real.dtype == np.float64
        assert p_real.shape == (37,)
        np.testing.assert_allclose(p_real, whole, rtol=1e-5, atol=1e-6)


def test_score_cube_scores_the_rows_it_is_given_with_the_model_chosen(model_16: object, tmp_path: Path) -> None:
    """A cross-validation fold's rows, in memory: scored as the model scores them, the cube's file named."""
    from otrain.data.datacube import Datacube
    from otrain.nets.model import save_model
    from otrain.score.backends import choose_backend
    from otrain.score.scoring import score_cube

    model_file = save_model(model_16, tmp_path / "m16.keras")
    cube_file = labelled_cube(tmp_path / "cube.npz", n=12, size=16)
    cube = Datacube.load(cube_file)
    keras = choose_backend(model_file, "keras")
    whole = score_cube(cube_file, keras)
    assert whole.backend == "keras"
    np.testing.assert_allclose(whole.probabilities, predict(model_16, cube.cube), rtol=1e-6, atol=1e-7)
    rows = np.array([7, 0, 11, 4])
    fold = score_cube(cube_file, keras, cube=cube.subset(rows))
    np.testing.assert_array_equal(fold.cube.labels, cube.labels[rows])
    np.testing.assert_allclose(fold.probabilities, whole.probabilities[rows], rtol=1e-6, atol=1e-7)
    small = Datacube(**{**cube.__dict__, "cube": cube.cube[:, :12, :12, :]})
    shapes = r"cube\.npz \(model m16\.keras\): cutouts are 12x12x1, the model takes 16x16x1$"
    with pytest.raises(DataError, match=shapes):
        score_cube(cube_file, keras, cube=small)


def test_outcomes_of_a_hand_worked_case() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p_real = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.5])  # 0.5 itself is bogus at 0.5
    rows = outcomes(labels, p_real, 0.5)
    assert list(rows) == ["TP", "TN", "FP", "FN"]
    assert {key: value.tolist() for key, value in rows.items()} == {
        "TP": [0, 1],
        "TN": [4, 5, 6],
        "FP": [3],
        "FN": [2, 7],
    }


def test_sampling_keeps_every_mistake_and_a_seeded_sample_of_the_rest() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    p_real = rng.uniform(size=500)
    rows = outcomes(labels, p_real, 0.5)
    first = sample_outcomes(rows, 7, seed=11)
    again = sample_outcomes(rows, 7, seed=11)
    other = sample_outcomes(rows, 7, seed=12)
    for outcome in ("FP", "FN"):
        np.testing.assert_array_equal(first[outcome], rows[outcome])
    for outcome in ("TP", "TN"):
        assert len(first[outcome]) == 7
        assert set(first[outcome]) <= set(rows[outcome])
        assert np.all(np.diff(first[outcome]) > 0)  # sorted, no repeats
        np.testing.assert_array_equal(first[outcome], again[outcome])
    assert any(not np.array_equal(first[key], other[key]) for key in ("TP", "TN"))
    few = sample_outcomes(rows, 10_000, seed=11)
    assert all(np.array_equal(few[key], rows[key]) for key in rows)  # fewer than asked: all of them


def test_importing_the_figures_sets_no_matplotlib_backend() -> None:
    probe = (
        "import sys, matplotlib; before = dict.__getitem__(matplotlib.rcParams, 'backend'); "
        "import otrain.metrics.plots; "
        "print('matplotlib.pyplot' in sys.modules, dict.__getitem__(matplotlib.rcParams, 'backend') == before)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_pictures_of_flat_or_degenerate_planes_are_drawn(tmp_path: Path) -> None:
    """A flat plane (a saturated or masked science image) has no ZScale range: drawn, not an error."""
    from otrain.metrics.plots import plot_cutout

    for name, image in (("flat", np.full((32, 32), 371.8286)), ("one", np.pad(np.ones((1, 1)), 7) * 1e30)):
        path = plot_cutout(image.astype(np.float32), name, tmp_path / f"{name}.png")
        assert path.stat().st_size > 0


def test_pictures_show_the_difference_plane_of_a_triplet_cube() -> None:
    from otrain.data.datacube import Datacube
    from otrain.judge.analysis import shown_plane

    columns = {name: np.zeros(2) for name in ("mags", "errmags", "fwhms")}
    common = {**columns, "labels": np.array([0, 1]), "filters": np.array(["r", "r"]), "candids": np.arange(2)}
    cube = np.zeros((2, 4, 4, 3), np.float32)
    assert shown_plane(Datacube(cube=cube, **common, planes=("IMAGE", "TEMPLATE", "DIFF"))) == 2
    assert shown_plane(Datacube(cube=cube, **common)) == 0
