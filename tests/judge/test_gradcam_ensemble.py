"""Grad-CAM of an ensemble: the mean of its members' maps, each on its own last convolution."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose


def test_an_ensembles_map_is_the_mean_of_its_members_maps() -> None:
    import keras

    from otrain.judge.gradcam import explained_layer, gradcam_maps
    from otrain.nets.ensemble import build_ensemble, ensemble_members
    from otrain.nets.model import build_model, with_calibration

    keras.utils.set_random_seed(11)
    shape = (16, 16, 2)
    first, second = (build_model(shape, architecture="vgg", normalisation="asinh") for _ in range(2))
    ensemble = build_ensemble([with_calibration(first, 2.0, 0.5), second])
    pixels = (np.random.default_rng(2).normal(size=(4, *shape)) * 30).astype(np.float32)
    classes = np.array([1, 0, 1, 0])

    maps = [gradcam_maps(member, pixels, classes, expand=False, normalise=False) for member in (first, second)]
    ours = gradcam_maps(ensemble, pixels, classes, expand=False, normalise=False)
    assert ours.shape == (4, 8, 8)
    assert np.ptp(maps[0]) > 0
    assert np.ptp(maps[1]) > 0
    assert np.abs(maps[0] - maps[1]).max() > 0
    assert_allclose(ours, (maps[0] + maps[1]) / 2, rtol=1e-5, atol=1e-7)

    normalised = gradcam_maps(ensemble, pixels, classes)
    assert normalised.shape == (4, 16, 16)
    assert_allclose(normalised.min(axis=(1, 2)), 0.0, atol=1e-6)
    assert_allclose(normalised.max(axis=(1, 2)), 1.0, atol=1e-3)  # tf-keras-vis adds 1e-7 to the range
    # The layer a single-network reader would name is the last member's.
    assert explained_layer(ensemble) is explained_layer(ensemble_members(ensemble)[-1])
