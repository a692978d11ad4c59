"""The survey: which cutouts to draw, writing them in parallel, and moving the result into place."""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from otrain.errors import DataError
from otrain.io.markers import SIMULATE_MARKER, read_marker, write_marker
from otrain.io.parallel import map_chunks
from otrain.options import SIMULATE_OUTPUTS, SimulateConfig
from otrain.simulate.kinds import BOGUS_KINDS, KINDS, REAL_KINDS, render_candidate
from otrain.simulate.packets import NIGHT_PACKETS, night_packets
from otrain.simulate.physics import Observation, draw_observation
from otrain.simulate.writers import CrossmatchEntry, gmadet_hdul, stdpipe_hdul, write_crossmatch, write_truth

__all__ = ["OBJECT_KEYWORD", "SurveySummary", "simulate_survey"]

#: The header keyword naming each cutout's simulated object (``otrain-convert --group-keyword OBJECTID``).
OBJECT_KEYWORD = "OBJECTID"

_SET_CODES = {"true": 1, "false": 2, "night": 3, "injected": 4, "night_images": 5}
_CANDID_BASE = {"true": 1_000_000, "false": 2_000_000, "night": 3_000_000}
_N_NIGHT_IMAGES = 4
#: Fraction of labelled real cutouts that sit at an image edge (flagged EDGE = True).
_REAL_EDGE_FRACTION = 0.02
#: Width and height of the simulated images the cutouts come from, pixels.
_IMAGE_SIZE = 2048
_PIXEL_SCALE = 0.4 / 3600.0  # degrees
#: Sky position of an image pixel (0-based): 0.4"/pixel in RA and Dec, (150, 2) degrees at the
#: image centre. A plate carree projection with its reference point on the equator is exactly
#: linear in RA and Dec.
_SKY = WCS(naxis=2)
_SKY.wcs.ctype = ["RA---CAR", "DEC--CAR"]
_SKY.wcs.crval = [150.0, 0.0]
_SKY.wcs.cdelt = [_PIXEL_SCALE, _PIXEL_SCALE]
_SKY.wcs.crpix = [_IMAGE_SIZE / 2 + 1, _IMAGE_SIZE / 2 + 1 - 2.0 / _PIXEL_SCALE]
_SKY.wcs.set()


def _sky_position(x: float, y: float) -> tuple[float, float]:
    """RA and Dec in degrees, rounded to 7 decimals (0.4 mas), of the image pixel (x, y)."""
    ra, dec = _SKY.pixel_to_world_values(x, y)
    return round(float(ra), 7), round(float(dec), 7)


@dataclass(frozen=True)
class _Job:
    set_name: str
    index: int
    kind: str
    stdpipe: bool
    folder: str
    cutout_size: int
    seed: int
    image: int = -1  # night only: which image of the night
    injected_mag: float | None = None
    planes: tuple[str, ...] = ("DIFF",)  # of a gmadet-style cutout, in file order


def _night_observations(seed: int, n_images: int) -> list[Observation]:
    rng = np.random.default_rng([seed, _SET_CODES["night_images"]])
    first = draw_observation(rng)
    observations = []
    for _ in range(n_images):
        # One telescope, one night, one band: the seeing and sky drift between images.
        observations.append(
            Observation(
                **{
                    **asdict(first),
                    "fwhm": float(np.clip(first.fwhm * rng.uniform(0.85, 1.2), 1.5, 5.0)),
                    "sky": first.sky * float(rng.uniform(0.8, 1.3)),
                }
            )
        )
    return observations


def _night_image_name(image: int) -> str:
    return f"night_image_{image:02d}.fits"


def _write_job(job: _Job, root: Path) -> dict[str, object]:
    rng = np.random.default_rng([job.seed, _SET_CODES[job.set_name], job.index])
    if job.set_name == "night":
        observation = _night_observations(job.seed, _N_NIGHT_IMAGES)[job.image]
    else:
        observation = draw_observation(rng)
    kind = KINDS[job.kind]
    # A certain or impossible edge takes no draw.
    edge = kind.edge >= 1.0 or (kind.edge > 0.0 and bool(rng.uniform() < kind.edge))
    candidate = render_candidate(
        job.kind, job.cutout_size, observation, rng, mag=job.injected_mag, nan_mask=job.stdpipe
    )
    candidate = replace(candidate, edge=edge)
    candid = _CANDID_BASE[job.set_name] + job.index
    margin = job.cutout_size // 2
    xpos = float(rng.uniform(0, margin)) if edge else float(rng.uniform(margin, _IMAGE_SIZE - margin))
    ypos = float(rng.uniform(margin, _IMAGE_SIZE - margin))
    ra, dec = _sky_position(xpos, ypos)
    image = job.image if job.image >= 0 else int(job.index // 50)
    values: dict[str, object] = {
        "CANDID": candid,
        # The simulated object: one per cutout (a real survey's objectId groups several alerts).
        OBJECT_KEYWORD: f"SIM{candid:07d}",
        "RA": ra,
        "DEC": dec,
        "FILE": _night_image_name(image) if job.set_name == "night" else f"{job.set_name}_image_{image:04d}.fits",
        "XPOS": round(xpos, 3),
        "YPOS": round(ypos, 3),
        "MAG": round(candidate.mag, 4),
        "MAGERR": round(candidate.magerr, 4),
        "FILTER": observation.band,
        "FWHM": round(candidate.fwhm, 3),
        "FWHMPSF": round(observation.fwhm, 3),
    }
    relative = Path(job.folder) / f"cand_{candid:07d}.fits"
    if job.stdpipe:
        hdul = stdpipe_hdul(candidate, values, observation.zero_point)
    else:
        hdul = gmadet_hdul(candidate, values, job.planes)
    hdul.writeto(root / relative)
    return {
        "path": relative.as_posix(),
        "set": job.set_name,
        "label": 1 if kind.real else 0,
        "kind": job.kind,
        "convention": "stdpipe" if job.stdpipe else "gmadet",
        "edge": edge,
        "candid": candid,
        "mag_true": round(candidate.mag_true, 4),
        "snr_true": round(candidate.snr_true, 3),
        "fwhm_psf": round(observation.fwhm, 3),
        "mag_limit": round(observation.limiting_mag, 4),
        "injected": job.injected_mag is not None,
        "_xpos": values["XPOS"],
        "_ypos": values["YPOS"],
        "_ra": ra,
        "_dec": dec,
    }


def _write_jobs(jobs: Sequence[tuple[_Job, str]]) -> list[dict[str, object]]:
    """Worker task: write a chunk of cutouts; returns their truth rows."""
    return [_write_job(job, Path(root)) for job, root in jobs]


def _kinds(shares: Mapping[str, float], count: int, rng: np.random.Generator) -> list[str]:
    names = list(shares)
    return [
        names[i] for i in rng.choice(len(names), size=count, p=np.array(list(shares.values())) / sum(shares.values()))
    ]


def _labelled_jobs(config: SimulateConfig) -> list[_Job]:
    jobs = []
    for set_name, count, shares in (("true", config.n_true, REAL_KINDS), ("false", config.n_false, BOGUS_KINDS)):
        rng = np.random.default_rng([config.seed, _SET_CODES[set_name], 0, 0])
        kinds = _kinds(shares, count, rng)
        stdpipe = rng.uniform(size=count) < config.mef_fraction
        if set_name == "true":
            edge = rng.uniform(size=count) < _REAL_EDGE_FRACTION
            kinds = ["masked_real" if at_edge else kind for kind, at_edge in zip(kinds, edge, strict=True)]
        for index in range(count):
            jobs.append(
                _Job(
                    set_name,
                    index,
                    kinds[index],
                    bool(stdpipe[index]),
                    set_name,
                    config.cutout_size,
                    config.seed,
                    planes=config.planes,
                )
            )
    return jobs


@dataclass(frozen=True)
class _Injection:
    image: int
    idx: int
    mag: float
    detected_index: int | None  # index of the night job that detected it


def _night_jobs(config: SimulateConfig) -> tuple[list[_Job], list[_Injection]]:
    """Candidates of the night: real transients, injected sources and bogus detections."""
    rng = np.random.default_rng([config.seed, _SET_CODES["injected"], 0])
    observations = _night_observations(config.seed, _N_NIGHT_IMAGES)
    n_injected_detected = round(config.n_night * 0.3)
    n_other = config.n_night - n_injected_detected
    n_real_other = round(n_other * 0.3)
    kinds = ["point"] * n_real_other + _kinds(BOGUS_KINDS, n_other - n_real_other, rng)
    jobs: list[_Job] = []
    injections: list[_Injection] = []
    per_image_idx = [0] * _N_NIGHT_IMAGES
    order = rng.permutation(config.n_night)
    for position in range(config.n_night):
        index = int(order[position])
        image = int(rng.integers(_N_NIGHT_IMAGES))
        if position < n_injected_detected:
            mag = observations[image].limiting_mag - 4.0 + 4.4 * math.sqrt(rng.uniform())
            jobs.append(
                _Job(
                    "night", index, "point", False, "night", config.cutout_size, config.seed, image, mag, config.planes
                )
            )
            injections.append(_Injection(image, per_image_idx[image], mag, index))
            per_image_idx[image] += 1
        else:
            kind = kinds[position - n_injected_detected]
            jobs.append(
                _Job("night", index, kind, False, "night", config.cutout_size, config.seed, image, planes=config.planes)
            )
    # Injected sources too faint to be detected: listed in crossmatch.dat, no cutout.
    for _ in range(round(n_injected_detected * 0.2)):
        image = int(rng.integers(_N_NIGHT_IMAGES))
        mag = observations[image].limiting_mag + float(rng.uniform(0.3, 1.5))
        injections.append(_Injection(image, per_image_idx[image], mag, None))
        per_image_idx[image] += 1
    jobs.sort(key=lambda job: job.index)
    return jobs, injections


def _crossmatch_entries(
    injections: list[_Injection], rows_by_index: dict[int, dict[str, object]], seed: int
) -> list[CrossmatchEntry]:
    """List the injected sources by image: where the detected ones were found, where the others lie."""
    rng = np.random.default_rng([seed, _SET_CODES["injected"], 1])
    observations = _night_observations(seed, _N_NIGHT_IMAGES)
    entries = []
    for injection in sorted(injections, key=lambda item: (item.image, item.idx)):
        observation = observations[injection.image]
        if injection.detected_index is not None:
            row = rows_by_index[injection.detected_index]
            x, y, ra, dec = row["_xpos"], row["_ypos"], row["_ra"], row["_dec"]
            candid: int | None = int(row["candid"])
        else:
            x = round(float(rng.uniform(32, _IMAGE_SIZE - 32)), 3)
            y = round(float(rng.uniform(32, _IMAGE_SIZE - 32)), 3)
            ra, dec = _sky_position(x, y)
            candid = None
        entries.append(
            CrossmatchEntry(
                idx=injection.idx,
                image=_night_image_name(injection.image),
                x=float(x),
                y=float(y),
                ra=float(ra),
                dec=float(dec),
                mag=injection.mag,
                band=observation.band,
                count_adu=observation.flux_of(injection.mag) / observation.gain,
                candid=candid,
            )
        )
    return entries


def _remove_previous_survey(out: Path) -> None:
    """Delete the files a previous otrain-simulate run listed in truth.csv, and nothing else."""
    truth = out / "truth.csv"
    if truth.is_file():
        with open(truth, newline="") as stream:
            for row in csv.DictReader(stream):
                (out / row["path"]).unlink(missing_ok=True)
    previous = read_marker(out, "otrain-simulate") or {}
    written = ("truth.csv", "night/crossmatch.dat", *((NIGHT_PACKETS,) if previous.get("night_packets") else ()))
    for name in (*written, SIMULATE_MARKER):
        (out / name).unlink(missing_ok=True)


def _move_into_place(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; into an existing folder, move its files one by one."""
    if source.is_dir() and target.is_dir():
        for item in source.iterdir():
            os.replace(item, target / item.name)
        return
    os.replace(source, target)


@dataclass(frozen=True)
class SurveySummary:
    """Counts of what :func:`simulate_survey` wrote."""

    out: Path
    n_true: int
    n_false: int
    n_night: int
    n_injected: int
    n_injected_detected: int
    n_edge: int
    n_stdpipe: int


def simulate_survey(config: SimulateConfig) -> SurveySummary:
    """Write the synthetic survey that ``config`` describes.

    The files are first written into a temporary folder inside ``config.out`` and moved into
    place at the end, so an interrupted run never leaves a half-written survey behind. With
    ``overwrite``, only the files of the previous survey (those listed in its truth.csv) are
    replaced; anything else in the folders stays.

    Parameters
    ----------
    config : SimulateConfig
        Validated options of otrain-simulate.

    Returns
    -------
    SurveySummary
        What was written.

    Raises
    ------
    DataError
        If the survey cannot be written into ``config.out``.
    """
    try:
        config.out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".simulate-", dir=config.out))
    except OSError as error:
        raise DataError(f"{config.out}: cannot write the survey ({error.strerror or error})") from None
    try:
        for folder in ("true", "false", "night"):
            (staging / folder).mkdir()
        night_jobs, injections = _night_jobs(config)
        jobs = _labelled_jobs(config) + night_jobs
        rows: list[dict[str, object]] = []
        for _, chunk_rows in map_chunks(
            _write_jobs,
            [(job, str(staging)) for job in jobs],
            workers=config.workers,
            description="simulating cutouts",
            preload=["otrain.simulate"],
        ):
            rows.extend(chunk_rows)
        night_rows = {int(row["candid"]) - _CANDID_BASE["night"]: row for row in rows if row["set"] == "night"}
        write_crossmatch(staging / "night" / "crossmatch.dat", _crossmatch_entries(injections, night_rows, config.seed))
        write_truth(staging / "truth.csv", rows)
        if config.night_packets:
            night_packets(staging, rows, config.planes, staging / NIGHT_PACKETS)
        _remove_previous_survey(config.out)
        for name in SIMULATE_OUTPUTS:
            if (staging / name).exists():
                _move_into_place(staging / name, config.out / name)
        write_marker(
            config.out, "otrain-simulate", config.model_dump(mode="json", exclude={"out", "workers", "overwrite"})
        )
    except OSError as error:
        raise DataError(f"{config.out}: cannot write the survey ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SurveySummary(
        out=config.out,
        n_true=config.n_true,
        n_false=config.n_false,
        n_night=config.n_night,
        n_injected=len(injections),
        n_injected_detected=sum(1 for injection in injections if injection.detected_index is not None),
        n_edge=sum(1 for row in rows if row["edge"]),
        n_stdpipe=sum(1 for row in rows if row["convention"] == "stdpipe"),
    )
