"""The survey's files: cutouts in the gmadet and STDPipe conventions, truth.csv, crossmatch.dat."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from otrain.simulate.kinds import SimulatedCandidate

__all__ = ["TRUTH_COLUMNS", "CrossmatchEntry", "gmadet_hdul", "stdpipe_hdul", "write_crossmatch", "write_truth"]

#: Columns of truth.csv, in order.
TRUTH_COLUMNS = (
    "path",
    "set",
    "label",
    "kind",
    "convention",
    "edge",
    "candid",
    "mag_true",
    "snr_true",
    "fwhm_psf",
    "mag_limit",
    "injected",
)


def gmadet_hdul(
    candidate: SimulatedCandidate, header_values: Mapping[str, object], planes: tuple[str, ...] = ("DIFF",)
) -> fits.HDUList:
    """Build a gmadet cutout: the image in one HDU, the candidate's keywords, string EDGE.

    Parameters
    ----------
    candidate : SimulatedCandidate
        The cutout.
    header_values : mapping
        CANDID, OBJECTID, RA, DEC, FILE, XPOS, YPOS, MAG, MAGERR, FILTER, FWHM, FWHMPSF.
    planes : tuple of str
        ``DIFF`` alone: the difference as a 2-D image (gmadet's usual cutout). Several of
        ``IMAGE``, ``TEMPLATE``, ``DIFF``: a (C, H, W) image of those planes in this order.

    Returns
    -------
    astropy.io.fits.HDUList
        Ready to write.
    """
    header = fits.Header()
    for key, value in header_values.items():
        header[key] = value
    header["EDGE"] = "True" if candidate.edge else "False"
    if planes == ("DIFF",):
        return fits.HDUList([fits.PrimaryHDU(candidate.pixels, header)])
    by_name = {"IMAGE": candidate.science, "TEMPLATE": candidate.reference, "DIFF": candidate.pixels}
    return fits.HDUList([fits.PrimaryHDU(np.stack([by_name[name] for name in planes]), header)])


def stdpipe_hdul(candidate: SimulatedCandidate, header_values: Mapping[str, object], zero_point: float) -> fits.HDUList:
    """Build an STDPipe cutout: metadata in a data-less primary HDU, planes IMAGE/TEMPLATE/DIFF/MASK.

    Parameters
    ----------
    candidate : SimulatedCandidate
        The cutout.
    header_values : mapping
        The keywords of :func:`gmadet_hdul`; written under STDPipe's names (NAME, X, Y,
        ``mag_calib``, ...).
    zero_point : float
        Turns the calibrated MAG into STDPipe's instrumental one.

    Returns
    -------
    astropy.io.fits.HDUList
        Ready to write.
    """
    primary = fits.PrimaryHDU()
    header = primary.header
    header["NAME"] = str(header_values["CANDID"])
    for key in ("OBJECTID", "RA", "DEC", "FILE", "FWHM", "FWHMPSF"):
        header[key] = header_values[key]
    header["X"] = header_values["XPOS"]
    header["Y"] = header_values["YPOS"]
    header["HIERARCH mag_calib"] = header_values["MAG"]
    header["HIERARCH mag_calib_err"] = header_values["MAGERR"]
    header["MAG"] = round(float(header_values["MAG"]) - zero_point, 4)  # instrumental
    header["MAGERR"] = header_values["MAGERR"]
    header["EDGE"] = candidate.edge
    diff = fits.ImageHDU(candidate.pixels, name="DIFF")
    diff.header["FILTER"] = header_values["FILTER"]
    return fits.HDUList(
        [
            primary,
            fits.ImageHDU(candidate.science, name="IMAGE"),
            fits.ImageHDU(candidate.reference, name="TEMPLATE"),
            diff,
            fits.ImageHDU(candidate.mask.astype(np.uint8), name="MASK"),
        ]
    )


def write_truth(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Write truth.csv: one row per cutout, the :data:`TRUTH_COLUMNS` (other keys are ignored)."""
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=TRUTH_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class CrossmatchEntry:
    """One injected source of the night, and the candidate that detected it (if any)."""

    idx: int  #: its number in its image
    image: str  #: the image's file name
    x: float
    y: float
    ra: float
    dec: float
    mag: float
    band: str
    count_adu: float
    candid: int | None  #: the detecting candidate; None when too faint to be detected


def write_crossmatch(path: Path, entries: Iterable[CrossmatchEntry]) -> None:
    """Write the night's crossmatch.dat in gmadet-checksim format (undetected: ``None``)."""
    header = "idx filename Xpos Ypos RA Dec mag filter count_ADU filename2 Nmatches closest_candID all_candIDs"
    lines = ["# " + header]
    for entry in entries:
        closest = "None" if entry.candid is None else str(entry.candid)
        matches = 0 if entry.candid is None else 1
        subtraction = entry.image.replace(".fits", "_sub.fits")
        lines.append(
            f"{entry.idx} {entry.image} {entry.x} {entry.y} {entry.ra} {entry.dec} {entry.mag:.4f} {entry.band} "
            f"{entry.count_adu:.2f} {subtraction} {matches} {closest} {closest}"
        )
    path.write_text("\n".join(lines) + "\n")
