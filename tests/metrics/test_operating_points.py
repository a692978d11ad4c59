"""Exact operating points: the FPR at a given FNR and the reverse, and the thresholds that give them.

Every figure is checked by counting the decisions "real if P(real) > threshold" directly,
never through scikit-learn (which the functions use).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from otrain.errors import DataError
from otrain.io.card import LOWEST_THRESHOLD, card_threshold, write_card
from otrain.metrics.evaluation import (
    evaluate,
    operating_point,
    operating_rates,
    threshold_for_fnr,
    threshold_for_fpr,
)

#: The largest float32 below 0.5 and below 1.
BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0)))
BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))


def _rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """FPR and FNR of "real if P(real) > threshold", counted."""
    decided = np.asarray(scores) > threshold
    labels = np.asarray(labels)
    return float(np.mean(decided[labels == 0])), float(np.mean(~decided[labels == 1]))


def _float32_decisions_agree(scores: np.ndarray, threshold: float) -> bool:
    """A float32 scorer (ONNX Runtime, NumPy on float32, Spark on floats) decides as float64 does."""
    single = np.asarray(scores, dtype=np.float32)
    return bool(
        np.array_equal(single > threshold, np.asarray(scores, dtype=np.float64) > threshold)
        and np.array_equal(single > np.float32(threshold), single.astype(np.float64) > threshold)
    )


def test_threshold_for_fnr_misses_no_more_than_asked() -> None:
    # 10 real cutouts scored 0.1, 0.2, ..., 1.0: at 10 %, one may be missed (the one at 0.1).
    labels = np.array([1] * 10 + [0] * 5)
    scores = np.concatenate([np.arange(1, 11) / 10, [0.05, 0.15, 0.25, 0.35, 0.95]])
    threshold = threshold_for_fnr(labels, scores, 0.10)
    assert 0.1 <= threshold < 0.2
    assert np.count_nonzero(scores[:10] <= threshold) == 1
    assert threshold_for_fnr(labels, scores, 0.01) < 0.1  # none missed
    assert threshold_for_fnr(labels, scores, 0.99) < 1.0  # nine may be missed: the best one is kept


def test_threshold_for_fpr_keeps_no_more_bogus_than_asked() -> None:
    labels = np.array([0] * 10 + [1] * 3)
    scores = np.concatenate([np.arange(1, 11) / 10, [0.3, 0.6, 0.9]])
    threshold = threshold_for_fpr(labels, scores, 0.20)  # two bogus may pass: 1.0 and 0.9
    assert threshold == pytest.approx(0.8)
    assert np.count_nonzero(scores[:10] > threshold) == 2
    assert np.count_nonzero(scores[:10] > threshold_for_fpr(labels, scores, 0.0)) == 0
    with pytest.raises(DataError, match="--target-fpr: the validation set holds no bogus cutout"):
        threshold_for_fpr(np.ones(3, dtype=int), np.array([0.1, 0.2, 0.3]), 0.1)
    with pytest.raises(DataError, match="--target-fnr: the validation set holds no real cutout"):
        threshold_for_fnr(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]), 0.1)


def test_a_real_cutout_scored_zero_is_kept_when_it_must_be(tmp_path: Path) -> None:
    labels = np.array([1, 1, 1, 0, 0])
    scores = np.array([0.0, 0.4, 1.0, 0.0, 0.7])
    threshold = threshold_for_fnr(labels, scores, 0.0)
    assert threshold == LOWEST_THRESHOLD < 0  # the largest float32 below 0
    assert _rates(labels, scores, threshold) == (1.0, 0.0)
    assert _float32_decisions_agree(scores, threshold)
    assert operating_point(labels, scores, target_fnr=0.0) == {"threshold": LOWEST_THRESHOLD, "fpr": 1.0, "fnr": 0.0}
    # A card may record it, and every command that reads the card's threshold takes it as it is.
    model = tmp_path / "m.keras"
    write_card(model, {"threshold": threshold})
    assert card_threshold(model) == threshold
    # Every real cutout scored 0: the same.
    assert threshold_for_fnr(np.array([1, 1, 0]), np.zeros(3), 0.4) == LOWEST_THRESHOLD


def test_scores_at_exactly_zero_and_one() -> None:
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.0, 1.0, 0.0, 1.0])
    # One real may be missed: the one at 0; the bogus one at 1 still passes.
    assert operating_point(labels, scores, target_fnr=0.5) == {"threshold": BELOW_ONE, "fpr": 0.5, "fnr": 0.5}
    # No bogus may pass: nothing scored 1 is kept, and nothing passes at all.
    assert operating_point(labels, scores, target_fpr=0.0) == {"threshold": 1.0, "fpr": 0.0, "fnr": 1.0}
    # Half the bogus may pass: those at 1 (with the real one at 1), not those at 0.
    assert operating_point(labels, scores, target_fpr=0.5) == {"threshold": 0.0, "fpr": 0.5, "fnr": 0.5}
    # Every bogus may pass: every cutout is real, those scored 0 too.
    assert operating_point(labels, scores, target_fpr=1.0) == {"threshold": LOWEST_THRESHOLD, "fpr": 1.0, "fnr": 0.0}
    assert threshold_for_fpr(labels, scores, 1.0) == LOWEST_THRESHOLD


def test_ties_straddling_the_target_are_never_split() -> None:
    # 100 real: two tied at 0.305, the rest at 0.95; 100 bogus: 50 at 0.301, 50 at 0.1. At 1 % FNR one
    # real may be missed, but not one of a tie: both are kept, by a threshold just below 0.305 that
    # still rejects the bogus at 0.301 (a grid of 0.01 would stop at 0.30 and pass them).
    labels = np.array([1] * 100 + [0] * 100)
    scores = np.array([0.305] * 2 + [0.95] * 98 + [0.301] * 50 + [0.1] * 50)
    point = operating_point(labels, scores, target_fnr=0.01)
    assert 0.301 <= point["threshold"] < 0.305
    assert (point["fpr"], point["fnr"]) == (0.0, 0.0) == _rates(labels, scores, point["threshold"])
    result = evaluate(labels, scores, 0.5)
    assert (result["threshold_at_fnr_1pc"], result["fpr_at_fnr_1pc"]) == (point["threshold"], 0.0)
    # The reverse: 100 bogus, two tied at 0.705 and 98 at 0.1; real at 0.708 and 0.95. At 1 % FPR
    # neither tied bogus may pass: the threshold is 0.705 and keeps every real one (0.71 would not).
    scores = np.array([0.708] * 50 + [0.95] * 50 + [0.705] * 2 + [0.1] * 98)
    point = operating_point(labels, scores, target_fpr=0.01)
    assert point == {"threshold": 0.705, "fpr": 0.0, "fnr": 0.0}
    result = evaluate(labels, scores, 0.5)
    assert (result["threshold_at_fpr_1pc"], result["fnr_at_fpr_1pc"]) == (0.705, 0.0)


def test_all_equal_scores() -> None:
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.full(5, 0.5)
    assert operating_point(labels, scores, target_fnr=0.1) == {"threshold": BELOW_HALF, "fpr": 1.0, "fnr": 0.0}
    assert operating_point(labels, scores, target_fpr=0.1) == {"threshold": 0.5, "fpr": 0.0, "fnr": 1.0}
    assert threshold_for_fnr(labels, np.zeros(5), 0.5) == LOWEST_THRESHOLD  # all at 0: all kept


def test_targets_zero_and_one() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.2, 0.6, 0.9, 0.1, 0.6, 0.95])
    # Nothing may be missed: keep down to 0.2; everything may be missed: keep nothing.
    assert operating_point(labels, scores, target_fnr=0.0)["fnr"] == 0.0
    assert _rates(labels, scores, threshold_for_fnr(labels, scores, 0.0)) == (2 / 3, 0.0)
    assert operating_point(labels, scores, target_fnr=1.0) == {"threshold": 1.0, "fpr": 0.0, "fnr": 1.0}
    # No bogus may pass: above 0.95; every bogus may pass: everything passes.
    assert operating_point(labels, scores, target_fpr=0.0) == {"threshold": 0.95, "fpr": 0.0, "fnr": 1.0}
    assert operating_point(labels, scores, target_fpr=1.0) == {"threshold": 0.0, "fpr": 1.0, "fnr": 0.0}
    with pytest.raises(ValueError, match=r"a target rate is between 0 and 1, got 1\.5"):
        operating_point(labels, scores, target_fnr=1.5)
    with pytest.raises(ValueError, match="give exactly one of target_fnr and target_fpr"):
        operating_point(labels, scores, target_fnr=0.1, target_fpr=0.1)


def test_one_class_only_is_an_error_and_no_figure() -> None:
    with pytest.raises(DataError, match="an operating point needs real and bogus cutouts, these hold only real"):
        operating_point(np.ones(3, dtype=int), np.array([0.1, 0.5, 0.9]), target_fnr=0.01)
    with pytest.raises(DataError, match="these hold only bogus cutouts"):
        operating_point(np.zeros(3, dtype=int), np.array([0.1, 0.5, 0.9]), target_fpr=0.01)
    result = evaluate(np.ones(3, dtype=int), np.array([0.1, 0.5, 0.9]), 0.5)
    for key in ("threshold_at_fpr_1pc", "fnr_at_fpr_1pc", "threshold_at_fnr_1pc", "fpr_at_fnr_1pc"):
        assert math.isnan(result[key]), key


def test_float32_scores_are_decided_alike_in_float32_and_float64() -> None:
    # The scores of a model are float32 numbers; a threshold just below one of them in float64
    # rounds back to it in float32, and a float32 scorer would miss the real cutout it must keep.
    rng = np.random.default_rng(3)
    scores = rng.random(400).astype(np.float32).astype(np.float64)
    labels = (rng.random(400) < scores).astype(int)
    for target in (0.0, 0.01, 0.05, 0.2):
        threshold = threshold_for_fnr(labels, scores, target)
        assert float(np.float32(threshold)) == threshold
        assert _float32_decisions_agree(scores, threshold), target
        assert _rates(labels, np.float32(scores), np.float32(threshold))[1] <= target


@pytest.mark.parametrize("seed", range(2))
def test_every_candidate_threshold_enumerated(seed: int) -> None:
    """Random scores with many ties, 0 and 1 among them, against every threshold that decides differently."""
    rng = np.random.default_rng(seed)
    levels = np.concatenate([[0.0, 1.0], rng.random(6).astype(np.float32)])
    for _ in range(40):
        n = int(rng.integers(2, 40))
        labels = np.concatenate([[0, 1], rng.integers(0, 2, n - 2)])
        scores = rng.choice(levels, n) if rng.random() < 0.7 else rng.random(n).astype(np.float32).astype(float)
        n_real = int(labels.sum())
        candidates = np.concatenate([np.unique(scores), [-1.0]])  # every distinct decision
        counted = np.array([_rates(labels, scores, t) for t in candidates])
        for target in (0.0, 1.0, rng.random(), int(rng.integers(0, n_real + 1)) / n_real):
            # FNR at most target, the fewest bogus kept; the highest such threshold.
            best_fpr = counted[counted[:, 1] <= target, 0].min()
            point = operating_point(labels, scores, target_fnr=target)
            assert point["fpr"] == best_fpr
            assert point["fnr"] <= target
            assert (point["fpr"], point["fnr"]) == _rates(labels, scores, point["threshold"])
            assert point["threshold"] == threshold_for_fnr(labels, scores, target)
            assert _float32_decisions_agree(scores, point["threshold"])
            above = float(np.nextafter(np.float32(point["threshold"]), np.float32(2)))
            if point["threshold"] < scores.max():  # a higher float32 threshold decides otherwise
                assert _rates(labels, scores, above) != (point["fpr"], point["fnr"])
            # FPR at most target, the most real kept; the lowest such threshold.
            best_fnr = counted[counted[:, 0] <= target, 1].min()
            point = operating_point(labels, scores, target_fpr=target)
            assert point["fnr"] == best_fnr
            assert point["fpr"] <= target
            assert (point["fpr"], point["fnr"]) == _rates(labels, scores, point["threshold"])
            assert point["threshold"] == threshold_for_fpr(labels, scores, target)
            assert _float32_decisions_agree(scores, point["threshold"])
            below = float(np.nextafter(np.float32(point["threshold"]), np.float32(-2)))
            if point["threshold"] >= scores.min():  # a lower float32 threshold decides otherwise
                assert _rates(labels, scores, below) != (point["fpr"], point["fnr"])
        # evaluate reports the same, at 1 %.
        result = operating_rates(labels, scores)
        assert result["fpr_at_fnr_1pc"] == counted[counted[:, 1] <= 0.01, 0].min()
        assert result["fnr_at_fpr_1pc"] == counted[counted[:, 0] <= 0.01, 1].min()
