"""Reading candidate cutout FITS files: listing them, their headers, their pixels.

Two layouts are understood (docs/original-otrain.md#cutout-fits-files):

* **gmadet**: one HDU; the image and the candidate's keywords are in the primary HDU.
* **STDPipe**: a data-less primary HDU holding the metadata and named image extensions:
  ``DIFF`` by default, or the planes asked for by name (``IMAGE``, ``TEMPLATE``, ``DIFF``:
  science, reference, difference), stacked as channels.

3-D images laid out (C, H, W) become channels-last: a gmadet cutout gives its planes in file
order. The keywords become a :class:`otrain.io.cutoutmeta.CutoutMeta`.

Reading is split in two steps so that a converter can decide which files it needs before
touching their pixels: :func:`read_header` parses the headers and records where the image
plane lies in the file (:class:`PixelLocation`); :func:`read_pixels` then reads the plane
directly from its byte offset. Both use the fast reader of :mod:`otrain.io.fitsreader` (gzipped
files included, decompressed once into memory) and astropy for what it leaves aside. The crop
and the replacement of non-finite pixels are :mod:`otrain.data.cutouts`'s.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from otrain.errors import DataError, first_line
from otrain.io.cutoutmeta import CutoutMeta, card_value, cutout_meta
from otrain.io.fitsreader import (
    FITS_DTYPES,
    HDUHeader,
    NotSimpleError,
    gunzip_content,
    is_gzipped,
    is_image,
    iter_hdus,
    open_fits,
    read_array,
)

__all__ = [
    "FITS_SUFFIXES",
    "PixelLocation",
    "PlaneLocation",
    "list_cutouts",
    "read_header",
    "read_header_with_astropy",
    "read_pixels",
]

#: The names of cutout files (any case): what otrain lists in a folder.
FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")


@dataclass(frozen=True, kw_only=True)
class PlaneLocation:
    """Where one HDU's image array is stored, so it can be read without re-parsing headers.

    Attributes
    ----------
    hdu_index : int
        Index of the HDU holding the plane.
    offset : int or None
        Byte offset of the raw data in the file (in its decompressed content when
        ``compressed``); ``None`` for a tile-compressed plane, which astropy reads.
    shape : tuple of int
        Array shape in numpy order: (H, W) or (C, H, W).
    dtype : str
        Big-endian numpy dtype of the stored values.
    bscale, bzero : float
        Linear scaling of the stored values.
    blank : int or None
        Integer value marking undefined pixels.
    compressed : bool
        The whole file is gzip-compressed.
    """

    hdu_index: int
    offset: int | None
    shape: tuple[int, ...]
    dtype: str
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None
    compressed: bool = False

    @property
    def height_width_channels(self) -> tuple[int, int, int]:
        """The (H, W, C) shape of the plane once channels-last."""
        if len(self.shape) == 2:
            return self.shape[0], self.shape[1], 1
        return self.shape[1], self.shape[2], self.shape[0]


@dataclass(frozen=True)
class PixelLocation:
    """Where a cutout's image planes are stored: one :class:`PlaneLocation` per HDU read.

    An STDPipe cutout has one HDU per plane (``IMAGE``, ``TEMPLATE``, ``DIFF``); a gmadet cutout
    holds its planes in one 2-D or 3-D (C, H, W) array. Read with :func:`read_pixels`.
    """

    planes: tuple[PlaneLocation, ...]

    @property
    def height_width_channels(self) -> tuple[int, int, int]:
        """The (H, W, C) shape of the planes once stacked channels-last."""
        shapes = [plane.height_width_channels for plane in self.planes]
        return shapes[0][0], shapes[0][1], sum(channels for _, _, channels in shapes)

    @property
    def compressed(self) -> bool:
        """Whether the file is gzip-compressed."""
        return self.planes[0].compressed


def list_cutouts(folder: Path, recursive: bool = False) -> list[Path]:
    """List the cutout files of a folder in sorted order.

    Parameters
    ----------
    folder : Path
        Folder to scan.
    recursive : bool
        Also scan sub-folders.

    Returns
    -------
    list of Path
        Files ending in ``.fits``, ``.fit``, ``.fits.gz`` or ``.fit.gz`` (any case), sorted by path.
        Links to files count; links to folders are not followed.

    Raises
    ------
    DataError
        When the folder, or with ``recursive`` one of its sub-folders, cannot be read: its
        cutouts would be silently missed (:meth:`Path.glob` passes over such a folder).
    """

    def refuse(error: OSError) -> None:
        if error.errno == errno.ENOENT and error.filename != str(folder):
            return  # a sub-folder removed while the folder was read: no cutout of it is missed
        raise DataError(
            f"{error.filename}: cannot read the folder ({error.strerror or error}); its cutouts would be missed"
        )

    def is_cutout(name: str, parent: str) -> bool:
        return name.lower().endswith(FITS_SUFFIXES) and os.path.isfile(os.path.join(parent, name))

    found: list[Path] = []
    if recursive:
        for parent, _, names in os.walk(folder, onerror=refuse):
            found.extend(Path(parent, name) for name in names if is_cutout(name, parent))
    else:
        try:
            with os.scandir(folder) as entries:
                found.extend(Path(entry.path) for entry in entries if is_cutout(entry.name, str(folder)))
        except OSError as error:
            refuse(error)
    return sorted(found)


if TYPE_CHECKING:  # astropy is imported only for the files the fast reader declines (100 ms of start-up)
    from astropy.io import fits

    Header = fits.Header | dict[str, Any]


def _plane(header: Header, index: int, offset: int | None, compressed: bool) -> PlaneLocation:
    """Describe an image array from its header (astropy's, or the fast reader's cards)."""
    naxis, bitpix = int(header["NAXIS"]), int(header["BITPIX"])
    blank = header.get("BLANK") if bitpix > 0 else None
    return PlaneLocation(
        hdu_index=index,
        offset=offset,
        shape=tuple(int(header[f"NAXIS{axis}"]) for axis in range(naxis, 0, -1)),
        dtype=FITS_DTYPES[bitpix],
        bscale=float(header.get("BSCALE", 1.0)),
        bzero=float(header.get("BZERO", 0.0)),
        blank=int(blank) if blank is not None else None,
        compressed=compressed,
    )


def _plane_location(hdu: HDUHeader, size: int, compressed: bool, path: Path) -> PlaneLocation:
    if size < hdu.data_offset + hdu.data_size:
        raise DataError(f"{path}: truncated FITS file (image data is incomplete)")
    return _plane(hdu.cards, hdu.index, hdu.data_offset, compressed)


def _extension_name(cards: Header) -> str:
    return str(card_value(cards, "EXTNAME") or "").strip().upper()


def _select_planes(
    path: Path, planes: tuple[str, ...] | None, extensions: dict[str, Any], primary: Any, channels_of: Any
) -> list[Any]:
    """Pick the HDUs holding ``planes``: named extensions of an STDPipe file, else the primary image.

    ``extensions`` maps EXTNAME to an HDU of an STDPipe file (empty for gmadet files);
    ``channels_of`` gives an HDU's number of planes. Raises :class:`DataError` naming the file
    and the missing plane, or the plane count of a gmadet file that does not match.
    """
    if extensions:
        wanted = planes or ("DIFF",)
        missing = [name for name in wanted if name not in extensions]
        if missing:
            raise DataError(f"{path}: no {missing[0]} plane (extensions: {', '.join(extensions)})")
        return [extensions[name] for name in wanted]
    if planes is not None and channels_of(primary) != len(planes):
        raise DataError(
            f"{path}: holds {channels_of(primary)} plane(s) in one image, --planes names {len(planes)} "
            f"({' '.join(planes)}); a gmadet cutout gives its planes in file order"
        )
    return [primary]


def _check_same_size(path: Path, locations: list[PlaneLocation]) -> PixelLocation:
    shapes = {location.height_width_channels[:2] for location in locations}
    if len(shapes) > 1:
        sizes = ", ".join(f"{height}x{width}" for height, width in sorted(shapes))
        raise DataError(f"{path}: its planes differ in size ({sizes})")
    return PixelLocation(tuple(locations))


def _read_simple(
    path: Path, planes: tuple[str, ...] | None, content: bytes | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None, PixelLocation]:
    """Read a cutout's headers with the fast reader of :mod:`otrain.io.fitsreader`.

    It walks the HDUs by their headers and locates the image planes (named extensions of an
    STDPipe file, ``DIFF`` by default; else the primary image). Anything it does not handle
    (long-string cards, compressed or table planes, a damaged header, no usable plane) raises
    :class:`NotSimpleError`, and astropy reads the file and reports the problem.

    Returns
    -------
    tuple
        (primary header cards, DIFF header cards or None, location of the planes).
    """
    with open_fits(path, content) as (stream, size, compressed):
        hdus = iter_hdus(stream, size)
        primary = next(hdus)
        extensions = {}
        for hdu in hdus:
            name = _extension_name(hdu.cards)
            if name and name not in extensions:
                extensions[name] = hdu
        if "DIFF" not in extensions:
            extensions = {}  # not an STDPipe cutout: the primary image is the cutout
        elif not is_image(extensions["DIFF"].cards):
            raise NotSimpleError("DIFF is not an image")
        if not extensions and not is_image(primary.cards):
            raise NotSimpleError("no image in the primary HDU")
        chosen = _select_planes(
            path, planes, extensions, primary, lambda hdu: _plane(hdu.cards, 0, 0, False).height_width_channels[2]
        )
        for hdu in chosen:
            if hdu is not primary and (hdu.cards.get("XTENSION") != "IMAGE" or not is_image(hdu.cards)):
                raise NotSimpleError("a plane is not an image")
        location = _check_same_size(path, [_plane_location(hdu, size, compressed, path) for hdu in chosen])
        diff = extensions["DIFF"].cards if extensions else None
        return primary.cards, diff, location


def _location(hdul: fits.HDUList, index: int, compressed: bool) -> PlaneLocation:
    from astropy.io import fits

    is_tile_compressed = isinstance(hdul[index], fits.CompImageHDU)
    # For a gzipped file astropy counts offsets in the decompressed content, as the fast reader.
    offset = None if is_tile_compressed else int(hdul.fileinfo(index)["datLoc"])
    return _plane(hdul[index].header, index, offset, compressed)


def _has_image(hdu: Any) -> bool:
    from astropy.io import fits

    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and int(hdu.header.get("NAXIS", 0)) in (
        2,
        3,
    )


def _find_diff(hdul: fits.HDUList) -> int | None:
    for index, hdu in enumerate(hdul):
        if index > 0 and str(hdu.header.get("EXTNAME", "")).strip().upper() == "DIFF" and _has_image(hdu):
            return index
    return None


def read_header(
    path: Path, planes: tuple[str, ...] | None = None, group_keyword: str | None = None, *, content: bytes | None = None
) -> tuple[CutoutMeta, PixelLocation]:
    """Read a cutout's metadata and locate its image planes, without reading the pixels.

    Parameters
    ----------
    path : Path
        A cutout FITS file (optionally gzip-compressed).
    planes : tuple of str, optional
        The planes to read, by name: the extensions (EXTNAME, upper case) of an STDPipe
        cutout, in this order; a gmadet cutout gives its planes in file order and must hold as
        many. None: the ``DIFF`` extension of an STDPipe cutout, the whole image of a gmadet one
        (as O'TRAIN).
    group_keyword : str, optional
        A keyword of the primary header (where the other metadata are, in both conventions)
        whose value becomes :attr:`CutoutMeta.group`.
    content : bytes, optional
        The file's bytes, already in memory (read from a URI by Spark's ``binaryFile`` source):
        they are read instead of ``path``, which then only names the file in messages. Pass the
        same bytes to :func:`read_pixels`.

    Returns
    -------
    CutoutMeta
        The candidate's keywords.
    PixelLocation
        Where the image planes lie.

    Raises
    ------
    DataError
        If the file is not FITS, is truncated, lacks a plane, has planes of different sizes or
        no usable image, or a keyword has a value of the wrong kind. The message names the file.
    """
    try:
        primary, diff, location = _read_simple(path, planes, content)
    except (NotSimpleError, UnicodeDecodeError, KeyError, TypeError, ValueError, EOFError, zlib.error):
        return read_header_with_astropy(path, planes, group_keyword, content=content)
    except OSError as error:
        if _is_compressed(path, content):  # not valid gzip: astropy says so, as it always did
            return read_header_with_astropy(path, planes, group_keyword, content=content)
        raise DataError(f"{path}: cannot read the file ({first_line(error)})") from None
    return cutout_meta(primary, diff, path, group_keyword), location


def read_header_with_astropy(
    path: Path, planes: tuple[str, ...] | None = None, group_keyword: str | None = None, *, content: bytes | None = None
) -> tuple[CutoutMeta, PixelLocation]:
    """Do what :func:`read_header` does (same arguments, results and errors), always through astropy.

    This handles every FITS layout; :func:`read_header` uses it whenever its fast reader
    declines a file.
    """
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    compressed = _is_compressed(path, content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(_astropy_source(path, content, compressed), memmap=False, lazy_load_hdus=True) as hdul:
                diff_index = _find_diff(hdul)
                primary = hdul[0]
                extensions: dict[str, int] = {}
                if diff_index is not None:
                    for index in range(1, len(hdul)):
                        name = _extension_name(hdul[index].header)
                        if name and name not in extensions and _has_image(hdul[index]):
                            extensions[name] = index
                elif not _has_image(primary):
                    if len(hdul) > 1:
                        raise DataError(f"{path}: multi-extension cutout has no image extension with EXTNAME=DIFF")
                    raise DataError(f"{path}: no 2-D or 3-D image in the primary HDU")
                chosen = _select_planes(
                    path, planes, extensions, 0, lambda index: _location(hdul, index, False).height_width_channels[2]
                )
                location = _check_same_size(path, [_location(hdul, index, compressed) for index in chosen])
                diff_header = hdul[diff_index].header if diff_index is not None else None
                meta = cutout_meta(primary.header, diff_header, path, group_keyword)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable FITS file ({first_line(error)})") from None
    return meta, location


def _astropy_source(path: Path, content: bytes | None, compressed: bool) -> Path | io.BytesIO:
    """Return what astropy opens: the file, or its bytes (decompressed: astropy tells gzip only in files)."""
    if content is None:
        return path
    return io.BytesIO(gunzip_content(content) if compressed else content)


def _is_compressed(path: Path, content: bytes | None = None) -> bool:
    try:
        return is_gzipped(path, content)
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({first_line(error)})") from None


def _read_raw(path: Path, location: PlaneLocation, content: bytes | None = None) -> np.ndarray:
    """Return the stored values of a plane: from its offset, else (tile compression) through astropy."""
    if location.offset is not None:
        try:
            raw = read_array(path, location.offset, location.dtype, location.shape, location.compressed, content)
        except (OSError, EOFError, zlib.error):
            if not location.compressed:
                raise
            raw = None  # a damaged gzip stream: astropy reads it below and names the problem, as it always did
        if raw is not None:
            return raw
        if not location.compressed:
            raise DataError(f"{path}: truncated FITS file (image data is incomplete)")
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        source = _astropy_source(path, content, location.compressed)
        with fits.open(source, memmap=False, do_not_scale_image_data=True) as hdul:
            raw = np.asarray(hdul[location.hdu_index].data)
    if raw.shape != location.shape:
        raise DataError(f"{path}: truncated FITS file (image data is incomplete)")
    return raw


def read_pixels(path: Path, location: PixelLocation, *, content: bytes | None = None) -> np.ndarray:
    """Read located image planes as float32, channels-last (H, W, C), unscaled values applied.

    Parameters
    ----------
    path : Path
        The cutout file.
    location : PixelLocation
        From :func:`read_header`.
    content : bytes, optional
        The file's bytes, already in memory, as given to :func:`read_header`.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (H, W, C), the planes in the order asked; undefined integer
        pixels (BLANK) become NaN.

    Raises
    ------
    DataError
        If the file is shorter than its header says (truncated) or cannot be read.
    """
    stacked = [_read_plane(path, plane, content) for plane in location.planes]
    return stacked[0] if len(stacked) == 1 else np.concatenate(stacked, axis=2)


def _read_plane(path: Path, location: PlaneLocation, content: bytes | None) -> np.ndarray:
    try:
        raw = _read_raw(path, location, content)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the image data ({first_line(error)})") from None
    pixels = raw.astype(np.float32)
    if location.blank is not None:
        pixels[raw == location.blank] = np.nan
    if location.bscale != 1.0 or location.bzero != 0.0:
        pixels = (pixels * np.float32(location.bscale) + np.float32(location.bzero)).astype(np.float32)
    if pixels.ndim == 2:
        return pixels[:, :, np.newaxis]
    return np.ascontiguousarray(np.moveaxis(pixels, 0, -1))
