"""Cutouts and cubes: reading candidates, their geometry, the datacube, otrain-convert.

Modules:

* :mod:`otrain.data.cutouts`: cutout files: listing, headers, pixels, crop geometry;
* :mod:`otrain.data.datacube`: the .npz datacube and its splits;
* :mod:`otrain.data.convert`: otrain-convert: cutout folders to a datacube.
"""

__all__ = ["convert", "cutouts", "datacube"]
