"""ONNX twins of models: exported, checked against the Keras model, stamped with its file's hash.

Every trained model has an ONNX twin beside it, ``<stem>.onnx`` (``survey.keras`` ->
``survey.onnx``), written by otrain-train and by otrain-export: the same network, its
normalisation and calibration layers included, converted with Keras' ONNX export (tf2onnx) and
checked against the Keras model on a cube before it is renamed into place. The twin records
the SHA-256 of the model file it was exported from, so a model saved again (retrained,
replaced) is never scored through a twin of its old weights (:func:`otrain.score.backends.choose_backend`
checks it).

The check allows what float32 arithmetic allows (:func:`parity_allowance`, docs/onnx.md): the
two runtimes add the same terms in other orders, so each logit may differ by a few float32
epsilons of the size of the terms it sums. A model that cannot have a twin gets an absence
record in its place (:func:`write_absent_twin`): a stub that says why, so that a pipeline that
declares the twin as an output still has the file, and the scoring commands say why they score
with Keras.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.atomic import atomic_path
from otrain.io.layout import twin_path
from otrain.options import PARITY_TOLERANCE, PREDICT_BATCH, SOURCE_SHA256
from otrain.score.backends import TWIN_ABSENT, OnnxClassifier, cutout_shape, file_sha256
from otrain.score.scoring import predict

__all__ = [
    "FLOAT32_EPS",
    "PARITY_TOLERANCE",
    "SOURCE_NAME",
    "KerasScores",
    "export_onnx",
    "keras_scores",
    "parity_allowance",
    "restamp_twin",
    "write_absent_twin",
]

#: The ONNX metadata key naming the Keras file a twin was exported from.
SOURCE_NAME = "otrain.source"
#: float32's machine epsilon (2**-23): the unit of the parity tolerance.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
#: float32's smallest normal number: the parity check's floor.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: Machine epsilons of the half-precision dtypes a mixed-precision model computes in.
_HALF_EPSILONS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


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


def _convert(model: Any, target: Path, shown: Path) -> None:
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
        raise DataError(f"{shown.name}: the model cannot be exported to ONNX ({first_line(error)[:300]})") from None
    finally:
        for log, level in zip(chatty, levels, strict=True):
            log.setLevel(level)


@dataclass(frozen=True)
class KerasScores:
    """What the parity check needs of the Keras model on each cutout.

    Attributes
    ----------
    p_real : numpy.ndarray
        P(real), as the model computes it (float32 values, as float64).
    logit_scale : numpy.ndarray
        The size of the terms that make the model's logits: for the last dense layer, the
        largest over its outputs of ``sum_i |x_i w_ij| + |b_j|`` (x its input), float64. A float32
        sum is exact to a few epsilons of this, whatever order it adds them in.
    temperature : float
        The calibration layer's temperature (1 without one): log-odds are divided by it.
    log_scale : numpy.ndarray
        What the calibration layer adds to the scale: ``|log epsilon|`` for its logarithms, and for
        a layer of the older ``complement`` formula, 1 / (1 - P(real) before it), per cutout.
    epsilon : float
        The machine epsilon of the coarsest dtype the network computes in up to its last dense
        layer: float32's, or float16's (2**-10) for a model trained with ``--mixed-precision``.
        It scales the logit scale's term of the allowance.
    output_epsilon : float
        That of the last dense layer and the layers after it (softmax, calibration): float32's
        for otrain's models, mixed precision or not. It scales the calibration's and the
        rounding of P's terms.
    """

    p_real: np.ndarray
    logit_scale: np.ndarray
    temperature: float
    log_scale: np.ndarray
    epsilon: float = FLOAT32_EPS
    output_epsilon: float = FLOAT32_EPS

    @property
    def arithmetic(self) -> str:
        """The name of the network's coarsest dtype (``float32``, ``float16`` or ``bfloat16``)."""
        names = {value: name for name, value in _HALF_EPSILONS.items()}
        return names.get(self.epsilon, "float32")


def _probe(model: Any, head: Any) -> Any:
    """Return a model of the same layers that outputs P and, when ``head`` is given, its input."""
    import keras

    if head is None:
        return model
    if isinstance(model, keras.Sequential):
        # The layers are called afresh: a calibrated model shares them with the one it was made
        # from, so head.input would be a tensor of that other model's graph.
        inputs = keras.Input(shape=cutout_shape(model))
        tensor, features = inputs, None
        for layer in model.layers:
            if layer is head:
                features = tensor
            tensor = layer(tensor)
        return keras.Model(inputs, [tensor, features])
    return keras.Model(model.inputs, [model.outputs[0], head.input])


def keras_scores(model: Any, pixels: np.ndarray, batch_size: int = PREDICT_BATCH) -> KerasScores:
    """Score cutouts with a Keras model, with the scale of its logits (see :class:`KerasScores`).

    Parameters
    ----------
    model : keras.Model
        A two-class classifier; its last dense layer is taken as the one that makes the logits.
    pixels : numpy.ndarray
        (N, H, W, C) cutouts of its input shape.
    batch_size : int
        Cutouts per batch.

    Returns
    -------
    KerasScores
        One value per cutout (the logit scale 0 for a model without a dense layer).
    """
    import keras

    from otrain.nets.ensemble import is_ensemble
    from otrain.nets.model import Calibration

    if is_ensemble(model):
        return _ensemble_scores(model, pixels, batch_size)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    head = dense[-1] if dense else None
    probe = _probe(model, head)
    strategy = getattr(model, "distribute_strategy", None)
    several = strategy is not None and strategy.num_replicas_in_sync > 1
    if head is not None:
        kernel, *bias = head.get_weights()
        weights = np.abs(kernel.astype(np.float64))
        offsets = np.abs(bias[0].astype(np.float64)) if bias else np.zeros(weights.shape[1])
    p_real, scale, logit = [], [], []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        outputs = probe(batch, training=False) if several else probe.predict_on_batch(batch)
        outputs = [np.asarray(output) for output in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
        p_real.append(outputs[0][:, 1].astype(np.float64))
        if head is None:
            scale.append(np.zeros(len(batch)))
            continue
        inputs = outputs[1].astype(np.float64).reshape(len(batch), -1)
        scale.append(np.max(np.abs(inputs) @ weights + offsets, axis=1))
        terms = inputs @ kernel.astype(np.float64) + (bias[0] if bias else 0.0)
        logit.append(terms[:, -1] - terms[:, 0] if terms.shape[1] == 2 else np.zeros(len(batch)))
    empty = np.empty(0)
    p_real_all = np.concatenate(p_real) if p_real else empty
    calibration = model.layers[-1] if isinstance(model.layers[-1], Calibration) else None
    log_scale = np.zeros(len(p_real_all))
    temperature = 1.0
    if calibration is not None:
        temperature = calibration.temperature
        log_scale += abs(np.log(calibration.epsilon))
        if calibration.log_odds == "complement" and logit:
            # log(1 - p) with p rounded to float32 near 1: one epsilon of p is 1 / (1 - p) epsilons of z.
            complement = 1.0 / (1.0 + np.exp(np.clip(np.concatenate(logit), -700, 700)))
            log_scale += 1.0 / np.maximum(complement, calibration.epsilon)
    epsilons = [_HALF_EPSILONS.get(str(layer.compute_dtype), FLOAT32_EPS) for layer in model.layers]
    # Under mixed precision the network is float16 up to the last dense layer, which (with its
    # softmax) and the calibration compute in float32.
    last = model.layers.index(head) if head is not None else 0
    return KerasScores(
        p_real=p_real_all,
        logit_scale=np.concatenate(scale) if scale else empty,
        temperature=temperature,
        log_scale=log_scale,
        epsilon=max([FLOAT32_EPS, *epsilons]),
        output_epsilon=max([FLOAT32_EPS, *epsilons[last:]]),
    )


def _ensemble_scores(model: Any, pixels: np.ndarray, batch_size: int) -> KerasScores:
    """:func:`keras_scores` of an ensemble (:mod:`otrain.nets.ensemble`): its members' scales, weighed by its average.

    The ensemble's log-odds z is the mean of its members' (``logits``), each exact to a few
    epsilons of that member's logit scale S_k, so z is exact to a few epsilons of their mean; or
    the log-odds of the mean of their probabilities (``probabilities``), which moves by
    p_k (1 - p_k) / (K P(real) P(bogus)) (both means) per unit of member k's log-odds.
    """
    from otrain.nets.ensemble import ensemble_head, ensemble_members

    head = ensemble_head(model)
    members = [keras_scores(member, pixels, batch_size) for member in ensemble_members(model)]
    p_real = predict(model, pixels, batch_size)
    member_p = np.stack([member.p_real for member in members])
    scales = np.stack([member.logit_scale for member in members])
    if head.average == "logits":
        weights = np.full_like(member_p, 1.0 / len(members))
    else:
        mean = member_p.mean(axis=0)
        floor = head.epsilon * (1.0 - head.epsilon)
        weights = member_p * (1.0 - member_p) / (len(members) * np.maximum(mean * (1.0 - mean), floor))
    # The mean of the members' log-odds (at most |log epsilon| each) is rounded once more.
    log_scale = np.full(len(p_real), 2.0 * abs(np.log(head.epsilon)))
    return KerasScores(
        p_real=p_real,
        logit_scale=np.sum(weights * scales, axis=0),
        temperature=head.temperature,
        log_scale=log_scale,
        epsilon=max(member.epsilon for member in members),
        output_epsilon=max(member.output_epsilon for member in members),
    )


def parity_allowance(scores: KerasScores, twin_p_real: np.ndarray, tolerance: float) -> np.ndarray:
    """Return how far the twin's P(real) may be from the model's, per cutout.

    Both compute P = sigmoid(z / T + b) in float32 (the network before it in float16 under
    mixed precision), z the log-odds the network's logits give. Each logit is a sum whose
    result depends on the order of its terms, to a few epsilons of the size of those terms
    (the logit scale S, in the network's epsilon, plus the calibration's logarithms L, in
    float32's): ``tolerance`` epsilons of them is what z may differ by. Through the logistic, P
    moves by P (1 - P) / T per unit of z; and P itself is rounded, to a few float32 epsilons of
    P::

        |P_twin - P_model| <= tolerance * (eps * P (1 - P) S / T + eps32 * (P (1 - P) L / T + P)) + tiny

    with P(1 - P) and P the larger of the two runtimes' values, eps the network's epsilon
    (``scores.epsilon``: float32's, float16's under mixed precision), eps32 that of the last
    dense layer and what follows (``scores.output_epsilon``, float32's), and tiny float32's
    smallest normal number (about 1.2e-38). A float16 network thus widens only the term of
    its own sums: a twin whose calibration is missing or wrong is as far outside as in float32.

    Parameters
    ----------
    scores : KerasScores
        The model's P(real) and logit scale (:func:`keras_scores`).
    twin_p_real : numpy.ndarray
        The twin's P(real) of the same cutouts.
    tolerance : float
        In machine epsilons of the arithmetic of each term (see above).

    Returns
    -------
    numpy.ndarray
        The largest difference allowed, per cutout.
    """
    both = np.stack([scores.p_real, np.asarray(twin_p_real, dtype=np.float64)])
    slope = np.max(both * (1.0 - both), axis=0)
    network = scores.epsilon * slope * scores.logit_scale / scores.temperature
    output = scores.output_epsilon * (slope * scores.log_scale / scores.temperature + np.max(both, axis=0))
    # Below float32's smallest normal number there is no relative precision (kernels flush it to 0).
    return tolerance * (network + output) + FLOAT32_TINY


def export_onnx(
    model: Any,
    model_file: Path,
    pixels: np.ndarray,
    *,
    checked_on: str = "cube",
    target: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    source_sha256: str | None = None,
    threshold: float = 0.5,
    shown: Path | None = None,
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
    checked_on : str
        What ``pixels`` are, for the record.
    target : Path, optional
        The twin; default :func:`twin_path`.
    tolerance : float
        In machine epsilons (float32's; float16's for the float16 layers of a mixed-precision
        model) of each cutout's logit scale, at least 1 (default :data:`PARITY_TOLERANCE`; see
        :func:`parity_allowance`).
    source_sha256 : str, optional
        The SHA-256 of ``model_file`` when ``model`` was loaded from it: taken before loading,
        so that a file replaced meanwhile never gets a twin of other weights.
    threshold : float
        The card's decision threshold: the record counts the decisions that change.
    shown : Path, optional
        The twin's name in messages (its final place, when ``target`` is a staging file).

    Returns
    -------
    dict
        The record for the model card: file, SHA-256 of both files, opset, the versions of
        the converter and runtime, and the parity check (cutouts, largest difference of P(real)
        and its share of the allowance, tolerance, decisions changed at ``threshold``, and the
        cutouts whose P(real) is within its allowance of ``threshold``: those that may change).

    Raises
    ------
    DataError
        When the model cannot be exported, the twin does not run, or its P(real) differs from
        the model's by more than the tolerance allows on a cutout; nothing is written then.
    ValueError
        When ``tolerance`` is below 1 (or not a number): a difference of P(real), the unit it
        had before, is not taken for a count of epsilons.
    """
    if not tolerance >= 1:
        raise ValueError(
            f"tolerance must be at least 1 (machine epsilons of the logit scale, docs/onnx.md; "
            f"not a difference of P(real)), got {tolerance}"
        )
    import onnx
    import onnxruntime

    target = target or twin_path(model_file)
    shown = shown or target
    source_sha256 = source_sha256 or file_sha256(model_file)
    scores = keras_scores(model, pixels)
    with atomic_path(target) as temporary:
        _convert(model, temporary, shown)
        proto = onnx.load(str(temporary))
        _stamp(proto, model_file, source_sha256)
        onnx.save(proto, str(temporary))
        classifier = OnnxClassifier(temporary, shown=shown)
        try:
            scored = predict(classifier, pixels, PREDICT_BATCH)
        except Exception as error:  # ONNX Runtime raises its own exception types for a kernel it lacks
            raise DataError(f"{shown}: the ONNX model does not run ({first_line(error)[:300]})") from None
        difference = np.abs(scored - scores.p_real)
        allowance = parity_allowance(scores, scored, tolerance)
        share = difference / allowance
        worst = int(np.argmax(share)) if len(pixels) else 0
        if len(pixels) and not share[worst] <= 1.0:
            raise DataError(
                f"{shown}: the ONNX model's P(real) differs from {model_file.name}'s by {difference[worst]:.3g} "
                f"(P(real) {scores.p_real[worst]:.6g}) on cutout {worst} of {checked_on}, {share[worst]:.3g} times "
                f"what {scores.arithmetic} allows at --tolerance {tolerance:g} (see docs/onnx.md); not written"
            )
        opset = max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)
    changed = int(np.count_nonzero((scored > threshold) != (scores.p_real > threshold)))
    # A decision can change only where the threshold lies between the two P(real), so within the allowance.
    ties = int(np.count_nonzero(np.abs(scores.p_real - threshold) <= allowance))
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
            "max_abs_diff_p_real": float(difference.max()) if len(pixels) else 0.0,
            "max_share_of_allowance": float(share.max()) if len(pixels) else 0.0,
            "tolerance": tolerance,
            "epsilon": scores.epsilon,
            "output_epsilon": scores.output_epsilon,
            "tolerance_unit": "machine epsilons of the logit scale (docs/onnx.md)",
            "threshold": threshold,
            "decisions_changed": changed,
            "decisions_within_allowance": ties,
        },
    }


def write_absent_twin(model_file: Path, reason: str, target: Path | None = None) -> dict[str, Any]:
    """Write, where the twin goes, an absence record: an ONNX file with no graph that says why.

    A pipeline that declares the twin as an output then still has the file; ONNX Runtime
    refuses to load it, and the scoring commands (:func:`otrain.score.backends.choose_backend`) name the reason and
    score with Keras. otrain-export replaces it with a twin.

    Parameters
    ----------
    model_file : Path
        The Keras model without a twin.
    reason : str
        Why (one line).
    target : Path, optional
        Default :func:`twin_path`.

    Returns
    -------
    dict
        The card's ``onnx`` record: ``file``, ``absent`` (true) and ``error`` (the reason).
    """
    import onnx

    target = target or twin_path(model_file)
    proto = onnx.ModelProto(ir_version=onnx.IR_VERSION, producer_name="otrain", doc_string=reason)
    _stamp(proto, model_file, file_sha256(model_file))
    proto.metadata_props.add(key=TWIN_ABSENT, value=reason)
    with atomic_path(target) as temporary:
        onnx.save(proto, str(temporary))
    return {"file": target.name, "absent": True, "error": reason}
