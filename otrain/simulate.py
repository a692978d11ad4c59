"""The built-in synthetic survey: labelled real/bogus cutouts and a night of candidates.

Every cutout is the difference of a simulated science image and a deeper, resampled reference
image, both with Poisson and read noise, so the noise, the artefacts and the faint end behave
like real subtraction residuals:

* **real** (``true/``): point sources with a Moffat PSF of varied seeing (FWHM 1.5 to 5 px),
  sub-pixel offsets and magnitudes from bright down to and below the 5-sigma limit; a quarter
  sit on the imperfect subtraction of their host galaxy;
* **bogus** (``false/``): misaligned-subtraction dipoles, PSF-mismatch rings, cosmic rays
  (sharp pixels and short tracks), hot pixels, bad columns, saturated-star residuals with
  bleed trails, pure noise peaks, and cutouts cut by a masked (NaN or zero) region.

Faint real sources and noise peaks overlap, so a good classifier is not perfect on it.
Cutouts are written gmadet-style (one HDU, string EDGE) or STDPipe-style (metadata in a
data-less primary HDU, planes in IMAGE/TEMPLATE/DIFF/MASK extensions, logical EDGE). The night
(``night/``, gmadet-style) mixes real transients, injected sources and bogus candidates; its
``crossmatch.dat`` lists the injected sources in gmadet-checksim format, undetected ones with
``closest_candID = None``. ``truth.csv`` records what every file really is.

Everything is drawn from generators seeded by (seed, set, index): the same seed gives the same
files, byte for byte, whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from otrain.config import SimulateConfig
from otrain.errors import DataError
from otrain.parallel import map_chunks

__all__ = [
    "BOGUS_KINDS",
    "FAINT_FRACTION",
    "REAL_KINDS",
    "Observation",
    "SimulatedCandidate",
    "SurveySummary",
    "render_candidate",
    "simulate_survey",
]

#: Kinds of real candidates and their shares.
REAL_KINDS = {"point": 0.75, "point_on_galaxy": 0.25}
#: Kinds of bogus candidates and their shares.
BOGUS_KINDS = {
    "noise_peak": 0.14,
    "dipole": 0.20,
    "psf_ring": 0.12,
    "cosmic_ray": 0.10,
    "cosmic_ray_track": 0.08,
    "hot_pixel": 0.07,
    "bad_column": 0.06,
    "saturated_star": 0.09,
    "masked_edge": 0.14,
}
#: Share of real sources in the faint tail, from 0.3 mag above to 0.8 mag below the 5-sigma
#: limit (signal-to-noise about 6.6 down to 2.4); the rest are brighter, up to 6 mag above it.
FAINT_FRACTION = 0.12
_FILTERS = ("g", "r", "i", "z", "Clear")
_SET_CODES = {"true": 1, "false": 2, "night": 3, "injected": 4, "night_images": 5}
_CANDID_BASE = {"true": 1_000_000, "false": 2_000_000, "night": 3_000_000}
_IMAGE_SIZE = 2048
_OUTPUTS = ("true", "false", "night", "truth.csv")
#: Written last into --out: proves the survey there is otrain-simulate's own.
MARKER = ".otrain-simulate.json"
_TRUTH_COLUMNS = (
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


@dataclass(frozen=True)
class Observation:
    """Conditions of the image a candidate comes from."""

    fwhm: float  #: seeing FWHM in pixels
    beta: float  #: Moffat beta
    sky: float  #: sky level, electrons per pixel
    read_noise: float  #: electrons
    gain: float  #: electrons per ADU
    zero_point: float  #: magnitude of 1 ADU
    reference_depth: int  #: the reference is a stack of this many exposures
    band: str
    saturation: float  #: electrons

    @property
    def pixel_sigma(self) -> float:
        """Noise of one difference-image pixel, electrons."""
        single = self.sky + self.read_noise**2
        return math.sqrt(single + single / self.reference_depth)

    @property
    def limiting_flux(self) -> float:
        """5-sigma point-source flux, electrons (noise-equivalent area of the PSF)."""
        sigma = self.fwhm / 2.3548
        return 5.0 * self.pixel_sigma * math.sqrt(4.0 * math.pi * sigma**2)

    @property
    def limiting_mag(self) -> float:
        """5-sigma limiting magnitude."""
        return self.mag_of(self.limiting_flux)

    def flux_of(self, mag: float) -> float:
        """Electrons of a source of magnitude ``mag``."""
        return self.gain * 10.0 ** (-0.4 * (mag - self.zero_point))

    def mag_of(self, flux: float) -> float:
        """Magnitude of ``flux`` electrons."""
        return self.zero_point - 2.5 * math.log10(flux / self.gain)


def draw_observation(rng: np.random.Generator) -> Observation:
    """Draw observing conditions: seeing, sky, detector, zero point, band."""
    return Observation(
        fwhm=float(rng.uniform(1.5, 5.0)),
        beta=float(rng.uniform(2.5, 4.5)),
        sky=float(np.exp(rng.uniform(np.log(80.0), np.log(3000.0)))),
        read_noise=float(rng.uniform(3.0, 12.0)),
        gain=float(rng.uniform(0.8, 3.0)),
        zero_point=float(rng.uniform(24.0, 27.0)),
        reference_depth=int(rng.integers(3, 10)),
        band=str(rng.choice(_FILTERS, p=[0.2, 0.3, 0.2, 0.1, 0.2])),
        saturation=float(rng.uniform(4e4, 1.5e5)),
    )


# --------------------------------------------------------------------------------------------
# Rendering: expected electrons on an n x n grid, pixel-integrated by 3x3 oversampling.

_OVERSAMPLE = 3


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = (np.arange(n * _OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5
    return np.meshgrid(offsets, offsets, indexing="ij")


def _bin(fine: np.ndarray, n: int) -> np.ndarray:
    return fine.reshape(n, _OVERSAMPLE, n, _OVERSAMPLE).mean(axis=(1, 3))


def _elliptical_r2(n: int, y0: float, x0: float, axis_ratio: float, angle: float) -> np.ndarray:
    yy, xx = _grid(n)
    dy, dx = yy - y0, xx - x0
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = dx * cos + dy * sin, (-dx * sin + dy * cos) / axis_ratio
    return u * u + v * v


def moffat(
    n: int, y0: float, x0: float, fwhm: float, beta: float, axis_ratio: float = 1.0, angle: float = 0.0
) -> np.ndarray:
    """Unit-flux Moffat profile centred at (y0, x0), integrated over the pixels of an n x n grid."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    r2 = _elliptical_r2(n, y0, x0, axis_ratio, angle)
    density = (beta - 1.0) / (math.pi * alpha * alpha * axis_ratio) * (1.0 + r2 / (alpha * alpha)) ** (-beta)
    return _bin(density, n)


def exponential_disc(n: int, y0: float, x0: float, scale: float, axis_ratio: float, angle: float) -> np.ndarray:
    """Unit-flux exponential (Sersic n = 1) profile, integrated over pixels."""
    r = np.sqrt(_elliptical_r2(n, y0, x0, axis_ratio, angle))
    density = np.exp(-r / scale) / (2.0 * math.pi * scale * scale * axis_ratio)
    return _bin(density, n)


def _deposit_line(n: int, y0: float, x0: float, length: float, angle: float, total: float) -> np.ndarray:
    """Charge of a straight cosmic-ray track, shared bilinearly between pixels."""
    image = np.zeros((n, n))
    steps = max(2, int(length * 4))
    t = np.linspace(-length / 2, length / 2, steps)
    ys, xs = y0 + t * math.sin(angle), x0 + t * math.cos(angle)
    for y, x in zip(ys, xs, strict=True):
        iy, ix = math.floor(y), math.floor(x)
        fy, fx = y - iy, x - ix
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                if 0 <= iy + dy < n and 0 <= ix + dx < n:
                    image[iy + dy, ix + dx] += total / steps * wy * wx
    return image


def _shift_bilinear(image: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Resample by a sub-pixel shift (what warping the reference does to its noise)."""
    shifted = (1 - sy) * image + sy * np.roll(image, 1, axis=0)
    return (1 - sx) * shifted + sx * np.roll(shifted, 1, axis=1)


@dataclass
class _Scene:
    """Expected electrons in the science and reference images, and extra science charge."""

    science: np.ndarray
    reference: np.ndarray
    deposits: np.ndarray  # cosmic rays, hot pixels, bad columns: charge added after exposure
    saturate: bool = False
    bleed: np.ndarray | None = None
    mask: np.ndarray | None = None  # True where the pixels are masked (image edge, bad region)


def _difference(scene: _Scene, observation: Observation, rng: np.random.Generator) -> np.ndarray:
    """Noisy science minus noisy, deeper, resampled reference, in ADU."""
    sky, depth = observation.sky, observation.reference_depth
    science_expected = sky + scene.science
    reference_expected = sky + scene.reference
    if scene.saturate:
        science_expected = np.minimum(science_expected, observation.saturation)
        reference_expected = np.minimum(reference_expected, observation.saturation)
    science = rng.poisson(np.clip(science_expected, 0, None)) + rng.normal(
        0.0, observation.read_noise, science_expected.shape
    )
    science = science + scene.deposits
    if scene.bleed is not None:
        science = np.maximum(science, scene.bleed)
    reference_noise = rng.poisson(np.clip(depth * reference_expected, 0, None)) / depth - reference_expected
    reference_noise = reference_noise + rng.normal(
        0.0, observation.read_noise / math.sqrt(depth), reference_expected.shape
    )
    reference_noise = _shift_bilinear(reference_noise, rng.uniform(0, 1), rng.uniform(0, 1))
    background_error = rng.normal(0.0, 0.05 * observation.pixel_sigma)
    difference = science - sky - (reference_expected + reference_noise - sky) - background_error
    return difference / observation.gain


def _real_mag(observation: Observation, rng: np.random.Generator) -> float:
    if rng.uniform() < FAINT_FRACTION:
        return observation.limiting_mag + float(rng.uniform(-0.3, 0.8))
    return observation.limiting_mag + float(rng.uniform(-6.0, -0.3))


def _centre(n: int, rng: np.random.Generator, spread: float = 0.5) -> tuple[float, float]:
    """Source position: the cutout's central pixel plus a sub-pixel offset."""
    c = n // 2
    return c + float(rng.uniform(-spread, spread)), c + float(rng.uniform(-spread, spread))


def _psf(
    n: int, observation: Observation, y: float, x: float, rng: np.random.Generator, fwhm: float | None = None
) -> np.ndarray:
    return moffat(
        n,
        y,
        x,
        fwhm or observation.fwhm,
        observation.beta,
        float(rng.uniform(0.85, 1.0)),
        float(rng.uniform(0, math.pi)),
    )


def _mask_region(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mask a band along one side of the cutout (the image border or a bad region)."""
    depth = round(n * rng.uniform(0.2, 0.45))
    mask = np.zeros((n, n), dtype=bool)
    side = int(rng.integers(4))
    if side == 0:
        mask[:depth, :] = True
    elif side == 1:
        mask[-depth:, :] = True
    elif side == 2:
        mask[:, :depth] = True
    else:
        mask[:, -depth:] = True
    return mask


def _scene(kind: str, n: int, observation: Observation, rng: np.random.Generator, mag: float | None) -> _Scene:
    """Lay out the expected electrons of one candidate of the given kind."""
    zeros = np.zeros((n, n))
    sigma = observation.pixel_sigma
    y, x = _centre(n, rng)
    if kind in ("point", "point_on_galaxy", "masked_real"):
        assert mag is not None
        source = observation.flux_of(mag) * _psf(n, observation, y, x, rng)
        scene = _Scene(science=source, reference=zeros.copy(), deposits=zeros.copy())
        if kind == "point_on_galaxy":
            galaxy_flux = observation.flux_of(observation.limiting_mag - rng.uniform(1.0, 5.0))
            scale = float(rng.uniform(1.0, 4.0))
            offset_r, offset_angle = rng.uniform(0.0, 1.5) * scale * 1.7, rng.uniform(0, 2 * math.pi)
            gy, gx = y + offset_r * math.sin(offset_angle), x + offset_r * math.cos(offset_angle)
            smoothing = math.hypot(scale, observation.fwhm / 2.3548)
            q, angle = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0, math.pi))
            galaxy = exponential_disc(n, gy, gx, smoothing, q, angle)
            shifted = exponential_disc(
                n, gy + rng.normal(0, 0.15), gx + rng.normal(0, 0.15), smoothing * rng.uniform(0.93, 1.07), q, angle
            )
            scene.science = scene.science + galaxy_flux * galaxy
            scene.reference = galaxy_flux * (1 + rng.normal(0, 0.03)) * shifted
        if kind == "masked_real":
            scene.mask = _mask_region(n, rng)
        return scene
    if kind == "dipole":
        flux = observation.flux_of(observation.limiting_mag - rng.uniform(1.5, 7.0))
        shift, angle = rng.uniform(0.15, 1.5), rng.uniform(0, 2 * math.pi)
        dy, dx = 0.5 * shift * math.sin(angle), 0.5 * shift * math.cos(angle)
        science = flux * _psf(n, observation, y + dy, x + dx, rng)
        reference = flux * (1 + rng.normal(0, 0.03)) * _psf(n, observation, y - dy, x - dx, rng)
        return _Scene(science=science, reference=reference, deposits=zeros.copy())
    if kind == "psf_ring":
        flux = observation.flux_of(observation.limiting_mag - rng.uniform(1.5, 6.0))
        ratio = rng.uniform(0.7, 0.88) if rng.uniform() < 0.5 else rng.uniform(1.12, 1.4)
        science = flux * _psf(n, observation, y, x, rng)
        reference = flux * (1 + rng.normal(0, 0.03)) * _psf(n, observation, y, x, rng, fwhm=observation.fwhm * ratio)
        return _Scene(science=science, reference=reference, deposits=zeros.copy())
    if kind == "cosmic_ray":
        deposits = zeros.copy()
        cy, cx = n // 2, n // 2
        pixels = [(cy, cx)]
        for _ in range(int(rng.integers(0, 4))):
            py, px = pixels[-1]
            step = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
            pixels.append((min(max(py + step[0], 0), n - 1), min(max(px + step[1], 0), n - 1)))
        for py, px in pixels:
            deposits[py, px] += sigma * rng.uniform(4.0, 200.0)
        return _Scene(science=zeros.copy(), reference=zeros.copy(), deposits=deposits)
    if kind == "cosmic_ray_track":
        length = min(rng.uniform(4.0, 25.0), n * 0.8)
        total = sigma * rng.uniform(4.0, 60.0) * length
        deposits = _deposit_line(n, y, x, length, rng.uniform(0, math.pi), total)
        return _Scene(science=zeros.copy(), reference=zeros.copy(), deposits=deposits)
    if kind == "hot_pixel":
        deposits = zeros.copy()
        deposits[n // 2, n // 2] = sigma * rng.uniform(5.0, 500.0)
        return _Scene(science=zeros.copy(), reference=zeros.copy(), deposits=deposits)
    if kind == "bad_column":
        deposits = zeros.copy()
        start = int(rng.integers(0, n // 2))
        stop = int(rng.integers(n // 2 + 1, n + 1))
        width = 1 if rng.uniform() < 0.8 else 2
        level = sigma * rng.uniform(3.0, 30.0)
        deposits[start:stop, n // 2 : n // 2 + width] = level * rng.uniform(0.7, 1.3, (stop - start, width))
        return _Scene(science=zeros.copy(), reference=zeros.copy(), deposits=deposits)
    if kind == "saturated_star":
        flux = observation.flux_of(observation.limiting_mag - rng.uniform(7.0, 10.0))
        science = flux * _psf(n, observation, y, x, rng)
        reference = (
            flux * (1 + rng.normal(0, 0.05)) * _psf(n, observation, y + rng.normal(0, 0.3), x + rng.normal(0, 0.3), rng)
        )
        excess = float(np.clip(observation.sky + science - observation.saturation, 0, None).sum())
        half_length = min(int(excess / observation.saturation / 2) + 2, n // 2)
        bleed = np.zeros((n, n))
        column = round(x)
        bleed[max(0, int(y) - half_length) : int(y) + half_length + 1, column] = observation.saturation
        return _Scene(science=science, reference=reference, deposits=zeros.copy(), saturate=True, bleed=bleed)
    if kind == "masked_edge":
        mask = _mask_region(n, rng)
        border = mask.copy()
        border[1:, :] |= mask[:-1, :]
        border[:-1, :] |= mask[1:, :]
        border[:, 1:] |= mask[:, :-1]
        border[:, :-1] |= mask[:, 1:]
        ramp = np.where(border & ~mask, sigma * rng.uniform(3.0, 30.0), 0.0)
        deposits = ramp * rng.uniform(0.5, 1.5, (n, n))
        return _Scene(science=zeros.copy(), reference=zeros.copy(), deposits=deposits, mask=mask)
    if kind == "noise_peak":
        return _Scene(science=zeros.copy(), reference=zeros.copy(), deposits=zeros.copy())
    raise ValueError(f"unknown candidate kind {kind!r}")


def _centre_on_peak(difference: np.ndarray, observation: Observation) -> np.ndarray:
    """Roll a noise cutout so its strongest PSF-smoothed peak near the centre sits at the centre."""
    n = difference.shape[0]
    kernel = moffat(n, n // 2, n // 2, observation.fwhm, observation.beta)
    smoothed = np.real(np.fft.ifft2(np.fft.fft2(difference) * np.fft.fft2(np.fft.ifftshift(kernel))))
    half = max(2, n // 6)
    window = smoothed[n // 2 - half : n // 2 + half, n // 2 - half : n // 2 + half]
    py, px = np.unravel_index(int(np.argmax(window)), window.shape)
    return np.roll(difference, (half - py, half - px), axis=(0, 1))


def _measure(difference: np.ndarray, observation: Observation) -> tuple[float, float, float]:
    """Aperture magnitude, its error and a second-moment FWHM, as a detection pipeline would."""
    n = difference.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = (yy - n // 2) ** 2 + (xx - n // 2) ** 2
    finite = np.isfinite(difference)
    aperture = (r2 <= observation.fwhm**2) & finite
    sigma_adu = observation.pixel_sigma / observation.gain
    flux = float(difference[aperture].sum())
    flux_error = sigma_adu * math.sqrt(max(int(aperture.sum()), 1))
    flux = max(flux, flux_error)
    mag = observation.zero_point - 2.5 * math.log10(flux)
    magerr = 1.0857 * flux_error / flux
    window = (r2 <= (2.5 * observation.fwhm) ** 2) & finite & (difference > 2.0 * sigma_adu)
    weights = np.where(window, difference, 0.0)
    if weights.sum() > 0 and np.count_nonzero(window) >= 2:
        second_moment = float((weights * r2).sum() / weights.sum()) / 2.0
        fwhm = 2.3548 * math.sqrt(max(second_moment, 0.05))
    else:
        fwhm = observation.fwhm
    return mag, magerr, fwhm


@dataclass(frozen=True)
class SimulatedCandidate:
    """One simulated cutout: its planes and what a detection pipeline would measure."""

    pixels: np.ndarray  # float32 ADU, NaN where masked (STDPipe) or 0 (gmadet)
    science: np.ndarray
    reference: np.ndarray
    mask: np.ndarray
    kind: str
    mag_true: float
    snr_true: float
    mag: float
    magerr: float
    fwhm: float
    edge: bool


def render_candidate(
    kind: str,
    n: int,
    observation: Observation,
    rng: np.random.Generator,
    mag: float | None = None,
    nan_mask: bool = True,
) -> SimulatedCandidate:
    """Simulate one candidate cutout of ``kind`` observed under ``observation``.

    Parameters
    ----------
    kind : str
        One of :data:`REAL_KINDS`, :data:`BOGUS_KINDS`, or ``"masked_real"``.
    n : int
        Cutout size in pixels.
    observation : Observation
        The image's conditions.
    rng : numpy.random.Generator
        Source of randomness.
    mag : float, optional
        Magnitude of a real source; drawn when not given.
    nan_mask : bool
        Masked pixels become NaN (STDPipe) rather than 0 (gmadet).

    Returns
    -------
    SimulatedCandidate
        Pixels, the science and reference planes, and what a pipeline would measure.
    """
    is_real = kind in REAL_KINDS or kind == "masked_real"
    if is_real and mag is None:
        mag = _real_mag(observation, rng)
    scene = _scene(kind, n, observation, rng, mag)
    difference = _difference(scene, observation, rng)
    if kind == "noise_peak":
        difference = _centre_on_peak(difference, observation)
    mask = scene.mask if scene.mask is not None else np.zeros((n, n), dtype=bool)
    difference = np.where(mask, np.nan if nan_mask else 0.0, difference)
    mag_measured, magerr, fwhm = _measure(difference, observation)
    flux = observation.flux_of(mag) if mag is not None else 0.0
    snr = flux / observation.limiting_flux * 5.0
    return SimulatedCandidate(
        pixels=difference.astype(np.float32),
        science=((observation.sky + scene.science) / observation.gain).astype(np.float32),
        reference=((observation.sky + scene.reference) / observation.gain).astype(np.float32),
        mask=mask,
        kind=kind,
        mag_true=float(mag) if mag is not None else float("nan"),
        snr_true=float(snr),
        mag=float(mag_measured),
        magerr=float(magerr),
        fwhm=float(fwhm),
        edge=False,
    )


# --------------------------------------------------------------------------------------------
# Files.


def _gmadet_hdul(candidate: SimulatedCandidate, header_values: dict[str, object]) -> fits.HDUList:
    header = fits.Header()
    for key, value in header_values.items():
        header[key] = value
    header["EDGE"] = "True" if candidate.edge else "False"
    return fits.HDUList([fits.PrimaryHDU(candidate.pixels, header)])


def _stdpipe_hdul(
    candidate: SimulatedCandidate, header_values: dict[str, object], observation: Observation
) -> fits.HDUList:
    primary = fits.PrimaryHDU()
    header = primary.header
    header["NAME"] = str(header_values["CANDID"])
    for key in ("RA", "DEC", "FILE", "FWHM", "FWHMPSF"):
        header[key] = header_values[key]
    header["X"] = header_values["XPOS"]
    header["Y"] = header_values["YPOS"]
    header["HIERARCH mag_calib"] = header_values["MAG"]
    header["HIERARCH mag_calib_err"] = header_values["MAGERR"]
    header["MAG"] = round(float(header_values["MAG"]) - observation.zero_point, 4)  # instrumental
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
    kind, edge = job.kind, False
    if kind == "masked_edge":
        edge = bool(rng.uniform() < 0.5)
    elif kind == "masked_real":
        edge = True
    candidate = render_candidate(kind, job.cutout_size, observation, rng, mag=job.injected_mag, nan_mask=job.stdpipe)
    candidate = replace(candidate, edge=edge)
    candid = _CANDID_BASE[job.set_name] + job.index
    margin = job.cutout_size // 2
    xpos = float(rng.uniform(0, margin)) if edge else float(rng.uniform(margin, _IMAGE_SIZE - margin))
    ypos = float(rng.uniform(margin, _IMAGE_SIZE - margin))
    image = job.image if job.image >= 0 else int(job.index // 50)
    values: dict[str, object] = {
        "CANDID": candid,
        "RA": round(150.0 + (xpos - _IMAGE_SIZE / 2) * 0.4 / 3600.0, 7),
        "DEC": round(2.0 + (ypos - _IMAGE_SIZE / 2) * 0.4 / 3600.0, 7),
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
    hdul = _stdpipe_hdul(candidate, values, observation) if job.stdpipe else _gmadet_hdul(candidate, values)
    hdul.writeto(root / relative)
    return {
        "path": relative.as_posix(),
        "set": job.set_name,
        "label": 1 if kind in REAL_KINDS or kind == "masked_real" else 0,
        "kind": kind,
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
        "_ra": values["RA"],
        "_dec": values["DEC"],
    }


def _write_jobs(jobs: Sequence[tuple[_Job, str]]) -> list[dict[str, object]]:
    """Worker task: write a chunk of cutouts; returns their truth rows."""
    return [_write_job(job, Path(root)) for job, root in jobs]


_N_NIGHT_IMAGES = 4
#: Fraction of labelled real cutouts that sit at an image edge (flagged EDGE = True).
_REAL_EDGE_FRACTION = 0.02


def _kinds(shares: dict[str, float], count: int, rng: np.random.Generator) -> list[str]:
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
                _Job(set_name, index, kinds[index], bool(stdpipe[index]), set_name, config.cutout_size, config.seed)
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
            jobs.append(_Job("night", index, "point", False, "night", config.cutout_size, config.seed, image, mag))
            injections.append(_Injection(image, per_image_idx[image], mag, index))
            per_image_idx[image] += 1
        else:
            kind = kinds[position - n_injected_detected]
            jobs.append(_Job("night", index, kind, False, "night", config.cutout_size, config.seed, image))
    # Injected sources too faint to be detected: listed in crossmatch.dat, no cutout.
    for _ in range(round(n_injected_detected * 0.2)):
        image = int(rng.integers(_N_NIGHT_IMAGES))
        mag = observations[image].limiting_mag + float(rng.uniform(0.3, 1.5))
        injections.append(_Injection(image, per_image_idx[image], mag, None))
        per_image_idx[image] += 1
    jobs.sort(key=lambda job: job.index)
    return jobs, injections


def _write_crossmatch(
    path: Path, injections: list[_Injection], rows_by_index: dict[int, dict[str, object]], config: SimulateConfig
) -> None:
    rng = np.random.default_rng([config.seed, _SET_CODES["injected"], 1])
    observations = _night_observations(config.seed, _N_NIGHT_IMAGES)
    header = "idx filename Xpos Ypos RA Dec mag filter count_ADU filename2 Nmatches closest_candID all_candIDs"
    lines = ["# " + header]
    for injection in sorted(injections, key=lambda item: (item.image, item.idx)):
        observation = observations[injection.image]
        image_name = _night_image_name(injection.image)
        count = observation.flux_of(injection.mag) / observation.gain
        if injection.detected_index is not None:
            row = rows_by_index[injection.detected_index]
            x, y, ra, dec = row["_xpos"], row["_ypos"], row["_ra"], row["_dec"]
            closest, matches, all_ids = str(row["candid"]), 1, str(row["candid"])
        else:
            x = round(float(rng.uniform(32, _IMAGE_SIZE - 32)), 3)
            y = round(float(rng.uniform(32, _IMAGE_SIZE - 32)), 3)
            ra = round(150.0 + (x - _IMAGE_SIZE / 2) * 0.4 / 3600.0, 7)
            dec = round(2.0 + (y - _IMAGE_SIZE / 2) * 0.4 / 3600.0, 7)
            closest, matches, all_ids = "None", 0, "None"
        subtraction = image_name.replace(".fits", "_sub.fits")
        lines.append(
            f"{injection.idx} {image_name} {x} {y} {ra} {dec} {injection.mag:.4f} {observation.band} "
            f"{count:.2f} {subtraction} {matches} {closest} {all_ids}"
        )
    path.write_text("\n".join(lines) + "\n")


def _remove_previous_survey(out: Path) -> None:
    """Delete the files a previous otrain-simulate run listed in truth.csv, and nothing else."""
    truth = out / "truth.csv"
    if truth.is_file():
        with open(truth, newline="") as stream:
            for row in csv.DictReader(stream):
                (out / row["path"]).unlink(missing_ok=True)
    for name in ("truth.csv", "night/crossmatch.dat", MARKER):
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
        _write_crossmatch(staging / "night" / "crossmatch.dat", injections, night_rows, config)
        with open(staging / "truth.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=_TRUTH_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        _remove_previous_survey(config.out)
        for name in _OUTPUTS:
            _move_into_place(staging / name, config.out / name)
        (config.out / MARKER).write_text(
            json.dumps(
                {
                    "written_by": "otrain-simulate",
                    **config.model_dump(mode="json", exclude={"out", "workers", "overwrite"}),
                },
                indent=2,
            )
            + "\n"
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
