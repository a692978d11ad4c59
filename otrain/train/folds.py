"""The folds of a cross-validation: the cube's groups, and grouped, stratified splits of its rows.

The folds come from scikit-learn's ``StratifiedGroupKFold`` on the cube's groups
(:func:`groups_of`), so the cutouts of one group are never in two folds; :func:`fold_splits`
then chooses each fold's validation set among the other folds, in whole groups too.
:mod:`otrain.train.crossval` trains and scores them. :func:`ensemble_folds` gives the folds of
a cross-fitted ensemble (:mod:`otrain.train.ensemble`), without validation sets.
"""

from __future__ import annotations

import numpy as np

from otrain.data.datacube import Datacube, Split
from otrain.errors import DataError, OptionError
from otrain.options import CrossValidateConfig

__all__ = ["check_folds", "check_group_keyword", "ensemble_folds", "fold_splits", "groups_of"]


def groups_of(cube: Datacube) -> tuple[np.ndarray, bool]:
    """Return the group of every cutout, and whether the cube recorded them.

    Parameters
    ----------
    cube : Datacube
        The cube.

    Returns
    -------
    numpy.ndarray
        Text, one value per cutout: the cube's groups, else each row's own index.
    bool
        True when the groups are the cube's.
    """
    if cube.groups is not None:
        return cube.groups, True
    return np.arange(len(cube)).astype(str), False


def check_group_keyword(config: CrossValidateConfig, cube: Datacube) -> None:
    """With --group-keyword, the cube must hold the groups of that keyword."""
    wanted = config.group_keyword
    if wanted is None:
        return
    if cube.groups is None:
        raise DataError(
            f"{config.cube}: the cube records no groups; convert the cutouts with "
            f"otrain-convert --group-keyword {wanted}"
        )
    if cube.group_keyword is not None and cube.group_keyword.upper() != wanted.upper():
        raise DataError(
            f"{config.cube}: the cube's groups are values of {cube.group_keyword}, not {wanted}; convert the cutouts "
            f"with otrain-convert --group-keyword {wanted}"
        )


def _groups_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """Count the distinct groups holding at least one cutout of each class."""
    return {label: len(np.unique(groups[labels == label])) for label in (1, 0)}


def _has_both_classes(labels: np.ndarray) -> bool:
    return bool(np.any(labels == 1) and np.any(labels == 0))


def fold_splits(labels: np.ndarray, groups: np.ndarray, folds: int, frac: float, seed: int) -> list[Split]:
    """Split rows into ``folds`` grouped, stratified (training, validation, test) splits.

    Parameters
    ----------
    labels : numpy.ndarray
        1 = real, 0 = bogus.
    groups : numpy.ndarray
        The group of each row; a group is never in two of a split's sets, nor in two test sets.
    folds : int
        Number of folds; the test sets partition the rows.
    frac : float
        About this fraction of the other folds' rows validates (early stopping).
    seed : int
        Seed of the shuffles.

    Returns
    -------
    list of Split
        One per fold, sorted row indices.

    Raises
    ------
    DataError
        When the other folds of a fold cannot give training and validation sets that both hold
        real and bogus cutouts (too few groups of a class).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = []
    for fold, (rest, test) in enumerate(outer.split(np.zeros(len(labels)), labels, groups), start=1):
        per_class = _groups_per_class(labels[rest], groups[rest])
        if min(per_class.values()) < 2:
            raise DataError(
                f"fold {fold}: the other folds hold {per_class[1]} group(s) with real cutouts and {per_class[0]} with "
                "bogus ones; training and validation need two of each (use fewer --folds)"
            )
        n_parts = max(2, min(round(1 / frac), *per_class.values()))
        inner = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
        for train_rows, validation_rows in inner.split(np.zeros(len(rest)), labels[rest], groups[rest]):
            train, validation = rest[train_rows], rest[validation_rows]
            if _has_both_classes(labels[train]) and _has_both_classes(labels[validation]):
                splits.append(Split(train=np.sort(train), validation=np.sort(validation), test=np.sort(test)))
                break
        else:
            raise DataError(
                f"fold {fold}: no grouped validation set of the other folds holds both classes (use fewer --folds)"
            )
    return splits


def check_folds(config: CrossValidateConfig, labels: np.ndarray, groups: np.ndarray, grouped: bool) -> None:
    """Refuse more ``--folds`` than the groups (or, without groups, cutouts) of the rarer class."""
    per_class = _groups_per_class(labels, groups)
    fewest = min(per_class.values())
    if config.folds > fewest:
        what = "groups" if grouped else "cutouts (the cube has no groups)"
        raise OptionError(
            f"--folds: {config.folds} folds need at least {config.folds} {what} of each class; {config.cube} has "
            f"{per_class[1]} holding real cutouts and {per_class[0]} holding bogus ones; give at most {fewest}"
        )


def ensemble_folds(labels: np.ndarray, groups: np.ndarray, rows: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Split ``rows`` into ``folds`` grouped folds with the class mix of the whole.

    Parameters
    ----------
    labels, groups : numpy.ndarray
        Every cutout's label (1 real, 0 bogus) and group.
    rows : numpy.ndarray
        The rows to split (those outside the test set).
    folds : int
        Number of folds.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of numpy.ndarray
        Sorted rows of each fold; together, ``rows``; no group in two folds.

    Raises
    ------
    OptionError
        When a class holds fewer groups than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = _groups_per_class(labels[rows], groups[rows])
    if folds > min(per_class.values()):
        raise OptionError(
            f"--folds: {folds} folds need at least {folds} groups of each class outside the test set; there are "
            f"{per_class[1]} holding real cutouts and {per_class[0]} holding bogus ones"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    parts = splitter.split(np.zeros(len(rows)), labels[rows], groups[rows])
    return [np.sort(rows[held]) for _, held in parts]
