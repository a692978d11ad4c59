"""Candidate ids (otrain.io.ids): one rule, text compared as text, through every command that reads them.

ZTF's 19-digit candids ``1285423380015015016`` and ``...017`` are one float64; ``00123`` is not
``123``; a column written through floats (``3000020.0``) names the candidate ``3000020``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import call_main, pixels, write_gmadet
from helpers import page_data

from otrain.errors import DataError
from otrain.io.ids import candidate_key, header_candid

ZTF = ("1285423380015015016", "1285423380015015017")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (1285423380015015017, "1285423380015015017"),
        (np.int64(1285423380015015017), "1285423380015015017"),
        ("1285423380015015017", "1285423380015015017"),
        ("00123", "00123"),
        ("3000020.0", "3000020"),
        ("3.00002e+06", "3000020"),
        (3000020.0, "3000020"),
        ("12.5", "12.5"),
        ("ZTF21abc", "ZTF21abc"),
        (" 42 ", "42"),
        ("1e5000", "1e5000"),  # no 5001-digit integer (Python refuses those), no traceback
        ("1e999999999", "1e999999999"),  # nor a billion digits
        ("1" * 30 + ".0", "1" * 30),  # up to 30 digits a decimal spelling is read as the integer
        ("1" * 31 + ".0", "1" * 31 + ".0"),
        ("inf", "inf"),
        (None, ""),
        ("None", ""),
        ("nan", ""),
        ("--", ""),
        ("  ", ""),
    ],
)
def test_candidate_key(value: Any, key: str) -> None:
    assert candidate_key(value) == key


def test_ids_that_differ_in_the_last_digit_stay_apart() -> None:
    assert float(ZTF[0]) == float(ZTF[1])  # what the rule must never go through
    assert candidate_key(ZTF[0]) != candidate_key(ZTF[1])
    assert candidate_key(f"{ZTF[0]}.0") == ZTF[0]
    assert candidate_key("00123") != candidate_key("123")


@pytest.mark.parametrize(
    ("value", "candid"),
    [
        (1285423380015015017, 1285423380015015017),
        (np.int64(1285423380015015016), 1285423380015015016),
        ("1285423380015015017", 1285423380015015017),
        ("00123", "00123"),  # the zeros are part of the id
        (" 123 ", 123),
        ("+123", "+123"),
        (3000020.0, 3000020),  # a FITS float card holding a whole number
        (12.5, "12.5"),
        (1.285423380015015e18, "1.285423380015015e+18"),  # beyond 2**53 a float's digits are not the id's
        (2**63, str(2**63)),  # beyond int64 (otrain-convert's int column) as text
        ("ZTF21abc", "ZTF21abc"),
        ("3000020.0", "3000020.0"),  # a header's text is kept as written; matching reads it as 3000020
        (None, None),
        ("   ", None),
    ],
)
def test_header_candid(value: Any, candid: int | str | None) -> None:
    read = header_candid(value, Path("c.fits"))
    assert read == candid
    assert type(read) is type(candid)
    # The table row otrain-infer writes from it is matched as the header's own value would be.
    assert candidate_key("" if read is None else str(read)) == candidate_key(value)


@pytest.mark.parametrize("value", [True, False])
def test_a_logical_is_not_an_id(value: bool) -> None:
    with pytest.raises(DataError, match=r"^c\.fits: keyword CANDID must be an identifier, not a logical$"):
        header_candid(value, Path("c.fits"))


def test_ids_pass_through_infer_checkinfer_report_and_relabel(trained: Path, tmp_path: Path) -> None:
    """Two ZTF ids one digit apart, a leading-zero id and a float-spelled one stay four candidates.

    Scored by otrain-infer, matched by otrain-checkinfer, shown by otrain-report, labelled by
    otrain-relabel and read back by otrain-convert; nothing here depends on what the model learnt.
    """
    from otrain.cli.checkinfer import main as checkinfer_main
    from otrain.cli.convert import main as convert_main
    from otrain.cli.infer import main as infer_main
    from otrain.cli.relabel import main as relabel_main
    from otrain.cli.report import main as report_main
    from otrain.data.datacube import Datacube

    cutouts = tmp_path / "night"
    headers: dict[str, Any] = {  # file -> CANDID card: FITS integers, a FITS string, a FITS float
        "a.fits": int(ZTF[0]),
        "b.fits": int(ZTF[1]),
        "c.fits": "00123",
        "d.fits": 3000020.0,
    }
    ids = {"a.fits": ZTF[0], "b.fits": ZTF[1], "c.fits": "00123", "d.fits": "3000020"}
    for index, (name, candid) in enumerate(headers.items()):
        write_gmadet(cutouts / name, pixels(32, seed=index), CANDID=candid)
    model = trained / "tiny.keras"
    table = tmp_path / "infer_results.dat"
    assert call_main(infer_main, "--cutouts", cutouts, "--model", model, "--output", table, "--no-tracking") == 0
    lines = [line.split() for line in table.read_text().splitlines()]
    columns = lines[0][1:]
    rows = {Path(cells[0]).name: dict(zip(columns, cells, strict=True)) for cells in lines[1:]}
    assert {name: row["cand_ID"] for name, row in rows.items()} == ids
    p_real = {row["cand_ID"]: float(row["label1"]) for row in rows.values()}

    crossmatch = tmp_path / "crossmatch.dat"
    injected = {ZTF[1]: 17.0, "00123": 17.5, "3000020.0": 18.0, ZTF[0]: 18.5, "None": 19.0}
    crossmatch.write_text(
        "# idx closest_candID mag\n" + "".join(f"{i} {key} {mag}\n" for i, (key, mag) in enumerate(injected.items()))
    )
    plots = tmp_path / "plots"
    argv = ("--plots", plots, "--crossmatch", crossmatch, "--infer", table, "--no-tracking")
    assert call_main(checkinfer_main, *argv) == 0
    with open(plots / "CheckInfer" / "checkinfer_matches.csv", newline="") as stream:
        matches = {row["cand_ID"]: row for row in csv.DictReader(stream)}
    assert set(matches) == set(ids.values())
    for candid, row in matches.items():
        assert float(row["mag_injected"]) == injected["3000020.0" if candid == "3000020" else candid]
        assert float(row["label1"]) == pytest.approx(p_real[candid], abs=1e-9)
    summary = json.loads((plots / "CheckInfer" / "checkinfer_summary.json").read_text())
    assert (summary["n_injected"], summary["n_detected"], summary["n_scored"]) == (5, 4, 4)

    page = tmp_path / "page"
    argv = ("--infer", table, "--cutouts", cutouts, "--model", model, "--output", page, "--no-tracking")
    assert call_main(report_main, *argv, "--no-grad-cam") == 0
    data = page_data(page)
    file_column, id_column = data["columns"].index("file"), data["columns"].index("cand_id")
    assert {row[file_column]: row[id_column] for row in data["rows"]} == ids

    # The marks the page exports: one line per mark, with the row's id and file.
    labels = {ZTF[0]: "real", ZTF[1]: "bogus", "00123": "real", "3000020": "bogus"}
    marks = tmp_path / "marks.csv"
    marks.write_text(
        "cand_ID,file,mark,p_real\n"
        + "".join(f"{ids[name]},{name},{labels[ids[name]]},{p_real[ids[name]]}\n" for name in sorted(ids))
    )
    vetted = tmp_path / "vetted"
    assert call_main(relabel_main, "--marks", marks, "--cutouts", cutouts, "--out", vetted) == 0
    argv = ("--path", tmp_path, "--cube", "vetted", "--cutouts", vetted, "--frac-true", "-1", "--workers", "1")
    assert call_main(convert_main, *argv) == 0
    cube = Datacube.load(tmp_path / "datacube" / "vetted.npz")
    read = {str(candid): "real" if label else "bogus" for candid, label in zip(cube.candids, cube.labels, strict=True)}
    assert read == labels
