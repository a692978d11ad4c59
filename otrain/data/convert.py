"""otrain-convert: labelled cutout folders, or labelled alert packets, to one training datacube.

Two passes over the files, both in worker processes:

1. headers: metadata, EDGE flag and the location of every file's image plane. Bad files and
   missing keywords are found here, before any pixel is read, and the balancing selection is
   made on the usable (non-EDGE) files, so the requested fractions hold exactly;
2. pixels: only the selected files are read, straight into one preallocated array.

Alert packets (``--alerts``, labelled by ``--labels``) take the same path from the end of the
first pass on: :mod:`otrain.data.packets` gives each labelled packet a metadata record and a
:class:`otrain.data.packets.PacketPixels` in place of a file's pixel location.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otrain.data.cutouts import TRAINING_KEYWORDS, prepare_pixels, require_keywords
from otrain.data.datacube import Datacube, balanced_counts, choose_rows
from otrain.data.packets import PacketPixels, group_keyword_of, labelled_packets, read_packet_headers
from otrain.errors import DataError, log_listed
from otrain.io.cutoutmeta import CutoutMeta
from otrain.io.cutouts import PixelLocation, list_cutouts, read_header, read_pixels
from otrain.io.labels import read_labels
from otrain.io.parallel import map_chunks
from otrain.options import MAX_LISTED_BAD_FILES, ConvertConfig

__all__ = ["ClassReport", "ConversionReport", "convert"]

logger = logging.getLogger("otrain")

_CLASS_FOLDERS = {1: "true", 0: "false"}
_CLASS_NAMES = {1: "real", 0: "bogus"}


@dataclass
class ClassReport:
    """What happened to the files of one class folder, or to the packets of one label.

    ``folder`` is the class folder, or ``--alerts`` for packets; ``name`` is how messages call
    the class (the folder's name, or ``real``/``bogus``).
    """

    label: int
    folder: Path
    name: str = ""
    n_files: int = 0
    n_edge: int = 0
    n_bad: int = 0
    n_unselected: int = 0
    n_kept: int = 0


@dataclass
class ConversionReport:
    """Summary of one conversion, for the command's closing message.

    ``group_keyword`` names what the groups are (``--group-keyword``, or the packets' object id
    field). The ``n_*packet*`` counts are None for cutout files; for packets, ``n_packets``
    counts every packet read, ``n_unlabelled`` those the labels table does not list (left out),
    ``n_labels_without_packet`` the table's ids no packet carries, and ``n_bad_packets`` the
    packets (or files) that could not be decoded at all (in ``bad_files``, in no class).
    """

    output: Path
    classes: dict[int, ClassReport]
    shape: tuple[int, int, int] = (0, 0, 0)
    n_replaced_pixels: int = 0
    n_cutouts_with_replaced: int = 0
    bad_files: list[tuple[Path, str]] = field(default_factory=list)
    n_groups: int | None = None
    group_keyword: str | None = None
    n_packets: int | None = None
    n_unlabelled: int | None = None
    n_labels_without_packet: int | None = None
    n_bad_packets: int | None = None


@dataclass(frozen=True)
class _Header:
    path: Path
    label: int
    meta: CutoutMeta
    location: PixelLocation | PacketPixels


def _read_headers(
    jobs: Sequence[tuple[Path, tuple[str, ...] | None, str | None]],
) -> list[tuple[CutoutMeta, PixelLocation] | str]:
    """Worker task: read the headers of a chunk of (file, planes, group keyword); an error becomes its message."""
    results: list[tuple[CutoutMeta, PixelLocation] | str] = []
    for path, planes, group_keyword in jobs:
        try:
            meta, location = read_header(path, planes, group_keyword)
            if meta.edge is not True:
                require_keywords(meta, path, TRAINING_KEYWORDS, "training")
                if meta.convention == "gmadet" and meta.edge is None:
                    require_keywords(meta, path, ("EDGE",), "training")
                if group_keyword is not None and meta.group is None:
                    raise DataError(f"{path}: missing keyword {group_keyword} (needed for --group-keyword)")
            results.append((meta, location))
        except DataError as error:
            results.append(str(error))
        except Exception as error:  # a worker must report, never die, on a strange file
            results.append(f"{path}: unexpected error reading the file ({type(error).__name__}: {error})")
    return results


def _read_pixel_chunk(
    jobs: Sequence[tuple[Path, PixelLocation | PacketPixels, int, tuple[int, int, int]]],
) -> tuple[np.ndarray, list[int], list[str | None]]:
    """Worker task: read, crop and clean the pixels of a chunk of files.

    Returns the stacked pixels, the replaced-pixel count of each file and, for each file,
    None or the message of the error that made it unusable (its row is then zeros).
    """
    pixels = np.zeros((len(jobs), *jobs[0][3]), dtype=np.float32)
    replaced: list[int] = []
    errors: list[str | None] = []
    for row, (path, location, cutout_size, _) in enumerate(jobs):
        try:
            raw = location.read() if isinstance(location, PacketPixels) else read_pixels(path, location)
            pixels[row], n_replaced = prepare_pixels(raw, cutout_size, path)
            replaced.append(n_replaced)
            errors.append(None)
        except Exception as error:  # a worker must report, never die, on a strange file
            replaced.append(0)
            errors.append(str(error) if isinstance(error, DataError) else f"{path}: {type(error).__name__}: {error}")
    return pixels, replaced, errors


def _class_files(cutouts: Path) -> dict[int, list[Path]]:
    files: dict[int, list[Path]] = {}
    for label, name in _CLASS_FOLDERS.items():
        folder = cutouts / name
        if not folder.is_dir():
            raise DataError(
                f"{folder}: folder of {name} cutouts does not exist (expected {cutouts}/true and {cutouts}/false)"
            )
        files[label] = list_cutouts(folder)
        if not files[label]:
            raise DataError(f"{folder}: no cutout files (*.fits, *.fit, *.fits.gz)")
    return files


def _final_shape(headers: list[_Header], cutout_size: int) -> tuple[int, int, int]:
    """Check that the selected cutouts share one shape after cropping, and return it."""
    shapes: dict[tuple[int, int, int], list[Path]] = {}
    for header in headers:
        shapes.setdefault(header.location.height_width_channels, []).append(header.path)
    channels = {shape[2] for shape in shapes}
    if len(channels) > 1:
        raise DataError(
            "cutouts have different numbers of channels: "
            + "; ".join(f"{c} (e.g. {next(p for s, p in shapes.items() if s[2] == c)[0]})" for c in sorted(channels))
        )
    if cutout_size == -1:
        if len(shapes) > 1:
            described = sorted(shapes.items(), key=lambda item: -len(item[1]))
            listing = ", ".join(f"{h}x{w} ({len(paths)} files, e.g. {paths[0]})" for (h, w, _), paths in described[:3])
            raise DataError(f"cutouts have mixed sizes: {listing}; pass --cutout-size to crop them to one size")
        return next(iter(shapes))
    for (height, width, _), paths in shapes.items():
        if height < cutout_size or width < cutout_size:
            raise DataError(
                f"{paths[0]}: cutout is {height}x{width} pixels, smaller than --cutout-size {cutout_size}"
                + (f" ({len(paths)} such files)" if len(paths) > 1 else "")
            )
    return cutout_size, cutout_size, next(iter(channels))


def _fail_on_bad_files(bad: list[tuple[Path, str]]) -> None:
    if len(bad) == 1:
        raise DataError(f"{bad[0][1]} (pass --skip-bad-files to skip it)")
    log_listed([message for _, message in bad], logging.ERROR, "bad cutouts", MAX_LISTED_BAD_FILES)
    raise DataError(f"{len(bad)} bad cutouts, the first: {bad[0][1]} (pass --skip-bad-files to skip them)")


def _file_headers(config: ConvertConfig) -> tuple[ConversionReport, dict[int, list[_Header]]]:
    """First pass over the class folders' files: their headers, sorted into usable, EDGE and bad."""
    assert config.cutouts is not None
    files = _class_files(config.cutouts)
    report = ConversionReport(
        output=config.output_file,
        classes={label: ClassReport(label, config.cutouts / name, name=name) for label, name in _CLASS_FOLDERS.items()},
        group_keyword=config.group_keyword,
    )
    all_paths = [(label, path) for label in (1, 0) for path in files[label]]
    usable: dict[int, list[_Header]] = {1: [], 0: []}
    header_results = map_chunks(
        _read_headers,
        [(path, config.planes, config.group_keyword) for _, path in all_paths],
        workers=config.workers,
        description="reading headers",
        preload=["otrain.data.convert"],
    )
    labels = iter(label for label, _ in all_paths)
    for chunk, results in header_results:
        for (path, *_), result in zip(chunk, results, strict=True):
            _sort_header(report, usable, next(labels), path, result)
    return report, usable


def _packet_headers(config: ConvertConfig) -> tuple[ConversionReport, dict[int, list[_Header]]]:
    """First pass over the packets: keep the labelled ones, read their metadata, sort them like files."""
    assert config.alerts is not None
    assert config.labels is not None
    scan = labelled_packets(config.alerts, read_labels(config.labels))
    if scan.n_packets == 0:
        raise DataError(f"{config.alerts}: no alert packets (Avro packet files, or .tar/.tar.gz archives of them)")
    if not scan.labelled and scan.n_unlabelled:
        raise DataError(
            f"{config.labels}: lists none of the {scan.n_unlabelled} packets' candids under {config.alerts} "
            "(ids are matched as text, exactly)"
        )
    report = ConversionReport(
        output=config.output_file,
        classes={label: ClassReport(label, config.alerts, name=name) for label, name in _CLASS_NAMES.items()},
        group_keyword=group_keyword_of([alert for _, alert in scan.labelled]),
        n_packets=scan.n_packets,
        n_unlabelled=scan.n_unlabelled,
        n_labels_without_packet=scan.n_labels_without_packet,
        n_bad_packets=len(scan.bad),
        bad_files=list(scan.bad),
    )
    usable: dict[int, list[_Header]] = {1: [], 0: []}
    header_results = map_chunks(
        read_packet_headers,
        [(alert, config.planes) for _, alert in scan.labelled],
        workers=config.workers,
        description="reading packets",
        preload=["otrain.data.convert"],
    )
    labels = iter(label for label, _ in scan.labelled)
    for chunk, results in header_results:
        for (alert, _), result in zip(chunk, results, strict=True):
            _sort_header(report, usable, next(labels), Path(alert.name), result)
    return report, usable


def _sort_header(
    report: ConversionReport,
    usable: dict[int, list[_Header]],
    label: int,
    path: Path,
    result: tuple[CutoutMeta, PixelLocation | PacketPixels] | str,
) -> None:
    """Count one first-pass result (metadata and pixel location, or an error message) in its class."""
    counts = report.classes[label]
    counts.n_files += 1
    if isinstance(result, str):
        counts.n_bad += 1
        report.bad_files.append((path, result))
    elif result[0].edge is True:
        counts.n_edge += 1
    else:
        usable[label].append(_Header(path, label, *result))


def convert(config: ConvertConfig) -> ConversionReport:
    """Build and write the datacube that ``config`` describes.

    Parameters
    ----------
    config : ConvertConfig
        Validated options of otrain-convert.

    Returns
    -------
    ConversionReport
        Counts of kept and rejected files per class, and the output path.

    Raises
    ------
    DataError
        On missing or empty class folders, bad files (unless skipped), a class with no usable
        cutout, or cutouts whose sizes cannot make one cube; for packets also on a bad labels
        table (a candid labelled both ways), no packet, or no labelled packet. Nothing is
        written then.
    """
    report, usable = _packet_headers(config) if config.alerts is not None else _file_headers(config)

    if report.bad_files:
        if not config.skip_bad_files:
            # Files whose headers read fine may still fail on their pixels (all NaN, damaged
            # data): find those too, so that one run lists every bad file.
            failures = _pixel_failures(usable[1] + usable[0], config)
            _fail_on_bad_files(report.bad_files + [(header.path, message) for header, message in failures])
        skipped = [f"skipped: {message}" for _, message in report.bad_files]
        log_listed(skipped, logging.WARNING, "skipped cutouts", MAX_LISTED_BAD_FILES)
    _check_usable(report, usable)
    # Checked on every usable file, not just the selected ones, so that whether a tree
    # converts does not depend on the seed.
    report.shape = _final_shape(usable[1] + usable[0], config.cutout_size)

    checked: set[Path] = set()
    while True:
        selected = _select(usable, config, report)
        cube, failures = _read_selected(selected, config, report)
        # The files balancing left out are checked too (pixels read, not kept), so that whether
        # a tree converts, and which files are reported, does not depend on the seed.
        chosen = {header.path for header in selected}
        unchosen = [header for header in usable[1] + usable[0] if header.path not in chosen | checked]
        failures += _pixel_failures(unchosen, config)
        checked |= {header.path for header in unchosen}
        if not failures:
            break
        # A file that fails only when its pixels are read (all-NaN, damaged compressed data)
        # leaves the usable set, and the selection is made again so the fractions still hold.
        if not config.skip_bad_files:
            _fail_on_bad_files([(header.path, message) for header, message in failures])
        del cube
        for header, message in failures:
            logger.warning("skipped: %s", message)
            report.bad_files.append((header.path, message))
            report.classes[header.label].n_bad += 1
            usable[header.label].remove(header)
        _check_usable(report, usable)

    for label in (1, 0):
        report.classes[label].n_kept = sum(1 for header in selected if header.label == label)
    datacube = _datacube(cube, selected, config.planes, report.group_keyword)
    if datacube.groups is not None:
        report.n_groups = len(np.unique(datacube.groups))
    datacube.save(config.output_file)
    return report


def _check_usable(report: ConversionReport, usable: dict[int, list[_Header]]) -> None:
    for label, headers in usable.items():
        if not headers:
            counts = report.classes[label]
            if report.n_packets is not None:
                raise DataError(
                    f"{counts.folder}: no usable {counts.name} packet ({counts.n_files} labelled {counts.name}: "
                    f"{counts.n_edge} flagged EDGE, {counts.n_bad} bad); a cube needs both classes"
                )
            raise DataError(
                f"{counts.folder}: no usable cutout ({counts.n_files} files: {counts.n_edge} flagged EDGE, "
                f"{counts.n_bad} bad); a cube needs both classes"
            )


def _select(usable: dict[int, list[_Header]], config: ConvertConfig, report: ConversionReport) -> list[_Header]:
    """Choose the cutouts of the cube: balanced counts, seeded random choice per class."""
    keep = dict(zip((1, 0), balanced_counts(len(usable[1]), len(usable[0]), config.frac_true), strict=True))
    for label in (1, 0):
        if keep[label] == 0:
            name = report.classes[label].name
            raise DataError(
                f"--frac-true {config.frac_true} keeps no {name} cutout of the {len(usable[1])} real and "
                f"{len(usable[0])} bogus usable ones; a cube needs both classes"
            )
    selected: list[_Header] = []
    for label in (1, 0):
        rows = choose_rows(len(usable[label]), keep[label], config.seed, stream=label)
        selected.extend(usable[label][row] for row in rows)
        report.classes[label].n_unselected = len(usable[label]) - keep[label]
    return selected


def _read_selected(
    selected: list[_Header], config: ConvertConfig, report: ConversionReport
) -> tuple[np.ndarray, list[tuple[_Header, str]]]:
    """Read the selected cutouts' pixels into one preallocated array."""
    cube = np.empty((len(selected), *report.shape), dtype=np.float32)
    failures: list[tuple[_Header, str]] = []
    report.n_replaced_pixels = report.n_cutouts_with_replaced = 0
    jobs = [(header.path, header.location, config.cutout_size, report.shape) for header in selected]
    row = 0
    for chunk, (pixels, replaced, errors) in map_chunks(
        _read_pixel_chunk, jobs, workers=config.workers, description="reading pixels", preload=["otrain.data.convert"]
    ):
        cube[row : row + len(chunk)] = pixels
        for offset, (n_replaced, error) in enumerate(zip(replaced, errors, strict=True)):
            if error is not None:
                failures.append((selected[row + offset], error))
            elif n_replaced:
                report.n_replaced_pixels += n_replaced
                report.n_cutouts_with_replaced += 1
        row += len(chunk)
    return cube, failures


def _pixel_failures(headers: list[_Header], config: ConvertConfig) -> list[tuple[_Header, str]]:
    """Read the pixels of ``headers`` only to find the files that fail there (nothing is kept)."""
    failures: list[tuple[_Header, str]] = []
    groups: dict[tuple[tuple[int, int, int], int], list[_Header]] = {}
    for header in headers:
        height, width, channels = header.location.height_width_channels
        crop = config.cutout_size
        if crop == -1 or min(height, width) < crop:  # too small: _final_shape reports those
            groups.setdefault(((height, width, channels), -1), []).append(header)
        else:
            groups.setdefault(((crop, crop, channels), crop), []).append(header)
    for (shape, crop), group in groups.items():
        jobs = [(header.path, header.location, crop, shape) for header in group]
        row = 0
        for chunk, (_, _, errors) in map_chunks(
            _read_pixel_chunk,
            jobs,
            workers=config.workers,
            description="checking pixels",
            preload=["otrain.data.convert"],
        ):
            failures += [(group[row + offset], error) for offset, error in enumerate(errors) if error is not None]
            row += len(chunk)
    return failures


def _datacube(
    cube: np.ndarray, headers: list[_Header], planes: tuple[str, ...] | None, group_keyword: str | None
) -> Datacube:
    """Assemble the cube; its planes are those asked for, else ``DIFF`` for one plane (as O'TRAIN).

    ``group_keyword``: the headers were read with it, and the cube records its values.
    """
    if planes is None and cube.shape[3] == 1:
        planes = ("DIFF",)
    metas = [header.meta for header in headers]
    candids = [meta.candid for meta in metas]
    if all(isinstance(candid, int) for candid in candids):
        candid_column = np.array(candids, dtype=np.int64)
    else:
        candid_column = np.array([str(candid) for candid in candids], dtype=str)
    return Datacube(
        cube=cube,
        labels=np.array([header.label for header in headers], dtype=np.int64),
        mags=np.array([meta.mag for meta in metas], dtype=np.float64),
        errmags=np.array([meta.magerr for meta in metas], dtype=np.float64),
        filters=np.array([meta.filter for meta in metas], dtype=str),
        fwhms=np.array([meta.fwhm for meta in metas], dtype=np.float64),
        candids=candid_column,
        planes=planes,
        groups=np.array([str(meta.group) for meta in metas], dtype=str) if group_keyword is not None else None,
        group_keyword=group_keyword,
    )
