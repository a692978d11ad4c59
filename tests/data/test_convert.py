"""otrain-convert end to end: real FITS trees in, a real .npz out, every bad input refused."""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import call_main, files_under, make_tree, pixels, write_gmadet, write_stdpipe
from numpy.testing import assert_array_equal

from otrain.cli.convert import main as convert_main
from otrain.data.datacube import Datacube


def convert(tree: Path, out: Path, *extra: str) -> int:
    return call_main(convert_main, "--path", out, "--cube", "cube", "--cutouts", tree, *extra)


def test_both_conventions_in_one_cube(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "cutouts"
    write_gmadet(tree / "true" / "g1.fits", pixels(16, seed=1), CANDID=11, MAG=18.0)
    write_stdpipe(tree / "true" / "s1.fits", pixels(16, seed=2), NAME="12", EDGE=False)
    write_gmadet(tree / "false" / "g2.fits", pixels(16, seed=3), CANDID=21, FILTER="g")
    write_stdpipe(tree / "false" / "s2.fits", pixels(16, seed=4), NAME="22", diff_filter="i")
    assert convert(tree, tmp_path / "out") == 0
    cube = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz")
    assert cube.cube.shape == (4, 16, 16, 1)
    assert_array_equal(cube.labels, [1, 1, 0, 0])
    assert_array_equal(cube.candids, [11, 12, 21, 22])
    assert cube.candids.dtype == np.int64
    assert_array_equal(cube.mags, [18.0, 17.25, 18.5, 17.25])
    assert list(cube.filters) == ["r", "Clear", "g", "i"]
    assert_array_equal(cube.cube[1, :, :, 0], pixels(16, seed=2))
    out = capsys.readouterr().out
    assert "written: " + str(tmp_path / "out" / "datacube" / "cube.npz") in out
    assert "4 cutouts of 16x16x1 (2 real, 2 bogus)" in out


@pytest.mark.parametrize("logical", [False, True])
def test_edge_cutouts_are_rejected_before_balancing(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], logical: bool
) -> None:
    tree = tree_factory(30, 20, edge_true=5, edge_false=2, logical_edge=logical)
    assert convert(tree, tmp_path / "out") == 0
    cube = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz")
    # 25 usable real, 18 usable bogus: 18 of each, none of them EDGE.
    assert (cube.n_real, cube.n_bogus) == (18, 18)
    assert not {10_000, 10_001, 10_002, 10_003, 10_004, 0, 1} & set(cube.candids.tolist())
    out = capsys.readouterr().out
    assert "true:  30 files, 18 kept; rejected: 5 EDGE, 0 bad, 7 by balancing" in out
    assert "false: 20 files, 18 kept; rejected: 2 EDGE, 0 bad, 0 by balancing" in out


@pytest.mark.parametrize(
    ("frac", "expected"), [("0.25", (8, 24)), ("0.75", (36, 12)), ("0.5", (24, 24)), ("-1", (40, 24))]
)
def test_fractions_are_honoured_exactly(
    tree_factory: Callable[..., Path], tmp_path: Path, frac: str, expected: tuple[int, int]
) -> None:
    tree = tree_factory(40, 24)
    assert convert(tree, tmp_path / "out", "--frac-true", frac) == 0
    cube = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz")
    assert (cube.n_real, cube.n_bogus) == expected


def test_documented_spellings_are_accepted(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    tree = tree_factory(10, 10)
    status = call_main(
        convert_main, "--path-datacube", tmp_path / "o", "--cube", "c", "--cutouts", tree, "--frac_true", "0.5"
    )
    assert status == 0
    assert (tmp_path / "o" / "datacube" / "c.npz").is_file()


def test_same_seed_same_bytes_other_seed_other_selection(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    tree = tree_factory(30, 10)
    outputs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert convert(tree, tmp_path / name, "--seed", seed) == 0
        outputs.append((tmp_path / name / "datacube" / "cube.npz").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_crop_and_nan_replacement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "cutouts"
    data = pixels(20, seed=9)
    data[10, 10] = np.nan
    write_gmadet(tree / "true" / "a.fits", data)
    write_gmadet(tree / "false" / "b.fits", pixels(24, seed=8))
    assert convert(tree, tmp_path / "out", "--cutout-size", "8") == 0
    cube = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz")
    assert cube.cube.shape == (2, 8, 8, 1)
    assert np.isfinite(cube.cube).all()
    assert_array_equal(cube.cube[1, :, :, 0], pixels(24, seed=8)[8:16, 8:16])
    assert "non-finite pixels replaced: 1 in 1 cutouts" in capsys.readouterr().out


@pytest.mark.slow
def test_parallel_and_sequential_reads_give_the_same_cube(tree_factory: Callable[..., Path], tmp_path: Path) -> None:
    tree = tree_factory(130, 120, edge_true=3)
    assert convert(tree, tmp_path / "one", "--workers", "1") == 0
    assert convert(tree, tmp_path / "two", "--workers", "2") == 0
    one = (tmp_path / "one" / "datacube" / "cube.npz").read_bytes()
    assert one == (tmp_path / "two" / "datacube" / "cube.npz").read_bytes()


def test_existing_cube_is_kept_unless_overwrite(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(6, 6)
    target = tmp_path / "out" / "datacube" / "cube.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious")
    assert convert(tree, tmp_path / "out") == 2
    assert "--cube: " in capsys.readouterr().err
    assert target.read_bytes() == b"precious"
    assert convert(tree, tmp_path / "out", "--overwrite") == 0
    assert len(Datacube.load(target)) == 12


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line, exit 2 for options and 1 for data, and no .npz left behind.


def assert_refused(tmp_path: Path, status: int, expected_status: int, err: str, *fragments: str) -> None:
    assert status == expected_status
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert lines, err
    assert lines[-1].startswith("otrain-convert: error: ")
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert not [path for path in files_under(tmp_path) if ".npz" in path.name]


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--frac-true", "0", "--frac-true: must be a fraction in (0, 1)"),
        ("--frac-true", "1.5", "--frac-true: must be a fraction in (0, 1)"),
        ("--frac-true", "abc", "--frac-true: Input should be a valid number"),
        ("--cutout-size", "0", "--cutout-size: must be a positive number of pixels, or -1"),
        ("--workers", "0", "--workers: must be a positive whole number"),
    ],
)
def test_bad_option_values(
    tree_factory: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    fragment: str,
) -> None:
    tree = tree_factory(4, 4)
    status = convert(tree, tmp_path / "out", option, value)
    assert_refused(tmp_path, status, 2, capsys.readouterr().err, fragment)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(4, 4)
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = convert(tree, blocker / "out")
    assert_refused(tmp_path, status, 2, capsys.readouterr().err, "--path: cannot create folder", "is not a folder")
    status = convert(tree, Path("/proc/otrain-out"))
    assert_refused(tmp_path, status, 2, capsys.readouterr().err, "--path: cannot write in '/proc'")


def test_missing_and_empty_class_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "cutouts"
    write_gmadet(tree / "true" / "a.fits")
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, str(tree / "false"), "does not exist")
    (tree / "false").mkdir()
    (tree / "false" / "readme.txt").write_text("no cutouts here")
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, str(tree / "false"), "no cutout files")


def test_missing_cutouts_folder_is_an_option_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = convert(tmp_path / "nowhere", tmp_path / "out")
    assert_refused(tmp_path, status, 2, capsys.readouterr().err, "--cutouts: folder", "does not exist")


def test_only_one_usable_class(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(5, 3, edge_false=3)
    status = convert(tree, tmp_path / "out")
    assert_refused(
        tmp_path, status, 1, capsys.readouterr().err, "false: no usable cutout (3 files: 3 flagged EDGE, 0 bad)"
    )


@pytest.mark.parametrize(
    ("maker", "fragment"),
    [
        (lambda path: path.write_text("plain text, not FITS\n" * 200), "not a readable FITS file"),
        (lambda path: path.write_bytes(write_gmadet(path, pixels(32)).read_bytes()[:4000]), "truncated FITS file"),
        (lambda path: write_stdpipe(path, with_diff=False), "no image extension with EXTNAME=DIFF"),
        (lambda path: write_gmadet(path, MAGERR=None), "missing mandatory keyword MAGERR"),
        (lambda path: write_gmadet(path, EDGE=None), "missing mandatory keyword EDGE"),
        (lambda path: write_gmadet(path, CANDID=None), "missing mandatory keyword CANDID"),
    ],
    ids=["not-fits", "truncated", "mef-without-diff", "no-magerr", "no-edge", "no-candid"],
)
def test_bad_files_are_errors_or_skipped_on_request(
    tree_factory: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    maker: Callable[[Path], object],
    fragment: str,
) -> None:
    tree = tree_factory(6, 6)
    bad = tree / "false" / "zz_bad.fits"
    maker(bad)
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, str(bad), fragment, "--skip-bad-files")
    assert convert(tree, tmp_path / "out", "--skip-bad-files") == 0
    captured = capsys.readouterr()
    assert f"otrain-convert: warning: skipped: {bad}" in captured.err
    assert "false: 7 files, 6 kept; rejected: 0 EDGE, 1 bad" in captured.out


def test_every_bad_file_is_reported(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(4, 4)
    for name in ("x1.fits", "x2.fits", "x3.fits"):
        (tree / "true" / name).write_text("junk" * 1000)
    status = convert(tree, tmp_path / "out")
    err = capsys.readouterr().err
    assert_refused(tmp_path, status, 1, err, "3 bad cutouts, the first:")
    assert all(name in err for name in ("x1.fits", "x2.fits", "x3.fits"))


def test_cutout_smaller_than_cutout_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "cutouts", 3, 3, size=12)
    status = convert(tree, tmp_path / "out", "--cutout-size", "16")
    assert_refused(
        tmp_path, status, 1, capsys.readouterr().err, "cutout is 12x12 pixels, smaller than --cutout-size 16"
    )


def test_mixed_sizes_need_a_cutout_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path / "cutouts", 3, 3, size=16)
    write_gmadet(tree / "false" / "big.fits", pixels(20))
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, "mixed sizes", "--cutout-size")
    assert convert(tree, tmp_path / "out", "--cutout-size", "16") == 0
    assert Datacube.load(tmp_path / "out" / "datacube" / "cube.npz").cube.shape == (6, 16, 16, 1)


def test_nothing_partial_is_left_when_writing_fails(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(4, 4)
    out = tmp_path / "out"
    (out / "datacube" / "cube.npz").mkdir(parents=True)  # the cube's name is taken by a folder
    status = convert(tree, out, "--overwrite")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, "cannot write the datacube")
    assert sorted(os.listdir(out / "datacube")) == ["cube.npz"]


def test_compressed_fit_and_three_dimensional_cutouts(tmp_path: Path) -> None:
    tree = tmp_path / "cutouts"
    cube = np.stack([pixels(12, seed=1), pixels(12, seed=2)])
    plain = write_gmadet(tmp_path / "plain.fits", cube, CANDID=5)
    (tree / "true").mkdir(parents=True)
    with open(plain, "rb") as source, gzip.open(tree / "true" / "a.fits.gz", "wb") as sink:
        shutil.copyfileobj(source, sink)
    write_gmadet(tree / "false" / "b.fit", np.stack([pixels(12, seed=3), pixels(12, seed=4)]), CANDID=6)
    assert convert(tree, tmp_path / "out", "--cutout-size", "8") == 0
    result = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz")
    assert result.cube.shape == (2, 8, 8, 2)
    assert_array_equal(result.cube[0, :, :, 1], cube[1, 2:10, 2:10])


def test_logical_edge_in_multi_extension_files_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "cutouts"
    write_stdpipe(tree / "true" / "edge.fits", EDGE=True, NAME="1")
    write_stdpipe(tree / "true" / "inside.fits", EDGE=False, NAME="2")
    write_gmadet(tree / "false" / "b.fits", CANDID=3)
    assert convert(tree, tmp_path / "out") == 0
    assert_array_equal(Datacube.load(tmp_path / "out" / "datacube" / "cube.npz").candids, [2, 3])
    assert "true:  2 files, 1 kept; rejected: 1 EDGE" in capsys.readouterr().out


def test_identifiers_that_are_not_numbers_make_a_text_column(tmp_path: Path) -> None:
    tree = tmp_path / "cutouts"
    write_gmadet(tree / "true" / "a.fits", CANDID=7)
    write_gmadet(tree / "true" / "b.fits", CANDID="00123")
    write_gmadet(tree / "false" / "c.fits", CANDID=99999999999999999999)
    write_gmadet(tree / "false" / "d.fits", CANDID="SN2024abc")
    assert convert(tree, tmp_path / "out") == 0
    candids = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz").candids
    assert candids.dtype.kind == "U"
    assert list(candids) == ["7", "00123", "99999999999999999999", "SN2024abc"]


def test_fraction_that_empties_a_class(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(10, 10)
    status = convert(tree, tmp_path / "out", "--frac-true", "0.01")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, "--frac-true 0.01 keeps no true cutout")


def test_files_failing_at_the_pixel_stage_are_replaced_when_skipped(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(4, 8)
    for index in range(3):
        write_gmadet(tree / "true" / f"nan{index}.fits", np.full((16, 16), np.nan, np.float32), CANDID=900 + index)
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, "cutout has no finite pixel")
    assert convert(tree, tmp_path / "out", "--skip-bad-files") == 0
    cube = Datacube.load(tmp_path / "out" / "datacube" / "cube.npz")
    assert (cube.n_real, cube.n_bogus) == (4, 4)
    assert "true:  7 files, 4 kept; rejected: 0 EDGE, 3 bad" in capsys.readouterr().out


def test_corrupt_compressed_file_is_one_line(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(3, 3)
    plain = write_gmadet(tmp_path / "p.fits", pixels(16))
    packed = gzip.compress(plain.read_bytes())
    (tree / "false" / "broken.fits.gz").write_bytes(packed[:30] + b"\x00" * 40 + packed[70:])
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 1, capsys.readouterr().err, "broken.fits.gz")
    (tree / "false" / "renamed.fits").write_bytes(packed)  # gzip content under a plain name
    (tree / "false" / "broken.fits.gz").unlink()
    assert convert(tree, tmp_path / "out") == 0


def test_output_folder_taken_by_a_file_is_an_option_error(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = tree_factory(3, 3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "datacube").write_text("a file where the folder goes")
    status = convert(tree, tmp_path / "out")
    assert_refused(tmp_path, status, 2, capsys.readouterr().err, "--path: cannot create folder")


def test_one_run_lists_every_bad_file_whatever_stage_finds_it(
    tree_factory: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken header and an all-NaN cutout (found only when its pixels are read) in one report, and
    an all-NaN cutout that balancing would not have selected too."""
    tree = tree_factory(4, 20)
    (tree / "true" / "broken.fits").write_text("junk" * 1000)
    all_nan = np.full((16, 16), np.nan, np.float32)
    write_gmadet(tree / "false" / "allnan.fits", all_nan, CANDID=901)
    status = convert(tree, tmp_path / "out")
    err = capsys.readouterr().err
    assert_refused(tmp_path, status, 1, err, "2 bad cutouts, the first:")
    assert "broken.fits" in err
    assert "allnan.fits: cutout has no finite pixel" in err
    # Without the broken header, the all-NaN bogus cutout is one of 21 bogus files of which only
    # 4 are selected: it is reported whether or not the seed selects it.
    (tree / "true" / "broken.fits").unlink()
    for seed in ("1", "2", "3"):
        status = convert(tree, tmp_path / "out", "--seed", seed)
        assert_refused(tmp_path, status, 1, capsys.readouterr().err, "allnan.fits: cutout has no finite pixel")


def test_staging_left_by_a_killed_conversion_is_removed_by_the_next(
    tree_factory: Callable[..., Path], tmp_path: Path
) -> None:
    import socket
    import subprocess
    import sys

    tree = tree_factory(4, 4)
    folder = tmp_path / "out" / "datacube"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = folder / f".cube.npz.{int(dead.stdout)}@{host}.abcd1234.partial"
    live = folder / f".cube.npz.{os.getpid()}@{host}.efgh5678.partial"
    other_host = folder / f".cube.npz.{int(dead.stdout)}@elsewhere.ijkl9012.partial"
    for staging in (stale, live, other_host):
        staging.mkdir()
        (staging / "cube.npz").write_bytes(b"half a cube")
    assert convert(tree, tmp_path / "out") == 0
    assert not stale.exists(), "the staging folder of a dead process is removed"
    assert live.is_dir(), "a live process's staging folder is left alone"
    assert other_host.is_dir(), "another host's process cannot be checked: its folder is left alone"
    assert len(Datacube.load(folder / "cube.npz")) == 8
