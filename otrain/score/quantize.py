"""otrain-export --quantize int8: an int8 model beside the float twin, and how far it moves the decisions.

ONNX Runtime's static quantisation: the weights of the convolutions (but the first, which reads
the normalised pixels) and of the dense layers are stored as int8 (one scale per output
channel), their activations as uint8 with ranges measured (99.999th percentile) on a seeded
sample of the training cube's training rows. The normalisation, the softmax and the
calibration stay in float. Of the recipes tried on the demo model (QDQ or QOperator, per
tensor or channel, MinMax, entropy or percentile ranges, signed or unsigned activations),
this one moved ROC AUC least; it still moves it by several hundredths, so the gates below
keep it off by default. The int8 model is then scored against the float twin on a
labelled cube (the training's test set by default): the card records the change of ROC AUC
and the fraction of decisions at the card's threshold that change, and whether both are
under the gates that let ``--backend auto`` use it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otrain.data.datacube import Datacube, recorded_split
from otrain.errors import DataError, first_line
from otrain.io.card import card_threshold, read_card, split_record
from otrain.io.layout import card_file
from otrain.metrics.evaluation import binary_metrics
from otrain.options import SOURCE_SHA256, ExportConfig
from otrain.score.backends import OnnxClassifier, file_sha256
from otrain.score.scoring import fit_to_model, predict
from otrain.score.twin import SOURCE_NAME, _stamp

__all__ = ["INT8_GATES", "QUANTISED_OPERATORS", "Int8Inputs", "prepare_int8", "quantize_int8"]

logger = logging.getLogger("otrain")

#: The int8 model may be the default only when it moves ROC AUC and decisions by less than these.
INT8_GATES = {"roc_auc_shift": 0.002, "decisions_changed": 0.005}
#: Cutouts per calibration batch.
CALIBRATION_BATCH = 64
#: Operators quantised; the rest (normalisation, softmax, calibration) stays float.
QUANTISED_OPERATORS = ("Conv", "MatMul", "Gemm", "MaxPool", "AveragePool", "Relu")


def _training_rows(cube: Datacube, card: dict[str, Any]) -> tuple[np.ndarray, str]:
    """Return the rows of ``cube`` a model was trained on, when its card's split applies to this cube."""
    split = recorded_split(split_record(card), cube)
    if split is not None:
        return np.asarray(split.train), "training rows"
    return np.arange(len(cube.labels)), "all rows"


def _calibration_cube(config: ExportConfig, card: dict[str, Any]) -> Path:
    """Return the cube whose cutouts calibrate: --calibration-cube, else the training cube the card names."""
    if config.calibration_cube is not None:
        return config.calibration_cube
    named = card.get("cube")
    if not named:
        raise DataError(
            f"{card_file(config.model)}: the card names no training cube to calibrate the int8 model on; "
            "give --calibration-cube"
        )
    if not Path(named).is_file():
        raise DataError(
            f"{named}: the training cube the model card names is not there (run from the training's working "
            "folder, or give --calibration-cube)"
        )
    if Path(named).resolve() == config.check_cube.resolve():
        raise DataError(f"{named}: the card's training cube is the cube int8 is judged on; give --calibration-cube")
    return Path(named)


def _calibration_pixels(config: ExportConfig, model: Any, card: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Return a seeded sample of the calibration cube's (training) rows, fitted to the model, and its record."""
    path = _calibration_cube(config, card)
    cube = Datacube.load(path)
    rows, which = _training_rows(cube, card)
    rng = np.random.default_rng(config.seed)
    count = min(config.calibration_size, len(rows))
    # Whole batches only: the percentile calibrator stacks the batches' activations.
    count -= count % min(CALIBRATION_BATCH, count)
    chosen = np.sort(rng.choice(rows, size=count, replace=False))
    pixels = fit_to_model(cube.cube[chosen], model, f"{path} (model {config.model.name})")
    return pixels, {"cube": str(path), "rows": which, "cutouts": len(chosen), "seed": config.seed}


@dataclass(frozen=True)
class Int8Inputs:
    """What the int8 model needs, read before otrain-export writes anything."""

    calibration: np.ndarray
    calibration_record: dict[str, Any]
    labels: np.ndarray
    threshold: float


def prepare_int8(config: ExportConfig, model: Any, cube: Datacube | None) -> Int8Inputs:
    """Read the calibration sample, the labels and the card's threshold; refuse bad inputs before writing.

    Raises
    ------
    DataError
        Without a labelled cube, without a training cube to calibrate on (or when it is the
        judged cube), or when the card's threshold or a cube cannot be read.
    """
    if cube is None:  # ExportConfig refuses this; a cube that vanished since is data
        raise DataError(f"{config.check_cube}: --quantize int8 needs this labelled cube to judge the int8 model")
    card = read_card(config.model)
    threshold = card_threshold(config.model)
    calibration, record = _calibration_pixels(config, model, card)
    return Int8Inputs(calibration=calibration, calibration_record=record, labels=cube.labels, threshold=threshold)


class _Reader:
    """ONNX Runtime's calibration data reader: the calibration cutouts, in batches of equal size."""

    def __init__(self, name: str, pixels: np.ndarray) -> None:
        batch = min(CALIBRATION_BATCH, len(pixels))
        self._batches = iter([{name: pixels[start : start + batch]} for start in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next batch, None after the last."""
        return next(self._batches, None)


def _quantise(twin: Path, target: Path, pixels: np.ndarray) -> str:
    """Quantise ``twin`` into ``target``, calibrated on ``pixels``; return the twin's source SHA-256.

    The int8 model is stamped with the Keras file the twin was exported from, as the twin is.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = OnnxClassifier(twin).session.get_inputs()[0].name
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference needs sympy, which nothing else here does; the shapes are static.
        quant_pre_process(str(twin), str(prepared), skip_symbolic_shape=True)
        first_conv = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"][:1]
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
            quantize_static(
                str(prepared),
                str(target),
                _Reader(name, pixels),
                quant_format=QuantFormat.QOperator,
                op_types_to_quantize=list(QUANTISED_OPERATORS),
                nodes_to_exclude=first_conv,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
            )
    proto = onnx.load(str(target))
    source = {entry.key: entry.value for entry in onnx.load(str(twin), load_external_data=False).metadata_props}
    _stamp(proto, Path(source[SOURCE_NAME]), source[SOURCE_SHA256])
    proto.metadata_props.add(key="otrain.precision", value="int8")
    onnx.save(proto, str(target))
    return source[SOURCE_SHA256]


def quantize_int8(config: ExportConfig, inputs: Int8Inputs, pixels: np.ndarray) -> dict[str, Any]:
    """Write ``<stem>.int8.onnx`` from the float twin and judge it on the check cube.

    Parameters
    ----------
    config : ExportConfig
        Options of otrain-export (the twin is written already).
    inputs : Int8Inputs
        The calibration sample, the labels and the threshold (:func:`prepare_int8`).
    pixels : numpy.ndarray
        The check cube's cutouts, fitted to the model.

    Returns
    -------
    dict
        The card's ``onnx_int8`` record: file, checksums, calibration sample, evaluation
        (ROC AUC of both, its change, the fraction of decisions changed at the card's
        threshold, the largest change of P(real)), the gates and whether the model passes them.

    Raises
    ------
    DataError
        When quantisation fails; the int8 model is not written then.
    """
    from otrain.io.atomic import atomic_path

    threshold, calibration = inputs.threshold, inputs.calibration
    float_p = predict(OnnxClassifier(config.twin), pixels)
    with atomic_path(config.int8_twin) as temporary:
        try:
            source_sha256 = _quantise(config.twin, temporary, calibration)
        except Exception as error:  # onnxruntime.quantization raises many types
            raise DataError(f"{config.int8_twin}: quantisation failed ({first_line(error)[:300]})") from None
        int8_p = predict(OnnxClassifier(temporary, shown=config.int8_twin), pixels)
    labels = inputs.labels
    auc_float = float(binary_metrics(labels, float_p, threshold)["roc_auc"])
    auc_int8 = float(binary_metrics(labels, int8_p, threshold)["roc_auc"])
    evaluation = {
        "cube": str(config.check_cube),
        "cutouts": len(pixels),
        "threshold": threshold,
        "roc_auc_float": auc_float,
        "roc_auc_int8": auc_int8,
        "roc_auc_shift": auc_int8 - auc_float,
        "decisions_changed": float(np.mean((float_p > threshold) != (int8_p > threshold))) if len(pixels) else 0.0,
        "max_abs_diff_p_real": float(np.max(np.abs(float_p - int8_p))) if len(pixels) else 0.0,
    }
    passes = bool(
        np.isfinite(auc_float)
        and abs(evaluation["roc_auc_shift"]) < INT8_GATES["roc_auc_shift"]
        and evaluation["decisions_changed"] < INT8_GATES["decisions_changed"]
    )
    return {
        "file": config.int8_twin.name,
        "sha256": file_sha256(config.int8_twin),
        "source_sha256": source_sha256,  # the twin's stamp: the model it was exported from
        "method": "ONNX Runtime static quantisation (QOperator): int8 weights per channel, uint8 activations "
        "(percentile ranges), first convolution in float",
        "operators": list(QUANTISED_OPERATORS),
        "calibration": inputs.calibration_record,
        "evaluation": evaluation,
        "gates": INT8_GATES,
        "default": passes,
    }
