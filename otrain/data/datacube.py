"""The Datacube: cutout pixels with labels and metadata, its ``.npz`` file, balancing and splits.

The ``.npz`` layout is the original O'TRAIN one (docs/original-otrain.md#datacubes): keys
``cube`` (float32, N x H x W x C), ``labels`` (1 = real, 0 = bogus), ``mags``, ``errmags``,
``filters``, ``fwhms`` and ``candids``, plus ``planes`` (the channels' names) when known and
``groups`` (a header keyword's value per cutout, for grouped cross-validation) when recorded.
Readers accept 1-D labels and one-hot (N, 2) labels (the original ``cube_validation.npz``).
Files are written atomically and byte-for-byte reproducibly (fixed zip timestamps), so the same
inputs and seed give the same file.

The splits of a cube's rows live here too: by row (:func:`stratified_split`), by whole groups
(:func:`grouped_split`), as ``--split-by`` asks (:func:`cube_split`), and the record of a split
by candidate ids that a model card keeps (:func:`record_split`, :func:`recorded_split`).

Why one module: a split is made of a cube's labels, groups, candidate ids and content hash, and
its record is checked against that hash; training, cross-validation, the dataset-size study, the
promotion gate and the int8 calibration all import the splits with the cube from here, so the
one rule that reads a record back sits beside the one that writes it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.atomic import atomic_path
from otrain.io.card import recorded_ids
from otrain.io.ids import candidate_key
from otrain.options import SPLIT_BY

__all__ = [
    "NPZ_KEYS",
    "Datacube",
    "Split",
    "balanced_counts",
    "choose_rows",
    "cube_split",
    "grouped_split",
    "record_split",
    "recorded_split",
    "stratified_split",
]

logger = logging.getLogger("otrain")

#: Keys of a datacube file, in the order they are written.
NPZ_KEYS = ("cube", "labels", "mags", "errmags", "filters", "fwhms", "candids")

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class Datacube:
    """Cutouts and their labels and metadata; every array has one row per cutout.

    Attributes
    ----------
    cube : numpy.ndarray
        float32 pixels, shape (N, H, W, C), channels-last.
    labels : numpy.ndarray
        int64, shape (N,): 1 = real, 0 = bogus.
    mags, errmags, fwhms : numpy.ndarray
        float64, shape (N,); NaN where unknown.
    filters : numpy.ndarray
        Unicode, shape (N,); empty where unknown.
    candids : numpy.ndarray
        int64 when every identifier is a whole number, else unicode; shape (N,).
    planes : tuple of str or None
        The name of each channel (``IMAGE``, ``TEMPLATE``, ``DIFF``...), in order; None when
        unknown (cubes of the original O'TRAIN, gmadet cutouts of several unnamed planes).
        Stored under the extra key ``planes``, which the original tools ignore.
    groups : numpy.ndarray or None
        Unicode, shape (N,): the group of each cutout (the value of the header keyword that
        ``otrain-convert --group-keyword`` read, for example a ZTF objectId), so that the
        cutouts of one object never straddle cross-validation folds; None when not recorded.
        Stored under the extra key ``groups``.
    group_keyword : str or None
        The header keyword the groups were read from (``FILE``...), stored under the extra key
        ``group_keyword``; None when not recorded.
    """

    cube: np.ndarray
    labels: np.ndarray
    mags: np.ndarray
    errmags: np.ndarray
    filters: np.ndarray
    fwhms: np.ndarray
    candids: np.ndarray
    planes: tuple[str, ...] | None = None
    groups: np.ndarray | None = None
    group_keyword: str | None = None

    def __post_init__(self) -> None:
        if self.cube.ndim != 4 or self.cube.dtype != np.float32:
            raise ValueError(f"cube must be float32 (N, H, W, C), got {self.cube.dtype} {self.cube.shape}")
        if self.planes is not None and len(self.planes) != self.cube.shape[3]:
            raise ValueError(f"planes {self.planes} do not match the cube's {self.cube.shape[3]} channel(s)")
        n = self.cube.shape[0]
        for name in NPZ_KEYS[1:]:
            column = getattr(self, name)
            if column.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {column.shape}")
        if self.groups is not None and (self.groups.shape != (n,) or self.groups.dtype.kind != "U"):
            raise ValueError(f"groups must be text of shape ({n},), got {self.groups.dtype} {self.groups.shape}")
        if n and not np.isin(self.labels, (0, 1)).all():
            raise ValueError("labels must be 0 (bogus) or 1 (real)")

    def __len__(self) -> int:
        return int(self.cube.shape[0])

    @property
    def n_real(self) -> int:
        """Number of cutouts labelled real (1)."""
        return int(np.count_nonzero(self.labels == 1))

    @property
    def n_bogus(self) -> int:
        """Number of cutouts labelled bogus (0)."""
        return int(np.count_nonzero(self.labels == 0))

    def subset(self, rows: np.ndarray) -> Datacube:
        """Return a new cube with the given rows, in the given order."""
        groups = self.groups[rows] if self.groups is not None else None
        return Datacube(
            **{name: getattr(self, name)[rows] for name in NPZ_KEYS},
            planes=self.planes,
            groups=groups,
            group_keyword=self.group_keyword,
        )

    def content_hash(self) -> str:
        """Return the SHA-256 of every array's dtype, shape and bytes (the cube's data hash)."""
        digest = hashlib.sha256()
        for name in NPZ_KEYS:
            array = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(memoryview(array).cast("B"))
        if self.planes is not None:  # cubes without named planes keep the hash they always had
            digest.update(f"planes:{','.join(self.planes)};".encode())
        if self.groups is not None:  # likewise for cubes without groups
            groups = np.ascontiguousarray(self.groups)
            digest.update(f"groups:{groups.dtype.str}:{groups.shape};".encode())
            digest.update(memoryview(groups).cast("B"))
        return digest.hexdigest()

    def save(self, path: Path, *, one_hot_labels: bool = False) -> Path:
        """Write the cube to ``path`` (``.npz``) atomically and reproducibly.

        Parameters
        ----------
        path : Path
            Destination file; its folder is created when missing.
        one_hot_labels : bool
            Write labels as one-hot float (N, 2), as the original ``cube_validation.npz``.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        DataError
            If the file cannot be written; no partial file is left behind.
        """
        arrays = {name: getattr(self, name) for name in NPZ_KEYS}
        if one_hot_labels:
            arrays["labels"] = np.eye(2, dtype=np.float32)[self.labels]
        if self.planes is not None:
            arrays["planes"] = np.array(self.planes, dtype=str)
        if self.groups is not None:
            arrays["groups"] = self.groups
        if self.group_keyword is not None:
            arrays["group_keyword"] = np.array(self.group_keyword, dtype=str)
        try:
            with (
                atomic_path(path) as temporary,
                zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
            ):
                for name, array in arrays.items():
                    info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                    info.external_attr = 0o644 << 16
                    with archive.open(info, "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        except OSError as error:
            raise DataError(f"{path}: cannot write the datacube ({error.strerror or error})") from None
        return path

    @classmethod
    def load(cls, path: Path) -> Datacube:
        """Read a datacube written by otrain or by the original O'TRAIN.

        Labels may be 1-D integers or one-hot (N, 2). Missing ``filters``/``fwhms`` (the
        original validation cube has none) become empty strings and NaN; string magnitudes
        (the original's ``'-99.0'`` placeholder) become floats, with -99 read as NaN.

        Parameters
        ----------
        path : Path
            The ``.npz`` file.

        Returns
        -------
        Datacube
            The cube.

        Raises
        ------
        DataError
            If the file is missing, not an npz archive, or lacks a key or a consistent shape.
        """
        if not path.is_file():
            raise DataError(f"{path}: datacube file does not exist")
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a NumPy .npz file")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            reason = first_line(error)
            if "allow_pickle" in reason:
                reason = "it holds Python objects, not plain arrays"
            raise DataError(f"{path}: not a readable datacube .npz ({reason[:200]})") from None
        for key in ("cube", "labels"):
            if key not in arrays:
                raise DataError(f"{path}: datacube has no '{key}' array (keys: {', '.join(sorted(arrays))})")
        cube = arrays["cube"]
        if cube.ndim == 3:
            cube = cube[..., np.newaxis]
        if cube.ndim != 4:
            raise DataError(f"{path}: 'cube' must be (N, H, W, C), got shape {cube.shape}")
        n = cube.shape[0]
        if n == 0:
            raise DataError(f"{path}: the cube holds no cutouts")
        if cube.dtype.kind not in "fiu":
            raise DataError(f"{path}: 'cube' holds {cube.dtype} values, not numbers")
        cube = np.ascontiguousarray(cube, dtype=np.float32)
        _check_finite(cube, path)
        labels = _labels_from(arrays["labels"], n, path)
        return cls(
            cube=cube,
            labels=labels,
            mags=_float_column(arrays, "mags", n, path),
            errmags=_float_column(arrays, "errmags", n, path),
            filters=_text_column(arrays, "filters", n, path),
            fwhms=_float_column(arrays, "fwhms", n, path),
            candids=_candid_column(arrays, n, path),
            planes=_planes_of(arrays, cube.shape[3], path),
            groups=_groups_of(arrays, n, path),
            group_keyword=str(arrays["group_keyword"]) if "group_keyword" in arrays else None,
        )


def _planes_of(arrays: dict[str, np.ndarray], channels: int, path: Path) -> tuple[str, ...] | None:
    """Read the names of the cube's planes, when it records them."""
    if "planes" not in arrays:
        return None
    names = arrays["planes"]
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) != channels:
        raise DataError(f"{path}: 'planes' must name each of the cube's {channels} channel(s), got {names!r}")
    return tuple(str(name) for name in names)


def _groups_of(arrays: dict[str, np.ndarray], n: int, path: Path) -> np.ndarray | None:
    """Read the group of each cutout, when the cube records them."""
    if "groups" not in arrays:
        return None
    groups = arrays["groups"]
    if groups.shape != (n,) or groups.dtype.kind != "U":
        raise DataError(f"{path}: 'groups' must hold one text per cutout ({n}), got {groups.dtype} {groups.shape}")
    return groups


def _check_finite(cube: np.ndarray, path: Path, chunk: int = 1024) -> None:
    """Refuse a cube with NaN or infinite pixels (a network cannot learn from them), naming the count."""
    bad_pixels = bad_cutouts = 0
    for start in range(0, len(cube), chunk):
        finite = np.isfinite(cube[start : start + chunk])
        if not finite.all():
            bad_pixels += int(finite.size - np.count_nonzero(finite))
            bad_cutouts += int(np.count_nonzero(~finite.reshape(len(finite), -1).all(axis=1)))
    if bad_pixels:
        raise DataError(
            f"{path}: the cube holds {bad_pixels} NaN or infinite pixels in {bad_cutouts} cutouts; "
            "rebuild it with otrain-convert, which replaces them"
        )


def _labels_from(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 2:
        labels = np.argmax(labels, axis=1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise DataError(f"{path}: 'labels' must be (N,) or one-hot (N, 2) with N = {n}, got {labels.shape}")
    labels = labels.astype(np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{path}: 'labels' must be 0 (bogus) or 1 (real)")
    return labels


def _check_length(column: np.ndarray, name: str, n: int, path: Path) -> None:
    if column.shape != (n,):
        raise DataError(f"{path}: '{name}' has shape {column.shape}, expected ({n},) like the cube")


def _float_column(arrays: dict[str, np.ndarray], name: str, n: int, path: Path) -> np.ndarray:
    if name not in arrays:
        return np.full(n, np.nan)
    column = arrays[name]
    _check_length(column, name, n, path)
    if column.dtype.kind in "US":
        try:
            column = column.astype(np.float64)
        except ValueError:
            raise DataError(f"{path}: '{name}' holds values that are not numbers") from None
        column[column == -99.0] = np.nan
    return column.astype(np.float64)


def _text_column(arrays: dict[str, np.ndarray], name: str, n: int, path: Path) -> np.ndarray:
    if name not in arrays:
        return np.full(n, "", dtype="<U1")
    column = arrays[name]
    _check_length(column, name, n, path)
    return column.astype(str)


def _candid_column(arrays: dict[str, np.ndarray], n: int, path: Path) -> np.ndarray:
    if "candids" not in arrays:
        return np.arange(n, dtype=np.int64)
    column = arrays["candids"]
    if column.shape != (n,):
        # The original otrain-convert appended one entry per character of a path when a
        # cutout had neither CANDID nor NAME, so its ids do not line up with the rows.
        logger.warning(
            "%s: 'candids' has %d entries for %d cutouts (a known bug of the original otrain-convert); "
            "using row numbers as candidate ids",
            path,
            column.size,
            n,
        )
        return np.arange(n, dtype=np.int64)
    return column if column.dtype.kind in "iuU" else column.astype(str)


def balanced_counts(n_real: int, n_bogus: int, frac_true: float) -> tuple[int, int]:
    """How many real and bogus cutouts a cube keeps for a requested real fraction.

    The total follows the original formula, 2 * min(n_real, n_bogus); when a class lacks the
    cutouts its share needs (``frac_true`` far from 0.5), the total shrinks so that the
    fraction still holds. ``frac_true = -1`` keeps everything. Arithmetic is exact (the
    fraction is read as the decimal the user wrote).

    Parameters
    ----------
    n_real, n_bogus : int
        Usable cutouts of each class (after EDGE rejection).
    frac_true : float
        Requested fraction of real cutouts, in (0, 1), or -1.

    Returns
    -------
    tuple of int
        (real kept, bogus kept).
    """
    if frac_true == -1:
        return n_real, n_bogus
    fraction = Fraction(repr(float(frac_true)))
    total = 2 * min(n_real, n_bogus)
    total = min(total, math.floor(n_real / fraction), math.floor(n_bogus / (1 - fraction)))
    keep_real = math.floor(total * fraction)
    return keep_real, total - keep_real


def choose_rows(n_available: int, n_keep: int, seed: int, stream: int) -> np.ndarray:
    """Choose ``n_keep`` of ``n_available`` items at random, reproducibly, in increasing order.

    Parameters
    ----------
    n_available : int
        Number of candidates (for example the usable files of one class, in sorted order).
    n_keep : int
        Number to keep.
    seed : int
        The run's seed.
    stream : int
        Separates independent draws made with the same seed (for example the label).

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices.
    """
    if n_keep > n_available:
        raise ValueError(f"cannot keep {n_keep} of {n_available}")
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.permutation(n_available)[:n_keep]).astype(np.int64)


@dataclass(frozen=True)
class Split:
    """Row indices of three disjoint subsets: training, validation and test."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def stratified_split(labels: np.ndarray, validation_frac: float, test_frac: float, seed: int) -> Split:
    """Split rows into disjoint training, validation and test sets with the same class mix.

    Each class is shuffled with the seed and cut by the fractions (rounded, at least one row
    in validation and test when the class has three rows or more).

    Parameters
    ----------
    labels : numpy.ndarray
        1-D class labels.
    validation_frac, test_frac : float
        Fractions of each class for validation and test; their sum must be below 1.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    Split
        Sorted index arrays.
    """
    if validation_frac < 0 or test_frac < 0 or validation_frac + test_frac >= 1:
        raise ValueError("validation and test fractions must be non-negative and sum to less than 1")
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = np.random.default_rng([seed, int(label), 7]).permutation(rows)
        n_validation, n_test = round(len(rows) * validation_frac), round(len(rows) * test_frac)
        if len(rows) >= 3:
            n_validation = max(n_validation, 1) if validation_frac > 0 else 0
            n_test = max(n_test, 1) if test_frac > 0 else 0
        parts["validation"].append(rows[:n_validation])
        parts["test"].append(rows[n_validation : n_validation + n_test])
        parts["train"].append(rows[n_validation + n_test :])
    joined = {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}
    return Split(**joined)


def _cut(sizes: np.ndarray, target: int, at_least_one: bool) -> int:
    """How many of the leading groups (of ``sizes`` rows each) make the count nearest ``target``."""
    cumulative = np.concatenate([[0], np.cumsum(sizes)])
    count = int(np.argmin(np.abs(cumulative - target)))  # the first of equally near counts
    return min(max(count, 1), len(sizes)) if at_least_one else count


def grouped_split(labels: np.ndarray, groups: np.ndarray, validation_frac: float, test_frac: float, seed: int) -> Split:
    """Split rows into training, validation and test sets by whole groups, with the same class mix.

    Each group counts for its majority class (ties: the smaller label). The groups of each
    class, in the order of their first rows, are shuffled as :func:`stratified_split` shuffles
    rows, and cut where the rows of the leading groups come nearest the counts it would take
    (validation, then test; at least one group in each when the class has three groups or more,
    and then at least one left for training). The cutouts of one group are never in two sets,
    and when every group is one cutout the split is exactly :func:`stratified_split`'s (but for
    the degenerate fractions that would leave a class of three cutouts or more none to train on).

    Parameters
    ----------
    labels : numpy.ndarray
        1-D class labels.
    groups : numpy.ndarray
        The group of each row (the cube's ``groups``).
    validation_frac, test_frac : float
        Fractions of each class for validation and test; their sum must be below 1.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    Split
        Sorted index arrays.
    """
    if validation_frac < 0 or test_frac < 0 or validation_frac + test_frac >= 1:
        raise ValueError("validation and test fractions must be non-negative and sum to less than 1")
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have the labels' shape {labels.shape}, got {groups.shape}")
    classes, label_index = np.unique(labels, return_inverse=True)
    _, first, group_index, sizes = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    counts = np.zeros((len(first), len(classes)), dtype=np.int64)
    np.add.at(counts, (group_index, label_index), 1)
    group_class = np.argmax(counts, axis=1)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for position, label in enumerate(classes):
        members = np.flatnonzero(group_class == position)
        members = members[np.argsort(first[members], kind="stable")]
        members = np.random.default_rng([seed, int(label), 7]).permutation(members)
        n_rows = int(sizes[members].sum())
        several = len(members) >= 3
        n_validation = _cut(sizes[members], round(n_rows * validation_frac), several and validation_frac > 0)
        if several:  # training keeps a group of the class (the row split may not, on tiny classes)
            n_validation = min(n_validation, len(members) - 2)
        n_test = _cut(sizes[members[n_validation:]], round(n_rows * test_frac), several and test_frac > 0)
        if several:
            n_test = min(n_test, len(members) - n_validation - 1)
        chosen = {
            "validation": members[:n_validation],
            "test": members[n_validation : n_validation + n_test],
            "train": members[n_validation + n_test :],
        }
        for name, chunk in chosen.items():
            parts[name].append(np.flatnonzero(np.isin(group_index, chunk)))
    joined = {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}
    return Split(**joined)


def cube_split(
    cube: Datacube, split_by: str, validation_frac: float, test_frac: float, seed: int, source: Path | str
) -> tuple[Split, str]:
    """Split a cube's rows as ``--split-by`` asks: by whole groups, or by row.

    Parameters
    ----------
    cube : Datacube
        The cube.
    split_by : {'auto', 'group', 'row'}
        'auto' splits by group when the cube records groups, else by row.
    validation_frac, test_frac, seed
        As :func:`stratified_split`.
    source : Path or str
        The cube's file, for the message.

    Returns
    -------
    tuple
        (the split, the method used: 'group' or 'row').

    Raises
    ------
    DataError
        For 'group' on a cube that records no groups.
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if split_by == "group" and cube.groups is None:
        raise DataError(
            f"{source}: --split-by group: the cube records no groups; convert the cutouts with "
            "otrain-convert --group-keyword KEYWORD (for example the ZTF objectId)"
        )
    if split_by == "row" or cube.groups is None:
        return stratified_split(cube.labels, validation_frac, test_frac, seed), "row"
    return grouped_split(cube.labels, cube.groups, validation_frac, test_frac, seed), "group"


def record_split(
    cube: Datacube,
    split: Split,
    *,
    method: str,
    source: Path | str,
    seed: int,
    frac: float,
    test_frac: float,
) -> dict[str, Any]:
    """Return the record of a training's split that its model card keeps: which cutouts were held out.

    Parameters
    ----------
    cube : Datacube
        The cube that was split.
    split : Split
        Its rows in training, validation and test.
    method : str
        'group' or 'row' (:func:`cube_split`), or 'given' (a split chosen by the caller).
    source : Path or str
        The cube's file.
    seed, frac, test_frac
        The options the split was made with (kept for the reader; never used to recompute it).

    Returns
    -------
    dict
        ``method``, ``cube``, ``data_hash``, ``seed``, ``frac``, ``test_frac``, ``group_keyword``,
        ``unique_ids`` (whether the cube's candidate ids tell its rows apart), and
        ``validation_ids`` and ``test_ids``: the candidate ids of those sets as text
        (:func:`otrain.io.ids.candidate_key`), in row order. The training rows are the others.
    """
    keys = [candidate_key(candid) for candid in cube.candids]
    return {
        "method": method,
        "cube": str(source),
        "data_hash": cube.content_hash(),
        "seed": seed,
        "frac": frac,
        "test_frac": test_frac,
        "group_keyword": cube.group_keyword if method == "group" else None,
        "unique_ids": len(set(keys)) == len(keys),
        "validation_ids": [keys[row] for row in split.validation],
        "test_ids": [keys[row] for row in split.test],
    }


def recorded_split(record: dict[str, Any] | None, cube: Datacube) -> Split | None:
    """Return the split a training made of ``cube``, from its record (a model card's ``split``).

    The record names the candidate ids of the validation and test sets (:func:`record_split`):
    those rows of ``cube`` are its validation and test sets, the others its training set. A
    record of an older otrain holds no ids: its rows are recomputed from its seed and fractions,
    as that otrain did, with a warning (NumPy does not promise the shuffle across versions).

    Parameters
    ----------
    record : dict or None
        A model card's ``split``.
    cube : Datacube
        The cube, checked against the record's ``data_hash``.

    Returns
    -------
    Split or None
        The training's split of ``cube``; None when there is no record, when it was made of
        another cube, or when an older record cannot be recomputed (a hand-made split).
    """
    if not record or record.get("data_hash") != cube.content_hash():
        return None
    ids = recorded_ids(record)
    if ids is not None:
        validation_ids, test_ids = (set(chosen) for chosen in ids)
        keys = np.array([candidate_key(candid) for candid in cube.candids], dtype=object)
        test = np.array([key in test_ids for key in keys], dtype=bool)
        validation = np.array([key in validation_ids for key in keys], dtype=bool) & ~test
        return Split(
            train=np.flatnonzero(~(test | validation)), validation=np.flatnonzero(validation), test=np.flatnonzero(test)
        )
    keys = ("seed", "frac", "test_frac")
    if record.get("method") != "stratified" or not all(key in record for key in keys):
        return None
    logger.warning(
        "%s: the model card's split record names no candidate ids (an older otrain); recomputing its rows "
        "from its seed and fractions",
        record.get("cube") or "the training cube",
    )
    return stratified_split(cube.labels, record["frac"], record["test_frac"], record["seed"])
