"""ONNX twins of models, and the classifier a scoring command uses: Keras or ONNX Runtime.

Every trained model has an ONNX twin beside it, ``<stem>.onnx`` (``survey.keras`` ->
``survey.onnx``), written by otrain-train and by otrain-export: the same network, its
normalisation and calibration layers included, converted with Keras' ONNX export (tf2onnx) and
checked against the Keras model on a cube before it is renamed into place. The twin records
the SHA-256 of the model file it was exported from, so a model saved again (retrained,
replaced) is never scored through a twin of its old weights.

Scoring with the twin needs ONNX Runtime and numpy only: :class:`OnnxClassifier` is what the
scoring commands call instead of a Keras model, and this module imports neither TensorFlow nor
Keras unless a Keras model is asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from otrain.atomic import atomic_path
from otrain.config import BACKENDS, PARITY_TOLERANCE, PREDICT_BATCH, SOURCE_SHA256, Backend, int8_path, twin_path
from otrain.errors import DataError, first_line
from otrain.parallel import default_workers

__all__ = [
    "BACKENDS",
    "PARITY_TOLERANCE",
    "Backend",
    "OnnxClassifier",
    "choose_backend",
    "cutout_shape",
    "export_onnx",
    "file_sha256",
    "int8_path",
    "load_classifier",
    "onnxruntime_available",
    "restamp_twin",
    "twin_path",
]

logger = logging.getLogger("otrain")

#: The ONNX metadata key naming the Keras file a twin was exported from.
SOURCE_NAME = "otrain.source"


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
        if len(outputs) != 1 or outputs[0].shape[1:] != [2]:
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
    from otrain.model import input_shape_of

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
    if {entry.key: entry.value for entry in proto.metadata_props}.get(SOURCE_SHA256) != sha256:
        return f"{onnx_file} was exported from another version of {model_file.name} ({writer} updates it)"
    return ""


def _int8_passed(model_file: Path) -> bool:
    """Tell whether the card says this very int8 file passed its gates (see :mod:`otrain.quantize`)."""
    from otrain.card import read_card

    try:
        record = read_card(model_file).get("onnx_int8")
    except DataError:
        return False
    int8 = int8_path(model_file)
    if not isinstance(record, dict) or record.get("default") is not True or not int8.is_file():
        return False
    return record.get("sha256") == file_sha256(int8)


def choose_backend(model_file: Path, backend: Backend = "auto") -> tuple[str, Path, str]:
    """Decide what scores with ``model_file`` (see :func:`load_classifier`), without loading anything.

    Returns
    -------
    str
        ``keras``, ``onnx`` or ``int8``.
    Path
        The file that scores: the Keras model, its twin or its int8 model.
    str
        A warning for the user when ``auto`` passed over a model file that exists (stale,
        unreadable, no ONNX Runtime); else empty.

    Raises
    ------
    DataError
        When ``onnx`` or ``int8`` is asked for and cannot be had.
    """
    if backend == "keras":
        return "keras", model_file, ""
    if not model_file.is_file():
        raise DataError(f"{model_file}: model file does not exist")
    sha256 = file_sha256(model_file)
    runtime = "" if onnxruntime_available() else "onnxruntime is not installed (pip install onnxruntime)"
    notes = []
    if backend == "int8" or (backend == "auto" and _int8_passed(model_file)):
        int8 = int8_path(model_file)
        why = runtime or _fresh(model_file, int8, sha256, "otrain-export --quantize int8")
        if not why:
            return "int8", int8, ""
        if backend == "int8":
            raise DataError(f"--backend int8: {why}")
        notes.append(f"not scoring with the int8 model: {why}")
    twin = twin_path(model_file)
    why = runtime or _fresh(model_file, twin, sha256, "otrain-export")
    if not why:
        return "onnx", twin, "; ".join(notes)
    if backend == "onnx":
        raise DataError(f"--backend onnx: {why}")
    if twin.exists():
        notes.append(f"scoring with Keras: {why}")
    return "keras", model_file, "; ".join(notes)


def load_classifier(model_file: Path, backend: Backend = "auto", threads: int | None = None) -> tuple[Any, str]:
    """Load the classifier that scores with ``model_file``: its int8 model, its ONNX twin or the Keras model.

    Parameters
    ----------
    model_file : Path
        The Keras model (``.keras`` or ``.h5``).
    backend : {"auto", "keras", "onnx", "int8"}
        ``onnx``: the twin, which must exist and have been exported from this model file;
        ``int8``: the int8 model, likewise; ``keras``: the Keras model; ``auto``: the int8 model
        when the card says it passed its gates, else the twin, when usable and ONNX Runtime is
        installed, else the Keras model.
    threads : int, optional
        ONNX Runtime's intra-op threads; default: the cores this process may use.

    Returns
    -------
    classifier
        A Keras model or an :class:`OnnxClassifier`; both have ``predict_on_batch``.
    str
        The backend used: ``keras``, ``onnx`` or ``int8``.

    Raises
    ------
    DataError
        When the model cannot be read, or ``onnx``/``int8`` is asked for and its file is
        missing, stale or unreadable, or ONNX Runtime is not installed.
    """
    chosen, path, note = choose_backend(model_file, backend)
    if note:
        logger.warning("%s", note)
    if chosen != "keras":
        logger.debug("scoring with ONNX Runtime: %s", path)
        return OnnxClassifier(path, threads=threads), chosen
    from otrain.model import load_model

    return load_model(model_file), "keras"


def _stamp(proto: Any, model_file: Path, source_sha256: str) -> None:
    """Record in an ONNX model the Keras file it is the twin of."""
    from otrain import __version__

    entries = {SOURCE_SHA256: source_sha256, SOURCE_NAME: model_file.name, "otrain.version": __version__}
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def restamp_twin(twin: Path, model_file: Path) -> Path:
    """Write ``twin`` as the twin of ``model_file``, another save of the same model (an MLflow model's copy).

    Parameters
    ----------
    twin : Path
        An ONNX twin checked against the model.
    model_file : Path
        The same model saved again (the same weights, other bytes).

    Returns
    -------
    Path
        The new twin, :func:`twin_path` of ``model_file``.
    """
    import onnx

    proto = onnx.load(str(twin))
    _stamp(proto, model_file, file_sha256(model_file))
    target = twin_path(model_file)
    with atomic_path(target) as temporary:
        onnx.save(proto, str(temporary))
    return target


def _convert(model: Any, target: Path) -> None:
    """Export a Keras model to ONNX with Keras' exporter (tf2onnx), quietly."""
    shape = cutout_shape(model)
    model.predict_on_batch(np.zeros((1, *shape), np.float32))  # Keras exports only a model called once
    chatty = [logging.getLogger(name) for name in ("tf2onnx", "absl")]
    levels = [log.level for log in chatty]
    for log in chatty:
        log.setLevel(logging.CRITICAL)  # an unsupported operator is reported once, by ONNX Runtime's check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(target), format="onnx", verbose=False)
    except Exception as error:  # tf2onnx raises many types for an unsupported operator
        raise DataError(f"{target.name}: the model cannot be exported to ONNX ({first_line(error)[:300]})") from None
    finally:
        for log, level in zip(chatty, levels, strict=True):
            log.setLevel(level)


def export_onnx(
    model: Any,
    model_file: Path,
    pixels: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    checked_on: str = "cube",
    target: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    source_sha256: str | None = None,
) -> dict[str, Any]:
    """Write the ONNX twin of a saved Keras model, after checking it gives the model's P(real).

    Parameters
    ----------
    model : keras.Model
        The model, as saved in ``model_file``.
    model_file : Path
        Its file: the twin records the file's SHA-256.
    pixels : numpy.ndarray
        (N, H, W, C) cutouts of the model's input shape on which both must agree.
    reference : numpy.ndarray, optional
        The Keras model's P(real) of ``pixels``, when already computed.
    checked_on : str
        What ``pixels`` are, for the record.
    target : Path, optional
        The twin; default :func:`twin_path`.
    tolerance : float
        Largest difference of P(real) allowed (default :data:`PARITY_TOLERANCE`).
    source_sha256 : str, optional
        The SHA-256 of ``model_file`` when ``model`` was loaded from it: taken before loading,
        so that a file replaced meanwhile never gets a twin of other weights.

    Returns
    -------
    dict
        The record for the model card: file, SHA-256 of both files, opset, the versions of
        the converter and runtime, and the parity check (cutouts, largest difference of P(real),
        tolerance).

    Raises
    ------
    DataError
        When the model cannot be exported, or the twin's P(real) differs from the model's by
        more than ``tolerance``; nothing is written then.
    """
    import onnx
    import onnxruntime

    from otrain.scoring import predict

    target = target or twin_path(model_file)
    source_sha256 = source_sha256 or file_sha256(model_file)
    if reference is None:
        reference = predict(model, pixels)
    with atomic_path(target) as temporary:
        _convert(model, temporary)
        proto = onnx.load(str(temporary))
        _stamp(proto, model_file, source_sha256)
        onnx.save(proto, str(temporary))
        scored = predict(OnnxClassifier(temporary, shown=target), pixels, PREDICT_BATCH)
        difference = float(np.max(np.abs(scored - reference))) if len(pixels) else 0.0
        if not difference <= tolerance:
            raise DataError(
                f"{target}: the ONNX model's P(real) differs from {model_file.name}'s by {difference:.3g} on "
                f"{checked_on} (tolerance {tolerance:g}); not written"
            )
        opset = max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    return {
        "file": target.name,
        "sha256": file_sha256(target),
        "source_sha256": source_sha256,
        "opset": int(opset),
        "converter": f"tf2onnx {version('tf2onnx')}",
        "onnxruntime_version": onnxruntime.__version__,
        "parity": {
            "checked_on": checked_on,
            "cutouts": len(pixels),
            "max_abs_diff_p_real": difference,
            "tolerance": tolerance,
        },
    }
