"""Everything MLflow: the tracking URI rule, and opening, resuming and closing runs.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else the one given in the parameters,
else ``sqlite:///mlflow.db``. A relative SQLite path is taken from the root of the DVC
repository when a command runs as a DVC stage (``DVC_ROOT``, which DVC points at the main
repository also for queued and ``--temp`` experiments, whose stages run in a temporary copy),
else from the working directory: every experiment logs into the same store. An experiment created in a
SQLite store keeps its artifacts in ``mlruns/`` beside the database file, wherever the command runs
(MLflow's own default is ``./mlruns`` in the working directory of whichever command created it);
an experiment that exists keeps the artifact location it was created with.
A training opens one run and writes its id to ``mlflow_run.json`` beside the model, so that
later commands (other processes of a DVC pipeline) log into the same run. A run whose command
fails is marked FAILED (KILLED on Ctrl-C), never left RUNNING.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from otrain.errors import DataError, OptionError, first_line
from otrain.io.jsonfile import read_json
from otrain.io.layout import RUN_FILE

__all__ = [
    "DEFAULT_TRACKING_URI",
    "RunInfo",
    "check_tracking_uri",
    "dvc_tags",
    "git_commit",
    "log_into_training_run",
    "open_run",
    "read_run_file",
    "resolve_tracking_uri",
    "sqlite_artifact_root",
    "sqlite_file",
    "store_lock",
    "using_tracking_uri",
]

logger = logging.getLogger("otrain")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Return the tracking URI: the environment's, else ``configured``, else the default.

    A relative SQLite path is made absolute: from the DVC repository's root under DVC (the
    main repository's, also in DVC's temporary copies for experiments), else from the working
    directory. The URI recorded in ``mlflow_run.json`` therefore names the same store when a
    later command runs from another folder, and experiments never log into a copy that DVC
    deletes afterwards.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        base = Path(os.environ.get("DVC_ROOT") or ".")
        uri = "sqlite:///" + str((base / uri.removeprefix("sqlite:///")).resolve())
    return uri


def sqlite_file(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URI.

    Parameters
    ----------
    uri : str
        A tracking URI.

    Returns
    -------
    Path or None
        The file, or None for any other store.
    """
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))  # %-escapes, as SQLAlchemy reads them


def store_lock(uri: str, purpose: str) -> Path:
    """Return the lock file that serialises ``purpose`` on the store ``uri`` on this machine.

    Parameters
    ----------
    uri : str
        The tracking URI.
    purpose : str
        What the lock serialises (``init``, ``promote-<name>``).

    Returns
    -------
    Path
        Beside the database for SQLite (shared by every user of the file), else in the user's
        cache folder, keyed by the URI.
    """
    database = sqlite_file(uri)
    if database is not None:
        return database.with_name(f".{database.name}.{purpose}.lock")
    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "otrain" / "locks"
    return cache / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}.{purpose}.lock"


def _server_credentials() -> dict[str, str]:
    """Return the Authorization header that MLflow's client sends (for a server behind an authenticating proxy)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def check_tracking_uri(uri: str, timeout: float = 5.0, *, skippable: bool = True) -> None:
    """Fail early, with one clear line, when the tracking store cannot be used.

    HTTP(S) servers must answer ``/health`` within ``timeout`` seconds (MLflow's own client
    would retry for minutes); SQLite files must be in a writable folder, and are created (with
    MLflow's tables) under a lock, so that two processes starting at once on a new store do
    not both create it.

    Parameters
    ----------
    uri : str
        The tracking URI.
    timeout : float, optional
        Seconds a server has to answer.
    skippable : bool, optional
        Whether the command can work without tracking (it has ``--no-tracking``), which the
        message then suggests; otrain-promote and otrain-serve cannot.

    Raises
    ------
    OptionError
        Naming the URI, what is wrong, and what to do.
    """
    hint = "set MLFLOW_TRACKING_URI to a reachable store" + (", or pass --no-tracking" if skippable else "")
    if uri.startswith(("http://", "https://")):
        try:
            request = urllib.request.Request(uri.rstrip("/") + "/health", headers=_server_credentials())
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if response.status != 200:
                    raise OptionError(f"MLflow tracking server {uri} answered {response.status} on /health; {hint}")
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise OptionError(f"cannot reach MLflow tracking server {uri} ({reason}); {hint}") from None
    elif (database := sqlite_file(uri)) is not None:
        folder = database.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise OptionError(f"MLflow store {uri}: folder {folder} is not writable; {hint}")
        from otrain.io.locking import exclusive_lock

        with exclusive_lock(store_lock(uri, "init"), f"the creation of the MLflow store {uri}", wait=600):
            try:
                from mlflow.tracking import MlflowClient

                MlflowClient(uri).search_experiments(max_results=1)
            except Exception as error:  # a damaged database file, a newer schema...
                reason = first_line(error)
                raise OptionError(f"cannot use MLflow store {uri} ({reason[:200]}); {hint}") from None
    else:
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as error:  # any backend: a driver missing, a refused connection...
            reason = first_line(error)
            raise OptionError(f"cannot use MLflow tracking store {uri} ({reason[:200]}); {hint}") from None


def git_commit(folder: Path | None = None) -> str | None:
    """Return the current git commit of ``folder`` (default: the working directory), if any."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=folder, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def dvc_tags(data_file: Path) -> dict[str, str]:
    """Tags tracing a run to its DVC data and experiment, when run by ``dvc repro``/``dvc exp run``.

    ``dvc.data_md5`` is the md5 that ``dvc.lock`` (in the working directory) records for
    ``data_file``; ``dvc.exp_name`` is the experiment name DVC exports to its stages.
    """
    tags: dict[str, str] = {}
    lock = Path("dvc.lock")
    if lock.is_file():
        import yaml

        try:
            stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        except yaml.YAMLError:
            stages = {}
        for stage in stages.values():
            for entry in stage.get("outs", []):
                if Path(entry.get("path", "")) == Path(data_file) and "md5" in entry:
                    tags["dvc.data_md5"] = entry["md5"]
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


@dataclass(frozen=True)
class RunInfo:
    """Where a run lives: enough for another process to log into it."""

    run_id: str
    experiment_id: str
    tracking_uri: str

    def write(self, folder: Path) -> Path:
        """Write ``mlflow_run.json`` into ``folder`` (atomically: it is a pipeline output)."""
        from otrain.io.atomic import write_text_atomic

        return write_text_atomic(folder / RUN_FILE, json.dumps(self.__dict__, indent=2) + "\n")


def read_run_file(folder: Path) -> RunInfo | None:
    """Read ``mlflow_run.json`` from ``folder``, or None when there is none.

    Raises
    ------
    DataError
        When the file is not the JSON object that :meth:`RunInfo.write` writes.
    """
    path = folder / RUN_FILE
    if not path.is_file():
        return None
    return read_json(
        path,
        "not a readable MLflow run file",
        parse=lambda data: RunInfo(
            run_id=data["run_id"], experiment_id=data["experiment_id"], tracking_uri=data["tracking_uri"]
        ),
    )


@contextmanager
def open_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
) -> Iterator[RunInfo]:
    """Start (or resume, with ``run_id``) an MLflow run; end it FAILED/KILLED on error.

    Parameters
    ----------
    tracking_uri : str
        Where to log.
    experiment : str
        Experiment name (created when missing).
    run_name : str, optional
        Name of a new run.
    run_id : str, optional
        Resume this run instead of starting one. A new run started while another is active
        becomes its child (nested run).
    tags : dict, optional
        Tags to set on the run.

    Yields
    ------
    RunInfo
        The active run.
    """
    import mlflow

    with using_tracking_uri(tracking_uri), _run(mlflow, tracking_uri, experiment, run_name, run_id, tags) as info:
        yield info


@contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's module-level functions at ``tracking_uri``, then put back what was there.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in this process's environment;
    restoring it means a library caller's later runs go where they expect.

    Parameters
    ----------
    tracking_uri : str
        The store to use inside the block.
    """
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def sqlite_artifact_root(tracking_uri: str) -> str | None:
    """Return the artifact root of a new experiment in a SQLite store: ``mlruns/`` beside the database file.

    Parameters
    ----------
    tracking_uri : str
        A tracking URI.

    Returns
    -------
    str or None
        A ``file:`` URI, or None when the store is not a SQLite file (MLflow's default applies).
    """
    database = sqlite_file(tracking_uri)
    if database is None or database.name in ("", ":memory:"):
        return None
    return (database.absolute().parent / "mlruns").as_uri()


def _experiment_id(mlflow: Any, tracking_uri: str, experiment: str) -> str:
    if mlflow.get_experiment_by_name(experiment) is None:
        try:
            mlflow.create_experiment(experiment, artifact_location=sqlite_artifact_root(tracking_uri))
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(experiment) is None:  # not created meanwhile by another process
                raise
    return mlflow.set_experiment(experiment).experiment_id


@contextmanager
def _run(
    mlflow: Any,
    tracking_uri: str,
    experiment: str,
    run_name: str | None,
    run_id: str | None,
    tags: dict[str, Any] | None,
) -> Iterator[RunInfo]:
    if run_id is None:
        parent = mlflow.active_run()
        experiment_id = parent.info.experiment_id if parent else _experiment_id(mlflow, tracking_uri, experiment)
        run = mlflow.start_run(run_name=run_name, experiment_id=experiment_id, nested=parent is not None)
    else:
        # Inside an active run (a cross-validation's parent run resumed with its folds), MLflow
        # resumes a run only as a nested one; the run keeps the parent it was created with.
        run = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    info = RunInfo(run.info.run_id, run.info.experiment_id, tracking_uri)
    try:
        if tags:
            mlflow.set_tags({key: str(value) for key, value in tags.items() if value is not None})
        yield info
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def log_into_training_run(
    run_folder: Path,
    *,
    metrics: dict[str, float] | None = None,
    artifacts: list[Path] | None = None,
    artifact_path: str | None = None,
    prefix: str = "",
) -> str | None:
    """Log metrics and files into the MLflow run recorded in ``run_folder/mlflow_run.json``.

    ``run_folder`` is a training's output folder (the model's folder). Nothing happens when it
    has no run file (for example beside an original O'TRAIN ``.h5``). The store is
    ``MLFLOW_TRACKING_URI`` when set, else the one recorded in the run file.

    Returns
    -------
    str or None
        The run id logged into, or None.
    """
    try:
        run = read_run_file(run_folder)
    except DataError as error:
        logger.warning("could not log to MLflow (%s); use --no-tracking to skip it", error)
        return None
    if run is None:
        return None
    try:
        _log_into(run, metrics, artifacts, artifact_path, prefix)
    except Exception as error:  # the outputs are written; a tracking problem must not fail the command
        logger.warning("could not log to MLflow run %s (%s); use --no-tracking to skip it", run.run_id, error)
        return None
    return run.run_id


def _log_into(
    run: RunInfo,
    metrics: dict[str, float] | None,
    artifacts: list[Path] | None,
    artifact_path: str | None,
    prefix: str,
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(run.tracking_uri)
    check_tracking_uri(uri, timeout=5)  # a server that is gone fails fast, not after minutes of retries
    MlflowClient(uri).get_run(run.run_id)  # fails cleanly when this store does not hold the run
    with open_run(uri, "", run_id=run.run_id):
        finite = {
            f"{prefix}{key}": float(value)
            for key, value in (metrics or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        }
        if finite:
            mlflow.log_metrics(finite)
        for path in artifacts or []:
            if path.is_dir():
                mlflow.log_artifacts(
                    str(path), artifact_path=f"{artifact_path}/{path.name}" if artifact_path else path.name
                )
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)
