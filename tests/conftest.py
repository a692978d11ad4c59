"""Shared helpers: real FITS cutouts written with astropy in both conventions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from helpers import ROOT, tracking_at

os.environ["OTRAIN_PROGRESS"] = "0"

BIN = Path(sys.executable).parent


def constraint_pins() -> dict[str, str]:
    """The exact versions of requirements/constraints.txt, by package name as written there."""
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


#: Keywords of a complete gmadet cutout; None in an override removes the keyword.
GMADET_DEFAULTS: dict[str, Any] = {
    "CANDID": 1,
    "RA": 150.1,
    "DEC": 2.2,
    "FILE": "image_001.fits",
    "XPOS": 100.5,
    "YPOS": 200.25,
    "MAG": 18.5,
    "MAGERR": 0.05,
    "FILTER": "r",
    "FWHM": 2.5,
    "FWHMPSF": 2.4,
    "EDGE": "False",
}


@pytest.fixture(autouse=True)
def _restore_tracking_uri() -> Iterator[None]:
    """Keep one test's MLflow tracking URI (MLflow stores it in the environment) from leaking."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable
    elif before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def pixels(size: int = 16, value: float | None = None, seed: int = 0) -> np.ndarray:
    """A float32 test image; distinct values per pixel unless ``value`` is given."""
    if value is not None:
        return np.full((size, size), value, dtype=np.float32)
    return np.random.default_rng(seed).normal(0.0, 10.0, (size, size)).astype(np.float32)


def write_gmadet(path: Path, data: np.ndarray | None = None, **keywords: Any) -> Path:
    """Write a gmadet-style cutout (one HDU, keywords in the primary header)."""
    header = fits.Header()
    for key, value in {**GMADET_DEFAULTS, **keywords}.items():
        if value is not None:
            header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(pixels() if data is None else data, header).writeto(path, overwrite=True)
    return path


def write_stdpipe(
    path: Path,
    data: np.ndarray | None = None,
    *,
    diff_filter: str | None = None,
    with_diff: bool = True,
    primary_data: np.ndarray | None = None,
    **keywords: Any,
) -> Path:
    """Write an STDPipe-style cutout: metadata in a primary HDU, planes in named extensions."""
    values = {"NAME": "42", "mag_calib": 17.25, "mag_calib_err": 0.03, "MAG": -8.0, "MAGERR": 0.1, "FWHM": 3.0}
    values.update(keywords)
    primary = fits.PrimaryHDU(primary_data)
    for key, value in values.items():
        if value is not None:
            primary.header[f"HIERARCH {key}" if len(key) > 8 else key] = value
    data = pixels() if data is None else data
    extensions = [fits.ImageHDU(np.zeros_like(data), name="IMAGE"), fits.ImageHDU(np.ones_like(data), name="TEMPLATE")]
    if with_diff:
        diff = fits.ImageHDU(data, name="DIFF")
        if diff_filter is not None:
            diff.header["FILTER"] = diff_filter
        extensions.append(diff)
    extensions.append(fits.ImageHDU(np.zeros(data.shape, np.uint8), name="MASK"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, *extensions]).writeto(path, overwrite=True)
    return path


def make_tree(
    root: Path,
    n_true: int,
    n_false: int,
    *,
    size: int = 16,
    edge_true: int = 0,
    edge_false: int = 0,
    logical_edge: bool = False,
) -> Path:
    """A labelled cutout tree: root/true and root/false, the first ``edge_*`` files flagged EDGE."""
    for label, folder, count, n_edge in ((1, "true", n_true, edge_true), (0, "false", n_false, edge_false)):
        for index in range(count):
            is_edge = index < n_edge
            edge: Any = is_edge if logical_edge else ("True" if is_edge else "False")
            write_gmadet(
                root / folder / f"c{index:04d}.fits",
                pixels(size, seed=label * 10_000 + index),
                CANDID=label * 10_000 + index,
                EDGE=edge,
            )
    return root


@pytest.fixture
def tree_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build labelled trees under the test's temporary folder."""

    def build(n_true: int, n_false: int, name: str = "cutouts", **options: Any) -> Path:
        return make_tree(tmp_path / name, n_true, n_false, **options)

    return build


def run_command(command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run an installed console script as a user would, capturing its output."""
    executable = shutil.which(command, path=str(BIN)) or command
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "OTRAIN_PROGRESS": "0"}
    )


def call_main(main: Callable[[Sequence[str]], Any], *args: str | Path) -> int:
    """Run a command's ``main`` in this process and return its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    code = exit_info.value.code
    return 0 if code is None else int(code)


def files_under(folder: Path) -> set[Path]:
    """Every file below ``folder`` (to prove nothing partial was left behind)."""
    return {path for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


# ---------------------------------------------------------------------------------------------
# A small simulated survey, its cube and a model trained on it, shared by every test session
# that needs TensorFlow (training them once keeps the suite fast).

SIZE = 32


def constant_twin(path: Path, p_real: float, size: int = SIZE) -> Path:
    """A real ONNX model of (N, size, size, 1) cutouts giving the same P(real) for every cutout."""
    import onnx
    from onnx import TensorProto, helper

    pixels = helper.make_tensor_value_info("cutout", TensorProto.FLOAT, ["N", size, size, 1])
    output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    constants = [
        helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("answer", TensorProto.FLOAT, [1, 2], [1.0 - p_real, p_real]),
    ]
    nodes = [  # 0 * mean(cutout) + (1 - p, p): one row per cutout
        helper.make_node("ReduceMean", ["cutout"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "column"], ["means"]),
        helper.make_node("Mul", ["means", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "answer"], ["probabilities"]),
    ]
    graph = helper.make_graph(nodes, "constant", [pixels], [output], initializer=constants)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def labelled_cube(path: Path, n: int = 24, size: int = SIZE) -> Path:
    """A labelled cube of ``n`` random size x size cutouts, every other one real, magnitudes spread over bins."""
    from otrain.data.datacube import Datacube

    rng = np.random.default_rng(0)
    cube = Datacube(
        cube=rng.normal(size=(n, size, size, 1)).astype(np.float32),
        labels=np.arange(n) % 2,
        mags=np.linspace(15.0, 21.0, n),
        errmags=np.linspace(0.01, 0.5, n),
        filters=np.full(n, "r"),
        fwhms=np.full(n, 2.0),
        candids=np.arange(n, dtype=np.int64),
    )
    return cube.save(path)


def file_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the scoring backends hash from now on (each a model file whose backend is being chosen), in order.

    The real hashing still runs: this only records its argument.
    """
    from otrain.score import backends

    hashed: list[Path] = []
    real = backends.file_sha256

    def recording(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(backends, "file_sha256", recording)
    return hashed


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated survey, its cube, and a second survey (other seed) to score."""
    from otrain.cli.convert import main as convert_main
    from otrain.cli.simulate import main as simulate_main

    root = tmp_path_factory.mktemp("training")
    common = ("--cutout-size", SIZE, "--mef-fraction", "0.25")
    survey = ("--n-true", 260, "--n-false", 260, "--n-night", 40)
    assert call_main(simulate_main, "--out", root / "survey", *survey, *common) == 0
    assert call_main(convert_main, "--path", root, "--cube", "cube", "--cutouts", root / "survey") == 0
    other = ("--n-true", 0, "--n-false", 0, "--n-night", 150, "--seed", 7)
    assert call_main(simulate_main, "--out", root / "other", *other, *common) == 0
    return root


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def original_otrain_network(size: int) -> object:
    """The original network (docs/original-otrain.md#the-network), built with plain Keras as the original did."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((size, size, 1)),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.AveragePooling2D(2),
            layers.Dropout(0.3),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.3),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.Conv2D(256, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(256, activation="relu"),
            layers.Dense(2, activation="softmax"),
        ]
    )


def train(workspace: Path, name: str, *extra: str, models: str = "models") -> int:
    """Run otrain-train in this process on the workspace cube (robust scaling, no early stop)."""
    from otrain.cli.train import main as train_main

    return call_main(
        train_main,
        *("--cube", workspace / "datacube" / "cube.npz", "--model-path", workspace / models, "--model-name", name),
        *("--normalisation", "robust", "--patience", "0"),
        *extra,
    )


@pytest.fixture(scope="session")
def trained(workspace: Path, tracking_uri: str) -> Path:
    """The output folder of a 6-epoch training on the workspace cube, tracked in MLflow."""
    with tracking_at(tracking_uri):
        assert train(workspace, "tiny", "--epochs", "6") == 0
    return workspace / "models" / "CNN_training" / "tiny"


@pytest.fixture(scope="session")
def trained_vgg(workspace: Path, tracking_uri: str) -> Path:
    """The output folder of a 3-epoch training of the vgg network on the workspace cube, tracked in MLflow."""
    with tracking_at(tracking_uri):
        assert train(workspace, "tiny_vgg", "--architecture", "vgg", "--epochs", "3", models="vgg") == 0
    return workspace / "vgg" / "CNN_training" / "tiny_vgg"


def refused_init_sources(folder: Path, shape: tuple[int, int, int], planes: Sequence[str]) -> list[tuple[Path, str]]:
    """Models a training of cutouts of ``shape`` and ``planes`` cannot start from, each with its refusal.

    Another cutout size, other planes (as the model's card records them), another network, and a
    text file named like a model.
    """
    from otrain.io.card import write_card
    from otrain.nets.model import build_model, save_model

    height, width, channels = shape
    folder.mkdir(parents=True, exist_ok=True)
    bigger = save_model(build_model((height + 8, width + 8, channels)), folder / "bigger.keras")
    other_planes = save_model(build_model(shape, normalisation="robust"), folder / "other_planes.keras")
    write_card(other_planes, {"planes": ["TEMPLATE"] * channels})
    vgg = save_model(build_model(shape, architecture="vgg", normalisation="robust"), folder / "vgg.keras")
    text = folder / "notes.keras"
    text.write_text("not a model\n")
    size, theirs = "x".join(map(str, shape)), f"{height + 8}x{width + 8}x{channels}"
    template = " ".join(["TEMPLATE"] * channels)
    return [
        (
            bigger,
            f"--init-from: {bigger} takes {theirs} cutouts, this cube has {size}; use the same --cutout-size "
            "and planes",
        ),
        (
            other_planes,
            f"--init-from: {other_planes} was trained on planes {template}, this cube holds {' '.join(planes)}",
        ),
        (vgg, f"--init-from: {vgg} is another network than the one this training builds"),
        (text, f"{text}: not a readable Keras model (corrupt or truncated)"),
    ]


# ---------------------------------------------------------------------------------------------
# A tiny ensemble (untrained members: its spread is checked against the members' own P(real)).


def ensemble_members(size: int = SIZE, seeds: Sequence[int] = (1, 2)) -> list[Any]:
    """Untrained single models of (size, size, 1) cutouts, one per seed."""
    import keras

    from otrain.nets.model import build_model

    members = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        members.append(build_model((size, size, 1)))
    return members


def ensemble_of(members: Sequence[Any]) -> Any:
    """The ensemble of ``members`` (:func:`otrain.nets.ensemble.build_ensemble`): (P(bogus), P(real), spread)."""
    from otrain.nets.ensemble import build_ensemble

    return build_ensemble(list(members))


def members_spread(members: Sequence[Any], pixels: np.ndarray) -> np.ndarray:
    """The standard deviation of the members' P(real) of each cutout, computed here from each member's own output."""
    p_real = np.stack([np.asarray(member.predict_on_batch(pixels), dtype=np.float64)[:, 1] for member in members])
    return p_real.std(axis=0)


def saved_ensemble(folder: Path, size: int = SIZE) -> tuple[Path, list[Any]]:
    """Save the ensemble of two untrained members as ``folder/ensemble.keras``, with its ONNX twin; return it, them."""
    from otrain.nets.model import load_model, save_model
    from otrain.score.twin import export_onnx

    members = ensemble_members(size)
    model_file = save_model(ensemble_of(members), folder / "ensemble.keras")
    pixels = np.random.default_rng(3).normal(size=(8, size, size, 1)).astype(np.float32)
    export_onnx(load_model(model_file), model_file, pixels)
    return model_file, members
