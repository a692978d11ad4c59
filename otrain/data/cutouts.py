"""Cutouts ready for a network: crop geometry, non-finite pixels, the keywords training needs.

A cutout is read by :mod:`otrain.io.cutouts` (headers, then pixels; its metadata is a
:class:`otrain.io.cutoutmeta.CutoutMeta`); this module centre-crops it as the original did
(:func:`crop_center`), replaces its non-finite pixels by the median of the finite ones in the
same plane and counts them, so they never reach the network (:func:`prepare_pixels`), and
checks the keywords a labelled cutout must carry (:func:`require_keywords`).
:func:`read_cutout` does all of it for one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otrain.errors import DataError
from otrain.io.cutoutmeta import CutoutMeta
from otrain.io.cutouts import read_header, read_pixels

__all__ = [
    "TRAINING_KEYWORDS",
    "Cutout",
    "crop_center",
    "prepare_pixels",
    "read_cutout",
    "require_keywords",
]

#: Keywords a labelled cutout must carry to enter a training cube (EDGE too for gmadet files).
TRAINING_KEYWORDS = ("CANDID", "MAG", "MAGERR", "FILTER", "FWHM")


@dataclass(frozen=True)
class Cutout:
    """One cutout ready for a datacube: float32 channels-last pixels and metadata."""

    path: Path
    pixels: np.ndarray
    meta: CutoutMeta
    n_replaced: int


def crop_center(pixels: np.ndarray, size: int | tuple[int, int], path: Path | None = None) -> np.ndarray:
    """Centre-crop a channels-last (H, W, C) cutout, or an (N, H, W, C) cube.

    The crop starts at ``dim // 2 - size // 2`` on each axis, as in the original. ``size`` is
    one side (a square) or (height, width); ``size = -1`` returns the pixels unchanged. The
    result is a view.

    Raises
    ------
    DataError
        If the cutout is smaller than ``size`` on either axis.
    """
    if size == -1:
        return pixels
    crop_height, crop_width = size if isinstance(size, tuple) else (size, size)
    height, width = pixels.shape[-3:-1]
    if height < crop_height or width < crop_width:
        where = f"{path}: " if path is not None else ""
        wanted = f"{crop_height}x{crop_width}" if isinstance(size, tuple) else f"--cutout-size {size}"
        raise DataError(f"{where}cutout is {height}x{width} pixels, smaller than {wanted}")
    top, left = height // 2 - crop_height // 2, width // 2 - crop_width // 2
    return pixels[..., top : top + crop_height, left : left + crop_width, :]


def prepare_pixels(pixels: np.ndarray, cutout_size: int, path: Path) -> tuple[np.ndarray, int]:
    """Crop a cutout and replace its non-finite pixels.

    Each non-finite pixel (NaN, +/-inf) becomes the median of the finite pixels of its plane;
    a plane with no finite pixel is an error.

    Parameters
    ----------
    pixels : numpy.ndarray
        Channels-last (H, W, C) float32 pixels.
    cutout_size : int
        Crop size, or -1 for none.
    path : Path
        The file, for error messages.

    Returns
    -------
    numpy.ndarray
        Cropped float32 pixels, all finite.
    int
        How many pixels were replaced.
    """
    cropped = crop_center(pixels, cutout_size, path)
    finite = np.isfinite(cropped)
    n_bad = int(cropped.size - np.count_nonzero(finite))
    if n_bad == 0:
        return np.ascontiguousarray(cropped, dtype=np.float32), 0
    cleaned = np.array(cropped, dtype=np.float32, copy=True)
    for channel in range(cleaned.shape[2]):
        plane, good = cleaned[:, :, channel], finite[:, :, channel]
        if not good.any():
            raise DataError(f"{path}: cutout has no finite pixel (all NaN or infinite)")
        plane[~good] = np.median(plane[good])
    return cleaned, n_bad


def require_keywords(meta: CutoutMeta, path: Path, keywords: tuple[str, ...], purpose: str) -> None:
    """Raise a :class:`DataError` naming the first keyword of ``keywords`` that is missing.

    Parameters
    ----------
    meta : CutoutMeta
        Metadata read from the file.
    path : Path
        The file, for the message.
    keywords : tuple of str
        FITS keyword names, for example :data:`TRAINING_KEYWORDS`.
    purpose : str
        What needs them, for the message ("training").
    """
    for keyword in keywords:
        if meta.value_of(keyword) is None:
            raise DataError(f"{path}: missing mandatory keyword {keyword} (needed for {purpose})")


def read_cutout(path: Path, cutout_size: int = -1, planes: tuple[str, ...] | None = None) -> Cutout:
    """Read one cutout: metadata, cropped channels-last float32 pixels, non-finite replaced.

    Parameters
    ----------
    path : Path
        A cutout FITS file in either convention.
    cutout_size : int
        Centre-crop size in pixels; -1 keeps the full size.
    planes : tuple of str, optional
        The planes to read (see :func:`otrain.io.cutouts.read_header`).

    Returns
    -------
    Cutout
        The cutout; ``n_replaced`` counts the non-finite pixels that were replaced.
    """
    meta, location = read_header(path, planes)
    pixels, n_replaced = prepare_pixels(read_pixels(path, location), cutout_size, path)
    return Cutout(path=path, pixels=pixels, meta=meta, n_replaced=n_replaced)
