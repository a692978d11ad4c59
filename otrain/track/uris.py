"""Resolving MLflow model URIs against the registry: what a ``models:/`` URI names now.

The grammar (parse and build, no MLflow) is :mod:`otrain.options.uris`; this module asks the
registry. An alias is resolved in one place (:func:`model_version`), for serving (the version
that is served) and for Spark (the run whose model card applies).
"""

from __future__ import annotations

from typing import Any

from otrain.errors import DataError, first_line
from otrain.options.uris import MODELS_SCHEME, ModelUri, model_version_uri, parse_model_uri

__all__ = ["model_version", "resolve_alias", "run_of"]


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
