"""The grammar of MLflow model URIs: parse and build ``models:/`` and ``runs:/`` URIs, without MLflow.

The URIs otrain reads and writes::

    models:/<name>/<version>      a version of a registered model
    models:/<name>@<alias>        the version an alias names (resolved by :mod:`otrain.track.uris`)
    runs:/<run id>/<path>         an artifact of a run (otrain-train logs its model at ``model``)

The grammar lives here, below the option models, because validating ``--model`` needs it and
the options import nothing from the rooms above them; resolving an alias needs the registry,
so it lives in :mod:`otrain.track.uris`. Nothing else spells these URIs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MLFLOW_MODEL_SCHEMES",
    "MODELS_SCHEME",
    "RUNS_SCHEME",
    "RUN_MODEL_PATH",
    "ModelUri",
    "is_mlflow_uri",
    "model_alias_uri",
    "model_version_uri",
    "parse_model_uri",
    "run_model_uri",
]

MODELS_SCHEME = "models:/"
RUNS_SCHEME = "runs:/"
#: The prefixes of an MLflow model URI (anything else given as --model is a file or folder).
MLFLOW_MODEL_SCHEMES = (MODELS_SCHEME, RUNS_SCHEME)
#: The artifact path of the MLflow model a training logs into its run.
RUN_MODEL_PATH = "model"

_MODELS = re.compile(r"models:/(?P<name>[^/@]+)(/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))")
_RUNS = re.compile(r"runs:/(?P<run_id>[0-9a-f]{32})/(?P<path>[^/].*)")


@dataclass(frozen=True)
class ModelUri:
    """An MLflow model URI, parsed: a registered model's version or alias, or a run's artifact.

    Exactly one of (``name`` with ``version`` or ``alias``) and (``run_id`` with ``path``) is set;
    ``str()`` gives the URI back.
    """

    #: The registered model's name (``models:/``).
    name: str | None = None
    #: The version number, as text (``models:/<name>/<version>``).
    version: str | None = None
    #: The alias (``models:/<name>@<alias>``).
    alias: str | None = None
    #: The run's id (``runs:/``).
    run_id: str | None = None
    #: The artifact path inside the run (``runs:/<run id>/<path>``).
    path: str | None = None

    def __str__(self) -> str:
        if self.run_id is not None:
            return f"{RUNS_SCHEME}{self.run_id}/{self.path}"
        if self.alias is not None:
            return f"{MODELS_SCHEME}{self.name}@{self.alias}"
        return f"{MODELS_SCHEME}{self.name}/{self.version}"


def is_mlflow_uri(value: str) -> bool:
    """Tell whether a --model value is an MLflow model URI (``models:/...``, ``runs:/...``), not a path."""
    return value.startswith(MLFLOW_MODEL_SCHEMES)


def parse_model_uri(uri: str) -> ModelUri:
    """Parse a ``models:/`` or ``runs:/`` URI.

    Parameters
    ----------
    uri : str
        ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or ``runs:/<32-hex-digit run id>/<path>``.

    Returns
    -------
    ModelUri
        Its parts.

    Raises
    ------
    ValueError
        If the URI breaks its scheme's grammar, or has neither scheme; the message says the rule
        and quotes the URI (an option's validator prefixes its flag).
    """
    if uri.startswith(MODELS_SCHEME):
        found = _MODELS.fullmatch(uri)
        if found is None:
            raise ValueError(f"must be models:/<name>/<version> or models:/<name>@<alias>, got {uri!r}")
        return ModelUri(name=found["name"], version=found["version"], alias=found["alias"])
    if uri.startswith(RUNS_SCHEME):
        found = _RUNS.fullmatch(uri)
        if found is None:
            raise ValueError(f"must be runs:/<32-hex-digit run id>/<artifact path>, got {uri!r}")
        return ModelUri(run_id=found["run_id"], path=found["path"])
    raise ValueError(f"must be an MLflow model URI (models:/... or runs:/...), got {uri!r}")


def model_version_uri(name: str, version: str | int) -> str:
    """Return ``models:/<name>/<version>``."""
    return str(ModelUri(name=name, version=str(version)))


def model_alias_uri(name: str, alias: str) -> str:
    """Return ``models:/<name>@<alias>``."""
    return str(ModelUri(name=name, alias=alias))


def run_model_uri(run_id: str, path: str = RUN_MODEL_PATH) -> str:
    """Return ``runs:/<run id>/<path>``: by default the model a training logged into its run."""
    return str(ModelUri(run_id=run_id, path=path))
