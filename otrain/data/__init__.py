"""Cutouts and cubes: their geometry, the datacube, otrain-convert (reading is :mod:`otrain.io.cutouts`).

Modules:

* :mod:`otrain.data.cutouts`: cutouts ready for a network: crop geometry, non-finite pixels, required keywords;
* :mod:`otrain.data.datacube`: the .npz datacube and its splits;
* :mod:`otrain.data.convert`: otrain-convert: cutout folders to a datacube.
"""

__all__ = ["convert", "cutouts", "datacube"]
