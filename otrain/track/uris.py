"""Resolving MLflow model URIs against the registry: what a ``models:/`` URI names now.

The grammar (parse and build, no MLflow) is :mod:`otrain.options.uris`; this module asks the
registry. An alias is resolved in one place (:func:`model_version`), for serving (the version
that is served) and for Spark (the run whose model card applies). :func:`resolve_model` fetches
the Keras file that an MLflow URI names, with its model card, for otrain-infer-spark.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from otrain.errors import DataError, first_line
from otrain.io.layout import card_file
from otrain.options.uris import MODELS_SCHEME, ModelUri, is_mlflow_uri, model_version_uri, parse_model_uri

__all__ = ["model_version", "resolve_alias", "resolve_model", "run_of"]

logger = logging.getLogger("otrain")


def model_version(client: Any, uri: ModelUri) -> Any:
    """Return the registry's entry (an MLflow ``ModelVersion``) for a ``models:/`` URI, an alias resolved.

    Parameters
    ----------
    client : mlflow.tracking.MlflowClient
        A client of the store holding the registry.
    uri : ModelUri
        A parsed ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.

    Raises
    ------
    mlflow.exceptions.MlflowException
        When the registry has no such model, version or alias.
    """
    if uri.alias is not None:
        return client.get_model_version_by_alias(uri.name, uri.alias)
    return client.get_model_version(uri.name, uri.version)


def resolve_alias(uri: str, client: Any = None) -> str:
    """Return ``models:/<name>/<version>`` for ``models:/<name>@<alias>``; other URIs unchanged.

    Parameters
    ----------
    uri : str
        Any model URI or path; only a registry alias is looked up.
    client : mlflow.tracking.MlflowClient, optional
        A client of the registry; by default one of the current tracking URI.

    Raises
    ------
    DataError
        When the registry has no such model or alias; the message names the URI.
    """
    parsed = parse_model_uri(uri) if uri.startswith(MODELS_SCHEME) else None
    if parsed is None or parsed.alias is None:
        return uri
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
    try:
        version = model_version(client, parsed)
    except Exception as error:  # MlflowException: no such model or alias
        raise DataError(f"{uri}: no such registered model alias ({first_line(error)[:200]})") from None
    return model_version_uri(parsed.name or "", version.version)


def run_of(client: Any, uri: str) -> str:
    """Return the id of the run that logged an MLflow model (``runs:/ID/...``, ``models:/NAME@ALIAS|/VERSION``).

    Raises
    ------
    ValueError
        When ``uri`` is not a valid ``models:/`` or ``runs:/`` URI.
    mlflow.exceptions.MlflowException
        When the registry has no such model, version or alias.
    """
    parsed = parse_model_uri(uri)
    if parsed.run_id is not None:
        return parsed.run_id
    return str(model_version(client, parsed).run_id)


def resolve_model(model: str, scratch: Path) -> Path:
    """Return a local Keras file for ``--model``: the file itself, or an MLflow model downloaded.

    An MLflow model (``models:/NAME@ALIAS``, ``runs:/...``) logged by otrain-train holds its Keras
    file in ``data/model.keras`` and its ONNX twin beside it (``data/model.onnx``, stamped for
    that file); the model card its training logged (``training/*.card.json``) is downloaded
    beside them, so that the card's threshold and planes apply as for a file.

    Parameters
    ----------
    model : str
        A model file, or an MLflow model URI (resolved against ``MLFLOW_TRACKING_URI``).
    scratch : Path
        A folder for the download.

    Returns
    -------
    Path
        The Keras file.

    Raises
    ------
    DataError
        When the URI names no model, or not a Keras model.
    """
    if not is_mlflow_uri(model):
        return Path(model)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from otrain.track.tracking import resolve_tracking_uri, using_tracking_uri

    uri = resolve_tracking_uri()
    with using_tracking_uri(uri):
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(scratch / "model")))
        except (MlflowException, OSError) as error:
            raise DataError(f"--model {model}: cannot fetch it from {uri} ({first_line(error)[:200]})") from None
        keras_file = folder / "data" / "model.keras"
        if not keras_file.is_file():
            raise DataError(f"--model {model}: not a Keras model logged by otrain-train (no data/model.keras)")
        client = MlflowClient(uri)
        try:
            run_id = run_of(client, model)
            cards = [
                item.path for item in client.list_artifacts(run_id, "training") if item.path.endswith(".card.json")
            ]
            if len(cards) == 1:
                fetched = Path(client.download_artifacts(run_id, cards[0], str(scratch / "card")))
                shutil.copyfile(fetched, card_file(keras_file))
        except MlflowException as error:
            logger.warning("--model %s: no model card found with its run (%s)", model, first_line(error)[:200])
    return keras_file
