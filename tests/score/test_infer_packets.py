"""otrain-infer on survey alert packets: ZTF and Rubin packets (fastavro) scored as their STDPipe FITS files are.

The packets are written with :mod:`otrain.simulate.packets`; the same alerts are written as STDPipe
cutouts (metadata in the primary HDU, IMAGE, TEMPLATE, DIFF extensions) from what the packet
reader decodes, so both tables must agree row by row apart from the file names. The model is a
real, untrained network of this test: only the agreement of the two paths is checked.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from astropy.io import fits
from conftest import SIZE, call_main

from otrain.cli.infer import main as infer_main
from otrain.io.alerts import Alert, iter_alerts
from otrain.simulate.packets import PacketAlert, rubin_record, rubin_schema, write_packets, ztf_record, ztf_schema

PLANES = ("IMAGE", "TEMPLATE", "DIFF")
#: ZTF candidate ids have 19 digits: they must reach the table exactly, not through a float.
ZTF_CANDID = 2_485_401_234_567_890_123


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Untrained networks of SIZE x SIZE cutouts, of one plane and of three, saved."""
    import keras

    from otrain.nets.model import build_model, save_model

    folder = tmp_path_factory.mktemp("models")
    saved = {}
    for channels in (1, 3):
        keras.utils.set_random_seed(channels)
        saved[channels] = save_model(build_model((SIZE, SIZE, channels)), folder / f"planes{channels}.keras")
    return saved


def simulated(n: int, *, seed: int = 0, size: int = 63, start: int = ZTF_CANDID) -> list[PacketAlert]:
    """``n`` alerts with distinct planes (a source in the difference) and measurements."""
    rng = np.random.default_rng(seed)
    alerts = []
    for index in range(n):
        planes = {plane: rng.normal(0.0, 10.0, (size, size)).astype(np.float32) for plane in PLANES}
        planes["DIFF"][size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] += 50.0 * index
        alerts.append(
            PacketAlert(
                candid=start + index,
                object_id=f"ZTF24aaa{index:05d}" if start == ZTF_CANDID else 170_000_000_000_000 + index,
                planes=planes,
                mag=17.0 + 0.25 * index,
                magerr=0.0625,
                band="gr"[index % 2],
                fwhm=2.5,
                ra=150.0 + index / 64,
                dec=2.0 - index / 64,
                xpos=100.5 + index,
                ypos=200.25,
                publisher="ZTF (www.ztf.caltech.edu)",  # ZTF's stamp-size rule for EDGE applies
            )
        )
    return alerts


def write_ztf(folder: Path, alerts: list[PacketAlert]) -> list[Path]:
    """One ZTF packet per file, as ZTF publishes them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for alert in alerts:
        path = folder / f"{alert.candid}.avro"
        write_packets(path, [ztf_record(alert)], ztf_schema())
        paths.append(path)
    return paths


def write_stdpipe_twins(packets: Path, folder: Path, alerts: list[PacketAlert]) -> None:
    """Write each alert as an STDPipe cutout: its planes, and the metadata the packet reader decoded.

    A whole ZTF stamp (63x63) goes in as the FITS cutouts made from ZTF's packets hold it:
    62x62, without its first row and column.
    """
    folder.mkdir(parents=True, exist_ok=True)
    decoded = [item for item in iter_alerts(packets) if isinstance(item, Alert)]
    assert len(decoded) == len(alerts)
    for index, (alert, read) in enumerate(zip(alerts, decoded, strict=True)):
        meta = read.meta
        primary = fits.PrimaryHDU()
        primary.header["NAME"] = str(meta.candid)
        for key, value in (("RA", meta.ra), ("DEC", meta.dec), ("FILE", meta.file), ("X", meta.xpos)):
            primary.header[key] = value
        primary.header["Y"] = meta.ypos
        primary.header["FWHM"] = meta.fwhm
        primary.header["HIERARCH mag_calib"] = meta.mag
        primary.header["HIERARCH mag_calib_err"] = meta.magerr
        whole = read.survey == "ztf" and alert.planes["DIFF"].shape == (63, 63)
        extensions = [
            fits.ImageHDU(alert.planes[plane][1:, 1:] if whole else alert.planes[plane], name=plane) for plane in PLANES
        ]
        extensions[-1].header["FILTER"] = meta.filter
        fits.HDUList([primary, *extensions]).writeto(folder / f"c{index:03d}.fits")


def infer(cutouts: Path, model: Path, output: Path, *extra: str) -> int:
    return call_main(infer_main, "--cutouts", cutouts, "--model", model, "--output", output, "--no-tracking", *extra)


def rows(table: Path) -> list[list[str]]:
    """The table's rows as text cells (after the header), split as astropy reads them."""
    read = astropy_ascii.read(table, format="commented_header", guess=False, converters={"cand_ID": [str]})
    assert read.colnames[0] == "filename"
    return [[str(value) for value in row] for row in read.iterrows()] if len(read) else []


def assert_same_rows(ours: list[list[str]], theirs: list[list[str]]) -> None:
    """Rows equal apart from the filename column: the metadata as text, P(real) within 1e-6."""
    assert len(ours) == len(theirs) > 0
    label0, label1 = 11, 12
    for mine, other in zip(ours, theirs, strict=True):
        assert mine[1:label0] == other[1:label0]
        assert mine[13:] == other[13:]
        for column in (label0, label1):
            assert float(mine[column]) == pytest.approx(float(other[column]), abs=1e-6)


@pytest.mark.parametrize("survey", ["ztf", "rubin"])
def test_packets_score_as_their_stdpipe_cutouts(
    survey: str, models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if survey == "ztf":
        alerts = simulated(5)
        write_ztf(tmp_path / "packets", alerts)
    else:
        schema = rubin_schema()
        alerts = simulated(5, size=40, start=170_032_915_540_099_079)
        (tmp_path / "packets").mkdir()
        for alert in alerts:
            write_packets(tmp_path / "packets" / f"{alert.candid}.avro", [rubin_record(alert, schema)], schema)
    write_stdpipe_twins(tmp_path / "packets", tmp_path / "fits", alerts)
    assert infer(tmp_path / "packets", models[1], tmp_path / "packets.dat") == 0
    assert "scored 5 of 5 cutouts" in capsys.readouterr().out
    assert infer(tmp_path / "fits", models[1], tmp_path / "fits.dat") == 0
    packets, files = rows(tmp_path / "packets.dat"), rows(tmp_path / "fits.dat")
    assert_same_rows(packets, files)
    assert [row[0] for row in packets] == [str(tmp_path / "packets" / f"{alert.candid}.avro") for alert in alerts]
    assert [row[10] for row in packets] == [str(alert.candid) for alert in alerts]  # 19 digits, exactly
    assert [row[3] for row in packets] == [str(alert.object_id) for alert in alerts]
    # The candidates differ: the rows are not one candidate scored five times.
    assert len({row[12] for row in packets}) > 1


def test_a_tarball_a_multi_packet_file_and_a_folder_give_the_same_rows(models: dict[int, Path], tmp_path: Path) -> None:
    alerts = simulated(4, seed=1)
    paths = write_ztf(tmp_path / "night", alerts)
    with tarfile.open(tmp_path / "night.tar.gz", "w:gz") as archive:
        for path in paths:
            archive.add(path, arcname=f"night/{path.name}")
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as archive:
        for path in paths:
            archive.add(path, arcname=path.name)
    several = tmp_path / "several.avro"
    write_packets(several, [ztf_record(alert) for alert in alerts], ztf_schema())
    assert infer(tmp_path / "night", models[1], tmp_path / "folder.dat") == 0
    folder = rows(tmp_path / "folder.dat")
    expected_names = {
        tmp_path / "night.tar.gz": [f"{tmp_path / 'night.tar.gz'}/night/{path.name}" for path in paths],
        plain: [f"{plain}/{path.name}" for path in paths],
        several: [str(several), *(f"{several}#{index}" for index in range(1, 4))],
    }
    for source, names in expected_names.items():
        table = tmp_path / f"{source.name}.dat"
        assert infer(source, models[1], table) == 0
        scored = rows(table)
        assert_same_rows(scored, folder)
        assert [row[0] for row in scored] == names


def test_a_packet_file_alone_writes_its_table_beside_it(models: dict[int, Path], tmp_path: Path) -> None:
    (path,) = write_ztf(tmp_path / "one", simulated(1, seed=2))
    assert call_main(infer_main, "--cutouts", path, "--model", models[1], "--no-tracking") == 0
    (row,) = rows(tmp_path / "one" / "infer_results.dat")
    assert row[0] == str(path)


def test_bad_packets_are_counted_and_listed_and_the_good_ones_scored(
    models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts = simulated(5, seed=3)
    night = tmp_path / "night"
    write_ztf(night, alerts[:3])
    no_diff = alerts[3]
    no_diff.planes.pop("DIFF")
    write_ztf(night, [no_diff])
    truncated = night / "truncated.avro"
    write_packets(truncated, [ztf_record(simulated(1, seed=4, start=ZTF_CANDID + 100)[0])], ztf_schema())
    content = truncated.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    edge = simulated(1, seed=5, size=40, start=ZTF_CANDID + 200)  # a ZTF stamp cut at the CCD's edge
    write_ztf(night, edge)
    (night / "notes.txt").write_text("not a packet: left out\n")
    assert infer(night, models[1], tmp_path / "night.dat") == 0
    captured = capsys.readouterr()
    assert "skipped 1 EDGE, 2 unreadable" in captured.out
    assert (
        f"skipped: {night / f'{no_diff.candid}.avro'}:cutoutDifference: the packet has no such cutout" in captured.err
    )
    assert f"skipped: {truncated}" in captured.err
    assert "truncated or damaged" in captured.err
    scored = rows(tmp_path / "night.dat")
    assert [row[10] for row in scored] == [str(alert.candid) for alert in alerts[:3]]

    # Nothing scorable: one line naming the problem, exit 1, no table.
    junk = tmp_path / "junk.avro"
    junk.write_bytes(b"Obj\x01 but nothing after")
    assert infer(junk, models[1], tmp_path / "junk.dat") == 1
    error = capsys.readouterr().err
    assert "no cutout could be scored (1 unreadable, 0 flagged EDGE)" in error
    assert "Traceback" not in error
    assert not (tmp_path / "junk.dat").exists()


def test_a_folder_of_fits_cutouts_and_packets_scores_the_files_first(models: dict[int, Path], tmp_path: Path) -> None:
    alerts = simulated(6, seed=6)
    write_ztf(tmp_path / "fits_packets", alerts[:3])
    write_stdpipe_twins(tmp_path / "fits_packets", tmp_path / "mixed", alerts[:3])
    write_ztf(tmp_path / "mixed" / "zz", [])  # an empty sub-folder, passed over
    with tarfile.open(tmp_path / "mixed" / "a_night.tar", "w") as archive:
        for path in write_ztf(tmp_path / "later", alerts[3:]):
            archive.add(path, arcname=path.name)
    assert infer(tmp_path / "mixed", models[1], tmp_path / "mixed.dat") == 0
    scored = rows(tmp_path / "mixed.dat")
    assert [row[10] for row in scored] == [str(alert.candid) for alert in alerts]
    assert [Path(row[0]).name for row in scored[:3]] == ["c000.fits", "c001.fits", "c002.fits"]
    assert [row[0] for row in scored[3:]] == [
        f"{tmp_path / 'mixed' / 'a_night.tar'}/{a.candid}.avro" for a in alerts[3:]
    ]


def test_three_planes_of_packets_score_as_those_of_their_fits_cutouts(
    models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts = simulated(4, seed=7)
    write_ztf(tmp_path / "packets", alerts)
    write_stdpipe_twins(tmp_path / "packets", tmp_path / "fits", alerts)
    planes = ("--planes", *PLANES)
    assert infer(tmp_path / "packets", models[3], tmp_path / "packets.dat", *planes) == 0
    assert infer(tmp_path / "fits", models[3], tmp_path / "fits.dat", *planes) == 0
    assert_same_rows(rows(tmp_path / "packets.dat"), rows(tmp_path / "fits.dat"))
    # Without --planes, packets are read as DIFF alone: the three-plane model is refused once.
    assert infer(tmp_path / "packets", models[3], tmp_path / "refused.dat") == 1
    error = capsys.readouterr().err
    assert "the model takes 3 planes, packets are read as DIFF alone by default; give --planes" in error
    assert not (tmp_path / "refused.dat").exists()


def test_packets_smaller_than_the_model_are_refused_once(
    models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = rubin_schema()
    alerts = simulated(2, size=20, start=170_032_915_540_099_079)
    (tmp_path / "small").mkdir()
    path = tmp_path / "small" / "two.avro"
    write_packets(path, [rubin_record(alert, schema) for alert in alerts], schema)
    assert infer(tmp_path / "small", models[1], tmp_path / "small.dat") == 1
    error = capsys.readouterr().err
    expected = f"the model takes {SIZE}x{SIZE}x1 cutouts, but {path} (and probably the other packets) is 20x20x1"
    assert expected in error
    assert error.count("\n") == 1


def test_no_cutout_nor_packet_is_one_line(models: dict[int, Path], tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing to score\n")
    assert infer(tmp_path / "empty", models[1], tmp_path / "empty.dat") == 1
    assert "no cutout files (*.fits, *.fit, *.fits.gz) nor alert packets" in capsys.readouterr().err


def test_packets_in_sub_folders_are_scored_with_recursive_only(models: dict[int, Path], tmp_path: Path) -> None:
    alerts = simulated(3, seed=8)
    write_ztf(tmp_path / "night", alerts[:1])
    write_ztf(tmp_path / "night" / "late", alerts[1:])
    assert infer(tmp_path / "night", models[1], tmp_path / "top.dat") == 0
    assert [row[10] for row in rows(tmp_path / "top.dat")] == [str(alerts[0].candid)]
    assert infer(tmp_path / "night", models[1], tmp_path / "all.dat", "--recursive") == 0
    assert [row[10] for row in rows(tmp_path / "all.dat")] == [str(alert.candid) for alert in alerts]


def test_packets_read_by_worker_processes_give_the_same_table(models: dict[int, Path], tmp_path: Path) -> None:
    from otrain.io.parallel import MIN_ITEMS_FOR_POOL

    schema = rubin_schema()
    alerts = simulated(MIN_ITEMS_FOR_POOL + 30, size=SIZE, start=170_032_915_540_099_079)
    (tmp_path / "night").mkdir()
    write_packets(tmp_path / "night" / "many.avro", [rubin_record(alert, schema) for alert in alerts], schema)
    for workers in (1, 2):
        assert (
            infer(
                tmp_path / "night",
                models[1],
                tmp_path / f"w{workers}.dat",
                "--workers",
                str(workers),
                "--batch-size",
                "64",
            )
            == 0
        )
    assert (tmp_path / "w1.dat").read_bytes() == (tmp_path / "w2.dat").read_bytes()
    assert len(rows(tmp_path / "w2.dat")) == len(alerts)


def test_a_lone_cutout_file_and_a_packet_as_output_are_option_errors(
    models: dict[int, Path], tmp_path: Path, capsys: Any
) -> None:
    night = tmp_path / "night"
    (packet,) = write_ztf(night, simulated(1))
    lone = tmp_path / "lone.fits"
    fits.PrimaryHDU(np.zeros((SIZE, SIZE), np.float32)).writeto(lone)
    assert call_main(infer_main, "--cutouts", lone, "--model", models[1], "--no-tracking") == 2
    assert "is a cutout file; give the folder that holds the cutouts" in capsys.readouterr().err
    before = packet.read_bytes()
    assert infer(night, models[1], packet, "--overwrite") == 2  # the packet being scored, even with --overwrite
    assert "is an alert packet being scored" in capsys.readouterr().err
    assert packet.read_bytes() == before
    assert sorted(path.name for path in night.iterdir()) == [packet.name]
