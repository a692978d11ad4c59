"""The Datacube: .npz compatibility, atomic reproducible writes, balancing and splits."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from otrain.data.datacube import (
    NPZ_KEYS,
    Datacube,
    Split,
    balanced_counts,
    choose_rows,
    cube_split,
    grouped_split,
    record_split,
    recorded_split,
    stratified_split,
)
from otrain.errors import DataError


def small_cube(n: int = 6, candids: np.ndarray | None = None) -> Datacube:
    rng = np.random.default_rng(0)
    return Datacube(
        cube=rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
        labels=np.resize(np.array([1, 0], dtype=np.int64), n),
        mags=np.linspace(15, 20, n),
        errmags=np.linspace(0.01, 0.2, n),
        filters=np.array(["r"] * n),
        fwhms=np.full(n, 2.5),
        candids=np.arange(100, 100 + n) if candids is None else candids,
    )


def test_save_writes_the_original_keys_readable_by_numpy(tmp_path: Path) -> None:
    cube = small_cube()
    path = cube.save(tmp_path / "datacube" / "c.npz")
    with np.load(path) as archive:
        assert list(archive.files) == list(NPZ_KEYS)
        assert archive["cube"].dtype == np.float32
        assert archive["labels"].dtype == np.int64
        assert_array_equal(archive["candids"], cube.candids)


def test_round_trip_and_hash(tmp_path: Path) -> None:
    cube = small_cube()
    loaded = Datacube.load(cube.save(tmp_path / "c.npz"))
    for name in NPZ_KEYS:
        assert_array_equal(getattr(loaded, name), getattr(cube, name))
    assert loaded.content_hash() == cube.content_hash()
    assert small_cube(candids=np.arange(6) + 1).content_hash() != cube.content_hash()


def test_saving_twice_gives_identical_bytes(tmp_path: Path) -> None:
    first = small_cube().save(tmp_path / "a.npz").read_bytes()
    second = small_cube().save(tmp_path / "b.npz").read_bytes()
    assert first == second


def test_one_hot_labels_are_written_and_read(tmp_path: Path) -> None:
    cube = small_cube()
    path = cube.save(tmp_path / "v.npz", one_hot_labels=True)
    with np.load(path) as archive:
        assert archive["labels"].shape == (6, 2)
        assert_array_equal(np.argmax(archive["labels"], axis=1), cube.labels)
    assert_array_equal(Datacube.load(path).labels, cube.labels)


def test_original_validation_cube_without_filters_and_fwhms(tmp_path: Path) -> None:
    path = tmp_path / "cube_validation.npz"
    np.savez(
        path,
        cube=np.zeros((3, 4, 4, 1), np.float32),
        labels=np.eye(2)[[1, 0, 1]],
        mags=np.array(["18.1", "-99.0", "19.5"]),
        errmags=np.array([0.1, 0.2, 0.3]),
        candids=np.array([7, 8, 9]),
    )
    loaded = Datacube.load(path)
    assert_array_equal(loaded.labels, [1, 0, 1])
    assert_array_equal(loaded.mags, [18.1, np.nan, 19.5])
    assert np.isnan(loaded.fwhms).all()
    assert list(loaded.filters) == ["", "", ""]


def test_misaligned_candids_of_the_original_are_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buggy.npz"
    np.savez(
        path,
        cube=np.zeros((2, 4, 4, 1), np.float32),
        labels=np.array([1, 0]),
        candids=np.array(list("/data/x.fits")),
    )
    with caplog.at_level(logging.WARNING, logger="otrain"):
        loaded = Datacube.load(path)
    assert_array_equal(loaded.candids, [0, 1])
    assert "12 entries for 2 cutouts" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a zip", r"bad\.npz: not a NumPy \.npz file$"),
        (b"", r"bad\.npz: not a NumPy \.npz file$"),
        (None, "datacube file does not exist"),
    ],
)
def test_unreadable_cubes(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        Datacube.load(path)


def test_a_cube_of_python_objects_is_refused_without_advice_about_pickle(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, cube=np.array([{"a": 1}], dtype=object), labels=np.zeros(1))
    with pytest.raises(DataError, match="it holds Python objects, not plain arrays") as error:
        Datacube.load(path)
    assert "allow_pickle" not in str(error.value)


def test_an_empty_cube_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, cube=np.zeros((0, 8, 8, 1), np.float32), labels=np.zeros(0, np.int64))
    with pytest.raises(DataError, match=r"empty\.npz: the cube holds no cutouts"):
        Datacube.load(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_with_their_count(tmp_path: Path, bad: float) -> None:
    cube = small_cube()
    pixels = cube.cube.copy()
    pixels[1, 0, :2, 0] = bad
    pixels[3, 2, 2, 0] = bad
    path = Datacube(**{**cube.__dict__, "cube": pixels}).save(tmp_path / "nan.npz")
    with pytest.raises(DataError, match=r"nan\.npz: the cube holds 3 NaN or infinite pixels in 2 cutouts"):
        Datacube.load(path)


def test_cube_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "nolabels.npz"
    np.savez(path, cube=np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(DataError, match="has no 'labels' array"):
        Datacube.load(path)


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "taken.npz"
    target.mkdir()  # a folder where the file should go: the final rename fails
    with pytest.raises(DataError, match=r"taken\.npz: cannot write the datacube"):
        small_cube().save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.npz"]
    assert list(target.iterdir()) == []


def test_rows_must_line_up() -> None:
    with pytest.raises(ValueError, match=r"mags must have shape \(6,\)"):
        Datacube(**{**small_cube().__dict__, "mags": np.zeros(5)})


@pytest.mark.parametrize(
    ("n_real", "n_bogus", "frac", "expected"),
    [
        (100, 100, 0.5, (100, 100)),
        (300, 100, 0.5, (100, 100)),
        (100, 300, 0.5, (100, 100)),
        (100, 100, 0.3, (42, 100)),  # 2m = 200 needs 140 bogus: shrink to 142 total
        (1000, 100, 0.8, (160, 40)),  # the original formula: 2m = 200 split 0.8/0.2
        (1000, 100, 0.2, (25, 100)),  # 100 bogus allow only 125 in all
        (37, 5000, -1, (37, 5000)),
        (3, 10, 0.3, (1, 5)),  # the total stays 2 * min, as in the original
        (50, 1000, 0.29, (29, 71)),  # exact decimals: in floats, 100 * 0.29 < 29
    ],
)
def test_balanced_counts(n_real: int, n_bogus: int, frac: float, expected: tuple[int, int]) -> None:
    assert balanced_counts(n_real, n_bogus, frac) == expected


def test_balanced_counts_honour_the_fraction() -> None:
    for n_real in range(1, 60, 7):
        for n_bogus in range(1, 60, 5):
            for frac in (0.1, 0.25, 0.5, 0.6, 0.9):
                keep_real, keep_bogus = balanced_counts(n_real, n_bogus, frac)
                assert keep_real <= n_real
                assert keep_bogus <= n_bogus
                total = keep_real + keep_bogus
                assert total <= 2 * min(n_real, n_bogus)
                if total:
                    assert abs(Fraction(keep_real, total) - Fraction(str(frac))) <= Fraction(1, total)


def test_choose_rows_is_seeded() -> None:
    first = choose_rows(100, 30, seed=1, stream=1)
    assert_array_equal(first, choose_rows(100, 30, seed=1, stream=1))
    assert not np.array_equal(first, choose_rows(100, 30, seed=2, stream=1))
    assert not np.array_equal(first, choose_rows(100, 30, seed=1, stream=0))
    assert len(set(first.tolist())) == 30
    assert list(first) == sorted(first)
    assert_array_equal(choose_rows(5, 5, seed=1, stream=1), np.arange(5))


def test_stratified_split_is_disjoint_complete_and_stratified() -> None:
    labels = np.array([1] * 300 + [0] * 100)
    split = stratified_split(labels, validation_frac=0.15, test_frac=0.15, seed=3)
    together = np.concatenate([split.train, split.validation, split.test])
    assert sorted(together.tolist()) == list(range(400))
    for part, expected_real, expected_bogus in ((split.validation, 45, 15), (split.test, 45, 15)):
        assert (labels[part] == 1).sum() == expected_real
        assert (labels[part] == 0).sum() == expected_bogus
    again = stratified_split(labels, 0.15, 0.15, seed=3)
    assert_array_equal(again.test, split.test)
    assert not np.array_equal(stratified_split(labels, 0.15, 0.15, seed=4).test, split.test)


def test_a_recorded_split_is_recomputed_only_for_the_cube_it_was_made_of(caplog: pytest.LogCaptureFixture) -> None:
    cube = small_cube(12)
    record = {"method": "stratified", "data_hash": cube.content_hash(), "seed": 5, "frac": 0.2, "test_frac": 0.2}
    with caplog.at_level(logging.WARNING, logger="otrain"):
        split = recorded_split(record, cube)
    assert split is not None
    # A record of an older otrain names no ids: read as it always was, with a warning.
    assert "split record names no candidate ids (an older otrain); recomputing its rows" in caplog.text
    assert_array_equal(split.train, stratified_split(cube.labels, 0.2, 0.2, 5).train)
    other = Datacube(**{**cube.__dict__, "cube": cube.cube + 1})
    assert recorded_split(record, other) is None  # another cube: its rows mean nothing here
    assert recorded_split({**record, "method": "given"}, cube) is None  # a hand-made split
    assert recorded_split({key: value for key, value in record.items() if key != "seed"}, cube) is None
    assert recorded_split(None, cube) is None


def test_stratified_split_keeps_small_classes_in_every_part() -> None:
    split = stratified_split(np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]), 0.1, 0.1, seed=0)
    for part in (split.train, split.validation, split.test):
        assert {0, 1} <= set(np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])[part].tolist())


# ---------------------------------------------------------------------------------------------
# Grouped splits, and the split recorded by candidate ids.


def grouped_labels(n_groups: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and groups of 1 to 4 cutouts per object, objects shuffled among the rows, some of mixed labels."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    groups = np.repeat([f"ZTF{index:05d}" for index in range(n_groups)], sizes)
    labels = np.repeat(rng.integers(0, 2, n_groups), sizes)
    labels[rng.random(len(labels)) < 0.05] ^= 1  # an object with a relabelled alert
    order = rng.permutation(len(labels))
    return labels[order], groups[order]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_split_never_puts_one_group_in_two_sets(seed: int) -> None:
    labels, groups = grouped_labels(200, seed)
    split = grouped_split(labels, groups, 0.15, 0.15, seed)
    together = np.concatenate([split.train, split.validation, split.test])
    assert sorted(together.tolist()) == list(range(len(labels)))
    sets = [set(groups[part].tolist()) for part in (split.train, split.validation, split.test)]
    assert not sets[0] & sets[1]
    assert not sets[0] & sets[2]
    assert not sets[1] & sets[2]
    # Stratified: each held-out set holds about its fraction of each class.
    for part in (split.validation, split.test):
        for label in (0, 1):
            share = np.count_nonzero(labels[part] == label) / np.count_nonzero(labels == label)
            assert 0.08 < share < 0.22
    again = grouped_split(labels, groups, 0.15, 0.15, seed)
    assert_array_equal(again.test, split.test)


@pytest.mark.parametrize(
    ("n", "validation_frac", "test_frac", "seed"),
    [
        (400, 0.15, 0.15, 3),
        (37, 0.2, 0.1, 0),
        (10, 0.1, 0.1, 7),
        (5, 0.3, 0.3, 11),
        (2, 0.3, 0.3, 1),
        (91, 0.0, 0.25, 4),
    ],
)
def test_one_cutout_per_group_gives_the_row_split_exactly(
    n: int, validation_frac: float, test_frac: float, seed: int
) -> None:
    labels = np.random.default_rng(n).integers(0, 2, n)
    groups = np.array([f"object-{index}" for index in np.random.default_rng(seed).permutation(n)])
    grouped = grouped_split(labels, groups, validation_frac, test_frac, seed)
    rows = stratified_split(labels, validation_frac, test_frac, seed)
    for name in ("train", "validation", "test"):
        assert_array_equal(getattr(grouped, name), getattr(rows, name))


def test_split_by_chooses_groups_when_the_cube_records_them(tmp_path: Path) -> None:
    labels, groups = grouped_labels(30, 5)
    cube = small_cube(len(labels))
    cube = Datacube(**{**cube.__dict__, "labels": labels, "groups": groups, "group_keyword": "FILE"})
    plain = Datacube(**{**cube.__dict__, "groups": None, "group_keyword": None})
    split, method = cube_split(cube, "auto", 0.2, 0.2, 1, "c.npz")
    assert method == "group"
    assert_array_equal(split.test, grouped_split(labels, groups, 0.2, 0.2, 1).test)
    assert cube_split(cube, "group", 0.2, 0.2, 1, "c.npz")[1] == "group"
    split, method = cube_split(cube, "row", 0.2, 0.2, 1, "c.npz")
    assert method == "row"
    assert_array_equal(split.test, stratified_split(labels, 0.2, 0.2, 1).test)
    assert cube_split(plain, "auto", 0.2, 0.2, 1, "c.npz")[1] == "row"
    with pytest.raises(DataError) as error:
        cube_split(plain, "group", 0.2, 0.2, 1, tmp_path / "c.npz")
    assert str(error.value) == (
        f"{tmp_path / 'c.npz'}: --split-by group: the cube records no groups; convert the cutouts with "
        "otrain-convert --group-keyword KEYWORD (for example the ZTF objectId)"
    )


def test_the_record_names_the_held_out_ids_and_the_record_wins() -> None:
    candids = np.array([1285423380015015016 + index for index in range(12)], dtype=np.int64)
    cube = small_cube(12, candids=candids)
    split = stratified_split(cube.labels, 0.2, 0.2, 5)
    record = record_split(cube, split, method="row", source="c.npz", seed=5, frac=0.2, test_frac=0.2)
    assert record["test_ids"] == [str(candid) for candid in candids[split.test]]  # 19 digits, exact
    assert record["validation_ids"] == [str(candid) for candid in candids[split.validation]]
    assert record["unique_ids"] is True
    read = recorded_split(record, cube)
    assert read is not None
    for name in ("train", "validation", "test"):
        assert_array_equal(getattr(read, name), getattr(split, name))
    # Another split with the same seed and fractions: the ids tell, not a recomputation.
    other = Split(train=np.arange(4, 12), validation=np.array([0, 1]), test=np.array([2, 3]))
    moved = {
        **record,
        **{
            key: value
            for key, value in record_split(
                cube, other, method="row", source="c.npz", seed=5, frac=0.2, test_frac=0.2
            ).items()
            if key.endswith("_ids")
        },
    }
    read = recorded_split(moved, cube)
    assert read is not None
    assert read.test.tolist() == [2, 3]
    assert read.validation.tolist() == [0, 1]
    assert read.train.tolist() == list(range(4, 12))
    # A grouped split that no seed could recompute (method 'given') is read from its ids too.
    assert recorded_split({**moved, "method": "given"}, cube) is not None
    assert recorded_split(moved, Datacube(**{**cube.__dict__, "cube": cube.cube + 1})) is None  # another cube


def test_a_class_of_few_uneven_groups_keeps_a_group_for_training() -> None:
    """One big object and two single alerts: the held-out sets may not take every real group."""
    labels = np.array([1] * 12 + [0] * 30)
    groups = np.array(["big"] * 10 + ["one", "two"] + [f"bogus-{index}" for index in range(30)])
    for seed in range(20):
        split = grouped_split(labels, groups, 0.15, 0.15, seed)
        assert np.count_nonzero(labels[split.train] == 1) > 0, seed
        assert np.count_nonzero(labels[split.validation] == 1) > 0, seed
        assert np.count_nonzero(labels[split.test] == 1) > 0, seed
