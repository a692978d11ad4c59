"""The promotion gate's decision logic (otrain.judge.gate): which rows are compared, and the verdict. No training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otrain.data.datacube import Datacube, Split, record_split, stratified_split
from otrain.io.card import split_summary
from otrain.judge.gate import MIN_COMPARISON_ROWS, comparison_rows, verdict


def make_cube(candids: list[int], labels: list[int]) -> Datacube:
    """A cube of 1x1 cutouts: only the candidate ids and labels matter to the gate."""
    n = len(candids)
    return Datacube(
        cube=np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1),
        labels=np.array(labels, dtype=np.int64),
        mags=np.full(n, np.nan),
        errmags=np.full(n, np.nan),
        filters=np.full(n, "", dtype="U1"),
        fwhms=np.full(n, np.nan),
        candids=np.array(candids, dtype=np.int64),
    )


def record_of(cube: Datacube, path: Path | None, seed: int = 1) -> dict[str, Any]:
    """A stratified split record as a model card holds it."""
    return {
        "method": "stratified",
        "cube": str(path) if path is not None else None,
        "data_hash": cube.content_hash(),
        "seed": seed,
        "frac": 0.25,
        "test_frac": 0.25,
    }


@pytest.fixture
def champion_cube(tmp_path: Path) -> tuple[Datacube, Path]:
    """The champion's training cube on disk: 40 cutouts, ids 0-39, half real."""
    cube = make_cube(list(range(40)), [index % 2 for index in range(40)])
    return cube, cube.save(tmp_path / "champion.npz")


def test_a_champion_without_a_record_is_not_compared() -> None:
    test = make_cube(list(range(20)), [index % 2 for index in range(20)])
    rows, why = comparison_rows(test, None, None, "3")
    assert rows is None
    assert why.startswith("champion v3 has no record of the rows it trained on")


def test_the_same_split_compares_on_the_whole_test_set(champion_cube: tuple[Datacube, Path]) -> None:
    cube, path = champion_cube
    test = cube.subset(stratified_split(cube.labels, 0.25, 0.25, 1).test)
    rows, why = comparison_rows(test, record_of(cube, path), record_of(cube, path), "1")
    assert rows is not None
    assert rows.tolist() == list(range(len(test)))
    assert why == "same cube, seed and fractions: the test set is held out from both"


def test_a_row_split_of_today_is_the_stratified_split_of_an_older_champion(
    champion_cube: tuple[Datacube, Path],
) -> None:
    """otrain-train now records 'row' for the split older versions recorded as 'stratified': the same rule."""
    cube, _ = champion_cube
    test = cube.subset(stratified_split(cube.labels, 0.25, 0.25, 1).test)
    new = {**record_of(cube, None), "method": "row"}
    rows, why = comparison_rows(test, new, record_of(cube, None), "1")
    assert rows is not None
    assert rows.tolist() == list(range(len(test)))
    assert why == "same cube, seed and fractions: the test set is held out from both"


def test_a_hand_made_split_of_the_champion_cannot_be_recomputed(champion_cube: tuple[Datacube, Path]) -> None:
    cube, path = champion_cube
    rows, why = comparison_rows(cube, None, {**record_of(cube, path), "method": "given"}, "2")
    assert rows is None
    assert why == "champion v2 was trained on a hand-made split that cannot be recomputed"


@pytest.mark.parametrize("change", ["missing", "other content"])
def test_a_champion_cube_that_is_not_here_is_not_compared(
    champion_cube: tuple[Datacube, Path], tmp_path: Path, change: str
) -> None:
    cube, path = champion_cube
    record = record_of(cube, path)
    if change == "missing":
        record["cube"] = str(tmp_path / "gone.npz")
    else:  # same path, other cutouts: the hash tells
        make_cube(list(range(40)), [1 - index % 2 for index in range(40)]).save(path)
    rows, why = comparison_rows(cube, None, record, "4")
    assert rows is None
    assert f"champion v4 was trained on cube {cube.content_hash()[:12]}... (" in why
    assert why.endswith("which is not available here, and its training rows may be in this test set")


def test_rows_the_champion_trained_on_are_left_out(champion_cube: tuple[Datacube, Path]) -> None:
    cube, path = champion_cube
    split = stratified_split(cube.labels, 0.25, 0.25, 1)
    seen = set(cube.candids[np.concatenate([split.train, split.validation])].tolist())
    # The new test set: every cutout of the champion's cube, then 20 it never had.
    test = make_cube(list(range(40)) + list(range(100, 120)), [index % 2 for index in range(60)])
    new = record_of(test, None, seed=7)  # another cube and seed: not the champion's split
    rows, why = comparison_rows(test, new, record_of(cube, path), "5")
    assert rows is not None
    compared = set(test.candids[rows].tolist())
    assert not compared & seen
    assert set(range(100, 120)) <= compared
    assert len(rows) == 20 + len(split.test)
    assert why == f"compared on the {len(rows)} of 60 test cutouts that champion v5 never saw"


def test_the_champion_cube_is_also_looked_for_where_the_new_training_found_its_own(
    champion_cube: tuple[Datacube, Path], tmp_path: Path
) -> None:
    cube, path = champion_cube
    moved = record_of(cube, tmp_path / "elsewhere.npz")
    test = make_cube(list(range(100, 120)), [index % 2 for index in range(20)])
    rows, _ = comparison_rows(test, {**record_of(test, path), "seed": 9}, moved, "6")
    assert rows is not None
    assert len(rows) == 20


@pytest.mark.parametrize("whose", ["champion", "test"])
def test_ids_that_are_not_unique_cannot_tell_the_rows(
    champion_cube: tuple[Datacube, Path], tmp_path: Path, whose: str
) -> None:
    cube, path = champion_cube
    test = make_cube(list(range(100, 120)), [index % 2 for index in range(20)])
    if whose == "champion":
        cube = make_cube([0, 0, *range(2, 40)], [index % 2 for index in range(40)])
        path = cube.save(tmp_path / "twice.npz")
    else:
        test = make_cube([100, 100, *range(102, 120)], [index % 2 for index in range(20)])
    rows, why = comparison_rows(test, None, record_of(cube, path), "7")
    assert rows is None
    name = "the champion's cube" if whose == "champion" else "the test cube"
    assert why == f"candidate ids of {name} are not unique, so the rows the champion trained on cannot be told"


def test_too_few_unseen_rows_or_one_class_is_not_compared(champion_cube: tuple[Datacube, Path]) -> None:
    cube, path = champion_cube
    split = stratified_split(cube.labels, 0.25, 0.25, 1)
    seen = cube.candids[np.concatenate([split.train, split.validation])].tolist()
    few = MIN_COMPARISON_ROWS - 1
    test = make_cube(seen + list(range(100, 100 + few)), [index % 2 for index in range(len(seen) + few)])
    rows, why = comparison_rows(test, None, record_of(cube, path), "8")
    assert rows is None
    assert (
        why
        == f"only {few} of the {len(test)} test cutouts were not seen by champion v8 in training: too few to compare"
    )
    one_class = make_cube(seen + list(range(100, 120)), [index % 2 for index in range(len(seen))] + [1] * 20)
    rows, why = comparison_rows(one_class, None, record_of(cube, path), "8")
    assert rows is None
    assert why.startswith(f"only 20 of the {len(one_class)} test cutouts, not both classes, were not seen")


@pytest.mark.parametrize(
    ("new", "champion", "promoted"),
    [(0.80, 0.80, True), (0.90, 0.80, True), (0.797, 0.80, True), (0.79, 0.80, False), (0.0, 1.0, False)],
)
def test_the_verdict_allows_the_tolerance_and_no_more(new: float, champion: float, promoted: bool) -> None:
    decided, reason = verdict(
        new, champion, metric="mcc", tolerance=0.005, alias="champion", champion_version="2", why="the reason"
    )
    assert decided is promoted
    if promoted:
        assert reason == f"mcc {new:.4f} >= champion v2 {champion:.4f} - tolerance 0.005 (the reason)"
    else:
        assert reason == (
            f"mcc {new:.4f} is worse than champion v2 {champion:.4f} by more than 0.005 (the reason); "
            "the alias 'champion' stays on v2"
        )


def test_the_verdict_names_the_threshold_each_model_was_judged_at() -> None:
    decided, reason = verdict(
        0.8,
        0.7,
        metric="mcc",
        tolerance=0.005,
        alias="champion",
        champion_version="2",
        why="the reason",
        new_threshold=0.9375,
        champion_threshold=0.0625,
    )
    assert decided is True
    assert reason == (
        "mcc 0.8000 at threshold 0.9375 >= champion v2 0.7000 at threshold 0.0625 - tolerance 0.005 (the reason)"
    )


# ---------------------------------------------------------------------------------------------
# Records that name the held-out candidate ids (otrain-train writes them): the record, never a recomputation.


def id_record(cube: Datacube, path: Path | None, split: Split) -> dict[str, Any]:
    """The split record otrain-train writes into the model card: the ids of the held-out sets."""
    return record_split(cube, split, method="row", source=str(path), seed=1, frac=0.25, test_frac=0.25)


def odd_split(n: int) -> Split:
    """A split no seed of stratified_split gives: validation the first tenth, test the last quarter."""
    return Split(train=np.arange(n // 10, n - n // 4), validation=np.arange(n // 10), test=np.arange(n - n // 4, n))


def test_the_gate_uses_the_recorded_ids_not_a_recomputation(champion_cube: tuple[Datacube, Path]) -> None:
    cube, path = champion_cube
    split = odd_split(len(cube))  # with seed 1 and fractions 0.25 recorded, as a recomputation would read
    record = id_record(cube, path, split)
    recomputed = stratified_split(cube.labels, 0.25, 0.25, 1)
    assert not np.array_equal(recomputed.test, split.test)
    # The new test set: the champion's whole cube, then 20 cutouts it never had.
    test = make_cube(list(range(40)) + list(range(100, 120)), [index % 2 for index in range(60)])
    rows, why = comparison_rows(test, None, record, "5")
    assert rows is not None
    assert set(test.candids[rows].tolist()) == set(cube.candids[split.test].tolist()) | set(range(100, 120))
    assert why == f"compared on the {len(rows)} of 60 test cutouts that champion v5 never saw"


def test_recorded_test_ids_count_as_unseen_without_the_champion_cube(
    champion_cube: tuple[Datacube, Path], tmp_path: Path
) -> None:
    cube, path = champion_cube
    split = odd_split(len(cube))
    record = {**id_record(cube, path, split), "cube": str(tmp_path / "gone.npz")}
    # The champion's own test set: held out from it, whatever cube it came from.
    test = cube.subset(split.test)
    rows, why = comparison_rows(test, None, record, "3")
    assert rows is not None
    assert rows.tolist() == list(range(len(test)))
    assert why == "every test cutout is in champion v3's recorded test set: held out from both"
    # Other cutouts cannot be told without the champion's cube: only its test set counts.
    held_out = cube.candids[split.test][: MIN_COMPARISON_ROWS - 1].tolist()
    mixed = make_cube(held_out + list(range(100, 120)), [index % 2 for index in range(len(held_out) + 20)])
    rows, why = comparison_rows(mixed, None, record, "3")
    assert rows is None
    assert why.startswith(f"only {len(held_out)} of the {len(mixed)} test cutouts were not seen by champion v3")
    assert "is not available here, so only the cutouts of its recorded test set count as unseen)" in why


def test_a_champion_whose_ids_are_not_unique_is_not_compared(tmp_path: Path) -> None:
    cube = make_cube([0, 0, *range(2, 40)], [index % 2 for index in range(40)])
    path = cube.save(tmp_path / "twice.npz")
    record = id_record(cube, path, odd_split(40))
    assert record["unique_ids"] is False
    rows, why = comparison_rows(cube, None, record, "7")
    assert rows is None
    assert (
        why == "candidate ids of the champion's cube are not unique, so the rows the champion trained on cannot be told"
    )


def test_a_tag_summary_without_the_card_is_not_compared(champion_cube: tuple[Datacube, Path]) -> None:
    cube, path = champion_cube
    summary = split_summary(id_record(cube, path, odd_split(40)))
    assert "test_ids" not in summary
    assert summary["n_test"] == 10
    rows, why = comparison_rows(cube, None, summary, "2")
    assert rows is None
    assert why.startswith("champion v2's record of the cutouts it held out (the candidate ids in its model card)")


def test_an_old_record_without_ids_is_recomputed_with_a_warning(
    champion_cube: tuple[Datacube, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cube, path = champion_cube
    test = make_cube(list(range(100, 120)), [index % 2 for index in range(20)])
    with caplog.at_level(logging.WARNING, logger="otrain"):
        rows, _ = comparison_rows(test, None, record_of(cube, path), "9")
    assert rows is not None
    assert "names no candidate ids (an older otrain); recomputing its rows" in caplog.text
