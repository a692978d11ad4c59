"""MLflow tracking: the URI rule, runs that end FAILED or KILLED, the run file."""

from __future__ import annotations

from pathlib import Path

import pytest

from otrain.errors import OptionError
from otrain.tracking import DEFAULT_TRACKING_URI, check_tracking_uri, open_run, read_run_file, resolve_tracking_uri


def test_uri_rule_environment_then_params_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri("sqlite:///params.db") == "sqlite:///env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("sqlite:///params.db") == "sqlite:///params.db"
    assert resolve_tracking_uri(None) == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"


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
