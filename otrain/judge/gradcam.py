"""otrain-grad-cam: where the network looks, with tf-keras-vis Grad-CAM and Grad-CAM++.

The map explains the predicted class of each candidate (TP and FP: real; TN and FN: bogus) on
the feature maps of the last Conv2D layer, found by type, as the rest of the network sees them:
after the batch normalisation and ReLU that directly follow it in the vgg network (see
:func:`explained_layer`). Under Keras 3, tf-keras-vis needs a functional model, so
a Sequential model is wrapped as ``keras.Model(model.inputs, model.outputs)``; its
softmax is replaced by a linear output (``ReplaceToLinear``) on a clone, so the score is the
class logit. A model's calibration layer (:class:`otrain.nets.model.Calibration`) is left out: the
map explains the network's decision, which the calibration only rescales. An ensemble's map is
the mean of its members' maps (:class:`GradCamExplainer`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from otrain.io.progress import track
from otrain.options import CENTRE_RADIUS_FWHM, GRADCAM_BATCH, GRADCAM_GRID, OUTCOMES, GradCamConfig

__all__ = ["GradCamExplainer", "GradCamReport", "centre_share", "explained_layer", "gradcam_maps", "run_grad_cam"]

logger = logging.getLogger("otrain")


def explained_layer(model: Any) -> Any:
    """Return the layer whose feature maps Grad-CAM weighs.

    The last Conv2D layer (found by type), or, when batch normalisation and activation layers
    follow it directly (the vgg network's Conv2D, BatchNormalization, ReLU), the last of them.
    Grad-CAM weighs rectified feature maps: the O'TRAIN convolutions carry their ReLU, the vgg
    ones do not, and at their raw output each map would be shifted by its normalisation's offset.

    Parameters
    ----------
    model : keras.Model
        The classifier; "directly" follows its layer order. Of an ensemble, its last member's.

    Returns
    -------
    keras.layers.Layer
        The layer.

    Raises
    ------
    otrain.errors.DataError
        When the model has no Conv2D layer.
    """
    from keras import layers

    from otrain.nets.ensemble import ensemble_members
    from otrain.nets.model import last_conv_layer

    model = ensemble_members(model)[-1]
    found = last_conv_layer(model)
    for layer in model.layers[model.layers.index(found) + 1 :]:
        if not isinstance(layer, (layers.BatchNormalization, layers.ReLU, layers.Activation)):
            break
        found = layer
    return found


class _NetworkExplainer:
    """A tf-keras-vis visualiser of one network (wrapping and cloning cost seconds)."""

    def __init__(self, model: Any, method: Literal["gradcam", "gradcam++"]) -> None:
        import keras
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

        from otrain.nets.model import Calibration

        self.layer = explained_layer(model).name
        # A calibration is monotonic: the network's softmax, before it, makes the same decision,
        # and its class logit (ReplaceToLinear) is the score Grad-CAM is defined on.
        calibrated = isinstance(model.layers[-1], Calibration)
        functional = keras.Model(model.inputs, model.layers[-2].output if calibrated else model.outputs)
        self.visualiser = (GradcamPlusPlus if method == "gradcam++" else Gradcam)(
            functional, model_modifier=ReplaceToLinear(), clone=True
        )

    def maps(self, pixels: np.ndarray, classes: np.ndarray, expand: bool, normalise: bool) -> np.ndarray:
        from tf_keras_vis.utils.scores import CategoricalScore

        maps = self.visualiser(
            CategoricalScore([int(c) for c in classes]),
            pixels,
            penultimate_layer=self.layer,
            seek_penultimate_conv_layer=False,
            expand_cam=expand,
            normalize_cam=normalise,
        )
        return np.asarray(maps, dtype=np.float64).reshape(len(pixels), *np.shape(maps)[-2:])


class GradCamExplainer:
    """A tf-keras-vis visualiser built once for a model (wrapping and cloning cost seconds).

    An ensemble (:mod:`otrain.nets.ensemble`) is explained by the mean of its members' maps, each
    on that member's own last convolution and for its own class logit, normalised after
    averaging: the ensemble's mean log-odds moves with member k's features through member k
    alone, by 1 / K of what moves that member's, so each member weighs equally.
    """

    def __init__(self, model: Any, method: Literal["gradcam", "gradcam++"] = "gradcam") -> None:
        from otrain.nets.ensemble import ensemble_members

        self.networks = [_NetworkExplainer(member, method) for member in ensemble_members(model)]
        self.layer = self.networks[-1].layer

    def maps(self, pixels: np.ndarray, classes: np.ndarray, expand: bool = True, normalise: bool = True) -> np.ndarray:
        """Class activation maps of ``classes`` (0 bogus, 1 real) for a batch of cutouts."""
        if len(self.networks) == 1:
            return self.networks[0].maps(pixels, classes, expand, normalise)
        from tf_keras_vis.utils import normalize

        maps = [network.maps(pixels, classes, expand, normalise=False) for network in self.networks]
        if len({member.shape for member in maps}) > 1:
            raise ValueError("the ensemble's members have convolution grids of different sizes: expand the maps")
        mean = np.mean(maps, axis=0)
        return np.asarray(normalize(mean), dtype=np.float64) if normalise else mean


def gradcam_maps(
    model: Any,
    pixels: np.ndarray,
    classes: np.ndarray,
    method: Literal["gradcam", "gradcam++"] = "gradcam",
    expand: bool = True,
    normalise: bool = True,
) -> np.ndarray:
    """Class activation maps of ``classes`` for a batch of cutouts.

    Parameters
    ----------
    model : keras.Model
        The classifier (Sequential or functional, softmax output), or an ensemble (the mean of
        its members' maps, see :class:`GradCamExplainer`).
    pixels : numpy.ndarray
        (N, H, W, C) cutouts.
    classes : numpy.ndarray
        The class each map explains (0 bogus, 1 real).
    method : {"gradcam", "gradcam++"}
        tf-keras-vis ``Gradcam`` or ``GradcamPlusPlus``.
    expand : bool
        Resize the maps to the cutout size (else the last convolution's grid).
    normalise : bool
        Scale each map to [0, 1].

    Returns
    -------
    numpy.ndarray
        (N, H, W) maps, or (N, h, w) on the convolution grid when not expanded.
    """
    return GradCamExplainer(model, method).maps(pixels, classes, expand, normalise)


def centre_share(maps: np.ndarray, fwhms: np.ndarray, radius: float = CENTRE_RADIUS_FWHM) -> tuple[float, float]:
    """How much of the maps lies on the candidate: the share within ``radius`` FWHM of the cutout centre.

    Parameters
    ----------
    maps : numpy.ndarray
        (N, H, W) non-negative maps on the cutouts' pixels.
    fwhms : numpy.ndarray
        The FWHM of each candidate, in pixels; a missing or non-positive one counts as the median
        of the others.
    radius : float
        The radius of the disc, in FWHM.

    Returns
    -------
    tuple of float
        The mean share of the maps' sum inside the disc (maps that are zero everywhere are left
        out), and the mean share of the pixels inside it: what a map spread evenly would give.
        NaN when there is no map.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if len(maps) == 0:
        return math.nan, math.nan
    fwhms = np.asarray(fwhms, dtype=np.float64)
    known = np.isfinite(fwhms) & (fwhms > 0)
    fwhms = np.where(known, fwhms, np.median(fwhms[known]) if known.any() else 1.0)
    height, width = maps.shape[1:]
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot(y - (height - 1) / 2, x - (width - 1) / 2)
    inside = distance[None] <= radius * fwhms[:, None, None]
    totals = maps.sum(axis=(1, 2))
    shares = (maps * inside).sum(axis=(1, 2))[totals > 0] / totals[totals > 0]
    return (float(shares.mean()) if len(shares) else math.nan), float(inside.mean())


@dataclass
class GradCamReport:
    """What otrain-grad-cam wrote, and how much of the true positives' maps lies on the candidate."""

    counts: dict[str, int] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    tp_centre_share: float = math.nan
    tp_centre_area: float = math.nan


def run_grad_cam(config: GradCamConfig) -> GradCamReport:
    """Write Grad-CAM overlays for every FP and FN and a sample of TP and TN, and a grid per outcome.

    Files: ``<cam_path>/<outcome>/cutout_CAM_<i>.png`` and ``<cam_path>/<outcome>_summary.png``.
    A class with fewer candidates than ``--n_random`` simply gives fewer images.
    """
    from otrain.errors import DataError
    from otrain.judge.analysis import candidate_title, log_stage, remove_own_images, shown_plane
    from otrain.metrics import plots
    from otrain.score.backends import choose_backend
    from otrain.score.scoring import sample_outcomes, score_cube

    scored = score_cube(config.cube, choose_backend(config.model_path, "keras"))  # Grad-CAM needs the Keras graph
    try:  # fails on a model without Conv2D, before any file changes
        explainer = GradCamExplainer(scored.model, config.method)
    except DataError as error:
        raise DataError(f"{config.model_path}: {error}; Grad-CAM explains a convolutional layer") from None
    cube, probabilities = scored.cube, scored.probabilities
    plane = shown_plane(cube)
    report = GradCamReport()
    config.cam_path.mkdir(parents=True, exist_ok=True)
    for outcome, rows in sample_outcomes(scored.outcomes(config.threshold), config.n_random, config.seed).items():
        folder = config.cam_path / outcome
        folder.mkdir(exist_ok=True)
        remove_own_images(folder, "cutout_CAM_*.png")
        report.counts[outcome] = len(rows)
        if not len(rows):
            continue
        explained = OUTCOMES[outcome]  # the predicted class
        maps = np.concatenate(
            [
                explainer.maps(cube.cube[batch], np.full(len(batch), explained))
                for batch in np.array_split(rows, -(-len(rows) // GRADCAM_BATCH))
            ]
        )
        if outcome == "TP":
            report.tp_centre_share, report.tp_centre_area = centre_share(maps, cube.fwhms[rows])
        titles = [candidate_title(cube, row, probabilities[row]) for row in rows]
        for index, (row, cam, title) in enumerate(
            track(list(zip(rows, maps, titles, strict=True)), len(rows), f"Grad-CAM {outcome}")
        ):
            path = folder / f"cutout_CAM_{index}.png"
            plots.plot_overlay(cube.cube[row, :, :, plane], cam, title, path)
        report.outputs.append(folder)
        report.outputs.append(
            plots.plot_overlay_grid(
                [cube.cube[row, :, :, plane] for row in rows[:GRADCAM_GRID]],
                list(maps[:GRADCAM_GRID]),
                [str(cube.candids[row]) for row in rows[:GRADCAM_GRID]],
                f"{outcome}: {len(rows)} candidates ({config.method})",
                config.cam_path / f"{outcome}_summary.png",
            )
        )
    shares = {"tp_centre_share": report.tp_centre_share, "tp_centre_area": report.tp_centre_area}
    log_stage(
        config.model_path,
        {key: value for key, value in shares.items() if math.isfinite(value)},
        report.outputs,
        "grad_cam",
        config.tracking,
    )
    return report
