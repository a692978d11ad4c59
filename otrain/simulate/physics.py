"""The physics of a simulated cutout: observing conditions, profiles, noise, subtraction, measurement.

Every image is in electrons (expected counts) until :func:`difference_image` draws the noise
of the science and the deeper reference exposure and returns their difference in ADU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.stats import gaussian_fwhm_to_sigma, gaussian_sigma_to_fwhm

__all__ = [
    "Observation",
    "Scene",
    "centre_on_peak",
    "deposit_line",
    "difference_image",
    "draw_observation",
    "exponential_disc",
    "measure",
    "moffat",
    "psf",
]

_FILTERS = ("g", "r", "i", "z", "Clear")


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
        sigma = self.fwhm * gaussian_fwhm_to_sigma
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
# Profiles: expected electrons on an n x n grid, pixel-integrated by 3x3 oversampling.

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


def psf(
    n: int, observation: Observation, y: float, x: float, rng: np.random.Generator, fwhm: float | None = None
) -> np.ndarray:
    """Draw the image's PSF at (y, x): unit flux, slightly elliptical, randomly oriented.

    Parameters
    ----------
    n : int
        Cutout size in pixels.
    observation : Observation
        Gives the FWHM (unless ``fwhm`` is given) and the Moffat beta.
    y, x : float
        Centre, in pixels.
    rng : numpy.random.Generator
        Draws the axis ratio (0.85 to 1) and the position angle.
    fwhm : float, optional
        Another FWHM than the observation's (a mismatched reference PSF).

    Returns
    -------
    numpy.ndarray
        n x n pixel-integrated profile.
    """
    return moffat(
        n,
        y,
        x,
        fwhm or observation.fwhm,
        observation.beta,
        float(rng.uniform(0.85, 1.0)),
        float(rng.uniform(0, math.pi)),
    )


def deposit_line(n: int, y0: float, x0: float, length: float, angle: float, total: float) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Exposure, noise and subtraction.


@dataclass(frozen=True)
class Scene:
    """Expected electrons in the science and reference images, and extra science charge.

    A candidate kind lays out one scene; :func:`difference_image` observes it.
    """

    science: np.ndarray
    reference: np.ndarray
    deposits: np.ndarray  #: cosmic rays, hot pixels, bad columns: charge added after exposure
    saturate: bool = False  #: clip both images at the detector's saturation
    bleed: np.ndarray | None = None  #: science pixels raised to at least this (bleed trails)
    mask: np.ndarray | None = None  #: True where the pixels are masked (image edge, bad region)
    recentre: bool = False  #: move the strongest noise peak to the centre, as a detection would


def _shift_bilinear(image: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Resample by a sub-pixel shift (what warping the reference does to its noise)."""
    shifted = (1 - sy) * image + sy * np.roll(image, 1, axis=0)
    return (1 - sx) * shifted + sx * np.roll(shifted, 1, axis=1)


def difference_image(scene: Scene, observation: Observation, rng: np.random.Generator) -> np.ndarray:
    """Noisy science minus noisy, deeper, resampled reference, in ADU.

    Parameters
    ----------
    scene : Scene
        Expected electrons of the science and reference images.
    observation : Observation
        Sky, read noise, gain, reference depth and saturation.
    rng : numpy.random.Generator
        Draws the Poisson and read noise, the reference's resampling shift and a background
        error.

    Returns
    -------
    numpy.ndarray
        The difference image (float64, ADU).
    """
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


def centre_on_peak(difference: np.ndarray, observation: Observation) -> np.ndarray:
    """Roll a noise cutout so its strongest PSF-smoothed peak near the centre sits at the centre."""
    n = difference.shape[0]
    kernel = moffat(n, n // 2, n // 2, observation.fwhm, observation.beta)
    smoothed = np.real(np.fft.ifft2(np.fft.fft2(difference) * np.fft.fft2(np.fft.ifftshift(kernel))))
    half = max(2, n // 6)
    window = smoothed[n // 2 - half : n // 2 + half, n // 2 - half : n // 2 + half]
    py, px = np.unravel_index(int(np.argmax(window)), window.shape)
    return np.roll(difference, (half - py, half - px), axis=(0, 1))


def measure(difference: np.ndarray, observation: Observation) -> tuple[float, float, float]:
    """Aperture magnitude, its error and a second-moment FWHM, as a detection pipeline would.

    Parameters
    ----------
    difference : numpy.ndarray
        The difference cutout in ADU, NaN where masked.
    observation : Observation
        Gives the aperture radius (one FWHM), the pixel noise and the zero point.

    Returns
    -------
    tuple of float
        Magnitude, magnitude error, FWHM in pixels (the seeing when no pixel stands out).
    """
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
        fwhm = gaussian_sigma_to_fwhm * math.sqrt(max(second_moment, 0.05))
    else:
        fwhm = observation.fwhm
    return mag, magerr, fwhm
