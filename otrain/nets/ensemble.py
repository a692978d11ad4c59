"""Ensembles: several trained networks saved as one Keras model that averages them and says how sure it is.

:func:`build_ensemble` makes one functional model of its members: the cutout goes through every
member (each a nested model named ``member_<i>``, without its own calibration layer), and an
:class:`EnsembleHead` averages their (P(bogus), P(real)) rows, calibrates the average with the
same logistic formula as :class:`otrain.nets.model.Calibration` (P = 1 / (1 + exp(-(z / T + b)))),
and outputs three columns:

0. P(bogus) = 1 - column 1;
1. P(real), calibrated: what every scorer reads, as of a single model;
2. the spread: the population standard deviation of the members' own (uncalibrated) P(real),
   0 when they all agree, at most 0.5.

Two averages (``average``):

- ``logits``: z is the mean of the members' log-odds log P(real) - log P(bogus) (each column at
  least ``epsilon``, as the calibration layer takes them): the geometric mean of the odds, which
  lets one confident member move the ensemble further than one undecided member;
- ``probabilities``: z is the log-odds of the members' mean (P(bogus), P(real)) rows.

A single model keeps its two columns; only an ensemble has the third. The head
(:class:`otrain.nets.ensemble_head.EnsembleHead`, re-exported here with its readers) uses only
operators that Keras' ONNX export converts (Log, Exp, Maximum, ReduceMean, Sqrt, Concat), so an
ensemble gets an ONNX twin like any model (:mod:`otrain.score.twin`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

# The head and its readers, re-exported: an ensemble's code imports one module.
from otrain.nets.ensemble_head import AVERAGES as AVERAGES
from otrain.nets.ensemble_head import DEFAULT_AVERAGE as DEFAULT_AVERAGE
from otrain.nets.ensemble_head import ENSEMBLE_COLUMNS as ENSEMBLE_COLUMNS
from otrain.nets.ensemble_head import MEMBER_PREFIX, Average, EnsembleHead
from otrain.nets.ensemble_head import ensemble_head as ensemble_head
from otrain.nets.ensemble_head import ensemble_members as ensemble_members
from otrain.nets.ensemble_head import is_ensemble as is_ensemble
from otrain.nets.model import Calibration, input_shape_of

__all__ = ["build_ensemble"]


def _uncalibrated(member: keras.Model, index: int) -> keras.Model:
    """Return ``member`` without a trailing calibration layer, as a model named ``member_<index>``.

    The returned model shares the member's layers and weights.
    """
    name = f"{MEMBER_PREFIX}{index}"
    if isinstance(member, keras.Sequential):
        body = [layer for layer in member.layers if not isinstance(layer, (Calibration, layers.InputLayer))]
        return keras.Sequential([keras.Input(shape=input_shape_of(member)), *body], name=name)
    last = member.layers[-1]
    outputs = last.input if isinstance(last, Calibration) else member.outputs[0]
    return keras.Model(member.inputs, outputs, name=name)


def build_ensemble(
    members: Sequence[keras.Model],
    *,
    temperature: float = 1.0,
    bias: float = 0.0,
    average: Average = DEFAULT_AVERAGE,
) -> keras.Model:
    """Build one model that runs every member on the cutout, averages them and calibrates the average.

    Parameters
    ----------
    members : sequence of keras.Model
        Two-class softmax classifiers of one (H, W, C) input; a member's trailing
        :class:`otrain.nets.model.Calibration` layer is left out (the ensemble calibrates
        the average once). Their layers and weights are shared, not copied.
    temperature, bias : float
        The calibration of the average: P(real) = 1 / (1 + exp(-(z / temperature + bias))).
    average : {"logits", "probabilities"}
        Mean of the members' log-odds, or of their probabilities (see the module's description).

    Returns
    -------
    keras.Model
        A functional model named ``ensemble``, not compiled, whose output is (N, 3): P(bogus),
        calibrated P(real) and the spread of the members' P(real).

    Raises
    ------
    ValueError
        When there is no member, the members take different inputs, or a member does not
        output two columns.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shape = input_shape_of(members[0])
    for index, member in enumerate(members):
        if input_shape_of(member) != shape:
            raise ValueError(f"member {index} takes {input_shape_of(member)} cutouts, member 0 takes {shape}")
        if tuple(member.outputs[0].shape[1:]) != (2,):
            raise ValueError(f"member {index} must output 2 columns, got {tuple(member.outputs[0].shape[1:])}")
    nested = [_uncalibrated(member, index) for index, member in enumerate(members)]
    cutout = keras.Input(shape=shape, name="cutout")
    head = EnsembleHead(temperature=temperature, bias=bias, average=average, name="ensemble_head", dtype="float32")
    return keras.Model(cutout, head([member(cutout) for member in nested]), name="ensemble")
