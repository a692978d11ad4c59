"""otrain-report on a night of alert packets: the page finds each row's pixels in the packets otrain-infer scored.

Real ZTF and Rubin packets (:mod:`otrain.simulate.packets`) in a nightly tarball and a
multi-packet file, scored by a real untrained network; the page's data and its sprite sheets
are read back (the browser tests of test_report.py cover the page's script).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, call_main
from helpers import page_data

from otrain.cli.infer import main as infer_main
from otrain.cli.report import main as report_main
from otrain.simulate.packets import PacketAlert, rubin_record, rubin_schema, write_packets, ztf_record, ztf_schema

PLANES = ("IMAGE", "TEMPLATE", "DIFF")
TILE = 64


def alerts(n: int, size: int, start: int, seed: int) -> list[PacketAlert]:
    rng = np.random.default_rng(seed)
    made = []
    for index in range(n):
        planes = {plane: rng.normal(0.0, 10.0, (size, size)).astype(np.float32) for plane in PLANES}
        planes["DIFF"][size // 2 - 3 : size // 2 + 3, size // 2 - 3 : size // 2 + 3] += 40.0 * (index + 1)
        object_id = f"ZTF24abc{index:05d}" if size == 63 else 170_000_000_000_000 + index
        made.append(PacketAlert(candid=start + index, object_id=object_id, planes=planes, mag=18.0 + index))
    return made


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A folder with a ZTF tarball and a file of three Rubin packets, a model, and the night scored."""
    import keras

    from otrain.nets.model import build_model, save_model

    root = tmp_path_factory.mktemp("packets")
    keras.utils.set_random_seed(4)
    model = save_model(build_model((SIZE, SIZE, 1)), root / "model" / "model.keras")
    folder = root / "night"
    (root / "stage").mkdir()
    folder.mkdir()
    ztf = alerts(3, 63, 2_485_401_234_567_890_100, seed=1)
    with tarfile.open(folder / "ztf_night.tar.gz", "w:gz") as archive:
        for alert in ztf:
            path = root / "stage" / f"{alert.candid}.avro"
            write_packets(path, [ztf_record(alert)], ztf_schema())
            archive.add(path, arcname=path.name)
    schema = rubin_schema()
    rubin = alerts(3, SIZE, 170_032_915_540_099_079, seed=2)
    write_packets(folder / "rubin.avro", [rubin_record(alert, schema) for alert in rubin], schema)
    table = root / "infer_results.dat"
    assert call_main(infer_main, "--cutouts", folder, "--model", model, "--output", table, "--no-tracking") == 0
    output = root / "vetting"
    common = ("--model", model, "--no-tracking")
    assert call_main(report_main, "--infer", table, "--cutouts", folder, "--output", output, *common) == 0
    by_name = {f"ztf_night.tar.gz/{alert.candid}.avro": alert for alert in ztf}
    by_name.update({"rubin.avro": rubin[0], "rubin.avro#1": rubin[1], "rubin.avro#2": rubin[2]})
    return {"root": root, "model": model, "folder": folder, "table": table, "output": output, "alerts": by_name}


def zscale_tile(plane: np.ndarray) -> np.ndarray:
    """A 32x32 plane's thumbnail: DS9 zscale, north up, each pixel repeated to 64x64."""
    from astropy.visualization import ZScaleInterval

    low, high = ZScaleInterval().get_limits(plane)
    scaled = np.round(np.clip((plane - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    return np.repeat(np.repeat(np.flipud(scaled), 2, axis=0), 2, axis=1)


def test_the_page_lists_every_packet_with_its_three_planes_and_overlay(night: dict[str, object]) -> None:
    from PIL import Image

    data = page_data(night["output"])  # type: ignore[arg-type]
    columns = data["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in data["rows"]]
    by_name: dict[str, PacketAlert] = night["alerts"]  # type: ignore[assignment]
    assert sorted(row["file"] for row in rows) == sorted(by_name)
    assert data["night"]["scored"] == 6
    assert data["night"]["files"] == 6
    assert data["night"]["skipped"] == 0
    thumbs = Path(night["output"]) / "thumbs"  # type: ignore[arg-type]
    sheet = np.asarray(Image.open(thumbs / "sheet_0000.png"))
    for row in rows:
        alert = by_name[row["file"]]
        assert row["cand_id"] == str(alert.candid)  # ZTF's 19 digits, exactly
        assert row["planes"] == 0b1111  # science, reference, difference, Grad-CAM
        top = row["sheet_index"] * TILE
        if alert.planes["DIFF"].shape == (SIZE, SIZE):
            for slot, plane in enumerate(PLANES):
                tile = sheet[top : top + TILE, slot * TILE : (slot + 1) * TILE]
                np.testing.assert_allclose(tile, zscale_tile(alert.planes[plane].astype(np.float64)), atol=1)
        else:
            assert sheet[top : top + TILE, 2 * TILE : 3 * TILE].std() > 0


def test_a_tarball_scored_alone_is_found_when_given_alone(night: dict[str, object], tmp_path: Path) -> None:
    tarball = Path(night["folder"]) / "ztf_night.tar.gz"  # type: ignore[arg-type]
    table = tmp_path / "infer_results.dat"
    common = ("--model", night["model"], "--no-tracking")
    assert call_main(infer_main, "--cutouts", tarball, "--output", table, *common) == 0
    output = tmp_path / "vetting"
    assert call_main(report_main, "--infer", table, "--cutouts", tarball, "--output", output, *common) == 0
    data = page_data(output)
    files = sorted(row[data["columns"].index("file")] for row in data["rows"])
    assert files == sorted(name for name in night["alerts"] if name.startswith("ztf_night"))  # type: ignore[attr-defined]
    assert data["night"]["files"] == 3


def test_packets_of_another_night_are_refused_by_name(
    night: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    schema = rubin_schema()
    write_packets(other / "rubin.avro", [rubin_record(alert, schema) for alert in alerts(1, SIZE, 7, seed=3)], schema)
    common = ("--model", night["model"], "--no-tracking")
    output = tmp_path / "vetting"
    assert call_main(report_main, "--infer", night["table"], "--cutouts", other, "--output", output, *common) == 1
    assert "scored file(s) of the table are not in this folder" in capsys.readouterr().err
    assert not output.exists()


def test_packets_without_a_readable_template_show_the_planes_they_have(
    night: dict[str, object], tmp_path: Path
) -> None:
    without, broken = alerts(2, 63, 2_485_401_234_567_890_900, seed=5)
    without.planes.pop("TEMPLATE")
    record = ztf_record(broken)
    record["cutoutTemplate"]["stampData"] = b"not a FITS stamp"
    (tmp_path / "night").mkdir()
    write_packets(tmp_path / "night" / "one.avro", [ztf_record(without), record], ztf_schema())
    table, output = tmp_path / "infer_results.dat", tmp_path / "vetting"
    common = ("--model", night["model"], "--no-tracking")
    assert call_main(infer_main, "--cutouts", tmp_path / "night", "--output", table, *common) == 0
    assert call_main(report_main, "--infer", table, "--cutouts", tmp_path / "night", "--output", output, *common) == 0
    data = page_data(output)
    masks = [row[data["columns"].index("planes")] for row in data["rows"]]
    assert masks == [0b1101, 0b1101]  # science, difference, Grad-CAM; no reference


def test_packets_are_found_from_the_current_folder_and_in_a_tarball_of_dot_members(
    night: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--cutouts .`` and a tarball made with ``tar -C night -czf x.tgz .`` (members ``./name``)."""
    here = tmp_path / "here"
    here.mkdir()
    stage = Path(night["root"]) / "stage"  # type: ignore[arg-type]
    with tarfile.open(here / "dots.tgz", "w:gz") as archive:
        archive.add(stage, arcname=".")
    monkeypatch.chdir(here)
    common = ("--model", night["model"], "--no-tracking")
    assert call_main(infer_main, "--cutouts", ".", "--output", "../scored.dat", *common) == 0
    names = [line.split()[0] for line in (tmp_path / "scored.dat").read_text().splitlines()[1:]]
    assert sorted(names) == sorted(f"dots.tgz/{path.name}" for path in stage.iterdir())  # no "./" inside
    output = tmp_path / "vetting"
    assert call_main(report_main, "--infer", "../scored.dat", "--cutouts", ".", "--output", output, *common) == 0
    data = page_data(output)
    assert sorted(row[data["columns"].index("file")] for row in data["rows"]) == sorted(names)
