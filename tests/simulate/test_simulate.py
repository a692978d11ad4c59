"""otrain-simulate: the built-in survey is complete, deterministic, realistic and convertible."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from astropy.io import ascii as astropy_ascii
from astropy.io import fits
from conftest import call_main

from otrain.cli.convert import main as convert_main
from otrain.cli.simulate import main as simulate_main
from otrain.data.cutouts import read_cutout
from otrain.data.datacube import Datacube
from otrain.io.cutouts import list_cutouts, read_header
from otrain.simulate import BOGUS_KINDS, KINDS, REAL_KINDS, Kind, Scene, Site, draw_observation, render_candidate

INFER_KEYWORDS = ("CANDID", "OBJECTID", "RA", "DEC", "FILE", "XPOS", "YPOS", "MAG", "MAGERR", "FWHM", "FWHMPSF", "EDGE")


def simulate(out: Path, *extra: str, n_true: int = 40, n_false: int = 40, n_night: int = 30, size: int = 24) -> int:
    return call_main(
        simulate_main,
        *("--out", out, "--n-true", n_true, "--n-false", n_false, "--n-night", n_night, "--cutout-size", size),
        *extra,
    )


def digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def truth(out: Path) -> list[dict[str, str]]:
    with open(out / "truth.csv", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("survey")
    assert simulate(out, "--mef-fraction", "0.5", n_true=120, n_false=200, n_night=60) == 0
    return out


def test_layout_and_counts(survey: Path) -> None:
    assert len(list_cutouts(survey / "true")) == 120
    assert len(list_cutouts(survey / "false")) == 200
    assert len(list_cutouts(survey / "night")) == 60
    rows = truth(survey)
    assert len(rows) == 380
    assert all((survey / row["path"]).is_file() for row in rows)
    assert {row["set"] for row in rows} == {"true", "false", "night"}
    hidden = [p.name for p in survey.iterdir() if p.name.startswith(".")]
    assert hidden == [".otrain-simulate.json"]  # the marker, and no staging folder left


def test_both_conventions_are_written(survey: Path) -> None:
    conventions = Counter(read_header(path)[0].convention for path in list_cutouts(survey / "true"))
    assert conventions["stdpipe"] > 30
    assert conventions["gmadet"] > 30
    for path in list_cutouts(survey / "false")[:40]:
        with fits.open(path) as hdul:
            if len(hdul) > 1:
                assert [hdu.name for hdu in hdul[1:]] == ["IMAGE", "TEMPLATE", "DIFF", "MASK"]
                assert "mag_calib" in hdul[0].header
                assert hdul[0].data is None
                assert isinstance(hdul[0].header["EDGE"], bool)
            else:
                assert hdul[0].header["EDGE"] in ("True", "False")


def test_every_kind_appears_and_real_ones_reach_below_the_limit(survey: Path) -> None:
    rows = truth(survey)
    kinds = Counter(row["kind"] for row in rows if row["set"] == "false")
    assert set(kinds) == set(BOGUS_KINDS)
    real = [row for row in rows if row["set"] == "true"]
    assert {row["kind"] for row in real} <= {*REAL_KINDS, "masked_real"}
    snr = np.array([float(row["snr_true"]) for row in real])
    fwhm = np.array([float(row["fwhm_psf"]) for row in rows])
    # The classes overlap at the faint end: some real sources are below 5 sigma, a few below 3.
    assert 0.03 < np.mean(snr < 5) < 0.2
    assert np.any(snr < 3)
    assert fwhm.min() >= 1.5
    assert fwhm.max() <= 5.0
    assert fwhm.max() - fwhm.min() > 2.5


def test_night_has_everything_infer_needs(survey: Path) -> None:
    night = list_cutouts(survey / "night")
    for path in night:
        with fits.open(path) as hdul:
            assert len(hdul) == 1
            assert all(key in hdul[0].header for key in INFER_KEYWORDS), path


def test_crossmatch_matches_night_candidates(survey: Path) -> None:
    table = astropy_ascii.read(survey / "night" / "crossmatch.dat", format="commented_header")
    expected = "idx filename Xpos Ypos RA Dec mag filter count_ADU filename2 Nmatches closest_candID all_candIDs"
    assert table.colnames == expected.split()
    night_ids = {read_header(path)[0].candid for path in list_cutouts(survey / "night")}
    detected = [str(value) for value in table["closest_candID"] if str(value) != "None"]
    undetected = [str(value) for value in table["closest_candID"] if str(value) == "None"]
    assert detected
    assert undetected
    assert {int(value) for value in detected} <= night_ids
    injected = [row for row in truth(survey) if row["injected"] == "True"]
    assert len(injected) == len(detected)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    assert simulate(tmp_path / "a", "--seed", "3") == 0
    assert simulate(tmp_path / "b", "--seed", "3") == 0
    assert simulate(tmp_path / "c", "--seed", "4") == 0
    first = digests(tmp_path / "a")
    assert first == digests(tmp_path / "b")
    assert first != digests(tmp_path / "c")


@pytest.mark.slow
def test_workers_do_not_change_the_files(tmp_path: Path) -> None:
    assert simulate(tmp_path / "one", "--workers", "1", n_true=100, n_false=100, n_night=20, size=16) == 0
    assert simulate(tmp_path / "two", "--workers", "2", n_true=100, n_false=100, n_night=20, size=16) == 0
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_refuses_to_overwrite_and_keeps_user_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"
    assert simulate(out, n_true=3, n_false=3, n_night=2) == 0
    (out / "my_notes.txt").write_text("mine")
    (out / "true" / "my_own_cutout.fits").write_text("mine too")
    before = digests(out)
    assert simulate(out, "--seed", "9", n_true=3, n_false=3, n_night=2) == 2
    assert "--out: " in capsys.readouterr().err
    assert digests(out) == before
    assert simulate(out, "--seed", "9", "--overwrite", n_true=3, n_false=3, n_night=2) == 0
    assert (out / "my_notes.txt").read_text() == "mine"
    assert (out / "true" / "my_own_cutout.fits").read_text() == "mine too"
    assert digests(out) != before
    assert len(list((out / "true").iterdir())) == 4


def test_never_replaces_folders_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "real_data"
    (out / "true").mkdir(parents=True)
    (out / "true" / "labelled.fits").write_text("a person sorted this")
    assert simulate(out, "--overwrite", n_true=3, n_false=3, n_night=2) == 2
    assert "that otrain-simulate did not write" in capsys.readouterr().err
    assert [p.name for p in (out / "true").iterdir()] == ["labelled.fits"]


def test_simulated_survey_converts_and_edge_cutouts_are_dropped(survey: Path, tmp_path: Path) -> None:
    assert call_main(convert_main, "--path", tmp_path, "--cube", "sim", "--cutouts", survey, "--frac-true", "-1") == 0
    cube = Datacube.load(tmp_path / "datacube" / "sim.npz")
    rows = truth(survey)
    expected_real = sum(1 for row in rows if row["set"] == "true" and row["edge"] == "False")
    expected_bogus = sum(1 for row in rows if row["set"] == "false" and row["edge"] == "False")
    assert (cube.n_real, cube.n_bogus) == (expected_real, expected_bogus)
    assert cube.cube.shape[1:] == (24, 24, 1)
    assert np.isfinite(cube.cube).all()
    edge_ids = {int(row["candid"]) for row in rows if row["edge"] == "True"}
    assert edge_ids
    assert not edge_ids & set(cube.candids.tolist())


def test_every_simulated_cutout_names_its_object_for_grouped_splits(survey: Path, tmp_path: Path) -> None:
    common = ("--path", tmp_path, "--cube", "sim", "--cutouts", survey, "--frac-true", "-1")
    assert call_main(convert_main, *common, "--group-keyword", "OBJECTID") == 0
    cube = Datacube.load(tmp_path / "datacube" / "sim.npz")
    assert cube.group_keyword == "OBJECTID"
    assert cube.groups is not None
    # One object per cutout (STDPipe and gmadet alike): a grouped split is the split by row.
    assert cube.groups.tolist() == [f"SIM{candid:07d}" for candid in cube.candids.tolist()]


def test_pixels_look_like_their_kind(survey: Path) -> None:
    """Real sources are positive at the centre; dipoles have a strong negative lobe."""
    rows = truth(survey)
    bright_real = [r for r in rows if r["kind"] == "point" and float(r["snr_true"]) > 30]
    dipoles = [r for r in rows if r["kind"] == "dipole"]
    assert bright_real
    assert dipoles
    for row in bright_real:
        image = read_cutout(survey / row["path"]).pixels[:, :, 0]
        centre = image[10:14, 10:14]
        assert centre.max() > 5 * np.std(image[:4, :])
    negative = [read_cutout(survey / r["path"]).pixels.min() for r in dipoles]
    positive = [read_cutout(survey / r["path"]).pixels.max() for r in dipoles]
    assert np.median(np.abs(negative) / np.array(positive)) > 0.3


def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(tmp_path / "x", "--mef-fraction", "2") == 2
    assert "--mef-fraction: must be a probability in [0, 1], got 2.0" in capsys.readouterr().err
    assert simulate(tmp_path / "x", n_true=0, n_false=0, n_night=0) == 2
    assert "at least one must be positive" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def satellite_trail(site: Site, rng: np.random.Generator) -> Scene:
    """A kind the simulator does not have: a bright trail along the whole central row."""
    deposits = site.blank()
    deposits[site.n // 2, :] = 50.0 * site.observation.pixel_sigma
    return Scene(science=site.blank(), reference=site.blank(), deposits=deposits)


def looks_like_a_trail(pixels: np.ndarray) -> bool:
    n = pixels.shape[0]
    return bool(np.median(pixels[n // 2, :]) > 10 * np.std(pixels[:4, :]))


def test_a_new_kind_is_one_function_and_one_table_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    observation = draw_observation(np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown candidate kind 'satellite_trail'"):
        render_candidate("satellite_trail", 24, observation, np.random.default_rng(1))
    assert not looks_like_a_trail(render_candidate("noise_peak", 24, observation, np.random.default_rng(1)).pixels)

    monkeypatch.setitem(KINDS, "satellite_trail", Kind(satellite_trail, real=False, share=0.5))
    candidate = render_candidate("satellite_trail", 24, observation, np.random.default_rng(1))
    assert candidate.kind == "satellite_trail"
    assert looks_like_a_trail(candidate.pixels)
    assert BOGUS_KINDS["satellite_trail"] == 0.5
    assert "satellite_trail" not in REAL_KINDS

    # The survey draws it among the bogus cutouts, in its share (0.5 of 1.5), and labels it bogus.
    assert simulate(tmp_path / "s", "--workers", "1", n_true=10, n_false=60, n_night=0) == 0
    trails = [row for row in truth(tmp_path / "s") if row["kind"] == "satellite_trail"]
    assert 10 <= len(trails) <= 30
    assert {(row["set"], row["label"]) for row in trails} == {("false", "0")}
    assert all(looks_like_a_trail(read_cutout(tmp_path / "s" / row["path"]).pixels[:, :, 0]) for row in trails)


def test_the_night_as_alert_packets_holds_every_candidate_not_at_an_edge(tmp_path: Path) -> None:
    from otrain.io.alerts import Alert, iter_alerts, read_alert
    from otrain.io.cutouts import read_pixels

    out = tmp_path / "survey"
    assert simulate(out, "--night-packets", "--planes", "IMAGE", "TEMPLATE", "DIFF", n_true=2, n_false=2) == 0
    archive = out / "night_alerts.tar.gz"
    night = {int(row["candid"]): row for row in truth(out) if row["set"] == "night"}
    alerts = list(iter_alerts(archive))
    assert all(isinstance(alert, Alert) for alert in alerts)
    expected = sorted(candid for candid, row in night.items() if row["edge"] == "False")
    assert 0 < len(expected) < len(night)  # the night has EDGE candidates, and they are left out
    assert sorted(alert.meta.candid for alert in alerts) == expected
    for alert in alerts[:5]:
        path = out / night[alert.meta.candid]["path"]
        meta, location = read_header(path, None, "OBJECTID")
        packet_meta, pixels = read_alert(alert, ("IMAGE", "TEMPLATE", "DIFF"))
        np.testing.assert_array_equal(pixels, read_pixels(path, location))
        assert (packet_meta.group, packet_meta.ra, packet_meta.edge) == (meta.group, meta.ra, False)
        assert packet_meta.mag == pytest.approx(meta.mag, rel=1e-6)  # ZTF's schema keeps magpsf as a float
    # the same survey again: the archive byte for byte; without the option, no archive and the old one removed
    first = archive.read_bytes()
    assert (
        simulate(out, "--night-packets", "--overwrite", "--planes", "IMAGE", "TEMPLATE", "DIFF", n_true=2, n_false=2)
        == 0
    )
    assert archive.read_bytes() == first
    assert simulate(out, "--overwrite", n_true=2, n_false=2) == 0
    assert not archive.exists()
    archive.write_bytes(b"the user's own night")  # not the survey's (its marker says no packets): kept
    assert simulate(out, "--overwrite", n_true=2, n_false=2) == 0
    assert archive.read_bytes() == b"the user's own night"
