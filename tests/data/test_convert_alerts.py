"""otrain-convert --alerts: real ZTF and Rubin packets and a labels CSV in, a real .npz out."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import call_main, files_under, write_gmadet
from numpy.testing import assert_array_equal

from otrain.cli.convert import main as convert_main
from otrain.data.datacube import Datacube
from otrain.simulate.packets import PacketAlert, rubin_record, rubin_schema, write_packets, ztf_record, ztf_schema

PLANES = ("IMAGE", "TEMPLATE", "DIFF")
#: 19-digit ZTF candids; neighbours are one float64, so only exact text matching tells them apart.
BASE = 1285423380015015016


def planes_of(seed: int, size: int = 63) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {plane: rng.normal(0.0, 10.0, (size, size)).astype(np.float32) for plane in PLANES}


def ztf(index: int, object_id: str, size: int = 63) -> PacketAlert:
    """A packet as ZTF publishes it: a stamp under 63x63 was cut at the CCD's edge (EDGE)."""
    return PacketAlert(
        candid=BASE + index, object_id=object_id, planes=planes_of(index, size), publisher="ZTF (www.ztf.caltech.edu)"
    )


def write_labels(path: Path, rows: list[tuple[object, object]], header: str = "candid,label") -> Path:
    lines = [header] + [",".join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def convert(out: Path, *extra: str | Path) -> int:
    return call_main(convert_main, "--path", out, "--cube", "cube", *extra)


def load(out: Path) -> Datacube:
    return Datacube.load(out / "datacube" / "cube.npz")


def assert_refused(tmp_path: Path, status: int, expected: int, err: str, *fragments: str) -> None:
    assert status == expected
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert lines, err
    assert lines[-1].startswith("otrain-convert: error: ")
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert not [path for path in files_under(tmp_path) if ".npz" in path.name]


@pytest.fixture
def ztf_night(tmp_path: Path) -> tuple[Path, Path, list[PacketAlert]]:
    """A folder of ZTF packets (single files and a nightly tarball) and its labels table.

    Packets 0-4 are labelled real, 5-7 bogus (0 and 1, neighbouring candids, get different
    labels), packet 8 is not in the table; packet 4 is a stamp cut at the CCD's edge (EDGE);
    the table lists two ids no packet carries.
    """
    alerts = [ztf(index, f"ZTF21obj{index // 2}", size=40 if index == 4 else 63) for index in range(9)]
    alerts[0], alerts[5] = alerts[5], alerts[0]  # BASE + 0 bogus, BASE + 1 real
    folder = tmp_path / "alerts"
    folder.mkdir()
    for position, alert in enumerate(alerts[:5]):
        write_packets(folder / f"a{position}.avro", [ztf_record(alert)], ztf_schema())
    staging = tmp_path / "staging"
    staging.mkdir()
    with tarfile.open(folder / "b_night.tar.gz", "w:gz") as archive:
        for position, alert in enumerate(alerts[5:], start=5):
            write_packets(staging / f"{position}.avro", [ztf_record(alert)], ztf_schema())
            archive.add(staging / f"{position}.avro", arcname=f"night/{position}.avro")
    labels = [(alert.candid, 1 if position < 5 else 0) for position, alert in enumerate(alerts[:8])]
    labels += [(BASE + 100, 1), (BASE + 101, 0)]
    return folder, write_labels(tmp_path / "labels.csv", labels), alerts


def test_ztf_packets_make_a_cube_of_their_exact_planes_ids_and_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ztf_night: tuple[Path, Path, list[PacketAlert]]
) -> None:
    folder, labels, alerts = ztf_night
    status = convert(
        tmp_path / "out", "--alerts", folder, "--labels", labels, "--frac-true", "-1", "--planes", *PLANES,
        "--cutout-size", "31",
    )  # fmt: skip
    assert status == 0
    cube = load(tmp_path / "out")
    kept = [alerts[position] for position in (0, 1, 2, 3, 5, 6, 7)]  # 4 is EDGE, 8 unlabelled
    assert cube.cube.shape == (7, 31, 31, 3)
    for row, alert in enumerate(kept):
        for channel, plane in enumerate(PLANES):
            # ZTF's 63x63 stamp is read as its 62x62 part from row and column 1, then cropped
            assert_array_equal(cube.cube[row, :, :, channel], alert.planes[plane][1:, 1:][16:47, 16:47])
    assert cube.candids.dtype == np.int64
    assert cube.candids.tolist() == [alert.candid for alert in kept]
    assert cube.candids.tolist()[:2] == [BASE + 5, BASE + 1]
    assert_array_equal(cube.labels, [1, 1, 1, 1, 0, 0, 0])
    assert list(cube.groups) == [str(alert.object_id) for alert in kept]
    assert cube.group_keyword == "objectId"
    assert cube.planes == PLANES
    out = capsys.readouterr().out
    assert "read 9 alert packets in" in out
    assert f"8 labelled, 1 not in {labels} (left out), 0 unreadable" in out
    assert "labels without a packet: 2" in out
    assert "real:  5 packets, 4 kept; rejected: 1 EDGE, 0 bad, 0 by balancing" in out
    assert "bogus: 3 packets, 3 kept; rejected: 0 EDGE, 0 bad, 0 by balancing" in out
    assert "groups: 4 distinct values of objectId" in out


def test_a_labels_table_with_other_columns_in_another_order(tmp_path: Path) -> None:
    alerts = [ztf(index, f"ZTF21obj{index}") for index in range(4)]
    write_packets(tmp_path / "night.avro", [ztf_record(alert) for alert in alerts], ztf_schema())
    labels = tmp_path / "marks.csv"
    labels.write_text(
        "note,label,candid\n"
        f"x,1,{alerts[0].candid}\n\n"
        f'"a, b",0,{alerts[1].candid}\n'
        f"y,1,{alerts[2].candid}\n"
        f"z,0,{alerts[3].candid}\n"
        f"again,1,{alerts[0].candid}\n"  # the same label twice is one label
    )
    assert convert(tmp_path / "out", "--alerts", tmp_path / "night.avro", "--labels", labels) == 0
    cube = load(tmp_path / "out")
    assert sorted(zip(cube.candids.tolist(), cube.labels.tolist(), strict=True)) == [
        (BASE, 1),
        (BASE + 1, 0),
        (BASE + 2, 1),
        (BASE + 3, 0),
    ]
    assert_array_equal(cube.cube[0, :, :, 0], alerts[0].planes["DIFF"][1:, 1:])  # DIFF alone by default


def test_rubin_packets_are_grouped_by_their_dia_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema = rubin_schema()
    base = 170032915540099079
    alerts = [
        PacketAlert(candid=base + index, object_id=170032915540099000 + index % 2, planes=planes_of(index, 30))
        for index in range(4)
    ]
    write_packets(tmp_path / "rubin.avro", [rubin_record(alert, schema) for alert in alerts], schema)
    labels = write_labels(tmp_path / "labels.csv", [(alert.candid, index % 2) for index, alert in enumerate(alerts)])
    assert convert(tmp_path / "out", "--alerts", tmp_path / "rubin.avro", "--labels", labels, "--planes", "DIFF") == 0
    cube = load(tmp_path / "out")
    assert cube.candids.tolist() == [base + 1, base + 3, base, base + 2]
    assert_array_equal(cube.labels, [1, 1, 0, 0])
    assert list(cube.groups) == ["170032915540099001"] * 2 + ["170032915540099000"] * 2
    assert cube.group_keyword == "diaObjectId"
    for row, index in enumerate((1, 3, 0, 2)):
        assert_array_equal(cube.cube[row, :, :, 0], alerts[index].planes["DIFF"])
    assert "groups: 2 distinct values of diaObjectId" in capsys.readouterr().out


def write_stdpipe_twin(path: Path, alert: PacketAlert) -> None:
    """The alert as an STDPipe cutout: metadata in the primary header, IMAGE, TEMPLATE and DIFF extensions.

    ZTF's 63x63 stamps go in as the FITS cutouts made from ZTF's packets hold them: 62x62,
    without their first row and column.
    """
    primary = fits.PrimaryHDU()
    for key, value in {"NAME": str(alert.candid), "FILE": str(alert.object_id), "FILTER": alert.band}.items():
        primary.header[key] = value
    for key, value in {"mag_calib": alert.mag, "mag_calib_err": alert.magerr, "FWHM": alert.fwhm}.items():
        primary.header[f"HIERARCH {key}" if len(key) > 8 else key] = value
    primary.header["EDGE"] = False
    extensions = [fits.ImageHDU(alert.planes[plane][1:, 1:], name=plane) for plane in PLANES]
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, *extensions]).writeto(path)


def test_packets_and_their_stdpipe_cutouts_make_the_same_cube(tmp_path: Path) -> None:
    alerts = [ztf(index, f"ZTF21obj{index // 3}") for index in range(8)]
    alerts[2].planes["DIFF"][5, 7] = np.nan  # replaced the same way from either source
    label_of = [1, 0, 1, 1, 0, 1, 0, 1]
    (tmp_path / "alerts").mkdir()
    for index, alert in enumerate(alerts):
        write_packets(tmp_path / "alerts" / f"{index:02d}.avro", [ztf_record(alert)], ztf_schema())
        write_stdpipe_twin(tmp_path / "cutouts" / ("true" if label_of[index] else "false") / f"{index:02d}.fits", alert)
    labels = write_labels(tmp_path / "labels.csv", [(alert.candid, label_of[i]) for i, alert in enumerate(alerts)])
    common = ("--planes", *PLANES, "--cutout-size", "33", "--seed", "3")
    assert convert(tmp_path / "packets", "--alerts", tmp_path / "alerts", "--labels", labels, *common) == 0
    assert convert(tmp_path / "files", "--cutouts", tmp_path / "cutouts", "--group-keyword", "FILE", *common) == 0
    from_packets, from_files = load(tmp_path / "packets"), load(tmp_path / "files")
    assert (from_packets.n_real, from_packets.n_bogus) == (3, 3)  # balanced: 3 of the 5 real
    assert from_packets.cube.tobytes() == from_files.cube.tobytes()
    assert_array_equal(from_packets.labels, from_files.labels)
    assert from_packets.candids.dtype == from_files.candids.dtype == np.int64
    assert_array_equal(from_packets.candids, from_files.candids)
    assert_array_equal(from_packets.groups, from_files.groups)
    assert np.isfinite(from_packets.cube).all()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2 for options and 1 for data, no .npz left behind.


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (("--cutouts", "{cutouts}", "--alerts", "{alerts}", "--labels", "{labels}"), "--cutouts, --alerts: give one"),
        (("--alerts", "{alerts}"), "--labels: required with --alerts"),
        (("--cutouts", "{cutouts}", "--labels", "{labels}"), "--labels: only used with --alerts"),
        (
            ("--alerts", "{alerts}", "--labels", "{labels}", "--group-keyword", "FILE"),
            "--group-keyword: not used with --alerts",
        ),
        (("--alerts", "{tmp}/nowhere", "--labels", "{labels}"), "--alerts: "),
        (("--alerts", "{alerts}", "--labels", "{tmp}/nowhere.csv"), "--labels: file"),
    ],
    ids=["both-sources", "alerts-without-labels", "labels-without-alerts", "group-keyword", "no-alerts", "no-labels"],
)
def test_option_rules_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...], fragment: str
) -> None:
    write_gmadet(tmp_path / "cutouts" / "true" / "a.fits")
    write_gmadet(tmp_path / "cutouts" / "false" / "b.fits")
    write_packets(tmp_path / "one.avro", [ztf_record(ztf(0, "ZTF21a"))], ztf_schema())
    labels = write_labels(tmp_path / "labels.csv", [(BASE, 1)])
    places = {"cutouts": tmp_path / "cutouts", "alerts": tmp_path / "one.avro", "labels": labels, "tmp": tmp_path}
    status = convert(tmp_path / "out", *(argument.format(**places) for argument in arguments))
    assert_refused(tmp_path, status, 2, capsys.readouterr().err, fragment)


def test_a_candidate_labelled_both_ways_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_packets(tmp_path / "one.avro", [ztf_record(ztf(0, "ZTF21a"))], ztf_schema())
    labels = write_labels(tmp_path / "labels.csv", [(BASE, 1), (BASE + 1, 0), (f"{BASE}", 0)])
    status = convert(tmp_path / "out", "--alerts", tmp_path / "one.avro", "--labels", labels)
    assert_refused(
        tmp_path,
        status,
        1,
        capsys.readouterr().err,
        f"{labels}: line 4: candidate {BASE} is labelled 0, but 1 on line 2",
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("id,label\n1,1\n", "lacks the column candid"),
        (f"candid,label\n{BASE},real\n", "line 2: label 'real' is neither 1 (real) nor 0 (bogus)"),
        ("candid,label\n,1\n", "line 2: no candidate id"),
    ],
)
def test_a_bad_labels_table_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    write_packets(tmp_path / "one.avro", [ztf_record(ztf(0, "ZTF21a"))], ztf_schema())
    (tmp_path / "labels.csv").write_text(content)
    status = convert(tmp_path / "out", "--alerts", tmp_path / "one.avro", "--labels", tmp_path / "labels.csv")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, fragment)


def test_bad_packets_fail_the_conversion_or_are_skipped_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "alerts"
    folder.mkdir()
    alerts = [ztf(index, f"ZTF21obj{index}") for index in range(6)]
    del alerts[5].planes["DIFF"]  # a labelled packet without the plane asked for
    write_packets(folder / "good.avro", [ztf_record(alert) for alert in alerts], ztf_schema())
    (folder / "junk.avro").write_bytes(b"Obj\x01" + b"\x00\xff" * 300)  # Avro by its first bytes, then junk
    labels = write_labels(tmp_path / "labels.csv", [(alert.candid, index % 2) for index, alert in enumerate(alerts)])
    status = convert(tmp_path / "out", "--alerts", folder, "--labels", labels)
    err = capsys.readouterr().err
    assert_refused(tmp_path, status, 1, err, "2 bad cutouts, the first:", "--skip-bad-files")
    assert "good.avro#5:cutoutDifference: the packet has no such cutout" in err
    assert "junk.avro: not an Avro alert file" in err
    assert (
        convert(tmp_path / "out", "--alerts", folder, "--labels", labels, "--skip-bad-files", "--frac-true", "-1") == 0
    )
    captured = capsys.readouterr()
    assert f"otrain-convert: warning: skipped: {folder / 'junk.avro'}" in captured.err
    assert "read 7 alert packets in" in captured.out
    assert "6 labelled, 0 not in" in captured.out
    assert "1 unreadable" in captured.out
    assert "real:  3 packets, 2 kept; rejected: 0 EDGE, 1 bad, 0 by balancing" in captured.out
    cube = load(tmp_path / "out")
    assert sorted(cube.candids.tolist()) == [BASE + index for index in range(5)]


def test_a_class_with_no_usable_packet_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerts = [ztf(0, "ZTF21a"), ztf(1, "ZTF21b", size=40)]
    write_packets(tmp_path / "two.avro", [ztf_record(alert) for alert in alerts], ztf_schema())
    labels = write_labels(tmp_path / "labels.csv", [(BASE, 1), (BASE + 1, 0)])
    status = convert(tmp_path / "out", "--alerts", tmp_path / "two.avro", "--labels", labels)
    assert_refused(
        tmp_path, status, 1, capsys.readouterr().err, "no usable bogus packet (1 labelled bogus: 1 flagged EDGE, 0 bad)"
    )


def test_params_yaml_leaves_the_packet_paths_to_the_pipeline() -> None:
    from otrain.options import validate_params

    for key in ("alerts", "labels"):
        with pytest.raises(ValueError, match=f"convert.{key}: Extra inputs are not permitted"):
            validate_params({"convert": {key: "somewhere"}})
    assert validate_params({"convert": {"group_keyword": "OBJECTID"}})["convert"]["group_keyword"] == "OBJECTID"


def test_no_packet_or_no_labelled_packet_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no packets here\n")
    labels = write_labels(tmp_path / "labels.csv", [(BASE + 50, 1), (BASE + 51, 0)])
    status = convert(tmp_path / "out", "--alerts", tmp_path / "empty", "--labels", labels)
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, f"{tmp_path / 'empty'}: no alert packets")
    write_packets(tmp_path / "one.avro", [ztf_record(ztf(0, "ZTF21a"))], ztf_schema())
    status = convert(tmp_path / "out", "--alerts", tmp_path / "one.avro", "--labels", labels)
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, f"{labels}: lists none of the 1 packets' candids")


@pytest.mark.slow
def test_packets_read_by_a_pool_give_the_same_cube(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    alerts = [
        PacketAlert(candid=BASE + i, object_id=f"ZTF{i // 4}", planes={"DIFF": rng.normal(size=(63, 63)).astype("f4")})
        for i in range(260)
    ]
    write_packets(tmp_path / "night.avro", [ztf_record(alert) for alert in alerts], ztf_schema(), codec="deflate")
    labels = write_labels(tmp_path / "labels.csv", [(alert.candid, int(i % 3 == 0)) for i, alert in enumerate(alerts)])
    for name, workers in (("one", "1"), ("two", "2")):
        assert (
            convert(tmp_path / name, "--alerts", tmp_path / "night.avro", "--labels", labels, "--workers", workers) == 0
        )
    one = (tmp_path / "one" / "datacube" / "cube.npz").read_bytes()
    assert one == (tmp_path / "two" / "datacube" / "cube.npz").read_bytes()
    assert len(load(tmp_path / "one")) == 2 * 87
