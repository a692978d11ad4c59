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

The modules, by concern:

* :mod:`~otrain.simulate.physics`: observing conditions, PSF and galaxy profiles, noise and
  subtraction, the measurement a detection pipeline makes;
* :mod:`~otrain.simulate.kinds`: one function per candidate kind, the table
  :data:`~otrain.simulate.kinds.KINDS` (label, share, how often at the image edge), and
  :func:`~otrain.simulate.kinds.render_candidate`;
* :mod:`~otrain.simulate.writers`: the gmadet and STDPipe cutouts, truth.csv, crossmatch.dat;
* :mod:`~otrain.simulate.survey`: which cutouts to draw, parallel writing, staging, and
  :func:`~otrain.simulate.survey.simulate_survey`.

A new candidate kind is one function and one table entry: write a function ``(site, rng) ->
Scene`` in :mod:`~otrain.simulate.kinds` and add ``"name": Kind(function, real=..., share=...)``
at the end of :data:`~otrain.simulate.kinds.KINDS` (then rescale the other shares of its class
if they should still sum to 1). :func:`render_candidate` draws it by name, :data:`REAL_KINDS`
or :data:`BOGUS_KINDS` include it, and the survey draws it in that share.
"""

from __future__ import annotations

from otrain.simulate.kinds import (
    BOGUS_KINDS,
    FAINT_FRACTION,
    KINDS,
    REAL_KINDS,
    Kind,
    SimulatedCandidate,
    Site,
    render_candidate,
)
from otrain.simulate.physics import Observation, Scene, draw_observation
from otrain.simulate.survey import OBJECT_KEYWORD, SurveySummary, simulate_survey

__all__ = [
    "BOGUS_KINDS",
    "FAINT_FRACTION",
    "KINDS",
    "OBJECT_KEYWORD",
    "REAL_KINDS",
    "Kind",
    "Observation",
    "Scene",
    "SimulatedCandidate",
    "Site",
    "SurveySummary",
    "draw_observation",
    "render_candidate",
    "simulate_survey",
]
