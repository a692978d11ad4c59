"""MLflow tracking: the URI rule, runs that end FAILED or KILLED, the run file."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from otrain.errors import OptionError
from otrain.track.tracking import (
    DEFAULT_TRACKING_URI,
    check_tracking_uri,
    open_run,
    read_run_file,
    resolve_tracking_uri,
    sqlite_artifact_root,
)


def test_uri_rule_environment_then_params_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri("sqlite:///params.db") == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("sqlite:////abs/params.db") == "sqlite:////abs/params.db"
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # made absolute


def test_unusable_stores_are_refused_early(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"cannot reach MLflow tracking server http://127\.0\.0\.1:9 .*--no-tracking"):
        check_tracking_uri("http://127.0.0.1:9", timeout=2)
    with pytest.raises(OptionError, match="is not writable"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/folder/mlflow.db")
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_run_that_fails_is_not_left_running(tmp_path: Path, error: type[BaseException], status: str) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = []

    def doomed_command() -> None:
        with open_run(uri, "tests", run_name="doomed", tags={"a": 1}) as run:
            run.write(tmp_path)
            started.append(run)
            raise error("stop")

    with pytest.raises(error):
        doomed_command()
    run = started[0]
    stored = MlflowClient(uri).get_run(run.run_id)
    assert stored.info.status == status
    assert stored.data.tags["a"] == "1"
    assert read_run_file(tmp_path) == run


def test_a_run_can_be_resumed_by_id(tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_run(uri, "tests") as first:
        mlflow.log_param("stage", "train")
    with open_run(uri, "tests", run_id=first.run_id):
        mlflow.log_metric("later", 1.0)
    stored = MlflowClient(uri).get_run(first.run_id)
    assert stored.data.params["stage"] == "train"
    assert stored.data.metrics["later"] == 1.0
    assert stored.info.status == "FINISHED"


@pytest.mark.parametrize("relative", [False, True])
def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    database = store / "mlflow.db"
    if relative:
        monkeypatch.chdir(store)
        uri = "sqlite:///mlflow.db"
    else:
        monkeypatch.chdir(elsewhere)
        uri = f"sqlite:///{database}"
    note = tmp_path / "note.txt"
    note.write_text("logged\n")
    with open_run(uri, "tests") as first:
        mlflow.log_artifact(str(note))
    monkeypatch.chdir(elsewhere)  # a later command elsewhere logs into the same experiment
    with open_run(f"sqlite:///{database}", "tests") as second:
        mlflow.log_artifact(str(note))
    client = MlflowClient(f"sqlite:///{database}")
    for run in (first, second):
        assert (store / "mlruns" / run.run_id / "artifacts" / "note.txt").read_text() == "logged\n"
    assert client.get_experiment(first.experiment_id).artifact_location == (store / "mlruns").as_uri()
    assert not any(elsewhere.iterdir())


def test_the_artifact_root_of_a_sqlite_store_reads_the_path_as_sqlalchemy_does(tmp_path: Path) -> None:
    spaced = tmp_path / "a b"
    assert sqlite_artifact_root(f"sqlite:///{tmp_path}/a%20b/mlflow.db?timeout=30") == (spaced / "mlruns").as_uri()
    assert sqlite_artifact_root("sqlite:///:memory:") is None
    assert sqlite_artifact_root("http://127.0.0.1:5000") is None  # a server decides where its artifacts go


def test_a_store_that_cannot_be_used_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="cannot use MLflow tracking store postgresql://"):
        check_tracking_uri("postgresql://nobody@127.0.0.1:9/none")


def test_later_commands_warn_instead_of_failing_when_the_run_is_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from otrain.track.tracking import RunInfo, log_into_training_run

    RunInfo("0123456789abcdef", "1", f"sqlite:///{tmp_path / 'gone.db'}").write(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    with caplog.at_level(logging.WARNING, logger="otrain"):
        assert log_into_training_run(tmp_path, metrics={"x": 1.0}) is None
    assert "could not log to MLflow run 0123456789abcdef" in caplog.text


@pytest.fixture
def health_behind_basic_auth() -> Iterator[str]:
    """A loopback HTTP server whose /health answers only with the right credentials (an
    authenticating proxy in front of MLflow)."""
    expected = "Basic " + base64.b64encode(b"trainer:s3cret").decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.headers.get("Authorization") == expected else 401)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_server_check_sends_the_tracking_credentials(
    health_behind_basic_auth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    with pytest.raises(OptionError, match="Unauthorized"):
        check_tracking_uri(health_behind_basic_auth, timeout=5)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    check_tracking_uri(health_behind_basic_auth, timeout=5)
