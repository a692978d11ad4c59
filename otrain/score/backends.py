"""The classifier a scoring command uses: the Keras model, its ONNX twin or its int8 model.

Every trained model has an ONNX twin beside it, ``<stem>.onnx`` (``survey.keras`` ->
``survey.onnx``; written and checked by :mod:`otrain.score.twin`). The twin records the SHA-256
of the model file it was exported from, so a model saved again (retrained, replaced) is never
scored through a twin of its old weights. A model that cannot have a twin gets an absence
record in its place: a stub that says why, so that the scoring commands say why they score
with Keras.

Scoring with the twin needs ONNX Runtime and numpy only: :class:`OnnxClassifier` is what the
scoring commands call instead of a Keras model, and this module imports neither TensorFlow nor
Keras unless a Keras model is asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.layout import int8_path, twin_path
from otrain.io.parallel import default_workers
from otrain.options import BACKENDS, SOURCE_SHA256, Backend

__all__ = [
    "BACKENDS",
    "TWIN_ABSENT",
    "Backend",
    "BackendChoice",
    "OnnxClassifier",
    "choose_backend",
    "cutout_shape",
    "file_sha256",
    "load_classifier",
    "onnxruntime_available",
]

logger = logging.getLogger("otrain")

#: The ONNX metadata key of an absence record (:func:`otrain.score.twin.write_absent_twin`): why the
#: model has no twin.
TWIN_ABSENT = "otrain.twin_absent"


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file's bytes, in hexadecimal."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnxruntime_available() -> bool:
    """Tell whether ONNX Runtime can be imported (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxClassifier:
    """A two-class cutout classifier run by ONNX Runtime, with the calls otrain makes of a Keras model.

    The session runs on the CPU with every graph optimisation, as many intra-op threads as
    the process may use cores (affinity and cgroup quota) and one inter-op thread: the
    network is one chain of operators.

    Parameters
    ----------
    path : Path
        An ONNX model taking (N, H, W, C) float32 pixels and giving (N, 2) (P(bogus), P(real)).
    threads : int, optional
        Intra-op threads; default: the cores this process may use.
    shown : Path, optional
        The name given in messages (the final name of a file being written); default ``path``.

    Raises
    ------
    DataError
        When the file is not an ONNX model of that kind; the message names it.
    """

    def __init__(self, path: Path, threads: int | None = None, shown: Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or default_workers()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: a spinning thread takes the core from the
        # single-threaded operators (TopK of the normalisation) and from the reading workers.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime raises its own exception types for a bad file
            raise DataError(f"{shown or path}: not a readable ONNX model ({first_line(error)[:200]})") from None
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or not all(isinstance(size, int) for size in shape[1:]):
            raise DataError(f"{shown or path}: the ONNX model must take one (N, H, W, C) input, got {shape}")
        # Two columns (P(bogus), P(real)), or an ensemble's three (and the members' spread).
        if len(outputs) != 1 or outputs[0].shape[1:] not in ([2], [3]):
            raise DataError(f"{shown or path}: the ONNX model must output 2 class probabilities (bogus, real)")
        self.cutout_shape: tuple[int, int, int] = (int(shape[1]), int(shape[2]), int(shape[3]))
        self._input, self._output = inputs[0].name, outputs[0].name

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Return (P(bogus), P(real)) of a batch of (N, H, W, C) cutouts."""
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        return self.session.run([self._output], {self._input: batch})[0]


def cutout_shape(model: Any) -> tuple[int, int, int]:
    """Return the (H, W, C) cutout shape of a Keras model or an :class:`OnnxClassifier`."""
    if isinstance(model, OnnxClassifier):
        return model.cutout_shape
    from otrain.nets.model import input_shape_of

    return input_shape_of(model)


def _fresh(model_file: Path, onnx_file: Path, sha256: str, writer: str) -> str:
    """Return why ``onnx_file`` cannot score for ``model_file`` (whose SHA-256 is given); empty when it can."""
    if not onnx_file.is_file():
        return f"{onnx_file} does not exist ({writer} --model {model_file} writes it)"
    import onnx

    try:
        proto = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a damaged file
        return f"{onnx_file}: not a readable ONNX model ({first_line(error)[:200]})"
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    if metadata.get(SOURCE_SHA256) != sha256:
        return f"{onnx_file} was exported from another version of {model_file.name} ({writer} updates it)"
    if TWIN_ABSENT in metadata:
        return f"{model_file.name} has no ONNX twin ({onnx_file.name} says why: {metadata[TWIN_ABSENT]})"
    return ""


def _int8_passed(model_file: Path) -> bool:
    """Tell whether the card says this very int8 file passed its gates (see :mod:`otrain.score.quantize`)."""
    from otrain.io.card import read_card

    try:
        record = read_card(model_file).get("onnx_int8")
    except DataError:
        return False
    int8 = int8_path(model_file)
    if not isinstance(record, dict) or record.get("default") is not True or not int8.is_file():
        return False
    return record.get("sha256") == file_sha256(int8)


@dataclass(frozen=True)
class BackendChoice:
    """What scores with a model file: chosen once per command (:func:`choose_backend`) and passed on.

    A command chooses before it loads anything (it imports TensorFlow only when the Keras model
    scores), and hands the choice to :func:`load_classifier` and the scoring functions, so the
    model file is hashed once.

    Attributes
    ----------
    model_file : Path
        The Keras model (``.keras`` or ``.h5``) the user named.
    backend : str
        ``keras``, ``onnx`` or ``int8``.
    path : Path
        The file that scores: ``model_file``, its twin or its int8 model.
    note : str
        A warning for the user when ``auto`` passed over a model file that exists (stale,
        unreadable, no ONNX Runtime), said when the classifier is loaded; else empty.
    """

    model_file: Path
    backend: str
    path: Path
    note: str = ""


def choose_backend(model_file: Path, backend: Backend = "auto") -> BackendChoice:
    """Decide what scores with ``model_file``, without loading anything.

    Parameters
    ----------
    model_file : Path
        The Keras model (``.keras`` or ``.h5``).
    backend : {"auto", "keras", "onnx", "int8"}
        ``onnx``: the twin, which must exist and have been exported from this model file;
        ``int8``: the int8 model, likewise; ``keras``: the Keras model; ``auto``: the int8 model
        when the card says it passed its gates, else the twin, when usable and ONNX Runtime is
        installed, else the Keras model.

    Returns
    -------
    BackendChoice
        The backend, the file that scores, and why ``auto`` passed over a file that exists.

    Raises
    ------
    DataError
        When ``onnx`` or ``int8`` is asked for and its file is missing, stale or unreadable, or
        ONNX Runtime is not installed; or when the model file does not exist (but for ``keras``,
        which leaves that to loading).
    """
    if backend == "keras":
        return BackendChoice(model_file, "keras", model_file)
    if not model_file.is_file():
        raise DataError(f"{model_file}: model file does not exist")
    sha256 = file_sha256(model_file)
    runtime = "" if onnxruntime_available() else "onnxruntime is not installed (pip install onnxruntime)"
    notes = []
    if backend == "int8" or (backend == "auto" and _int8_passed(model_file)):
        int8 = int8_path(model_file)
        why = runtime or _fresh(model_file, int8, sha256, "otrain-export --quantize int8")
        if not why:
            return BackendChoice(model_file, "int8", int8)
        if backend == "int8":
            raise DataError(f"--backend int8: {why}")
        notes.append(f"not scoring with the int8 model: {why}")
    twin = twin_path(model_file)
    why = runtime or _fresh(model_file, twin, sha256, "otrain-export")
    if not why:
        return BackendChoice(model_file, "onnx", twin, "; ".join(notes))
    if backend == "onnx":
        raise DataError(f"--backend onnx: {why}")
    if twin.exists():
        notes.append(f"scoring with Keras: {why}")
    return BackendChoice(model_file, "keras", model_file, "; ".join(notes))


def load_classifier(choice: BackendChoice, threads: int | None = None) -> Any:
    """Load the classifier a command chose (:func:`choose_backend`): the int8 model, the ONNX twin or the Keras model.

    The choice's note, if any, is logged as a warning here.

    Parameters
    ----------
    choice : BackendChoice
        What scores.
    threads : int, optional
        ONNX Runtime's intra-op threads; default: the cores this process may use.

    Returns
    -------
    classifier
        A Keras model or an :class:`OnnxClassifier`; both have ``predict_on_batch``.

    Raises
    ------
    DataError
        When the file that scores cannot be read; the message names it.
    """
    if choice.note:
        logger.warning("%s", choice.note)
    if choice.backend != "keras":
        logger.debug("scoring with ONNX Runtime: %s", choice.path)
        return OnnxClassifier(choice.path, threads=threads)
    from otrain.nets.model import load_model

    return load_model(choice.model_file)
