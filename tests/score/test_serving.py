"""Serving the registered champion over HTTP: otrain-serve in front of a real `mlflow models serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import call_main
from helpers import free_port, imported_by_help, serving, tracking_at

from otrain.cli.serve import main as serve_main

#: The registered name the tests promote to (its own, so the gate always promotes the first version).
NAME = "otrain-serve-test"
SERVE = (sys.executable, "-m", "otrain.cli.serve")


@pytest.fixture(scope="module")
def champion(trained: Path, tracking_uri: str) -> str:
    """Register the session's tiny model through otrain-promote: the first version gets the alias."""
    from otrain.cli.promote import main as promote_main

    with tracking_at(tracking_uri):
        assert call_main(promote_main, "--model-dir", trained, "--registered-name", NAME) == 0
    return f"models:/{NAME}@champion"


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(champion: str, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """otrain-serve on a free loopback port, as a user starts it; stopped (its process group) afterwards."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("serve") / "server.log"
    command = [*SERVE, "--model", champion, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OTRAIN_PROGRESS": "0"}
    with serving(command, env, port, "/ping", 300, log_file, grace=60) as url:
        yield url


def infer_table(cutouts: Path, model: Path, output: Path) -> dict[str, float]:
    """P(real) of every cutout otrain-infer scores, by file name."""
    from otrain.cli.infer import main as infer_main

    assert call_main(infer_main, "--cutouts", cutouts, "--model", model, "--output", output, "--no-tracking") == 0
    rows = [line.split() for line in output.read_text().splitlines() if not line.startswith("#")]
    return {Path(row[0]).name: float(row[12]) for row in rows}


def test_the_served_champion_scores_like_otrain_infer(
    server: str, champion: str, trained: Path, workspace: Path, tracking_uri: str, tmp_path: Path
) -> None:
    night = workspace / "other" / "night"
    expected = infer_table(night, trained / "tiny.keras", tmp_path / "infer.dat")
    files = sorted(night / name for name in expected)[:40]
    # The body as a user makes it: otrain-serve --print-request, a separate process.
    printed = subprocess.run(
        [*SERVE, "--model", champion, "--print-request", *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    status, answer = post(server + "/invocations", json.loads(printed.stdout))
    assert status == 200, answer
    predictions = np.asarray(answer["predictions"])
    assert predictions.shape == (len(files), 2)
    np.testing.assert_allclose(predictions[:, 1], [expected[path.name] for path in files], rtol=0, atol=1e-5)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-5)
    # Both classes occur: the comparison is not one of constant answers.
    assert predictions[:, 1].min() < 0.5 < predictions[:, 1].max()


def test_one_cutout_and_the_models_own_example(server: str, champion: str, tracking_uri: str) -> None:
    import mlflow

    from otrain.track.tracking import using_tracking_uri

    with using_tracking_uri(tracking_uri):
        folder = Path(mlflow.artifacts.download_artifacts(champion))
    example = json.loads((folder / "serving_input_example.json").read_text())
    status, answer = post(server + "/invocations", example)
    assert status == 200, answer
    assert np.asarray(answer["predictions"]).shape == (2, 2)
    status, answer = post(server + "/invocations", {"inputs": example["inputs"][:1]})
    assert status == 200, answer
    assert len(answer["predictions"]) == 1


def test_a_wrong_shape_is_answered_with_the_servers_error(server: str) -> None:
    status, answer = post(server + "/invocations", {"inputs": np.zeros((2, 16, 16, 1)).tolist()})
    assert status == 400
    assert (answer["error_code"], answer["error_class"]) == ("INVALID_PARAMETER_VALUE", "SCHEMA_ENFORCEMENT_FAILED")
    assert "Shape of input (2, 16, 16, 1) does not match expected shape (-1, 32, 32, 1)" in answer["message"]


def test_the_logged_model_is_self_contained(trained: Path, tracking_uri: str) -> None:
    """Signature, input example, metadata, normalisation inside; loaded by a process that imports only MLflow."""
    import mlflow

    from otrain.track.tracking import read_run_file, using_tracking_uri

    run = read_run_file(trained)
    assert run is not None
    uri = f"runs:/{run.run_id}/model"
    with using_tracking_uri(tracking_uri):
        info = mlflow.models.get_model_info(uri)
        folder = Path(mlflow.artifacts.download_artifacts(uri))
    spec = info.signature.inputs.inputs[0]
    assert (spec.type, spec.shape) == (np.dtype("float32"), (-1, 32, 32, 1))
    assert info.signature.outputs.inputs[0].shape == (-1, 2)
    card = json.loads((trained / "tiny.keras.card.json").read_text())
    assert info.metadata["otrain"]["planes"] == card["planes"]
    assert info.metadata["otrain"]["threshold"] == card["threshold"]
    example = np.asarray(json.loads((folder / "input_example.json").read_text()), dtype=np.float32)
    assert example.shape == (2, 32, 32, 1)
    probe = (
        "import json, sys, numpy as np, mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "served = type(model.get_raw_model()).__name__\n"
        "layers = [type(layer).__name__ for layer in mlflow.keras.load_model(sys.argv[1]).layers]\n"
        "x = np.asarray(json.load(open(sys.argv[2])), dtype=np.float32)\n"
        "print(json.dumps({'served': served, 'layers': layers, 'p': model.predict(x).tolist()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(folder), str(folder / "input_example.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["layers"][0] == "RobustScaling"  # the normalisation travels inside the model
    assert loaded["served"] == "OnnxClassifier"  # served by ONNX Runtime from the folder's twin

    import otrain.nets.model

    keras_model = otrain.nets.model.load_model(trained / "tiny.keras")
    np.testing.assert_allclose(loaded["p"], keras_model.predict_on_batch(example), atol=1e-6)


# -------------------------------------------------------------------------------------------
# Options and bad input: one line, exit 2 for options, 1 for data, nothing on standard output.


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--port", "0"), "--port: must be a TCP port in [1, 65535], got 0"),
        (("--port", "65536"), "--port: must be a TCP port in [1, 65535], got 65536"),
        (("--workers", "0"), "--workers: must be a positive whole number, got 0"),
        (("--host", "not a host"), "--host: must be an IP address or a host name"),
        (("--model", "models/tiny.keras"), "--model: 'models/tiny.keras' is a Keras model file, not an MLflow model"),
        (("--model", "models:/otrain-cnn"), "--model: must be models:/<name>/<version> or models:/<name>@<alias>"),
        (("--model", "runs:/abc/model"), "--model: must be runs:/<32-hex-digit run id>/<artifact path>"),
        (("--print-request", "missing.fits"), "--print-request: file 'missing.fits' does not exist"),
        (("--colour", "red"), "unknown option --colour (see --help)"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    options: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call_main(serve_main, *options) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"otrain-serve: error: {message}"), captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # a name binds IPv4, as uvicorn binds it
def test_a_busy_port_is_one_line_before_the_server_starts(tmp_path: Path, host: str) -> None:
    """Another program listens on the port: one line naming it, exit 2, no MLflow server started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SERVE, "--model", "models:/otrain-cnn@champion", "--host", host, "--port", str(port)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        f"otrain-serve: error: --port: {host}:{port} is in use (another program listens there); choose another --port\n"
    )
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store was touched


def test_a_model_that_does_not_exist_is_one_line_and_exit_1(
    champion: str,
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    for model, message in (
        (f"models:/{NAME}@nobody", f"models:/{NAME}@nobody: no such registered model alias"),
        ("models:/no-such-model/1", "models:/no-such-model/1: no such MLflow model"),
        (f"models:/{NAME}/99", f"models:/{NAME}/99: no such MLflow model"),
        ("runs:/" + "0" * 32 + "/model", "runs:/" + "0" * 32 + "/model: no such MLflow model"),
        (str(tmp_path), f"{tmp_path}: no MLflow model there (no MLmodel file)"),
    ):
        assert call_main(serve_main, "--model", model, "--port", str(free_port())) == 1, model
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"otrain-serve: error: {message}"), captured.err
        assert len(captured.err.strip().splitlines()) == 1


def test_print_request_refuses_a_bad_cutout_without_partial_output(
    champion: str, tracking_uri: str, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    good = sorted((workspace / "other" / "night").glob("*.fits"))[0]
    bad = tmp_path / "bad.fits"
    bad.write_text("not FITS at all")
    small = tmp_path / "small.fits"
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(small)
    for path, message in ((bad, f"otrain-serve: error: {bad}: "), (small, f"otrain-serve: error: {small}: ")):
        result = subprocess.run(
            [*SERVE, "--model", champion, "--print-request", str(good), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_help_imports_neither_tensorflow_nor_mlflow() -> None:
    printed, heavy = imported_by_help(["serve"], ["tensorflow", "keras", "mlflow", "astropy"])
    assert "--print-request PATH [PATH ...]" in printed
    assert heavy == []
