"""otrain-report: the vetting page of a scored night, written from real FITS files and a real model,
then opened in a real headless Chromium (Debian's chromium and chromium-driver) with the network cut off."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from browser import browser_executables, chromium, requested_urls
from conftest import BIN, ROOT, SIZE, call_main, files_under, make_tree, saved_ensemble, write_gmadet
from helpers import page_data

from otrain.cli.infer import main as infer_main
from otrain.cli.relabel import main as relabel_main
from otrain.cli.report import main as report_main
from otrain.io.cutouts import read_header
from otrain.options import REPORT_MARKER

#: Where the browser tests leave their screenshots (CI keeps them as artifacts).
ARTIFACTS = Path(os.environ.get("OTRAIN_TEST_ARTIFACTS", ROOT / "test-artifacts"))
TILE = 64
HOSTILE = 'odd "name", <!--<script>__OTRAIN_DATA__.fits'


def table_rows(table: Path) -> dict[str, dict[str, str]]:
    """file name -> its row of the results table (as text)."""
    from astropy.io import ascii as astropy_ascii

    rows = astropy_ascii.read(table, format="commented_header", guess=False)
    return {Path(row["filename"]).name: {key: str(row[key]) for key in rows.colnames} for row in rows}


def read_scores(table: Path) -> dict[str, float]:
    """file name (as the table writes it) -> P(real)."""
    return {name: float(row["label1"]) for name, row in table_rows(table).items()}


@pytest.fixture(scope="module")
def night(workspace: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small night: STDPipe and gmadet cutouts of the workspace survey, one EDGE and one broken file, scored."""
    root = tmp_path_factory.mktemp("night")
    cutouts = root / "cutouts"
    cutouts.mkdir()
    chosen = 0
    for folder in ("true", "false"):
        files = sorted((workspace / "survey" / folder).glob("*.fits*"))
        files = [path for path in files if read_header(path)[0].edge is not True]
        stdpipe = [path for path in files if is_stdpipe(path)][:5]
        gmadet = [path for path in files if path not in stdpipe][:6]
        for path in stdpipe + gmadet:
            shutil.copy(path, cutouts / path.name)
            chosen += 1
    # A name that would break a page that pasted it into HTML, CSV or a script.
    shutil.move(cutouts / sorted(path.name for path in cutouts.iterdir())[-1], cutouts / HOSTILE)
    write_gmadet(cutouts / "edge.fits", np.ones((32, 32), np.float32), EDGE="True")
    (cutouts / "broken.fits").write_bytes(b"not a FITS file")
    model = trained / "tiny.keras"
    table = root / "infer_results.dat"
    assert call_main(infer_main, "--cutouts", cutouts, "--model", model, "--output", table, "--no-tracking") == 0
    output = root / "vetting"
    assert call_main(report_main, *arguments(table, cutouts, model, output)) == 0
    return {"cutouts": cutouts, "model": model, "table": table, "output": output, "workspace": workspace}


def is_stdpipe(path: Path) -> bool:
    with fits.open(path) as hdus:
        return len(hdus) > 1


def arguments(table: Path, cutouts: Path, model: Path, output: Path, *extra: str) -> list[str | Path]:
    return ["--infer", table, "--cutouts", cutouts, "--model", model, "--output", output, "--no-tracking", *extra]


# ---------------------------------------------------------------------------------------------
# The page's files


def test_the_page_holds_every_scored_candidate_in_p_real_order(night: dict[str, Path]) -> None:
    data = page_data(night["output"])
    scores = read_scores(night["table"])
    rows = [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
    assert sorted(row["file"] for row in rows) == sorted(scores)
    assert [row["p_real"] for row in rows] == sorted(scores.values(), reverse=True)
    # The sheets hold the thumbnails in the same order: the rows in view share a sheet or two.
    assert [row["sheet_index"] for row in rows] == list(range(len(rows)))
    for row in rows:
        assert row["p_real"] == pytest.approx(scores[row["file"]], abs=1e-12)
    assert data["night"]["scored"] == len(scores) == 22
    assert data["night"]["skipped"] == 2  # the EDGE file and the broken one
    threshold = data["model"]["threshold"]
    assert data["night"]["above"] == sum(value > threshold for value in scores.values())
    marker = json.loads((night["output"] / REPORT_MARKER).read_text())
    assert marker["night"]["scored"] == 22
    assert data["model"]["architecture"] == "otrain"
    assert data["model"]["test"]["n"] > 0
    assert data["model"]["threshold_rule"] == "the default, 0.5"


def test_each_row_shows_the_planes_its_file_has_and_the_grad_cam_overlay(night: dict[str, Path]) -> None:
    data = page_data(night["output"])
    for row in data["rows"]:
        path = night["cutouts"] / row[data["columns"].index("file")]
        with fits.open(path) as hdus:
            names = {hdu.name for hdu in hdus[1:]}
        mask = row[data["columns"].index("planes")]
        expected = 0b1111 if {"IMAGE", "TEMPLATE", "DIFF"} <= names else 0b1100
        assert mask == expected, path.name


def zscale_tile(plane: np.ndarray) -> np.ndarray:
    """The thumbnail a plane should have: DS9 zscale, north up, enlarged to 64x64 by repetition."""
    from astropy.visualization import ZScaleInterval

    plane = np.where(np.isfinite(plane), plane, np.nanmedian(plane))  # blank pixels: the median
    low, high = ZScaleInterval().get_limits(plane)
    if not high > low:
        low, high = plane.min(), plane.max()
    if not high > low:
        return np.zeros((TILE, TILE), np.uint8)
    scaled = np.round(np.clip((plane - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    factor = TILE // plane.shape[0]
    return np.repeat(np.repeat(np.flipud(scaled), factor, axis=0), factor, axis=1)


def test_a_thumbnail_is_its_file_s_plane_at_its_place_in_the_sheet(night: dict[str, Path]) -> None:
    from PIL import Image

    data = page_data(night["output"])
    columns = data["columns"]
    checked = 0
    for row in data["rows"]:
        path = night["cutouts"] / row[columns.index("file")]
        index = row[columns.index("sheet_index")]
        thumbs = night["output"] / "thumbs"
        sheet = np.asarray(Image.open(thumbs / f"sheet_{index // 100:04d}.png"))
        overlays = np.asarray(Image.open(thumbs / f"cam_{index // 100:04d}.png"))
        assert sheet.ndim == 2  # grey
        top = (index % 100) * TILE
        with fits.open(path) as hdus:
            planes = {hdu.name: hdu.data for hdu in hdus if hdu.data is not None}
        if "DIFF" in planes:
            for slot, name in enumerate(("IMAGE", "TEMPLATE", "DIFF")):
                tile = sheet[top : top + TILE, slot * TILE : (slot + 1) * TILE]
                np.testing.assert_allclose(tile, zscale_tile(planes[name].astype(np.float64)), atol=1)
        else:
            tile = sheet[top : top + TILE, 2 * TILE : 3 * TILE]
            np.testing.assert_allclose(tile, zscale_tile(planes["PRIMARY"].astype(np.float64)), atol=1)
            assert not sheet[top : top + TILE, : 2 * TILE].any()  # no science, no reference
        cam = overlays[top : top + TILE].astype(int)
        assert (np.abs(cam[..., 0] - cam[..., 2]) > 20).any(), "the overlay is in colour"
        checked += 1
    assert checked == 22


def test_the_page_says_whether_the_model_scored_the_table(
    night: dict[str, Path], trained_vgg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert page_data(night["output"])["agreement"] == {"differ": 0, "largest": pytest.approx(0, abs=1e-4)}
    output = tmp_path / "other_model"
    capsys.readouterr()
    other = trained_vgg / "tiny_vgg.keras"
    assert call_main(report_main, *arguments(night["table"], night["cutouts"], other, output)) == 0
    agreement = page_data(output)["agreement"]
    assert agreement["differ"] > 0
    assert agreement["largest"] > 1e-3
    assert "gives another P(real) than" in capsys.readouterr().err


def test_without_grad_cam_no_overlay_is_drawn(night: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "plain"
    assert (
        call_main(report_main, *arguments(night["table"], night["cutouts"], night["model"], output, "--no-grad-cam"))
        == 0
    )
    data = page_data(output)
    assert data["grad_cam"] is False
    assert data["agreement"] is None
    assert all(row[data["columns"].index("planes")] & 0b1000 == 0 for row in data["rows"])

    assert sorted(path.name for path in (output / "thumbs").iterdir()) == ["sheet_0000.png"]


def test_method_threshold_and_workers(night: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    def sheet(folder: Path, name: str = "sheet") -> np.ndarray:
        return np.asarray(Image.open(folder / "thumbs" / f"{name}_0000.png"))

    one, two = tmp_path / "one", tmp_path / "two"
    common = arguments(night["table"], night["cutouts"], night["model"], one, "--workers", "1", "--method", "gradcam")
    assert call_main(report_main, *common) == 0
    other = arguments(night["table"], night["cutouts"], night["model"], two, "--workers", "2", "--threshold", "0.9")
    assert call_main(report_main, *other) == 0
    # The planes do not depend on the workers; the overlays depend on the method and the decision.
    np.testing.assert_array_equal(sheet(one), sheet(two))
    assert not np.array_equal(sheet(one, "cam"), sheet(two, "cam"))
    data = page_data(two)
    scores = read_scores(night["table"])
    assert data["model"]["threshold"] == 0.9
    assert data["night"]["above"] == sum(value > 0.9 for value in scores.values())
    assert data["model"]["threshold_rule"] == "given with --threshold (the card's is 0.5)"
    assert page_data(one)["method"] == "gradcam"


def test_a_page_it_wrote_is_replaced_and_any_other_folder_refused(night: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "page"
    base = arguments(night["table"], night["cutouts"], night["model"], output, "--no-grad-cam")
    assert call_main(report_main, *base) == 0
    assert call_main(report_main, *base) == 0  # its own page: replaced
    (output / "marks.csv").write_text("cand_ID,file,mark,p_real\n")  # saved into it since
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    before = files_under(tmp_path)
    refused = [
        base,
        arguments(night["table"], night["cutouts"], night["model"], foreign),
        arguments(night["table"], night["cutouts"], night["model"], foreign / "mine.txt"),
        arguments(night["table"], night["cutouts"], night["model"], night["cutouts"]),
        arguments(night["table"], night["cutouts"], night["model"], night["cutouts"].parent),
        arguments(tmp_path / "missing.dat", night["cutouts"], night["model"], tmp_path / "new"),
        [*arguments(night["table"], night["cutouts"], night["model"], tmp_path / "new"), "--method", "cam"],
    ]
    for argv in refused:
        assert call_main(report_main, *argv) == 2, argv
    assert files_under(tmp_path) == before
    assert (foreign / "mine.txt").read_text() == "keep"
    assert (output / "marks.csv").is_file()


def test_a_table_that_does_not_fit_the_folder_writes_nothing(night: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(next(night["cutouts"].glob("*.fits")), other)
    output = tmp_path / "page"
    assert call_main(report_main, *arguments(night["table"], other, night["model"], output, "--no-grad-cam")) == 1
    empty = tmp_path / "empty.dat"
    empty.write_text(night["table"].read_text().splitlines()[0] + "\n")
    assert call_main(report_main, *arguments(empty, night["cutouts"], night["model"], output, "--no-grad-cam")) == 1
    lines = night["table"].read_text().splitlines()
    columns = lines[0].removeprefix("# ").split()
    broken = tmp_path / "broken.dat"
    cells = lines[1].rsplit(" ", 3)  # ... label0 label1 real
    broken.write_text("\n".join([lines[0], " ".join([cells[0], cells[1], "1.5", cells[3]]), *lines[2:]]) + "\n")
    assert columns[-2] == "label1"
    assert call_main(report_main, *arguments(broken, night["cutouts"], night["model"], output, "--no-grad-cam")) == 1
    # Another night whose files have the same names: the candidate ids in the headers differ.
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    others = sorted((night["workspace"] / "other" / "night").glob("*.fits"))
    for source, path in zip(others, sorted(night["cutouts"].iterdir()), strict=False):
        shutil.copy(source, impostor / path.name)
    assert len(list(impostor.iterdir())) == len(list(night["cutouts"].iterdir()))
    assert call_main(report_main, *arguments(night["table"], impostor, night["model"], output, "--no-grad-cam")) == 1
    assert not output.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".page")]


def test_table_names_are_found_whatever_folder_infer_ran_from(night: dict[str, Path], tmp_path: Path) -> None:
    nested = tmp_path / "survey" / "2026-11-28"
    shutil.copytree(night["cutouts"], nested / "sub")
    table = tmp_path / "absolute.dat"
    model = night["model"]
    assert call_main(infer_main, "--cutouts", nested, "--recursive", "--model", model, "--output", table) == 0
    assert str(nested) in table.read_text()  # absolute names
    output = tmp_path / "page"
    assert call_main(report_main, *arguments(table, nested, model, output, "--no-grad-cam")) == 0
    files = {row[page_data(output)["columns"].index("file")] for row in page_data(output)["rows"]}
    assert files == {f"sub/{name}" for name in read_scores(night["table"])}


def test_tracking_logs_the_page_and_names_the_registered_version(
    night: dict[str, Path], trained: Path, tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    assert page_data(night["output"])["model"]["registry"] == {"status": "not looked up (--no-tracking)"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    run_id = json.loads((trained / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri)
    # The same run registered before under another name, with a higher version number: the page
    # names the newest registration, whatever other tests of the session registered.
    client.create_registered_model("vetting-earlier")
    for _ in range(2):
        client.create_model_version("vetting-earlier", f"runs:/{run_id}/model", run_id=run_id)
    time.sleep(0.01)  # registration times are in milliseconds: the next one is later
    client.create_registered_model("vetting-test")
    version = client.create_model_version("vetting-test", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("vetting-test", "champion", version.version)
    output = tmp_path / "tracked"
    argv = [
        arg for arg in arguments(night["table"], night["cutouts"], night["model"], output) if arg != "--no-tracking"
    ]
    assert call_main(report_main, *argv, "--no-grad-cam") == 0
    registry = page_data(output)["model"]["registry"]
    expected = {"run_id": run_id, "name": "vetting-test", "version": str(version.version), "aliases": ["champion"]}
    assert registry == expected
    logged = {item.path for item in client.list_artifacts(run_id, "report/tracked")}
    assert "report/tracked/index.html" in logged
    assert client.get_run(run_id).data.metrics["report_scored"] == 22


# ---------------------------------------------------------------------------------------------
# The page in a real browser


@pytest.fixture
def browser_ready() -> None:
    if browser_executables() is None:
        if os.environ.get("OTRAIN_INSTALL_SYSTEM_PACKAGES") == "1":
            pytest.fail("Chromium and ChromeDriver must be installed for the browser tests (.ci/run installs them)")
        pytest.skip("Chromium or ChromeDriver is not installed (Debian: apt-get install chromium chromium-driver)")


def open_page(driver: Any, output: Path) -> None:
    driver.get((output / "index.html").as_uri())
    for _ in range(600):
        if driver.execute_script("return document.body.dataset.ready") == "true":
            return
        time.sleep(0.05)
    raise AssertionError("the page did not finish drawing")


def shown_rows(driver: Any) -> list[dict[str, Any]]:
    """The rows drawn, top to bottom, with their file, P(real), classes and mark."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#body .row')]
             .sort((a, b) => a.offsetTop - b.offsetTop)
             .map(row => ({file: row.dataset.file, p: Number(row.dataset.p), above: row.classList.contains('above'),
                           current: row.classList.contains('current'), mark: row.dataset.mark || null,
                           cells: [...row.children].map(cell => cell.textContent)}))"""
    )


def text_of(driver: Any, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


@pytest.mark.usefixtures("browser_ready")
def test_the_page_opens_offline_shows_every_candidate_and_requests_nothing(night: dict[str, Path]) -> None:
    scores = read_scores(night["table"])
    with chromium(height=2600) as driver:
        requested_urls(driver)  # the browser's own start-up pages
        open_page(driver, night["output"])
        rows = shown_rows(driver)
        assert [row["file"] for row in rows] == sorted(scores, key=lambda name: -scores[name])
        hostile = next(row for row in rows if row["file"] == HOSTILE)
        assert HOSTILE in hostile["cells"]  # shown as text, not read as markup
        assert driver.execute_script("return document.scripts.length") == 2
        assert text_of(driver, "n-total") == "22"
        assert (
            driver.execute_script("return [...document.querySelectorAll('.thumb:not(.none)')].length")
            == 22 * 2 + 10 * 2
        )
        loaded = driver.execute_script(
            """const urls = new Set([...document.querySelectorAll('.thumb:not(.none)')]
                   .map(t => getComputedStyle(t).backgroundImage.slice(5, -2)));
               return Promise.all([...urls].map(u => {
                   const i = new Image(); i.src = u; return i.decode().then(() => [u, i.naturalWidth]); }));"""
        )
        assert loaded
        assert sorted({url.rsplit("/", 1)[1][:4]: width for url, width in loaded}.items()) == [
            ("cam_", TILE),
            ("shee", 3 * TILE),
        ]
        urls = requested_urls(driver)
        base = night["output"].resolve().as_uri()
        assert urls
        assert all(url.startswith(base + "/") for url in urls), urls
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "vetting-page.png"))
    assert (ARTIFACTS / "vetting-page.png").stat().st_size > 10_000


@pytest.mark.usefixtures("browser_ready")
def test_the_slider_counts_what_the_table_says(night: dict[str, Path]) -> None:
    scores = read_scores(night["table"])
    with chromium(height=2600) as driver:
        open_page(driver, night["output"])
        for threshold in (0.05, 0.3, 0.5, 0.77, 0.999):
            driver.execute_script(
                "const s = document.getElementById('threshold'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));",
                threshold,
            )
            expected = sum(value > threshold for value in scores.values())
            assert int(text_of(driver, "n-above")) == expected, threshold
            assert sum(row["above"] for row in shown_rows(driver)) == expected
        driver.execute_script(
            "const s = document.getElementById('show'); s.value = 'above'; s.dispatchEvent(new Event('input'));"
        )
        assert len(shown_rows(driver)) == sum(value > 0.999 for value in scores.values())


@pytest.mark.usefixtures("browser_ready")
def test_magnitude_filter_and_sorting(night: dict[str, Path]) -> None:
    data = page_data(night["output"])
    mags = {row[data["columns"].index("file")]: row[data["columns"].index("mag")] for row in data["rows"]}
    low, high = sorted(mags.values())[5], sorted(mags.values())[15]
    with chromium(height=2600) as driver:
        open_page(driver, night["output"])
        driver.find_element("css selector", "#head > div[data-key=mag]").click()
        ascending = [mags[row["file"]] for row in shown_rows(driver)]
        assert ascending == sorted(ascending)
        assert len(ascending) == 22
        driver.find_element("css selector", "#head > div[data-key=mag]").click()
        assert [mags[row["file"]] for row in shown_rows(driver)] == sorted(ascending, reverse=True)
        driver.find_element("css selector", "#head > div[data-key=file]").click()
        files = [row["file"] for row in shown_rows(driver)]
        assert files == sorted(files)
        driver.find_element("id", "mag-min").send_keys(str(low))
        driver.find_element("id", "mag-max").send_keys(str(high))
        shown = {row["file"] for row in shown_rows(driver)}
        assert shown == {name for name, mag in mags.items() if low <= mag <= high}
        assert int(text_of(driver, "n-shown")) == len(shown)


@pytest.mark.usefixtures("browser_ready")
def test_keyboard_marks_survive_a_reload_and_export_to_relabel(night: dict[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(downloads=downloads, height=2600) as driver:
        open_page(driver, night["output"])
        order = [row["file"] for row in shown_rows(driver)]
        keys = ActionChains(driver)
        keys.send_keys("r")  # first row: real, and the cursor moves down
        keys.send_keys("b")  # second: bogus
        keys.send_keys(Keys.ARROW_DOWN)  # leave the third alone
        keys.send_keys("s")  # fourth: skip
        keys.send_keys(Keys.ARROW_UP * 4, Keys.ARROW_DOWN)
        keys.perform()
        assert [row["current"] for row in shown_rows(driver)].index(True) == 1
        expected = {order[0]: "real", order[1]: "bogus", order[3]: "skip"}
        # The file whose name needs CSV quoting: bogus, wherever it is.
        ActionChains(driver).send_keys(Keys.HOME, Keys.ARROW_DOWN * order.index(HOSTILE), "b").perform()
        expected[HOSTILE] = "bogus"
        # Chromium hands local storage to its browser process asynchronously: a reload at once may
        # come before the marks arrive there, so reload until they do (a mark never saved never does).
        for _ in range(100):
            driver.refresh()
            open_page(driver, night["output"])
            marks = {row["file"]: row["mark"] for row in shown_rows(driver) if row["mark"]}
            if marks == expected:
                break
            time.sleep(0.1)
        assert marks == expected
        assert text_of(driver, "n-marked") == str(len(expected))
        driver.find_element("id", "export").click()
        for _ in range(600):
            exported = [path for path in downloads.glob("*.csv")]
            if exported:
                break
            time.sleep(0.05)
        assert exported, "no CSV was downloaded"
    with chromium(height=2600) as driver:  # another browser: no marks, until they are imported
        open_page(driver, night["output"])
        assert text_of(driver, "n-marked") == "0"
        driver.execute_script("document.getElementById('import').hidden = false")
        driver.find_element("id", "import").send_keys(str(exported[0]))
        for _ in range(600):
            if text_of(driver, "n-marked") != "0":
                break
            time.sleep(0.05)
        assert {row["file"]: row["mark"] for row in shown_rows(driver) if row["mark"]} == expected
        assert text_of(driver, "status") == f"imported {len(expected)} marks"
    with open(exported[0], newline="") as stream:
        rows = list(csv.DictReader(stream))
    table = table_rows(night["table"])
    assert {row["file"]: row["mark"] for row in rows} == expected
    for row in rows:
        assert float(row["p_real"]) == pytest.approx(float(table[row["file"]]["label1"]))
        assert row["cand_ID"] == table[row["file"]]["cand_ID"]
    out = tmp_path / "vetted"
    assert call_main(relabel_main, "--marks", exported[0], "--cutouts", night["cutouts"], "--out", out) == 0
    for label, mark in (("true", "real"), ("false", "bogus")):
        written = sorted(path.name for path in (out / label).iterdir())
        assert written == sorted(name for name, kind in expected.items() if kind == mark)
        for name in written:
            assert (out / label / name).read_bytes() == (night["cutouts"] / name).read_bytes()


def readme_vetting_loop() -> list[str]:
    """The three commands of the vet-relabel-retrain loop, as docs/vetting.md gives them."""
    text = (ROOT / "docs" / "vetting.md").read_text()
    section = text[text.index("<!-- vetting-loop") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("```\n", section.index("```bash"))]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_loop_runs_as_written(
    night: dict[str, Path], workspace: Path, tracking_uri: str, tmp_path: Path
) -> None:
    import subprocess

    commands = readme_vetting_loop()
    assert [command.split()[0] for command in commands] == ["otrain-report", "otrain-relabel", "otrain-convert"]
    # The demo's layout: the survey, its night, the model and the scored night.
    # (The night was taken from the survey: its files are left out of the training folders.)
    tonight = shutil.ignore_patterns(*(path.name for path in night["cutouts"].iterdir()))
    shutil.copytree(workspace / "survey" / "true", tmp_path / "data" / "survey" / "true", ignore=tonight)
    shutil.copytree(workspace / "survey" / "false", tmp_path / "data" / "survey" / "false", ignore=tonight)
    shutil.copytree(night["cutouts"], tmp_path / "data" / "survey" / "night")
    model = tmp_path / "models" / "CNN_training" / "survey" / "survey.keras"
    model.parent.mkdir(parents=True)
    shutil.copy(night["model"], model)
    shutil.copy(night["model"].with_name("tiny.keras.card.json"), model.with_name("survey.keras.card.json"))
    table = tmp_path / "reports" / "infer_results.dat"
    table.parent.mkdir()
    table.write_text(night["table"].read_text().replace(str(night["cutouts"]), "data/survey/night"))
    # What the page's export gives: one real, one bogus.
    names = sorted(read_scores(night["table"]))
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    (downloads / "otrain-marks-0123456789abcdef.csv").write_text(
        f"cand_ID,file,mark,p_real\n1,{names[0]},real,0.9\n2,{names[1]},bogus,0.1\n"
    )
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env |= {"MLFLOW_TRACKING_URI": tracking_uri, "OTRAIN_PROGRESS": "0"}
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, command + "\n" + result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "reports" / "vetting" / "index.html").is_file()
    vetted = tmp_path / "data" / "vetted"
    assert (vetted / "true" / names[0]).resolve() == (tmp_path / "data" / "survey" / "night" / names[0]).resolve()
    n_true = len(list((tmp_path / "data" / "survey" / "true").iterdir()))
    assert len(list((vetted / "true").iterdir())) == n_true + 1
    assert (tmp_path / "models" / "CNN_training" / "vetted" / "vetted.keras").is_file()


@pytest.fixture(scope="module")
def large_night(night: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A page of 1,200 candidates (the night's files copied over and over), written without Grad-CAM."""
    root = tmp_path_factory.mktemp("large")
    cutouts = root / "cutouts"
    cutouts.mkdir()
    sources = sorted(path for path in night["cutouts"].iterdir() if path.name not in ("edge.fits", "broken.fits"))
    for index in range(1200):
        shutil.copy(sources[index % len(sources)], cutouts / f"c{index:05d}.fits")
    table, output = root / "infer_results.dat", root / "vetting"
    assert call_main(infer_main, "--cutouts", cutouts, "--model", night["model"], "--output", table) == 0
    # --infer may name the folder holding infer_results.dat.
    assert call_main(report_main, *arguments(root, cutouts, night["model"], output, "--no-grad-cam")) == 0
    return output


def scroll_to(driver: Any, position: int) -> None:
    """Scroll the window to a row of the page and wait until the next frame is drawn."""
    driver.execute_async_script(
        """const [position, done] = arguments;
           const body = document.getElementById('body');
           window.scrollTo(0, body.getBoundingClientRect().top + window.scrollY + position * 72 - 200);
           requestAnimationFrame(() => requestAnimationFrame(() => done()));""",
        position,
    )


@pytest.mark.usefixtures("browser_ready")
def test_a_large_night_draws_only_the_rows_in_view_and_loads_only_their_sheets(large_night: Path) -> None:
    with chromium(height=900) as driver:
        requested_urls(driver)
        open_page(driver, large_night)
        assert text_of(driver, "n-total") == "1200"
        first = shown_rows(driver)
        assert len(first) < 40
        sheets = {url.rsplit("/", 1)[1] for url in requested_urls(driver) if "/thumbs/" in url}
        assert sheets == {"sheet_0000.png"}
        scroll_to(driver, 650)
        drawn = driver.execute_script(
            "return [...document.querySelectorAll('#body .row')].map(row => Number(row.dataset.position))"
        )
        assert 650 in drawn
        assert len(drawn) < 40
        sheets = {url.rsplit("/", 1)[1] for url in requested_urls(driver) if "/thumbs/" in url}
        assert "sheet_0006.png" in sheets
        assert sheets <= {"sheet_0005.png", "sheet_0006.png", "sheet_0007.png"}
        # The cursor (row 0) is out of sight: the first key selects a row on screen, and marks nothing.
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).send_keys("r").perform()
        rows = shown_rows(driver)
        assert not [row for row in rows if row["mark"]]
        current = next(row for row in rows if row["current"])
        ActionChains(driver).send_keys("R").perform()  # Caps Lock on: still a mark
        assert next(row for row in shown_rows(driver) if row["file"] == current["file"])["mark"] == "real"


# ---------------------------------------------------------------------------------------------
# An ensemble's night: the spread shown, and "uncertain first"


@pytest.fixture(scope="module")
def ensemble_night(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A night scored by a tiny untrained ensemble, and by one of its members alone; a page of each."""
    from otrain.nets.model import save_model

    root = tmp_path_factory.mktemp("ensemble_night")
    model, members = saved_ensemble(root / "models")
    single = save_model(members[0], root / "single" / "single.keras")
    cutouts = make_tree(root / "cutouts", 7, 7, size=SIZE)
    pages = {}
    for name, scorer in (("ensemble", model), ("single", single)):
        table = root / f"{name}.dat"
        scoring = ("--cutouts", cutouts, "--recursive", "--model", scorer, "--output", table, "--no-tracking")
        assert call_main(infer_main, *scoring) == 0
        pages[name] = root / f"{name}_page"
        assert call_main(report_main, *arguments(table, cutouts, scorer, pages[name], "--no-grad-cam")) == 0
    return {
        "cutouts": cutouts,
        "table": root / "ensemble.dat",
        "page": pages["ensemble"],
        "single_page": pages["single"],
        "model": model,
    }


def table_spreads(table: Path) -> dict[str, float]:
    """file name (relative to the night's folder) -> the table's spread."""
    from astropy.io import ascii as astropy_ascii

    rows = astropy_ascii.read(table, format="commented_header", guess=False)
    return {"/".join(Path(str(row["filename"])).parts[-2:]): float(row["spread"]) for row in rows}


def test_an_ensembles_page_holds_the_spread_of_every_candidate(ensemble_night: dict[str, Path]) -> None:
    spreads = table_spreads(ensemble_night["table"])
    data = page_data(ensemble_night["page"])
    assert data["spread"] is True
    rows = [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
    assert {row["file"]: row["spread"] for row in rows} == pytest.approx(spreads, abs=1e-15)
    assert len(set(spreads.values())) == len(spreads)  # every candidate its own: the order is the spread's
    single = page_data(ensemble_night["single_page"])
    assert single["spread"] is False
    assert all(row[single["columns"].index("spread")] is None for row in single["rows"])


def test_a_spread_that_is_not_a_number_writes_nothing(ensemble_night: dict[str, Path], tmp_path: Path) -> None:
    lines = ensemble_night["table"].read_text().splitlines()
    assert lines[0].endswith(" real spread")
    broken = tmp_path / "broken.dat"
    broken.write_text("\n".join([lines[0], lines[1].rsplit(" ", 1)[0] + " nan", *lines[2:]]) + "\n")
    output = tmp_path / "page"
    arguments_ = arguments(broken, ensemble_night["cutouts"], ensemble_night["model"], output, "--no-grad-cam")
    assert call_main(report_main, *arguments_) == 1
    assert not output.exists()


@pytest.mark.usefixtures("browser_ready")
def test_uncertain_first_puts_the_highest_spread_on_top(ensemble_night: dict[str, Path]) -> None:
    spreads = table_spreads(ensemble_night["table"])
    with chromium(height=2600) as driver:
        open_page(driver, ensemble_night["page"])
        assert driver.find_element("id", "uncertain").is_displayed()
        assert driver.find_element("id", "spread-head").text == "spread"
        driver.find_element("id", "uncertain").click()
        rows = shown_rows(driver)
        assert [row["file"] for row in rows] == sorted(spreads, key=lambda name: -spreads[name])
        assert rows[0]["current"]  # the cursor on the candidate to label first
        assert f"{spreads[rows[0]['file']]:.4f}" in rows[0]["cells"]
        driver.find_element("css selector", "#head > div[data-key=spread]").click()  # then the most certain first
        assert [row["file"] for row in shown_rows(driver)] == sorted(spreads, key=lambda name: spreads[name])
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
        open_page(driver, ensemble_night["single_page"])  # a single model's page: no spread to show
        assert not driver.find_element("id", "uncertain").is_displayed()
        assert driver.execute_script("return document.getElementById('spread-head')") is None
