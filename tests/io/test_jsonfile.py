"""otrain.io.jsonfile: one reader for the JSON files otrain writes, each problem one line naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from otrain.errors import DataError
from otrain.io.jsonfile import json_object, read_json


def failure(path: Path, **options: Any) -> str:
    with pytest.raises(DataError) as raised:
        read_json(path, "not a readable test file", **options)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_json_file_is_read_and_parsed(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"threshold": 0.25, "epochs_run": 3}')
    assert read_json(path, "unused") == {"threshold": 0.25, "epochs_run": 3}
    assert read_json(path, "unused", parse=lambda data: int(data["epochs_run"])) == 3
    assert read_json(path, "unused", parse=json_object) == {"threshold": 0.25, "epochs_run": 3}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, r"\[Errno 2\] No such file or directory: '.*a\.json'"),
        (b"", re.escape("Expecting value: line 1 column 1 (char 0)")),
        (b'{"state": ', re.escape("Expecting value: line 1 column 11 (char 10)")),
        (b'{"a": "\xff"}', "'utf-8' codec can't decode byte 0xff in position 7: invalid start byte"),
    ],
)
def test_a_file_that_is_not_json_is_one_line(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "a.json"
    if content is not None:
        path.write_bytes(content)
    assert re.fullmatch(f"{re.escape(str(path))}: not a readable test file \\({why}\\)", failure(path))


def test_what_parse_refuses_is_the_file_s_problem(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("[1, 2]")
    assert failure(path, parse=json_object) == f"{path}: not a readable test file (not a JSON object)"
    path.write_text("{}")
    assert failure(path, parse=lambda data: data["run_id"]) == f"{path}: not a readable test file (no 'run_id')"
    path.write_text('{"epochs_run": "three"}')
    message = failure(path, parse=lambda data: int(data["epochs_run"]), advice="pass --overwrite to start again")
    assert message == (
        f"{path}: not a readable test file (invalid literal for int() with base 10: 'three'); "
        "pass --overwrite to start again"
    )


def test_an_unreadable_run_file_is_one_line(tmp_path: Path) -> None:
    from otrain.track.tracking import RUN_FILE, RunInfo, read_run_file

    assert read_run_file(tmp_path) is None
    run = RunInfo(run_id="abc", experiment_id="1", tracking_uri="sqlite:///x.db")
    run.write(tmp_path)
    assert read_run_file(tmp_path) == run
    path = tmp_path / RUN_FILE
    path.write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(DataError) as raised:
        read_run_file(tmp_path)
    assert str(raised.value) == f"{path}: not a readable MLflow run file (no 'experiment_id')"
    path.write_text("[]")
    with pytest.raises(DataError, match=r": not a readable MLflow run file \(list indices must be integers"):
        read_run_file(tmp_path)


def test_an_unreadable_cross_validation_record_is_one_line(tmp_path: Path) -> None:
    from otrain.options import CROSSVAL_RECORD
    from otrain.train.crossval_resume import read_record

    assert read_record(tmp_path) is None
    path = tmp_path / CROSSVAL_RECORD
    path.write_text('{"options": {}}')
    assert read_record(tmp_path) == {"options": {}, "folds": {}}
    path.write_text('{"folds": {}}')
    with pytest.raises(DataError) as raised:
        read_record(tmp_path)
    assert str(raised.value) == (
        f"{path}: the record of the interrupted cross-validation cannot be read (not a record of otrain-cross-validate)"
    )
