"""The vetting page's thumbnails: each cutout's planes and its Grad-CAM overlay, drawn into PNG sprite sheets.

A sheet holds one row per candidate and one column per slot (:data:`PLANE_SLOTS`, then the
Grad-CAM overlay), each thumbnail :data:`TILE` pixels square, zscale-stretched as DS9 shows a
cutout. :func:`render_chunk` runs in otrain-report's worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from otrain.errors import DataError
from otrain.io.alerts import Alert, read_alert
from otrain.io.cutoutmeta import CutoutMeta
from otrain.io.cutouts import read_header, read_pixels
from otrain.io.ids import candidate_key
from otrain.score.inference import fit_cutout

__all__ = [
    "CAM_OPACITY",
    "CAM_SLOT",
    "PLANE_SLOTS",
    "TILE",
    "alert_tiles",
    "overlay",
    "plane_tiles",
    "render_chunk",
    "tile",
    "write_sheet",
    "zscale",
]

#: The side of one thumbnail, in pixels.
TILE = 64
#: The columns of a sheet: the STDPipe planes shown, then the Grad-CAM overlay.
PLANE_SLOTS = ("IMAGE", "TEMPLATE", "DIFF")
CAM_SLOT = len(PLANE_SLOTS)
#: Fraction of the colour map over the difference where the Grad-CAM map is 1.
CAM_OPACITY = 0.55


def zscale(plane: np.ndarray) -> np.ndarray:
    """Scale one plane to [0, 1] with DS9's zscale limits (astropy); non-finite pixels take the median."""
    from astropy.visualization import ZScaleInterval

    finite = np.isfinite(plane)
    if not finite.any():
        return np.zeros(plane.shape, dtype=np.float32)
    filled = np.where(finite, plane, np.nanmedian(plane))
    low, high = ZScaleInterval().get_limits(filled)
    if not high > low:
        low, high = float(filled.min()), float(filled.max())
    if not high > low:
        return np.zeros(plane.shape, dtype=np.float32)
    return np.clip((filled - low) / (high - low), 0.0, 1.0).astype(np.float32)


def tile(image: np.ndarray) -> np.ndarray:
    """Resize an (H, W) grey or (H, W, 3) colour image in [0, 1] to a TILE x TILE uint8 thumbnail, row 0 below."""
    from PIL import Image

    pixels = np.flipud(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8))
    thumbnail = Image.fromarray(pixels)
    if thumbnail.size != (TILE, TILE):
        smaller = thumbnail.size[0] < TILE and thumbnail.size[1] < TILE
        thumbnail = thumbnail.resize((TILE, TILE), Image.Resampling.NEAREST if smaller else Image.Resampling.BOX)
    return np.asarray(thumbnail)


def plane_tiles(path: Path) -> tuple[np.ndarray, int, CutoutMeta]:
    """Render the planes a cutout has as thumbnails, in :data:`PLANE_SLOTS` order.

    An STDPipe cutout shows its ``IMAGE``, ``TEMPLATE`` and ``DIFF`` extensions, those it has.
    A gmadet cutout holds one image (shown as the difference, which O'TRAIN scores) or, with
    three planes, science, reference and difference in file order.

    Parameters
    ----------
    path : Path
        The cutout file.

    Returns
    -------
    numpy.ndarray
        (3, TILE, TILE) uint8 grey thumbnails, zscale-stretched; black for a missing plane.
    int
        Bit i set when the file has plane i of :data:`PLANE_SLOTS`.
    CutoutMeta
        The candidate's keywords.

    Raises
    ------
    DataError
        When the file cannot be read.
    """
    tiles = np.zeros((len(PLANE_SLOTS), TILE, TILE), dtype=np.uint8)
    meta, location = read_header(path)
    planes: dict[int, np.ndarray] = {}
    if meta.convention == "gmadet":
        pixels = read_pixels(path, location)
        if pixels.shape[2] == len(PLANE_SLOTS):
            planes = {slot: pixels[:, :, slot] for slot in range(len(PLANE_SLOTS))}
        else:
            planes = {PLANE_SLOTS.index("DIFF"): pixels[:, :, 0]}
    else:
        try:
            _, every = read_header(path, PLANE_SLOTS)
            pixels = read_pixels(path, every)
            planes = {slot: pixels[:, :, slot] for slot in range(len(PLANE_SLOTS))}
        except DataError:  # not all three: show those the file has
            for slot, name in enumerate(PLANE_SLOTS):
                try:
                    _, one = read_header(path, (name,))
                except DataError:
                    continue
                planes[slot] = read_pixels(path, one)[:, :, 0]
    present = 0
    for slot, plane in planes.items():
        tiles[slot] = tile(zscale(plane))
        present |= 1 << slot
    return tiles, present, meta


def alert_tiles(alert: Alert) -> tuple[np.ndarray, int, CutoutMeta]:
    """Render the cutouts an alert packet has as thumbnails, in :data:`PLANE_SLOTS` order (see :func:`plane_tiles`)."""
    tiles = np.zeros((len(PLANE_SLOTS), TILE, TILE), dtype=np.uint8)
    present = 0
    meta = alert.meta
    for slot, name in enumerate(PLANE_SLOTS):
        try:
            meta, pixels = read_alert(alert, (name,))
        except DataError:  # absent or unreadable: show those the packet has
            continue
        tiles[slot] = tile(zscale(pixels[:, :, 0]))
        present |= 1 << slot
    return tiles, present, meta


def render_chunk(
    jobs: Sequence[tuple[Path | Alert, tuple[int, int, int] | None, tuple[str, ...] | None]],
) -> list[tuple[np.ndarray, int, np.ndarray | None, str] | str]:
    """Worker task: each file's or packet's thumbnails, pixels as the model reads them (None without Grad-CAM), id.

    A file or packet that cannot be read gives its error message instead.
    """
    results: list[tuple[np.ndarray, int, np.ndarray | None, str] | str] = []
    for path, shape, planes in jobs:
        try:
            model_input = None
            if isinstance(path, Alert):
                tiles, present, meta = alert_tiles(path)
                if shape is not None:
                    model_input = fit_cutout(read_alert(path, planes)[1], shape, Path(path.name))
            else:
                tiles, present, meta = plane_tiles(path)
                if shape is not None:
                    _, location = read_header(path, planes)
                    model_input = fit_cutout(read_pixels(path, location), shape, path)
            results.append((tiles, present, model_input, candidate_key(meta.candid)))
        except Exception as error:  # a worker must report, never die, on a strange file
            where = path.name if isinstance(path, Alert) else path
            results.append(str(error) if isinstance(error, DataError) else f"{where}: {type(error).__name__}: {error}")
    return results


def overlay(model_input: np.ndarray, cam: np.ndarray, diff_channel: int) -> np.ndarray:
    """Draw the model's view of the difference in grey, the Grad-CAM map in colour over it."""
    from matplotlib import colormaps

    grey = zscale(model_input[:, :, diff_channel])
    colour = colormaps["inferno"](cam)[:, :, :3]
    weight = (CAM_OPACITY * cam)[:, :, np.newaxis]
    return grey[:, :, np.newaxis] * (1.0 - weight) + colour * weight


def write_sheet(path: Path, tiles: np.ndarray) -> None:
    """Write (n, slots, TILE, TILE[, 3]) thumbnails as one PNG: a row per candidate, a column per slot."""
    from PIL import Image, PngImagePlugin

    from otrain.io.outputs import PNG_SOFTWARE

    n, slots = tiles.shape[:2]
    sheet = np.swapaxes(tiles, 1, 2).reshape(n * TILE, slots * TILE, *tiles.shape[4:])
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"{PNG_SOFTWARE} report")
    Image.fromarray(sheet).save(path, format="PNG", pnginfo=info, compress_level=6)
