"""The candidate kinds: one function per kind, and the table :data:`KINDS` that registers them.

A kind function lays out the expected electrons of one candidate (a :class:`Site`: cutout
size, observing conditions, sub-pixel centre and, for real sources, magnitude) as a
:class:`~otrain.simulate.physics.Scene`; :func:`render_candidate` observes the scene (noise,
subtraction), masks it and measures it like a detection pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np
from astropy.stats import gaussian_fwhm_to_sigma

from otrain.simulate.physics import (
    Observation,
    Scene,
    centre_on_peak,
    deposit_line,
    difference_image,
    exponential_disc,
    measure,
    psf,
)

__all__ = [
    "BOGUS_KINDS",
    "FAINT_FRACTION",
    "KINDS",
    "REAL_KINDS",
    "Kind",
    "KindFunction",
    "SimulatedCandidate",
    "Site",
    "render_candidate",
]

#: Share of real sources in the faint tail, from 0.3 mag above to 0.8 mag below the 5-sigma
#: limit (signal-to-noise about 6.6 down to 2.4); the rest are brighter, up to 6 mag above it.
FAINT_FRACTION = 0.12


@dataclass(frozen=True)
class Site:
    """Where and under what conditions one candidate is drawn."""

    n: int  #: cutout width and height, pixels
    observation: Observation
    y: float  #: source centre: the central pixel plus a sub-pixel offset
    x: float
    mag: float | None  #: magnitude of a real source; None for bogus kinds

    def blank(self) -> np.ndarray:
        """Return a new n x n image of zeros."""
        return np.zeros((self.n, self.n))


#: A kind function: lays out the scene of one candidate at ``site``, drawing from the generator.
KindFunction = Callable[[Site, np.random.Generator], Scene]


@dataclass(frozen=True)
class Kind:
    """One entry of :data:`KINDS`."""

    draw: KindFunction  #: lays out the candidate's scene
    real: bool  #: label: a real source (true/) or an artefact (false/)
    share: float  #: its share of the labelled cutouts of its class; 0: never drawn on its own
    edge: float = 0.0  #: probability that its cutout lies at the image border (flagged EDGE)


# --------------------------------------------------------------------------------------------
# Real sources.


def _source_flux(site: Site) -> float:
    if site.mag is None:
        raise ValueError("a real source needs a magnitude: register its kind with real=True")
    return site.observation.flux_of(site.mag)


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


def point(site: Site, rng: np.random.Generator) -> Scene:
    """Lay out a point source: the PSF at the site, nothing in the reference."""
    source = _source_flux(site) * psf(site.n, site.observation, site.y, site.x, rng)
    return Scene(science=source, reference=site.blank(), deposits=site.blank())


def point_on_galaxy(site: Site, rng: np.random.Generator) -> Scene:
    """Lay out a point source on its host galaxy, whose subtraction leaves a residual."""
    observation, n = site.observation, site.n
    scene = point(site, rng)
    galaxy_flux = observation.flux_of(observation.limiting_mag - rng.uniform(1.0, 5.0))
    scale = float(rng.uniform(1.0, 4.0))
    offset_r, offset_angle = rng.uniform(0.0, 1.5) * scale * 1.7, rng.uniform(0, 2 * math.pi)
    gy, gx = site.y + offset_r * math.sin(offset_angle), site.x + offset_r * math.cos(offset_angle)
    smoothing = math.hypot(scale, observation.fwhm * gaussian_fwhm_to_sigma)
    q, angle = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0, math.pi))
    galaxy = exponential_disc(n, gy, gx, smoothing, q, angle)
    shifted = exponential_disc(
        n, gy + rng.normal(0, 0.15), gx + rng.normal(0, 0.15), smoothing * rng.uniform(0.93, 1.07), q, angle
    )
    return replace(
        scene,
        science=scene.science + galaxy_flux * galaxy,
        reference=galaxy_flux * (1 + rng.normal(0, 0.03)) * shifted,
    )


def masked_real(site: Site, rng: np.random.Generator) -> Scene:
    """Lay out a point source at the image border: part of the cutout is masked."""
    return replace(point(site, rng), mask=_mask_region(site.n, rng))


# --------------------------------------------------------------------------------------------
# Artefacts.


def _charge_only(site: Site, deposits: np.ndarray, mask: np.ndarray | None = None) -> Scene:
    """Return a scene with no sky source: only charge added to the science image."""
    return Scene(science=site.blank(), reference=site.blank(), deposits=deposits, mask=mask)


def noise_peak(site: Site, rng: np.random.Generator) -> Scene:
    """Leave nothing but noise, centred on its strongest peak (a detection at the threshold)."""
    return replace(_charge_only(site, site.blank()), recentre=True)


def dipole(site: Site, rng: np.random.Generator) -> Scene:
    """Subtract a star from a slightly misaligned reference: a positive and a negative lobe."""
    observation, n, y, x = site.observation, site.n, site.y, site.x
    flux = observation.flux_of(observation.limiting_mag - rng.uniform(1.5, 7.0))
    shift, angle = rng.uniform(0.15, 1.5), rng.uniform(0, 2 * math.pi)
    dy, dx = 0.5 * shift * math.sin(angle), 0.5 * shift * math.cos(angle)
    science = flux * psf(n, observation, y + dy, x + dx, rng)
    reference = flux * (1 + rng.normal(0, 0.03)) * psf(n, observation, y - dy, x - dx, rng)
    return Scene(science=science, reference=reference, deposits=site.blank())


def psf_ring(site: Site, rng: np.random.Generator) -> Scene:
    """Subtract a star with a mismatched PSF: a core and a ring of opposite signs."""
    observation, n, y, x = site.observation, site.n, site.y, site.x
    flux = observation.flux_of(observation.limiting_mag - rng.uniform(1.5, 6.0))
    ratio = rng.uniform(0.7, 0.88) if rng.uniform() < 0.5 else rng.uniform(1.12, 1.4)
    science = flux * psf(n, observation, y, x, rng)
    reference = flux * (1 + rng.normal(0, 0.03)) * psf(n, observation, y, x, rng, fwhm=observation.fwhm * ratio)
    return Scene(science=science, reference=reference, deposits=site.blank())


def cosmic_ray(site: Site, rng: np.random.Generator) -> Scene:
    """Hit the centre with a cosmic ray: one to four sharp, connected pixels."""
    n, sigma = site.n, site.observation.pixel_sigma
    deposits = site.blank()
    pixels = [(n // 2, n // 2)]
    for _ in range(int(rng.integers(0, 4))):
        py, px = pixels[-1]
        step = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
        pixels.append((min(max(py + step[0], 0), n - 1), min(max(px + step[1], 0), n - 1)))
    for py, px in pixels:
        deposits[py, px] += sigma * rng.uniform(4.0, 200.0)
    return _charge_only(site, deposits)


def cosmic_ray_track(site: Site, rng: np.random.Generator) -> Scene:
    """Lay a grazing cosmic ray's straight track of charge through the centre."""
    n, sigma = site.n, site.observation.pixel_sigma
    length = min(rng.uniform(4.0, 25.0), n * 0.8)
    total = sigma * rng.uniform(4.0, 60.0) * length
    return _charge_only(site, deposit_line(n, site.y, site.x, length, rng.uniform(0, math.pi), total))


def hot_pixel(site: Site, rng: np.random.Generator) -> Scene:
    """Heat the central pixel."""
    deposits = site.blank()
    deposits[site.n // 2, site.n // 2] = site.observation.pixel_sigma * rng.uniform(5.0, 500.0)
    return _charge_only(site, deposits)


def bad_column(site: Site, rng: np.random.Generator) -> Scene:
    """Lay a bad column segment (one or two pixels wide) through the centre."""
    n, sigma = site.n, site.observation.pixel_sigma
    deposits = site.blank()
    start = int(rng.integers(0, n // 2))
    stop = int(rng.integers(n // 2 + 1, n + 1))
    width = 1 if rng.uniform() < 0.8 else 2
    level = sigma * rng.uniform(3.0, 30.0)
    deposits[start:stop, n // 2 : n // 2 + width] = level * rng.uniform(0.7, 1.3, (stop - start, width))
    return _charge_only(site, deposits)


def saturated_star(site: Site, rng: np.random.Generator) -> Scene:
    """Leave a saturated star's residual, with its bleed trail along the column."""
    observation, n, y, x = site.observation, site.n, site.y, site.x
    flux = observation.flux_of(observation.limiting_mag - rng.uniform(7.0, 10.0))
    science = flux * psf(n, observation, y, x, rng)
    reference = (
        flux * (1 + rng.normal(0, 0.05)) * psf(n, observation, y + rng.normal(0, 0.3), x + rng.normal(0, 0.3), rng)
    )
    excess = float(np.clip(observation.sky + science - observation.saturation, 0, None).sum())
    half_length = min(int(excess / observation.saturation / 2) + 2, n // 2)
    bleed = site.blank()
    bleed[max(0, int(y) - half_length) : int(y) + half_length + 1, round(x)] = observation.saturation
    return Scene(science=science, reference=reference, deposits=site.blank(), saturate=True, bleed=bleed)


def masked_edge(site: Site, rng: np.random.Generator) -> Scene:
    """Cut the cutout by a masked region, with the bright ramp that often borders it."""
    n, sigma = site.n, site.observation.pixel_sigma
    mask = _mask_region(n, rng)
    border = mask.copy()
    border[1:, :] |= mask[:-1, :]
    border[:-1, :] |= mask[1:, :]
    border[:, 1:] |= mask[:, :-1]
    border[:, :-1] |= mask[:, 1:]
    ramp = np.where(border & ~mask, sigma * rng.uniform(3.0, 30.0), 0.0)
    return _charge_only(site, ramp * rng.uniform(0.5, 1.5, (n, n)), mask=mask)


#: Every candidate kind, by name. Within a class, the order maps the seeded draws to kinds:
#: reordering changes every survey, so a new kind goes at the end.
KINDS: dict[str, Kind] = {
    "point": Kind(point, real=True, share=0.75),
    "point_on_galaxy": Kind(point_on_galaxy, real=True, share=0.25),
    # Replaces a labelled real cutout at the image border (see otrain.simulate.survey).
    "masked_real": Kind(masked_real, real=True, share=0.0, edge=1.0),
    "noise_peak": Kind(noise_peak, real=False, share=0.14),
    "dipole": Kind(dipole, real=False, share=0.20),
    "psf_ring": Kind(psf_ring, real=False, share=0.12),
    "cosmic_ray": Kind(cosmic_ray, real=False, share=0.10),
    "cosmic_ray_track": Kind(cosmic_ray_track, real=False, share=0.08),
    "hot_pixel": Kind(hot_pixel, real=False, share=0.07),
    "bad_column": Kind(bad_column, real=False, share=0.06),
    "saturated_star": Kind(saturated_star, real=False, share=0.09),
    "masked_edge": Kind(masked_edge, real=False, share=0.14, edge=0.5),
}


class _Shares(Mapping[str, float]):
    """Read-only view of :data:`KINDS`: the shares of one class's kinds that are drawn."""

    def __init__(self, real: bool) -> None:
        self._real = real

    def _shares(self) -> dict[str, float]:
        return {name: kind.share for name, kind in KINDS.items() if kind.real == self._real and kind.share > 0}

    def __getitem__(self, name: str) -> float:
        return self._shares()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._shares())

    def __len__(self) -> int:
        return len(self._shares())

    def __repr__(self) -> str:
        return repr(self._shares())


#: Kinds of real candidates and their shares (a view of :data:`KINDS`).
REAL_KINDS: Mapping[str, float] = _Shares(real=True)
#: Kinds of bogus candidates and their shares (a view of :data:`KINDS`).
BOGUS_KINDS: Mapping[str, float] = _Shares(real=False)


# --------------------------------------------------------------------------------------------
# Rendering.


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


def _real_mag(observation: Observation, rng: np.random.Generator) -> float:
    if rng.uniform() < FAINT_FRACTION:
        return observation.limiting_mag + float(rng.uniform(-0.3, 0.8))
    return observation.limiting_mag + float(rng.uniform(-6.0, -0.3))


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
        A name in :data:`KINDS`.
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

    Raises
    ------
    ValueError
        If ``kind`` is not in :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown candidate kind {kind!r}; known: {', '.join(KINDS)}")
    if KINDS[kind].real and mag is None:
        mag = _real_mag(observation, rng)
    # Every kind draws a centre, used or not, so that the draws after it line up.
    c = n // 2
    y, x = c + float(rng.uniform(-0.5, 0.5)), c + float(rng.uniform(-0.5, 0.5))
    scene = KINDS[kind].draw(Site(n, observation, y, x, mag), rng)
    difference = difference_image(scene, observation, rng)
    if scene.recentre:
        difference = centre_on_peak(difference, observation)
    mask = scene.mask if scene.mask is not None else np.zeros((n, n), dtype=bool)
    difference = np.where(mask, np.nan if nan_mask else 0.0, difference)
    mag_measured, magerr, fwhm = measure(difference, observation)
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
