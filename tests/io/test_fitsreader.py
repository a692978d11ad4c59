"""otrain's own FITS reader against astropy and against files written by CFITSIO (fitsio)."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import fitsio
import numpy as np
import pytest
from astropy.io import fits
from conftest import call_main, pixels, write_gmadet, write_stdpipe
from numpy.testing import assert_array_equal

from otrain.cli.simulate import main as simulate_main
from otrain.data.cutouts import read_cutout
from otrain.errors import DataError
from otrain.io.cutouts import list_cutouts, read_header, read_header_with_astropy, read_pixels
from otrain.io.fitsreader import BLOCK, NotSimpleError, gunzip_content, iter_hdus, open_fits

_COMMENTARY = {"", "COMMENT", "HISTORY"}


def astropy_cards(header: fits.Header) -> dict[str, Any]:
    """A header's values as the reader gives them: upper-cased names, first card wins, None if undefined."""
    cards: dict[str, Any] = {}
    for card in header.cards:
        if card.keyword.upper() not in _COMMENTARY:
            value = None if isinstance(card.value, fits.card.Undefined) else card.value
            cards.setdefault(card.keyword.upper(), value)
    return cards


def assert_reads_like_astropy(path: Path) -> None:
    """Every HDU's cards, data offset and size, then the cutout's metadata and pixels, as astropy reads them."""
    with open_fits(path) as (stream, size, _):
        hdus = list(iter_hdus(stream, size))
    with fits.open(path, memmap=False) as hdul:
        assert len(hdus) == len(hdul), path.name
        for hdu, theirs in zip(hdus, hdul, strict=True):
            info = hdul.fileinfo(hdu.index)
            assert hdu.cards == astropy_cards(theirs.header), (path.name, hdu.index)
            assert hdu.data_offset == info["datLoc"], (path.name, hdu.index)
            assert -(-hdu.data_size // BLOCK) * BLOCK == info["datSpan"], (path.name, hdu.index)
        meta, location = read_header(path)
        assert (meta, location) == read_header_with_astropy(path), path.name
        plane = np.asarray(hdul[location.planes[0].hdu_index].data, dtype=np.float32)
    expected = plane[:, :, np.newaxis] if plane.ndim == 2 else np.moveaxis(plane, 0, -1)
    assert_array_equal(read_pixels(path, location), expected, err_msg=path.name)


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated survey, both conventions, with a gzip copy of every file."""
    out = tmp_path_factory.mktemp("survey")
    size = ("--cutout-size", "16", "--mef-fraction", "0.5")
    assert call_main(simulate_main, "--out", out, "--n-true", 40, "--n-false", 40, "--n-night", 20, *size) == 0
    for path in list_cutouts(out, recursive=True):
        (out / "gz" / path.parent.name).mkdir(parents=True, exist_ok=True)
        (out / "gz" / path.parent.name / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    return out


def test_every_file_of_a_simulated_survey_reads_as_astropy_reads_it(survey: Path) -> None:
    files = list_cutouts(survey, recursive=True)
    assert len(files) == 2 * 100
    conventions = {read_header(path)[0].convention for path in files}
    assert conventions == {"gmadet", "stdpipe"}
    for path in files:
        assert_reads_like_astropy(path)


def test_gzipped_cutouts_read_as_the_same_files_uncompressed(survey: Path) -> None:
    for path in list_cutouts(survey / "gz", recursive=True):
        plain = survey / path.parent.name / path.name.removesuffix(".gz")
        meta, location = read_header(path)
        plain_meta, plain_location = read_header(plain)
        assert meta == plain_meta
        assert location.compressed
        assert location.planes == tuple(replace(plane, compressed=True) for plane in plain_location.planes)
        assert_array_equal(read_pixels(path, location), read_pixels(plain, plain_location))


def test_gzipped_bytes_in_memory_read_as_their_file_and_are_unpacked_once(survey: Path) -> None:
    first, second = list_cutouts(survey / "gz", recursive=True)[:2]
    for path in (first, second):
        content = path.read_bytes()
        meta, location = read_header(path, content=content)
        assert (meta, location) == read_header(path)
        assert_array_equal(read_pixels(path, location, content=content), read_pixels(path, location))
    one, other = first.read_bytes(), second.read_bytes()
    unpacked = gunzip_content(one)
    assert unpacked == gzip.decompress(one)
    assert gunzip_content(one) is unpacked  # the headers, then the pixels: unpacked once
    copy = bytes(bytearray(one))  # equal bytes, another object: unpacked again
    assert gunzip_content(copy) is not unpacked
    assert gunzip_content(copy) == unpacked
    assert gunzip_content(other) == gzip.decompress(other) != unpacked


def _card(text: str) -> bytes:
    return text.ljust(80).encode("ascii")


def _header_file(path: Path, cards: list[str], data: np.ndarray) -> Path:
    """A primary HDU from literal cards, written byte by byte (astropy would normalise them)."""
    head = [f"SIMPLE  = {'T':>20}", f"BITPIX  = {-32:>20}", f"NAXIS   = {2:>20}"]
    head += [f"NAXIS1  = {data.shape[1]:>20}", f"NAXIS2  = {data.shape[0]:>20}", *cards, "END"]
    header = b"".join(_card(card) for card in head)
    header += b" " * (-len(header) % BLOCK)
    raw = data.astype(">f4").tobytes()
    path.write_bytes(header + raw + b"\0" * (-len(raw) % BLOCK))
    return path


def test_card_forms_parse_as_astropy_parses_them(tmp_path: Path) -> None:
    cards = [
        "CANDID  = '00123   '           / a numeric-looking identifier stays text",
        "FILTER  = 'it''s / r'          / quote and slash inside the string",
        "MAG     =               1.85D1 / D exponent",
        "MAGERR  =                  .05",
        "FWHM    = 2.5/free format, no spaces",
        "RA      =                +150. / plus sign, trailing point",
        "DEC     =              -2.5E-1",
        "XPOS    =                 1E3",
        "YPOS    =  12345678901234567890 / beyond 64 bits",
        "EDGE    =                    F",
        "SEEING  =                      / undefined",
        "HIERARCH mag_calib = 17.25 / HIERARCH, lower-case name",
        "HIERARCH ESO DET CHIP = 'ccd 3'",
        "EMPTY   = ''",
        "LEADING = '  x'",
        "COMMENT = 5, commentary whatever columns 9-10 hold",
        "",
        "HISTORY a history line",
        "MAG     =                 99.0 / repeated: the first wins, as in astropy",
    ]
    path = _header_file(tmp_path / "cards.fits", cards, pixels(8))
    with open_fits(path) as (stream, size, _):
        hdu = next(iter_hdus(stream, size))
    assert hdu.cards["FILTER"] == "it's / r"
    assert hdu.cards["MAG"] == 18.5
    assert hdu.cards["MAG_CALIB"] == 17.25
    assert hdu.cards["YPOS"] == 12345678901234567890
    assert_reads_like_astropy(path)
    assert read_header(path)[0].candid == "00123"


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        (["FILE    = 'abc&'", "CONTINUE  'def'"], ("file", "abcdef")),
        (["FILTER  = 'r"], ("filter", "'r")),  # unterminated string: astropy keeps the quote
        (["MAG     =18.5"], r"keyword MAG must be a number, got '=18\.5'"),
        (["MAG     = (1.0, 2.0)"], r"keyword MAG must be a number, got \(1\+2j\)"),
    ],
)
def test_cards_it_leaves_to_astropy(tmp_path: Path, cards: list[str], expected: str | tuple[str, str]) -> None:
    common = ["CANDID  = 7", "MAGERR  = 0.1", "FWHM    = 2.0", "EDGE    = F"]
    path = _header_file(tmp_path / "odd.fits", [*common, *cards], pixels(8))
    with open_fits(path) as (stream, size, _), pytest.raises(NotSimpleError):
        list(iter_hdus(stream, size))
    if isinstance(expected, str):
        for reader in (read_header, read_header_with_astropy):
            with pytest.raises(DataError, match=rf"odd\.fits: {expected}"):
                reader(path)
    else:
        keyword, value = expected
        assert getattr(read_header(path)[0], keyword) == value
        assert read_header(path) == read_header_with_astropy(path)


def test_final_block_without_padding(tmp_path: Path) -> None:
    for name, path in (("g", write_gmadet(tmp_path / "g.fits", pixels(10))), ("m", write_stdpipe(tmp_path / "m.fits"))):
        raw = path.read_bytes()
        with open_fits(path) as (stream, size, _):
            last = list(iter_hdus(stream, size))[-1]
        short = tmp_path / f"{name}_short.fits"
        short.write_bytes(raw[: last.data_offset + last.data_size])
        assert len(short.read_bytes()) % BLOCK != 0
        assert read_header(short) == read_header(path)
        assert_array_equal(read_cutout(short).pixels, read_cutout(path).pixels)


# ---------------------------------------------------------------------------------------------
# Files written by CFITSIO, through fitsio: another writer's layout and card formatting.

_PRIMARY_CARDS = [
    {"name": "NAME", "value": "1234"},
    {"name": "mag_calib", "value": 17.25},  # CFITSIO writes it as HIERARCH MAG_CALIB
    {"name": "mag_calib_err", "value": 0.03},
    {"name": "FWHM", "value": 2.5},
    {"name": "EDGE", "value": False},
    {"name": "X", "value": 100.5},
]
_SCALED = {"BSCALE": 0.5, "BZERO": 10.0, "BLANK": 5}


def _write_cfitsio(path: Path, raw: np.ndarray, *, scaling: dict[str, float], long_file: bool) -> None:
    """An STDPipe-style cutout: metadata-only primary HDU, IMAGE, TEMPLATE, DIFF and MASK extensions."""
    cards = list(_PRIMARY_CARDS)
    if long_file:
        cards.append({"name": "FILE", "value": "survey/night_2024-01-01/" + "x" * 80})  # CONTINUE cards
    with fitsio.FITS(str(path), "rw", clobber=True) as out:
        out.write(None, header=cards)
        out.write(np.zeros_like(raw), extname="IMAGE")
        out.write(np.ones_like(raw), extname="TEMPLATE")
        out.write(raw, extname="DIFF")
        for key, value in scaling.items():
            out[-1].write_key(key, value)
        out[-1].write_key("FILTER", "g")
        out.write(np.zeros(raw.shape, np.uint8), extname="MASK")


@pytest.mark.parametrize(
    ("dtype", "scaling"),
    [
        ("u1", {}),
        ("i2", {}),
        ("i2", _SCALED),
        ("u2", {}),  # CFITSIO stores it as BITPIX 16 with BZERO = 32768
        ("i4", _SCALED),
        ("i8", {}),
        ("f4", {}),
        ("f8", {}),
    ],
)
@pytest.mark.parametrize("long_file", [False, True])
@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"])
def test_files_written_by_cfitsio(
    tmp_path: Path, dtype: str, scaling: dict[str, float], long_file: bool, suffix: str
) -> None:
    raw = (np.arange(12 * 10) % 250).reshape(12, 10).astype(dtype)
    path = tmp_path / f"cutout{suffix}"
    _write_cfitsio(path, raw, scaling=scaling, long_file=long_file)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".fits.gz")

    meta, location = read_header(path)
    assert (meta.convention, meta.candid, meta.mag, meta.magerr, meta.filter) == ("stdpipe", 1234, 17.25, 0.03, "g")
    assert (meta.fwhm, meta.edge, meta.xpos) == (2.5, False, 100.5)
    assert meta.file == (("survey/night_2024-01-01/" + "x" * 80) if long_file else None)
    if long_file:  # CONTINUE cards: astropy reads the file
        with open_fits(path) as (stream, size, _), pytest.raises(NotSimpleError, match="long string"):
            list(iter_hdus(stream, size))
        assert (meta, location) == read_header_with_astropy(path)
    else:
        assert_reads_like_astropy(path)

    expected = raw.astype(np.float64) * scaling.get("BSCALE", 1.0) + scaling.get("BZERO", 0.0)
    if "BLANK" in scaling:
        expected[raw == scaling["BLANK"]] = np.nan
    assert_array_equal(read_pixels(path, location)[:, :, 0], expected.astype(np.float32))
