"""Which reader reads which cutout: otrain's fast FITS reader, or astropy when it declines the file.

The other tests prove both readers give the same answers; these prove the choice itself, on real
files written with astropy (or byte by byte where astropy would normalise them): plain cutouts of
both conventions, gzipped or not, go through the fast reader alone, and every feature it leaves
aside goes to astropy. A file that cannot be opened at all goes to neither.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import pixels, write_gmadet, write_stdpipe

import otrain.io.cutouts
from otrain.errors import DataError
from otrain.io.cutouts import read_header, read_header_with_astropy, read_pixels
from otrain.io.fitsreader import BLOCK

FAST, ASTROPY = "fast reader", "astropy"


@pytest.fixture
def astropy_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files :func:`read_header` hands to astropy, in order (astropy still reads them)."""
    handed: list[Path] = []
    real = otrain.io.cutouts.read_header_with_astropy

    def counted(path: Path, *args: object, **kwargs: object) -> object:
        handed.append(Path(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(otrain.io.cutouts, "read_header_with_astropy", counted)
    return handed


def _gzipped(path: Path, name: str) -> Path:
    packed = path.with_name(name)
    packed.write_bytes(gzip.compress(path.read_bytes()))
    return packed


def _replace_card(path: Path, keyword: bytes, card: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    start = raw.index(keyword.ljust(8) + b"= ")
    raw[start : start + 80] = card.ljust(80)
    path.write_bytes(bytes(raw))
    return path


def plain_gmadet(folder: Path) -> Path:
    return write_gmadet(folder / "gmadet.fits")


def plain_stdpipe(folder: Path) -> Path:
    return write_stdpipe(folder / "stdpipe.fits")  # HIERARCH cards in its primary header


def gmadet_cube(folder: Path) -> Path:
    return write_gmadet(folder / "cube.fits", np.stack([pixels(8), pixels(8, seed=1)]))


def gzipped_gmadet(folder: Path) -> Path:
    return _gzipped(write_gmadet(folder / "g.fits"), "g.fits.gz")


def gzipped_stdpipe_named_fits(folder: Path) -> Path:
    return _gzipped(write_stdpipe(folder / "s.fits"), "s-packed.fits")  # compression told by content


def long_string(folder: Path) -> Path:
    return write_gmadet(folder / "long.fits", FILE="night/" + "x" * 90)  # CONTINUE cards


def tile_compressed_diff(folder: Path) -> Path:
    primary = fits.PrimaryHDU()
    for key, value in {"CANDID": 5, "MAG": 18.0, "MAGERR": 0.1, "FWHM": 2.0, "FILTER": "r"}.items():
        primary.header[key] = value
    path = folder / "tiles.fits"
    fits.HDUList([primary, fits.CompImageHDU(pixels(16), name="DIFF", compression_type="GZIP_1")]).writeto(path)
    return path


def very_long_header(folder: Path) -> Path:
    """A header of more than the 64 blocks the fast reader reads (written with astropy's own cards)."""
    path = write_gmadet(folder / "header.fits")
    raw = path.read_bytes()
    end = raw.index(b"END" + b" " * 77)
    filler = b"".join(fits.Card(f"K{index:06d}", index).image.encode() for index in range(64 * 36))
    head = raw[:end] + filler + raw[end : end + 80]
    head += b" " * (-len(head) % BLOCK)
    path.write_bytes(head + raw[-(-(end + 80) // BLOCK) * BLOCK :])
    return path


def non_standard_value_indicator(folder: Path) -> Path:
    return _replace_card(write_gmadet(folder / "odd.fits"), b"FILTER", b"FILTER  ='r'")


def non_ascii_card(folder: Path) -> Path:
    return _replace_card(write_gmadet(folder / "latin.fits"), b"FILTER", "FILTER  = 'é'".encode("latin-1"))


def diff_is_a_table(folder: Path) -> Path:
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))], name="DIFF")
    path = folder / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    return path


def no_image_anywhere(folder: Path) -> Path:
    path = folder / "empty.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(pixels(), name="SCI")]).writeto(path)
    return path


def bytes_after_the_last_hdu(folder: Path) -> Path:
    path = write_gmadet(folder / "trailing.fits")
    raw = path.read_bytes()
    path.write_bytes(raw + raw[:BLOCK])  # a header again, but not an extension's (no XTENSION)
    return path


def not_fits(folder: Path) -> Path:
    path = folder / "notes.fits"
    path.write_text("not a FITS file\n" * 300)
    return path


def damaged_gzip(folder: Path) -> Path:
    path = folder / "damaged.fits.gz"
    path.write_bytes(b"\x1f\x8b" + b"\0" * 100)  # gzip's magic, then no valid stream
    return path


def a_folder(folder: Path) -> Path:
    path = folder / "folder.fits"
    path.mkdir()
    return path


#: Every kind of file, the reader that reads its header, and what it holds: "ok", or the start of
#: its DataError (after the file's name).
CASES: list[tuple[Callable[[Path], Path], str | None, str]] = [
    (plain_gmadet, FAST, "ok"),
    (plain_stdpipe, FAST, "ok"),
    (gmadet_cube, FAST, "ok"),
    (gzipped_gmadet, FAST, "ok"),
    (gzipped_stdpipe_named_fits, FAST, "ok"),
    (long_string, ASTROPY, "ok"),
    (tile_compressed_diff, ASTROPY, "ok"),
    (very_long_header, ASTROPY, "ok"),
    (non_standard_value_indicator, ASTROPY, "ok"),
    (non_ascii_card, ASTROPY, "ok"),
    (diff_is_a_table, ASTROPY, "multi-extension cutout has no image extension with EXTNAME=DIFF"),
    (no_image_anywhere, ASTROPY, "multi-extension cutout has no image extension with EXTNAME=DIFF"),
    (bytes_after_the_last_hdu, ASTROPY, "ok"),
    (not_fits, ASTROPY, "not a readable FITS file"),
    (damaged_gzip, ASTROPY, "not a readable FITS file"),
    (a_folder, None, "cannot read the file"),
]


@pytest.mark.parametrize(("make", "reader", "outcome"), CASES, ids=[case[0].__name__ for case in CASES])
def test_each_kind_of_file_goes_to_its_reader(
    tmp_path: Path, astropy_reads: list[Path], make: Callable[[Path], Path], reader: str | None, outcome: str
) -> None:
    path = make(tmp_path)
    if outcome == "ok":
        assert read_header(path) == read_header_with_astropy(path)  # this one is not counted
    else:
        with pytest.raises(DataError) as error:
            read_header(path)
        assert str(error.value).startswith(f"{path}: {outcome}"), str(error.value)
    assert astropy_reads == ([path] if reader == ASTROPY else [])


def test_bytes_in_memory_go_to_the_same_reader_as_the_file(tmp_path: Path, astropy_reads: list[Path]) -> None:
    """Spark hands the reader a file's bytes: the choice is the file's."""
    for make in (gzipped_gmadet, plain_stdpipe, long_string, tile_compressed_diff):
        path = make(tmp_path)
        before = len(astropy_reads)
        assert read_header(path, content=path.read_bytes()) == read_header(path)
        assert len(astropy_reads) - before == (2 if make in (long_string, tile_compressed_diff) else 0), make.__name__


def test_only_a_tile_compressed_plane_leaves_its_pixels_to_astropy(tmp_path: Path) -> None:
    """A plane stored as an image has a byte offset (read directly); a tile-compressed one has none."""
    for make in (plain_gmadet, plain_stdpipe, gzipped_gmadet, long_string):
        _, location = read_header(make(tmp_path))
        assert all(plane.offset is not None for plane in location.planes), make.__name__
    path = tile_compressed_diff(tmp_path)
    _, location = read_header(path)
    assert [plane.offset for plane in location.planes] == [None]
    np.testing.assert_array_equal(read_pixels(path, location)[:, :, 0], fits.getdata(path, extname="DIFF"))
