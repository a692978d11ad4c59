"""The pure decision rules of scoring and training, each against its documented rule: no model, no disk.

How many scoring runs, threads and readers a machine gets; ``--batch-size auto`` and its
rounding for replicas; the sizes of the dataset-size study and its best epoch; the folds of a
cross-validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import otrain.score.inference
from otrain.data.datacube import Split
from otrain.errors import DataError, OptionError
from otrain.options import TrainConfig
from otrain.score.inference import scoring_readers, scoring_threads
from otrain.train.distribute import _replica_batch
from otrain.train.fit import class_weights
from otrain.train.folds import fold_splits
from otrain.train.optimise import _best_epoch, max_sections, nested_order, study_sizes
from otrain.train.training import auto_batch_size, training_batch_size

# ---------------------------------------------------------------------------------------------
# Scoring: runs of ONNX Runtime, their threads, and the processes that read cutouts.

#: (cores, runs, threads each, readers), as scoring_threads' and scoring_readers' docstrings say:
#: the runs are the largest divisor of the cores up to 4; one reader per four cores, at least one.
MACHINES = [
    (1, 1, 1, 1),
    (2, 2, 1, 1),
    (3, 3, 1, 1),
    (4, 4, 1, 1),
    (5, 1, 5, 1),
    (6, 3, 2, 1),
    (7, 1, 7, 1),
    (8, 4, 2, 2),
    (9, 3, 3, 2),
    (12, 4, 3, 3),
    (16, 4, 4, 4),
    (64, 4, 16, 16),
]


@pytest.mark.parametrize(("cores", "runs", "threads", "readers"), MACHINES)
def test_scoring_runs_threads_and_readers_follow_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, runs: int, threads: int, readers: int
) -> None:
    monkeypatch.setattr(otrain.score.inference, "default_workers", lambda: cores)
    assert scoring_threads() == (runs, threads)
    assert scoring_readers() == readers


def test_scoring_runs_are_the_largest_divisor_up_to_four(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores in range(1, 130):
        monkeypatch.setattr(otrain.score.inference, "default_workers", lambda cores=cores: cores)
        runs, threads = scoring_threads()
        assert runs * threads == cores, cores  # every core used, none shared
        assert runs == max(divisor for divisor in (1, 2, 3, 4) if cores % divisor == 0), cores


# ---------------------------------------------------------------------------------------------
# --batch-size: auto, a given size, and the rounding for replicas.


@pytest.mark.parametrize(
    ("n_train", "batch"),
    [
        (1, 1),  # never above the training set
        (10, 10),
        (16, 16),
        (100, 16),  # never below 16
        (320, 16),
        (340, 17),  # at least 20 steps an epoch
        (400, 20),
        (5_000, 250),
        (20_479, 1023),
        (20_480, 1024),
        (1_000_000, 1024),  # the original's 1024 at most
    ],
)
def test_auto_batch_size(n_train: int, batch: int) -> None:
    assert auto_batch_size(n_train) == batch


def test_auto_batch_gives_at_least_twenty_steps_unless_at_a_bound() -> None:
    for n_train in range(1, 30_000):
        size = auto_batch_size(n_train)
        assert 1 <= size <= min(n_train, 1024), n_train
        assert size >= min(16, n_train), n_train
        if 16 < size < 1024:
            assert math.ceil(n_train / size) >= 20, n_train


def test_a_given_batch_size_larger_than_the_training_set_is_refused() -> None:
    config = TrainConfig.model_construct(batch_size=500)
    assert training_batch_size(config, 500) == 500
    with pytest.raises(OptionError, match=r"^--batch-size: 500 is larger than the training set \(499 cutouts\)$"):
        training_batch_size(config, 499)
    assert training_batch_size(TrainConfig.model_construct(batch_size="auto"), 499) == auto_batch_size(499)


@pytest.mark.parametrize(
    ("batch", "replicas", "rounded"),
    [(100, 1, 100), (7, 1, 7), (100, 2, 100), (101, 2, 100), (100, 3, 99), (1024, 8, 1024), (5, 8, 8), (1, 2, 2)],
)
def test_a_batch_is_rounded_down_to_whole_cutouts_per_replica(batch: int, replicas: int, rounded: int) -> None:
    assert _replica_batch(batch, replicas) == rounded
    assert rounded % replicas == 0


def test_balanced_class_weights_make_both_classes_weigh_the_same() -> None:
    labels = np.array([1] * 10 + [0] * 30)
    weights = class_weights(labels, "balanced")
    assert weights == {1: 2.0, 0: 40 / 60}
    assert weights[1] * 10 == pytest.approx(weights[0] * 30)  # type: ignore[index]
    assert class_weights(labels, "none") is None


# ---------------------------------------------------------------------------------------------
# otrain-optimise-dataset-size: the sizes, how many sections a pool allows, the subsets, the best epoch.


@pytest.mark.parametrize(
    ("pool", "sections", "sizes"),
    [
        (100, 5, [25, 50, 75, 100]),
        (100, 2, [100]),
        (10, 11, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (7, 5, [1, 3, 5, 7]),  # int(pool * i / (sections - 1)), as the original
        (3, 5, [1, 2, 3]),  # int(0.75) = 0 is no size; repeats are one
    ],
)
def test_study_sizes_follow_the_original(pool: int, sections: int, sizes: list[int]) -> None:
    assert study_sizes(pool, sections) == sizes


def test_max_sections_is_the_largest_whose_smallest_size_holds_ten_cutouts() -> None:
    for pool in [*range(10, 1000), 4321, 99_999]:
        most = max_sections(pool)
        assert study_sizes(pool, most)[0] >= 10, pool
        assert study_sizes(pool, most + 1)[0] < 10, pool


def test_nested_subsets_keep_the_class_mix_at_every_size() -> None:
    labels = np.array([1] * 30 + [0] * 70)
    order = nested_order(labels, seed=4)
    assert sorted(order.tolist()) == list(range(100))
    for size in range(1, 101):
        assert abs(np.count_nonzero(labels[order[:size]] == 1) - 0.3 * size) <= 1, size
    assert np.array_equal(nested_order(labels, seed=4), order)
    assert not np.array_equal(nested_order(labels, seed=5), order)


def test_the_best_epoch_follows_the_monitor_and_skips_nan() -> None:
    history = [
        {"epoch": 1, "val_loss": float("nan"), "val_roc_auc": float("nan")},
        {"epoch": 2, "val_loss": 0.5, "val_roc_auc": 0.80},
        {"epoch": 3, "val_loss": 0.3, "val_roc_auc": 0.85},
        {"epoch": 4, "val_loss": 0.4, "val_roc_auc": 0.90},
    ]
    assert _best_epoch(history, "val_loss")["epoch"] == 3
    assert _best_epoch(history, "val_roc_auc")["epoch"] == 4
    only_nan = [{"epoch": 1, "val_loss": float("nan")}, {"epoch": 2, "val_loss": float("nan")}]
    assert _best_epoch(only_nan, "val_loss")["epoch"] in (1, 2)  # a diverged study still reports an epoch


# ---------------------------------------------------------------------------------------------
# otrain-cross-validate: grouped, stratified folds.


def _check_fold_splits(splits: list[Split], labels: np.ndarray, groups: np.ndarray, folds: int) -> None:
    assert len(splits) == folds
    tests = np.concatenate([split.test for split in splits])
    assert sorted(tests.tolist()) == list(range(len(labels)))  # the test sets partition the rows
    for split in splits:
        parts = (split.train, split.validation, split.test)
        assert sum(map(len, parts)) == len(labels)
        assert len(np.unique(np.concatenate(parts))) == len(labels)
        for part in parts:
            assert set(labels[part]) == {0, 1}
        train, validation, test = (set(groups[part]) for part in parts)  # a group stays in one set
        assert not train & validation
        assert not train & test
        assert not validation & test
    for one in range(folds):
        for other in range(one + 1, folds):
            assert not set(groups[splits[one].test]) & set(groups[splits[other].test])


def test_folds_keep_each_group_in_one_set_and_their_test_sets_partition_the_cube() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"night-{index:02d}" for index in range(24)], 5)
    labels = np.where(rng.random(len(groups)) < 0.4, 1, 0)
    splits = fold_splits(labels, groups, folds=3, frac=0.2, seed=1)
    _check_fold_splits(splits, labels, groups, 3)
    again = fold_splits(labels, groups, folds=3, frac=0.2, seed=1)
    assert all(np.array_equal(one.test, two.test) for one, two in zip(splits, again, strict=True))
    # Without groups, each cutout is its own group.
    ungrouped = np.arange(len(labels)).astype(str)
    _check_fold_splits(fold_splits(labels, ungrouped, folds=4, frac=0.2, seed=1), labels, ungrouped, 4)


def test_folds_whose_others_hold_too_few_groups_of_a_class_are_refused() -> None:
    """Two groups hold the real cutouts: with two folds, the others of each fold hold one."""
    labels = np.array([1, 1, 1, 1] + [0] * 12)
    groups = np.repeat(["a", "b", "c", "d", "e", "f", "g", "h"], 2)
    with pytest.raises(
        DataError,
        match=r"^fold 1: the other folds hold 1 group\(s\) with real cutouts and \d with bogus ones; training and "
        r"validation need two of each \(use fewer --folds\)$",
    ):
        fold_splits(labels, groups, folds=2, frac=0.2, seed=0)
