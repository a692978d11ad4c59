"""otrain.score.backends: what scores with a model file, chosen once per command and passed on.

Fast: no training and no TensorFlow. The "model file" is a few bytes (only its hash matters until a
Keras model is loaded), and its twin a real ONNX model (:func:`conftest.constant_twin`) stamped for
those bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from conftest import SIZE, call_main, constant_twin, file_hashes, labelled_cube, make_tree

from otrain.score.backends import BackendChoice, OnnxClassifier, choose_backend, load_classifier


def model_file(folder: Path, content: bytes = b"the weights of a model") -> Path:
    """A file in a model file's place: choose_backend reads only its bytes."""
    path = folder / "m.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def stamped_twin(model: Path, p_real: float = 0.75) -> Path:
    """The twin of ``model`` (``m.onnx``), answering ``p_real`` for every cutout."""
    from otrain.score.twin import restamp_twin

    return restamp_twin(constant_twin(model.parent / "scratch" / "constant.onnx", p_real), model)


# ---------------------------------------------------------------------------------------------
# Chosen once, passed on: a command hashes the model file once, and what it chose is what scores.


def test_what_was_chosen_is_loaded_without_choosing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_file(tmp_path)
    twin = stamped_twin(model)
    hashed = file_hashes(monkeypatch)
    choice = choose_backend(model)
    assert choice == BackendChoice(model, "onnx", twin, "")
    model.unlink()  # the choice stands: loading reads the twin alone
    classifier = load_classifier(choice, threads=1)
    assert isinstance(classifier, OnnxClassifier)
    assert classifier.path == twin
    assert hashed == [model]


def test_otrain_infer_hashes_the_model_once_and_scores_with_what_it_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.cli.infer import main as infer_main

    model = model_file(tmp_path / "model")
    stamped_twin(model, 0.75)
    cutouts = make_tree(tmp_path / "night", 3, 2, size=SIZE)
    table = tmp_path / "scores.dat"
    hashed = file_hashes(monkeypatch)
    arguments = ("--cutouts", cutouts, "--model", model, "--recursive", "--output", table, "--no-tracking")
    assert call_main(infer_main, *arguments) == 0
    assert hashed == [model]
    assert "scored 5 of 5 cutouts" in capsys.readouterr().out
    rows = astropy_ascii.read(table, format="commented_header", guess=False)
    np.testing.assert_allclose(rows["label1"], 0.75, atol=1e-7)


@pytest.mark.parametrize("command", ["diagnostics", "plot_results"])
def test_a_command_scoring_a_cube_hashes_the_model_once(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from otrain.cli.diagnostics import main as diagnostics_main
    from otrain.cli.plot_results import main as plot_results_main

    model = model_file(tmp_path / "model")
    stamped_twin(model, 0.75)
    cube = labelled_cube(tmp_path / "cube.npz")
    hashed = file_hashes(monkeypatch)
    common = ("--path-cube-validation", cube, "--model-path", model, "--no-tracking")
    if command == "diagnostics":
        assert call_main(diagnostics_main, *common, "--path-diagnostics", tmp_path / "out") == 0
        assert "24 candidates scored with onnx" in capsys.readouterr().out
    else:
        assert call_main(plot_results_main, *common, "--path-plots", tmp_path / "plots") == 0
        assert capsys.readouterr().out.startswith("scored with onnx; ")
    assert hashed == [model]
