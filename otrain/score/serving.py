"""Scoring over HTTP: MLflow's scoring server (``mlflow models serve``) and the requests it answers.

otrain-train logs its model as an MLflow model (:func:`otrain.score.mlflow_model.save_mlflow_model`): raw
float32 pixels ``(-1, H, W, C)`` in, ``(P(bogus), P(real))`` out (an ensemble's third column: the
spread of its members' P(real)), normalisation inside the model, and the card's input shape and
planes in its metadata. MLflow's own server serves it;
this module finds out what a model URI names (:func:`describe_model`), builds the command
that serves it (:func:`server_command`), and turns cutout files into a request body
(:func:`request_body`), read as otrain-infer reads them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError, OptionError, first_line
from otrain.io.cutouts import read_header, read_pixels
from otrain.options.uris import is_mlflow_uri
from otrain.score.inference import fit_cutout, resolve_planes
from otrain.track.tracking import check_tracking_uri, using_tracking_uri
from otrain.track.uris import resolve_alias

__all__ = [
    "ENSEMBLE_ANSWER",
    "SINGLE_ANSWER",
    "ModelDescription",
    "check_port_free",
    "describe_model",
    "request_body",
    "server_command",
]

#: What each number of a served answer is: a single model's two, an ensemble's three.
SINGLE_ANSWER = ("P(bogus)", "P(real)")
ENSEMBLE_ANSWER = (*SINGLE_ANSWER, "spread")


@dataclass(frozen=True)
class ModelDescription:
    """What a model URI names: the exact model served, and the cutouts it takes."""

    #: The URI given.
    requested: str
    #: What is served: the same, with a registry alias replaced by the version it names now.
    uri: str
    #: (H, W, C) of the cutouts, from the model's signature.
    input_shape: tuple[int, int, int]
    #: The planes it was trained on (its card's), None for the default reading.
    planes: tuple[str, ...] | None
    #: What each number of an answer's row is (from the signature): :data:`SINGLE_ANSWER`, or an
    #: ensemble's :data:`ENSEMBLE_ANSWER` (P(bogus), P(real), spread).
    answer: tuple[str, ...] = SINGLE_ANSWER


def describe_model(uri: str, tracking_uri: str) -> ModelDescription:
    """Check that an MLflow model exists and read what it takes, without loading it.

    Parameters
    ----------
    uri : str
        ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run id>/<path>``, or
        an MLflow model folder.
    tracking_uri : str
        The store holding the registry and the runs.

    Returns
    -------
    ModelDescription
        The model to serve (an alias resolved to its version), its input shape and planes.

    Raises
    ------
    DataError
        When the model does not exist, or is not an otrain model (a ``(-1, H, W, C)`` tensor in).
    """
    import mlflow

    if is_mlflow_uri(uri):
        check_tracking_uri(tracking_uri, skippable=False)
    elif "://" not in uri and not (Path(uri) / "MLmodel").is_file():
        raise DataError(f"{uri}: no MLflow model there (no MLmodel file)")
    with using_tracking_uri(tracking_uri):
        resolved = resolve_alias(uri)
        try:
            info = mlflow.models.get_model_info(resolved)
        except Exception as error:  # MlflowException, OSError: no such model, version or run
            raise DataError(f"{uri}: no such MLflow model ({first_line(error)[:200]})") from None
    inputs = info.signature.inputs.inputs if info.signature is not None else []
    shape = tuple(getattr(inputs[0], "shape", ())) if len(inputs) == 1 else ()
    if len(shape) != 4 or shape[0] != -1 or any(size <= 0 for size in shape[1:]):
        raise DataError(f"{uri}: not an otrain model (its signature does not take one (-1, H, W, C) tensor)")
    metadata: dict[str, Any] = (info.metadata or {}).get("otrain") or {}
    planes = metadata.get("planes")
    outputs = info.signature.outputs.inputs if info.signature is not None and info.signature.outputs else []
    output_shape = tuple(getattr(outputs[0], "shape", ())) if len(outputs) == 1 else ()
    return ModelDescription(
        requested=uri,
        uri=resolved,
        input_shape=(int(shape[1]), int(shape[2]), int(shape[3])),
        planes=tuple(planes) if planes else None,
        answer=ENSEMBLE_ANSWER if output_shape[1:] == (len(ENSEMBLE_ANSWER),) else SINGLE_ANSWER,
    )


def request_body(
    paths: Sequence[Path], input_shape: tuple[int, int, int], planes: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Build the JSON body that scores cutout files: ``{"inputs": [(H, W, C) nested lists]}``.

    Each file is read as otrain-infer reads it: the planes named (by default, the difference of
    an STDPipe cutout, the whole image of a gmadet one), centre-cropped to the model's input,
    non-finite pixels replaced by their plane's median. Unlike otrain-infer, cutouts flagged EDGE
    are scored too: every file asked for gets its answer, in order.

    Parameters
    ----------
    paths : sequence of Path
        Cutout FITS files.
    input_shape : tuple of int
        The model's (H, W, C).
    planes : tuple of str, optional
        The model's planes (:attr:`ModelDescription.planes`); ``("DIFF",)`` reads as the default.

    Returns
    -------
    dict
        The body; ``json.dumps`` it. float32 values survive the trip through JSON exactly.

    Raises
    ------
    DataError
        Naming the first file that cannot be read or has another shape than the model's input.
    """
    planes = resolve_planes(None, planes)  # DIFF alone: read as O'TRAIN did (a gmadet cutout's whole image)
    pixels = np.empty((len(paths), *input_shape), dtype=np.float32)
    for index, path in enumerate(paths):
        try:
            _, location = read_header(path, planes)
            pixels[index] = fit_cutout(read_pixels(path, location), input_shape, path)
        except DataError:
            raise
        except Exception as error:  # astropy raises many types for a damaged file
            raise DataError(f"{path}: not a readable cutout ({type(error).__name__}: {first_line(error)})") from None
    return {"inputs": pixels.tolist()}


def check_port_free(host: str, port: int) -> None:
    """Refuse, before the server starts, a port that another program listens on.

    The server (uvicorn) binds as this check does: the address family from the host's spelling,
    ``SO_REUSEADDR`` (a port whose last connections are closing counts as free). Another program
    may still take the port in between: then the server's own error is what the user sees.

    Parameters
    ----------
    host : str
        The interface the server will listen on.
    port : int
        Its TCP port.

    Raises
    ------
    OptionError
        When ``host`` is not an address of this machine, or ``port`` is taken or needs privileges.
    """
    import errno
    import socket

    # As uvicorn binds: IPv6 for an address with a colon, else IPv4 (a name such as localhost
    # resolves to its IPv4 address then, even where ::1 comes first).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror as error:
            raise OptionError(f"--host: cannot resolve {host!r} ({error.strerror or error})") from None
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OptionError(
                    f"--port: {host}:{port} is in use (another program listens there); choose another --port"
                ) from None
            if error.errno == errno.EACCES:
                raise OptionError(
                    f"--port: this user may not listen on port {port} (below 1024: choose a higher one)"
                ) from None
            raise OptionError(f"--host: cannot listen on {host}:{port} ({error.strerror or error})") from None


def server_command(uri: str, host: str, port: int, workers: int) -> list[str]:
    """Return the command that serves ``uri`` with MLflow's scoring server in this environment.

    ``--env-manager local``: the model is loaded by this Python, where otrain (whose module
    registers the model's layers) is installed; MLflow would otherwise build a virtualenv.

    Returns
    -------
    list of str
        ``python -m mlflow models serve ...``, with this interpreter.
    """
    return [
        *(sys.executable, "-m", "mlflow", "models", "serve"),
        *("--model-uri", uri, "--host", host, "--port", str(port), "--workers", str(workers)),
        *("--env-manager", "local"),
    ]
