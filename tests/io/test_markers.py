"""otrain.io.markers: one marker scheme for the folders otrain owns, compatible with what earlier versions wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otrain.io.markers import (
    MARKERS,
    PARQUET_MARKER,
    RELABEL_MARKER,
    REPORT_MARKER,
    SIMULATE_MARKER,
    has_marker,
    marker_path,
    read_marker,
    write_marker,
)
from otrain.options import relabel_output_files
from otrain.options.judging import _not_written_by_report

#: Each command's marker as earlier versions of otrain wrote it, byte for byte: the fields given to
#: write_marker (the command's name left out), and the file's text.
EARLIER: dict[str, tuple[str, dict[str, Any], str]] = {
    "otrain-simulate": (
        SIMULATE_MARKER,
        {"n_true": 4, "n_false": 4, "n_night": 2, "cutout_size": 16, "seed": 7, "planes": ["DIFF"]},
        "{\n"
        '  "written_by": "otrain-simulate",\n'
        '  "n_true": 4,\n'
        '  "n_false": 4,\n'
        '  "n_night": 2,\n'
        '  "cutout_size": 16,\n'
        '  "seed": 7,\n'
        '  "planes": [\n'
        '    "DIFF"\n'
        "  ]\n"
        "}\n",
    ),
    "otrain-relabel": (
        RELABEL_MARKER,
        {"otrain_version": "1.0", "mode": "copy", "files": {"true": {"c1.fits": "c1.fits"}, "false": {}}},
        "{\n"
        '  "command": "otrain-relabel",\n'
        '  "otrain_version": "1.0",\n'
        '  "mode": "copy",\n'
        '  "files": {\n'
        '    "true": {\n'
        '      "c1.fits": "c1.fits"\n'
        "    },\n"
        '    "false": {}\n'
        "  }\n"
        "}\n",
    ),
    "otrain-report": (
        REPORT_MARKER,
        {"page": "index.html", "threshold": 0.5, "files": ["index.html", "thumbs/sheet_0000.png"]},
        "{\n"
        '  "page": "index.html",\n'
        '  "threshold": 0.5,\n'
        '  "files": [\n'
        '    "index.html",\n'
        '    "thumbs/sheet_0000.png"\n'
        "  ]\n"
        "}\n",
    ),
    "otrain-pack": (
        PARQUET_MARKER,
        {"planes": ["DIFF"], "cutout_size": 16},
        '{"command": "otrain-pack", "cutout_size": 16, "planes": ["DIFF"]}\n',
    ),
    "otrain-infer-spark": (
        PARQUET_MARKER,
        {"model": "model.keras", "threshold": 0.5},
        '{"command": "otrain-infer-spark", "model": "model.keras", "threshold": 0.5}\n',
    ),
}


def test_every_command_with_a_marker_is_covered() -> None:
    assert set(EARLIER) == set(MARKERS)


@pytest.mark.parametrize("command", sorted(EARLIER))
def test_written_as_earlier_versions_wrote_it_and_read_back(tmp_path: Path, command: str) -> None:
    name, fields, text = EARLIER[command]
    path = write_marker(tmp_path, command, fields)
    assert path == tmp_path / name == marker_path(tmp_path, command)
    assert path.read_text(encoding="utf-8") == text
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [name]  # written atomically, no staging left
    assert read_marker(tmp_path, command) == json.loads(text)
    assert has_marker(tmp_path, command)


@pytest.mark.parametrize("command", sorted(EARLIER))
def test_a_marker_of_an_earlier_version_is_recognised(tmp_path: Path, command: str) -> None:
    name, _, text = EARLIER[command]
    (tmp_path / name).write_text(text, encoding="utf-8")
    assert read_marker(tmp_path, command) == json.loads(text)


@pytest.mark.parametrize("command", sorted(EARLIER))
@pytest.mark.parametrize(
    "content",
    [None, b"", b'{"command": "otrain-', b'{"a": "\xff"}', b"not json", b"[1, 2]", b'"otrain"', b"null"],
    ids=["missing", "empty", "truncated", "not-utf8", "not-json", "list", "text", "null"],
)
def test_a_missing_or_broken_marker_reads_as_none(tmp_path: Path, command: str, content: bytes | None) -> None:
    if content is not None:
        marker_path(tmp_path, command).write_bytes(content)
    assert read_marker(tmp_path, command) is None
    assert has_marker(tmp_path, command) is (content is not None)  # presence alone, as the checks ask


def test_a_folder_in_place_of_the_marker_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / RELABEL_MARKER).mkdir()
    assert read_marker(tmp_path, "otrain-relabel") is None
    assert not has_marker(tmp_path, "otrain-relabel")


@pytest.mark.parametrize(
    ("command", "forged"),
    [
        ("otrain-relabel", {"command": "otrain-pack", "files": {}}),
        ("otrain-relabel", {"files": {}}),
        ("otrain-simulate", {"command": "otrain-simulate"}),  # otrain-simulate names itself as written_by
        ("otrain-simulate", {"written_by": "someone else"}),
        ("otrain-pack", {"command": "otrain-infer-spark"}),
        ("otrain-infer-spark", {"command": "otrain-pack"}),
    ],
)
def test_another_commands_marker_reads_as_none(tmp_path: Path, command: str, forged: dict[str, Any]) -> None:
    marker_path(tmp_path, command).write_text(json.dumps(forged))
    assert read_marker(tmp_path, command) is None


def test_the_report_marker_names_no_command_and_needs_none(tmp_path: Path) -> None:
    (tmp_path / REPORT_MARKER).write_text('{"files": []}')
    assert read_marker(tmp_path, "otrain-report") == {"files": []}


def test_a_command_without_a_marker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'otrain-train' writes no marker"):
        write_marker(tmp_path, "otrain-train", {})
    with pytest.raises(ValueError, match="writes no marker"):
        read_marker(tmp_path, "otrain-train")
    assert list(tmp_path.iterdir()) == []


def test_the_options_re_export_the_marker_names() -> None:
    import otrain.options as options

    assert (options.SIMULATE_MARKER, options.RELABEL_MARKER, options.REPORT_MARKER, options.PARQUET_MARKER) == (
        ".otrain-simulate.json",
        "_otrain_relabel.json",
        "_otrain_report.json",
        "_otrain.json",
    )


def test_relabel_reads_what_its_marker_lists(tmp_path: Path) -> None:
    (tmp_path / RELABEL_MARKER).write_text(EARLIER["otrain-relabel"][2])
    assert relabel_output_files(tmp_path) == {RELABEL_MARKER, "true", "false", "true/c1.fits"}


@pytest.mark.parametrize(
    "marker",
    [
        {"command": "otrain-relabel"},
        {"command": "otrain-relabel", "files": ["true/c1.fits"]},
        {"command": "otrain-relabel", "files": {"true": 3}},
        {"command": "otrain-infer-spark", "files": {}},
    ],
    ids=["no-files", "files-not-object", "label-not-listing", "another-command"],
)
def test_relabel_does_not_trust_a_marker_it_did_not_write(tmp_path: Path, marker: dict[str, Any]) -> None:
    (tmp_path / RELABEL_MARKER).write_text(json.dumps(marker))
    assert relabel_output_files(tmp_path) is None


def test_report_replaces_only_the_files_its_marker_lists(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("page")
    (tmp_path / "notes.txt").write_text("mine")
    assert _not_written_by_report(tmp_path) == "index.html"  # no marker: the folder is not the page's
    (tmp_path / REPORT_MARKER).write_text(EARLIER["otrain-report"][2])
    assert _not_written_by_report(tmp_path) == "notes.txt"
    (tmp_path / "notes.txt").unlink()
    assert _not_written_by_report(tmp_path) == ""
    (tmp_path / REPORT_MARKER).write_text('{"page": "index.html"}')  # no list of files: only the marker is its own
    assert _not_written_by_report(tmp_path) == "index.html"
    (tmp_path / REPORT_MARKER).write_text('{"files": "index.html"}')
    assert _not_written_by_report(tmp_path) == REPORT_MARKER
