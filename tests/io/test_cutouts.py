"""Reading one cutout: both FITS conventions, EDGE, 3-D cubes, NaN, crop, bad files."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import BIN, pixels, write_gmadet, write_stdpipe
from numpy.testing import assert_allclose, assert_array_equal

from otrain.data.cutouts import TRAINING_KEYWORDS, crop_center, read_cutout, require_keywords
from otrain.errors import DataError
from otrain.io.cutouts import list_cutouts, read_header, read_header_with_astropy


def test_gmadet_cutout_pixels_and_keywords(tmp_path: Path) -> None:
    data = pixels(20)
    path = write_gmadet(tmp_path / "a.fits", data, CANDID=123, MAG=19.25, FILTER="g")
    cutout = read_cutout(path)
    assert cutout.pixels.dtype == np.float32
    assert cutout.pixels.shape == (20, 20, 1)
    assert_array_equal(cutout.pixels[:, :, 0], data)
    meta = cutout.meta
    assert meta.convention == "gmadet"
    assert (meta.candid, meta.mag, meta.magerr, meta.filter, meta.fwhm) == (123, 19.25, 0.05, "g", 2.5)
    assert (meta.ra, meta.dec, meta.file, meta.xpos, meta.ypos, meta.fwhmpsf) == (
        150.1,
        2.2,
        "image_001.fits",
        100.5,
        200.25,
        2.4,
    )
    assert meta.edge is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("True", True), ("False", False), (True, True), (False, False), ("T", True), ("false", False)],
)
def test_edge_as_string_or_logical_means_the_same(tmp_path: Path, value: object, expected: bool) -> None:
    path = write_gmadet(tmp_path / "e.fits", EDGE=value)
    assert read_header(path)[0].edge is expected
    assert read_header_with_astropy(path)[0].edge is expected


def test_edge_with_another_value_is_an_error(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "e.fits", EDGE="maybe")
    with pytest.raises(DataError, match=r"e\.fits: keyword EDGE must be True or False"):
        read_header(path)


def test_stdpipe_cutout_uses_diff_and_fallbacks(tmp_path: Path) -> None:
    data = pixels(16, seed=3)
    path = write_stdpipe(tmp_path / "s.fits", data, diff_filter="i")
    cutout = read_cutout(path)
    assert_array_equal(cutout.pixels[:, :, 0], data)
    meta = cutout.meta
    assert meta.convention == "stdpipe"
    assert meta.mag == 17.25  # HIERARCH mag_calib wins over MAG
    assert meta.magerr == 0.03  # HIERARCH mag_calib_err wins over MAGERR
    assert meta.candid == 42  # from NAME, as a number
    assert meta.filter == "i"  # from the DIFF extension
    assert meta.edge is None


def test_stdpipe_fallbacks_when_keywords_are_absent(tmp_path: Path) -> None:
    path = write_stdpipe(tmp_path / "s.fits", mag_calib=None, mag_calib_err=None, NAME="cand-7", CANDID=None)
    meta = read_header(path)[0]
    assert (meta.mag, meta.magerr) == (-8.0, 0.1)  # plain MAG, MAGERR
    assert meta.candid == "cand-7"
    assert meta.filter == "Clear"  # the original's last resort


def test_stdpipe_pixels_come_from_diff_even_when_primary_has_edge_and_data(tmp_path: Path) -> None:
    data = pixels(16, seed=5)
    path = write_stdpipe(tmp_path / "s.fits", data, primary_data=pixels(16, value=-1.0), EDGE=False)
    cutout = read_cutout(path)
    assert_array_equal(cutout.pixels[:, :, 0], data)
    assert cutout.meta.edge is False


def test_multi_extension_without_diff_is_an_error(tmp_path: Path) -> None:
    path = write_stdpipe(tmp_path / "nodiff.fits", with_diff=False)
    with pytest.raises(DataError, match=r"nodiff\.fits: multi-extension cutout has no .*EXTNAME=DIFF"):
        read_header(path)


def test_three_dimensional_cutouts_become_channels_last_and_crop(tmp_path: Path) -> None:
    cube = np.stack([pixels(12, seed=s) for s in range(3)])  # (C, H, W), the FITS way
    path = write_gmadet(tmp_path / "rgb.fits", cube)
    cutout = read_cutout(path, cutout_size=8)
    assert cutout.pixels.shape == (8, 8, 3)
    for channel in range(3):
        assert_array_equal(cutout.pixels[:, :, channel], cube[channel, 2:10, 2:10])


def test_centre_crop_matches_the_original_formula() -> None:
    image = np.arange(15 * 15, dtype=np.float32).reshape(15, 15, 1)
    cropped = crop_center(image, 6)
    start = 15 // 2 - 6 // 2
    assert_array_equal(cropped, image[start : start + 6, start : start + 6])
    assert crop_center(image, -1) is image


def test_cutout_smaller_than_crop_is_an_error(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "small.fits", pixels(10))
    with pytest.raises(DataError, match=r"small\.fits: cutout is 10x10 pixels, smaller than --cutout-size 16"):
        read_cutout(path, cutout_size=16)


def test_non_finite_pixels_are_replaced_by_the_median_and_counted(tmp_path: Path) -> None:
    data = np.arange(16, dtype=np.float32).reshape(4, 4)
    data[0, 0], data[1, 1], data[2, 2] = np.nan, np.inf, -np.inf
    cutout = read_cutout(write_gmadet(tmp_path / "nan.fits", data))
    assert cutout.n_replaced == 3
    assert np.isfinite(cutout.pixels).all()
    finite = data[np.isfinite(data)]
    assert_allclose(cutout.pixels[0, 0, 0], np.median(finite))


def test_all_nan_cutout_is_an_error(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "allnan.fits", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(DataError, match=r"allnan\.fits: cutout has no finite pixel"):
        read_cutout(path)


def test_scaled_integer_data_and_blank(tmp_path: Path) -> None:
    raw = np.arange(64, dtype=np.int16).reshape(8, 8)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 10.0
    hdu.header["BLANK"] = 5
    for key, value in {"CANDID": 1, "MAG": 1.0, "MAGERR": 0.1, "FILTER": "r", "FWHM": 2.0, "EDGE": "False"}.items():
        hdu.header[key] = value
    path = tmp_path / "int.fits"
    fits.HDUList([hdu]).writeto(path)
    cutout = read_cutout(path)
    expected = raw.astype(np.float64) * 0.5 + 10.0
    expected[raw == 5] = np.median(expected[raw != 5])
    assert_allclose(cutout.pixels[:, :, 0], expected)
    assert cutout.n_replaced == 1


@pytest.mark.parametrize("suffix", [".fit", ".fits.gz", ".FITS"])
def test_other_suffixes_are_read(tmp_path: Path, suffix: str) -> None:
    plain = write_gmadet(tmp_path / "x.fits", pixels(8, seed=1))
    target = tmp_path / f"y{suffix}"
    if suffix.endswith(".gz"):
        with open(plain, "rb") as source, gzip.open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
    else:
        shutil.copy(plain, target)
    assert_array_equal(read_cutout(target).pixels, read_cutout(plain).pixels)
    assert read_cutout(target).meta == read_cutout(plain).meta


def test_list_cutouts_is_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    for name in ("b.fits", "a.fit", "c.fits.gz", "notes.txt", "d.fits.bak"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.fits").write_bytes(b"")
    assert [p.name for p in list_cutouts(tmp_path)] == ["a.fit", "b.fits", "c.fits.gz"]
    assert [p.name for p in list_cutouts(tmp_path, recursive=True)][-1] == "e.fits"


def test_not_a_fits_file(tmp_path: Path) -> None:
    path = tmp_path / "text.fits"
    path.write_text("this is not FITS\n" * 300)
    with pytest.raises(DataError, match=r"text\.fits: not a readable FITS file"):
        read_header(path)


def test_truncated_fits_file(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "cut.fits", pixels(32))
    path.write_bytes(path.read_bytes()[:3500])
    with pytest.raises(DataError, match=r"cut\.fits: truncated FITS file"):
        read_cutout(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "head.fits", pixels(32))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"head\.fits: not a readable FITS file"):
        read_header(path)


def test_missing_mandatory_keyword_names_file_and_keyword(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "nomag.fits", MAG=None)
    meta = read_header(path)[0]
    assert meta.mag is None
    with pytest.raises(DataError, match=r"nomag\.fits: missing mandatory keyword MAG \(needed for training\)"):
        require_keywords(meta, path, TRAINING_KEYWORDS, "training")


def test_non_numeric_keyword_is_an_error(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "badmag.fits", MAG="bright")
    with pytest.raises(DataError, match=r"badmag\.fits: keyword MAG must be a number, got 'bright'"):
        read_header(path)


def test_fast_reader_agrees_with_astropy(tmp_path: Path) -> None:
    long_name = "x" * 100  # a CONTINUE card: the fast reader hands over to astropy
    cases = [
        write_gmadet(tmp_path / "plain.fits", pixels(16), FILTER="o'brien", MAG=-1.5e-3),
        write_gmadet(tmp_path / "long.fits", pixels(16), FILE=long_name),
        write_gmadet(tmp_path / "cube.fits", np.stack([pixels(8), pixels(8, seed=2)])),
        write_stdpipe(tmp_path / "mef.fits"),
    ]
    for path in cases:
        assert read_header(path) == read_header_with_astropy(path), path.name
    assert read_header(cases[1])[0].file == long_name
    assert read_header(cases[0])[0].filter == "o'brien"


def test_multi_extension_with_a_table_and_a_compressed_diff(tmp_path: Path) -> None:
    data = pixels(16, seed=11)
    primary = fits.PrimaryHDU()
    for key, value in {"CANDID": 5, "MAG": 18.0, "MAGERR": 0.1, "FWHM": 2.0, "FILTER": "r"}.items():
        primary.header[key] = value
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))], name="CAT")
    plain = tmp_path / "table.fits"
    fits.HDUList([primary, table, fits.ImageHDU(data, name="DIFF")]).writeto(plain)
    compressed = tmp_path / "tiles.fits"
    fits.HDUList([primary, fits.CompImageHDU(data, name="DIFF", compression_type="GZIP_1")]).writeto(compressed)
    for path in (plain, compressed):
        assert read_header(path) == read_header_with_astropy(path), path.name
        cutout = read_cutout(path)
        assert cutout.meta.convention == "stdpipe"
        # Tile compression quantises floats: compare with what astropy itself decompresses.
        assert_array_equal(cutout.pixels[:, :, 0], fits.getdata(path, extname="DIFF"))
    assert_array_equal(read_cutout(plain).pixels[:, :, 0], data)


def test_truncated_multi_extension_file(tmp_path: Path) -> None:
    path = write_stdpipe(tmp_path / "cut.fits", pixels(32))
    path.write_bytes(path.read_bytes()[: 8 * 2880 + 1000])  # into the DIFF data
    with pytest.raises(DataError, match=r"cut\.fits: (truncated FITS file|not a readable FITS file)"):
        read_cutout(path)


def test_non_standard_cards_are_left_to_astropy(tmp_path: Path) -> None:
    path = write_gmadet(tmp_path / "odd.fits", pixels(8))
    raw = bytearray(path.read_bytes())
    start = raw.index(b"MAG     = ")
    raw[start : start + 80] = b"MAG     =18.5".ljust(80)
    path.write_bytes(bytes(raw))
    outcomes = []
    for reader in (read_header, read_header_with_astropy):
        with pytest.raises(DataError) as error:
            reader(path)
        outcomes.append(str(error.value))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    ("writer", "cut", "expected"),
    [
        (write_gmadet, 1000, "not a readable FITS file"),  # in the header
        (write_gmadet, 2880, "truncated FITS file"),  # at the end of the header
        (write_gmadet, 3500, "truncated FITS file"),
        (write_stdpipe, 8 * 2880 + 1000, "truncated FITS file"),  # in the IMAGE extension, before DIFF
    ],
)
def test_truncated_gzipped_cutout_reports_what_the_uncompressed_one_reports(
    tmp_path: Path, writer: Callable[..., Path], cut: int, expected: str
) -> None:
    plain = tmp_path / "cut.fits"
    plain.write_bytes(writer(tmp_path / "whole.fits", pixels(32)).read_bytes()[:cut])
    packed = tmp_path / "cut.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    messages = []
    for path in (plain, packed):
        with pytest.raises(DataError) as error:
            read_cutout(path)
        messages.append(str(error.value).replace(str(path), "<file>"))
    assert messages[0] == messages[1]
    assert messages[1].startswith(f"<file>: {expected}")


def test_damaged_gzip_stream_is_not_a_readable_fits_file(tmp_path: Path) -> None:
    packed = gzip.compress(write_gmadet(tmp_path / "x.fits", pixels(32)).read_bytes())
    path = tmp_path / "damaged.fits.gz"
    path.write_bytes(packed[: len(packed) // 3])
    with pytest.raises(DataError, match=r"damaged\.fits\.gz: not a readable FITS file"):
        read_cutout(path)


def test_a_gzipped_cutout_replaced_between_two_reads_is_read_anew(tmp_path: Path) -> None:
    path = tmp_path / "c.fits.gz"
    for seed, candid in ((1, 11), (2, 22)):
        data = pixels(16, seed=seed)
        packed = gzip.compress(write_gmadet(tmp_path / f"{seed}.fits", data, CANDID=candid).read_bytes())
        staged = tmp_path / "staged.gz"
        staged.write_bytes(packed)
        staged.replace(path)
        cutout = read_cutout(path)
        assert cutout.meta.candid == candid
        assert_array_equal(cutout.pixels[:, :, 0], data)


def _without_root_override() -> list[str]:
    """A prefix under which permissions hold even for root (CI runs as root): drop the override capabilities."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): a folder's permissions cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_list_cutouts_keeps_its_order_and_passes_over_folders_and_other_files(tmp_path: Path) -> None:
    for name in ("b.fits", "a.FIT", "c.fits.gz", "sub/d.fits", "notes.txt"):
        write_gmadet(tmp_path / name) if name != "notes.txt" else (tmp_path / name).write_text("mine")
    (tmp_path / "folder.fits").mkdir()
    (tmp_path / "link.fits").symlink_to(tmp_path / "b.fits")
    (tmp_path / "dangling.fits").symlink_to(tmp_path / "nowhere.fits")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)  # not followed
    names = ["a.FIT", "b.fits", "c.fits.gz", "link.fits"]
    assert list_cutouts(tmp_path) == [tmp_path / name for name in names]
    assert list_cutouts(tmp_path, recursive=True) == [tmp_path / name for name in (*names, "sub/d.fits")]


@pytest.mark.parametrize(("locked", "recursive"), [(".", False), (".", True), ("sub", True)])
def test_a_folder_that_cannot_be_read_is_said_so_not_empty(
    tmp_path: Path, trained: Path, locked: str, recursive: bool
) -> None:
    """otrain-pack and otrain-infer on a folder (or, with --recursive, a sub-folder) without read permission."""
    night = tmp_path / "night"
    write_gmadet(night / "a.fits", pixels(32))
    write_gmadet(night / "sub" / "b.fits", pixels(32))
    folder = (night / locked).resolve()
    folder.chmod(0o300)  # writable and searchable, not readable: its files cannot be listed
    commands = {
        "otrain-pack": ["--output", str(tmp_path / "packed")],
        "otrain-infer": ["--model", str(trained / "tiny.keras"), "--output", str(tmp_path / "scores.dat")],
    }
    try:
        for command, options in commands.items():
            result = subprocess.run(
                [
                    *_without_root_override(),
                    *(str(BIN / command), "--cutouts", str(night), *options),
                    *(["--recursive"] if recursive else []),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 1, result.stderr
            assert result.stderr == (
                f"{command}: error: {folder if locked == 'sub' else night}: cannot read the folder (Permission "
                "denied); its cutouts would be missed\n"
            )
    finally:
        folder.chmod(0o755)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["night"]  # nothing written
