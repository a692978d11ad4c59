"""Labels tables (otrain.io.labels): candid,label tables and the vetting page's exported marks."""

from __future__ import annotations

from pathlib import Path

import pytest

from otrain.errors import DataError
from otrain.io.labels import read_labels


def test_the_vetting_pages_marks_are_read_as_labels(tmp_path: Path) -> None:
    marks = tmp_path / "otrain-marks-1.csv"  # what "Export marks (CSV)" writes
    marks.write_text(
        "cand_ID,file,mark,p_real\n"
        "1285423380015015016,night.tar.gz/a.avro,real,0.91\n"
        "1285423380015015017,night.tar.gz/b.avro,bogus,0.12\n"
        "1285423380015015018,night.tar.gz/c.avro,skip,0.50\n"
    )
    assert read_labels(marks) == {"1285423380015015016": 1, "1285423380015015017": 0}  # skip: no label
    marks.write_text("cand_ID,file,mark,p_real\n5,a.avro,maybe,0.5\n")
    with pytest.raises(DataError, match=r"line 2: mark 'maybe' is neither real, bogus nor skip"):
        read_labels(marks)


def test_a_table_with_neither_pair_of_columns_names_both(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("id,class\n5,1\n")
    with pytest.raises(DataError, match=r"lacks the columns candid, label \(needs candid,label, in any order, or"):
        read_labels(table)
    table.write_text("candid,label,cand_ID,mark\n5,1,5,bogus\n")  # both: the labels win
    assert read_labels(table) == {"5": 1}
