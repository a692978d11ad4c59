"""Reading cutout FITS files: astropy and fitsio (CFITSIO) against otrain's own reader.

Everything ``otrain-convert`` needs from a file is read: the metadata keywords of the primary
header (and of the DIFF header of STDPipe files) and the image plane (DIFF, else primary) as
float32 channels-last pixels. Three readers run in the same worker pool
(``otrain.io.parallel.map_chunks``, default workers), in the same run, alternating:

* ``astropy``: one ``astropy.io.fits.open`` per file, headers and data of the plane;
* ``fitsio``: one ``fitsio.FITS`` per file, ``read_header_list`` and ``read`` of the plane;
* ``otrain``: ``otrain.io.cutouts.read_header`` then ``read_pixels``, as otrain-infer calls them
  (otrain-convert makes the same two calls in two passes).

Each reader's files/s are given two ways, best of ``--rounds``: through the pool (wall time,
the pool's start-up included, as a user sees it; ``nothing`` is the pool alone), and from the
CPU time the workers spent reading, times the number of workers (the reader's own speed, and
the figure least disturbed by other loads on the machine). The readers' results are compared
(metadata, and pixels with NaN in the same places), so a fast reader that reads something else
is reported.

Files: N simulated cutouts (default 20,000, half gmadet single-HDU, half STDPipe
multi-extension), and gzip copies of 2,000 of the STDPipe ones beside the same files
uncompressed. With ``--ztf DIR``, also the real ``.fits.gz`` files of ``DIR/true`` and
``DIR/false``, read in place. The real command ``otrain-convert --frac-true -1`` is timed on
the gzip files, on the same files uncompressed and on ``--ztf``.

The rule this measures: a maintained library within 25 % of otrain's reader's speed (by CPU
time, on the N cutouts) replaces it. For ``.fits.gz``: at least 300 files/s on 2 cores, and at
least a third of the rate of the same files uncompressed. Run: ``make bench`` or
``.venv/bin/python benchmarks/bench_fits.py [--n 20000] [--n-gz 2000] [--rounds 3] [--ztf DIR]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import fitsio
import numpy as np
import psutil
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from common import BIN, RESULTS, run_measured, simulated_survey

import otrain
from otrain.io.cutoutmeta import CutoutMeta, cutout_meta
from otrain.io.cutouts import list_cutouts, read_header, read_pixels
from otrain.io.parallel import default_workers, map_chunks

Chunk = tuple[np.ndarray, list[CutoutMeta]]

LIBRARIES = ("astropy", "fitsio")
#: A maintained library within this fraction of otrain's reader's speed replaces it.
LIBRARY_TOLERANCE = 0.25
GZIP_MIN_RATE = 300.0
GZIP_MIN_SHARE = 1 / 3


def _channels_last(data: np.ndarray) -> np.ndarray:
    pixels = np.asarray(data, dtype=np.float32)
    return pixels[:, :, np.newaxis] if pixels.ndim == 2 else np.moveaxis(pixels, 0, -1)


def _stack(planes: list[np.ndarray]) -> np.ndarray:
    return np.stack(planes) if planes else np.empty((0, 0, 0, 0), np.float32)


def read_astropy(paths: Sequence[Path]) -> Chunk:
    """Worker task: headers and plane of each file through one ``astropy.io.fits.open``."""
    planes, metas = [], []
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path, memmap=False) as hdul:
                index = next((i for i in range(1, len(hdul)) if hdul[i].name == "DIFF"), 0)
                metas.append(cutout_meta(hdul[0].header, hdul[index].header if index else None, path))
                planes.append(_channels_last(hdul[index].data))
    return _stack(planes), metas


def _fitsio_cards(hdu: fitsio.hdu.base.HDUBase) -> dict[str, object]:
    cards: dict[str, object] = {}
    for card in hdu.read_header_list():
        cards.setdefault(card["name"].upper(), card["value"])  # the first of a repeated keyword, as astropy
    return cards


def read_fitsio(paths: Sequence[Path]) -> Chunk:
    """Worker task: headers and plane of each file through one ``fitsio.FITS``."""
    planes, metas = [], []
    for path in paths:
        with fitsio.FITS(str(path)) as fits_file:
            index = next((i for i in range(1, len(fits_file)) if fits_file[i].get_extname().upper() == "DIFF"), 0)
            diff = _fitsio_cards(fits_file[index]) if index else None
            metas.append(cutout_meta(_fitsio_cards(fits_file[0]), diff, path))
            planes.append(_channels_last(fits_file[index].read()))
    return _stack(planes), metas


def read_otrain(paths: Sequence[Path]) -> Chunk:
    """Worker task: ``read_header`` then ``read_pixels``, otrain's own calls."""
    planes, metas = [], []
    for path in paths:
        meta, location = read_header(path)
        metas.append(meta)
        planes.append(read_pixels(path, location))
    return _stack(planes), metas


def read_nothing(paths: Sequence[Path]) -> Chunk:
    """Worker task: no reading; times the pool itself (start-up, dispatch)."""
    return np.zeros((len(paths), 1, 1, 1), np.float32), [None] * len(paths)


READERS: dict[str, Callable[[Sequence[Path]], Chunk]] = {
    "astropy": read_astropy,
    "fitsio": read_fitsio,
    "otrain": read_otrain,
    "nothing": read_nothing,
}


def run_reader(name: str, paths: Sequence[Path]) -> tuple[np.ndarray, list, float]:
    """Worker task: one reader on a chunk; also returns the CPU seconds the worker spent on it."""
    started = time.process_time()
    planes, metas = READERS[name](paths)
    return planes, metas, time.process_time() - started


def read_all(name: str, files: list[Path]) -> tuple[float, float, np.ndarray, list]:
    """Read ``files`` in the worker pool into one cube, as otrain-convert does.

    Returns the wall seconds, the CPU seconds summed over the workers' tasks, the cube and the
    metadata.
    """
    started = time.perf_counter()
    cube: np.ndarray | None = None
    metas: list[CutoutMeta] = []
    cpu, row = 0.0, 0
    results = map_chunks(partial(run_reader, name), files, workers=None, description="reading", preload=["__main__"])
    for chunk, (planes, chunk_metas, seconds) in results:
        if cube is None:
            cube = np.empty((len(files), *planes.shape[1:]), np.float32)
        cube[row : row + len(chunk)] = planes
        metas.extend(chunk_metas)
        cpu += seconds
        row += len(chunk)
    return time.perf_counter() - started, cpu, cube, metas


def compare_readers(files: list[Path], rounds: int, label: str) -> dict[str, dict[str, float]]:
    """Time every reader, and the pool alone, on ``files``, alternating; files/s, best of ``rounds``.

    ``wall``: files over the wall time through the pool, its start-up included; ``cpu``: files
    over the CPU time the workers spent reading, times the number of workers (the rate of the
    pool if reading were all it did, and the least sensitive to other loads on the machine).
    """
    best = {name: {"wall": float("inf"), "cpu": float("inf")} for name in READERS}
    reference: tuple[np.ndarray, list] | None = None
    for round_number in range(1, rounds + 1):
        timings = []
        for name in READERS:
            wall, cpu, cube, metas = read_all(name, files)
            best[name] = {"wall": min(best[name]["wall"], wall), "cpu": min(best[name]["cpu"], cpu)}
            timings.append(f"{name} {wall:.2f} s ({cpu:.2f} s CPU)")
            if round_number == 1 and name != "nothing":
                if reference is None:
                    reference = cube, metas
                elif not np.array_equal(cube, reference[0], equal_nan=True) or metas != reference[1]:
                    print(f"WARNING: {label}: {name} does not read the same pixels and metadata as astropy")
            del cube, metas
        print(f"{label}, round {round_number}: " + ", ".join(timings), flush=True)
    workers = default_workers()
    return {
        name: {"wall": len(files) / best[name]["wall"], "cpu": len(files) * workers / max(best[name]["cpu"], 1e-9)}
        for name in READERS
    }


def gzip_copies(sources: list[Path], folder: Path) -> list[Path]:
    """Gzip ``sources`` (label/name.fits) into ``folder/label/name.fits.gz`` once; later runs reuse them."""
    marker = folder / f".complete-{len(sources)}"
    targets = [folder / source.parent.name / f"{source.name}.gz" for source in sources]
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        for source, target in zip(sources, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as plain, gzip.open(target, "wb") as packed:
                shutil.copyfileobj(plain, packed)
        marker.touch()
    return targets


def linked_tree(sources: list[Path], folder: Path) -> Path:
    """A true/false tree of symbolic links to ``sources`` (label/name.fits), for otrain-convert."""
    shutil.rmtree(folder, ignore_errors=True)
    for source in sources:
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
    return folder


def time_convert(cutouts: Path, scratch: Path, rounds: int) -> float:
    """Best wall time of ``otrain-convert --frac-true -1`` on a true/false tree (start-up included)."""
    best = float("inf")
    for _ in range(rounds):
        out = scratch / "convert"
        shutil.rmtree(out, ignore_errors=True)
        command = [str(BIN / "otrain-convert"), "--path", str(out), "--cube", "bench", "--cutouts", str(cutouts)]
        best = min(best, run_measured([*command, "--frac-true", "-1"])[0])
    return best


def is_stdpipe(path: Path) -> bool:
    return read_header(path)[0].convention == "stdpipe"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="simulated cutouts (default 20000)")
    parser.add_argument("--n-gz", type=int, default=2_000, help="gzip copies of STDPipe cutouts (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=RESULTS / "fits-data", help="where the files are cached")
    parser.add_argument("--ztf", type=Path, default=None, help="folder of real .fits.gz cutouts (true/, false/)")
    arguments = parser.parse_args()

    survey = arguments.data / "survey"
    print(f"simulating {arguments.n} cutouts into {survey} (cached between runs) ...", flush=True)
    simulated_survey(survey, arguments.n, arguments.seed, mef_fraction=0.5)
    files = list_cutouts(survey / "true") + list_cutouts(survey / "false")
    stdpipe = [path for path in files if is_stdpipe(path)]
    half = arguments.n_gz // 2
    plain = [p for p in stdpipe if p.parent.name == "true"][:half] + [p for p in stdpipe if p.parent.name == "false"][
        : arguments.n_gz - half
    ]
    packed = gzip_copies(plain, arguments.data / "gz")
    ztf = (list_cutouts(arguments.ztf / "true") + list_cutouts(arguments.ztf / "false")) if arguments.ztf else []

    sets = {"survey": files, "plain": plain, "gzip": packed}
    labels = {
        "survey": f"{len(files)} simulated cutouts (half gmadet, half STDPipe)",
        "plain": f"{len(plain)} simulated STDPipe cutouts",
        "gzip": f"the same {len(packed)} STDPipe cutouts, .fits.gz",
    }
    if ztf:
        sets["ztf"] = ztf
        labels["ztf"] = f"{len(ztf)} real ZTF .fits.gz cutouts, in place"
    rates = {key: compare_readers(paths, arguments.rounds, labels[key]) for key, paths in sets.items()}

    convert: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=arguments.data) as scratch:
        trees = {
            "plain": linked_tree(plain, Path(scratch) / "plain"),
            "gzip": linked_tree(packed, Path(scratch) / "gzip"),
        }
        if ztf:
            trees["ztf"] = arguments.ztf
        for name, tree in trees.items():
            convert[name] = time_convert(tree, Path(scratch), arguments.rounds)
            print(f"otrain-convert on {labels[name]}: {convert[name]:.2f} s", flush=True)

    print(f"\notrain read from {Path(otrain.__file__).parent}")
    print(f"cores: {psutil.cpu_count(logical=True)}, workers: {default_workers()}")
    print("headers + pixels in the worker pool, files/s: through the pool (wall) and from the workers' CPU time")
    for key in sets:
        print(f"\n{labels[key]}")
        ours = rates[key]["otrain"]
        for name, rate in rates[key].items():
            line = f"  {name:8s} wall {rate['wall']:7.0f} ({rate['wall'] / ours['wall']:4.2f}x otrain's)"
            if name == "nothing":
                print(line + "   (the pool alone)")
            else:
                print(line + f"   CPU {rate['cpu']:7.0f} ({rate['cpu'] / ours['cpu']:4.2f}x otrain's)")

    survey_rates = rates["survey"]
    share, library = max((survey_rates[name]["cpu"] / survey_rates["otrain"]["cpu"], name) for name in LIBRARIES)
    wall_share = survey_rates[library]["wall"] / survey_rates["otrain"]["wall"]
    replace = share >= 1 - LIBRARY_TOLERANCE
    print(
        f"\nfastest library on the survey: {library}, {share:.2f}x otrain's reader by CPU time "
        f"({wall_share:.2f}x through the pool, its start-up included) -> "
        + (
            f"within {LIBRARY_TOLERANCE:.0%}: replace the hand-written reader with {library}"
            if replace
            else f"more than {LIBRARY_TOLERANCE:.0%} slower: keep the hand-written reader"
        )
    )
    gzip_share = {kind: rates["gzip"]["otrain"][kind] / rates["plain"]["otrain"][kind] for kind in ("wall", "cpu")}
    print(
        f".fits.gz through otrain's reader: {rates['gzip']['otrain']['wall']:.0f} files/s through the pool "
        f"(goal >= {GZIP_MIN_RATE:.0f}); {gzip_share['cpu']:.2f}x the rate of the same files uncompressed by CPU "
        f"time, {gzip_share['wall']:.2f}x through the pool (goal >= {GZIP_MIN_SHARE:.2f})"
    )
    convert_rates = {name: len(sets[name]) / seconds for name, seconds in convert.items()}
    print(
        f"otrain-convert, start-up included: {convert_rates['gzip']:.0f} files/s gzipped, "
        f"{convert_rates['plain']:.0f} files/s uncompressed ({convert_rates['gzip'] / convert_rates['plain']:.2f}x)"
        + (f", {convert_rates['ztf']:.0f} files/s on the real ZTF files" if "ztf" in convert else "")
    )

    result = {
        "cores": psutil.cpu_count(logical=True),
        "workers": default_workers(),
        "files": {key: len(paths) for key, paths in sets.items()},
        "read_files_per_s": {
            key: {name: {kind: round(r, 1) for kind, r in rate.items()} for name, rate in value.items()}
            for key, value in rates.items()
        },
        "fastest_library": library,
        "library_share_cpu": round(share, 3),
        "library_share_wall": round(wall_share, 3),
        "replace_with_library": replace,
        "gzip_files_per_s": round(rates["gzip"]["otrain"]["wall"], 1),
        "gzip_share_of_plain": {kind: round(value, 3) for kind, value in gzip_share.items()},
        "convert_files_per_s": {name: round(rate, 1) for name, rate in convert_rates.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_fits.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'bench_fits.json'}")


if __name__ == "__main__":
    main()
