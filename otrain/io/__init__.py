"""Files, processes and the terminal: everything the rooms above share that touches the disk.

Modules:

* :mod:`otrain.io.atomic`: writes that appear complete or not at all (files, folders, JSON);
* :mod:`otrain.io.locking`: advisory locks on outputs and stores;
* :mod:`otrain.io.outputs`: recognising the files otrain wrote before, and their formats;
* :mod:`otrain.io.markers`: output ownership: the marker file of the folders otrain owns, written and read;
* :mod:`otrain.io.fitsreader`: otrain's own fast FITS reader (astropy when it declines a file);
* :mod:`otrain.io.cutouts`: cutout files: listing them, their headers, their pixels;
* :mod:`otrain.io.cutoutmeta`: a cutout's metadata, from its header keywords;
* :mod:`otrain.io.alerts`: survey alert packets (ZTF, Rubin; Avro files, folders, tarballs);
* :mod:`otrain.io.avro`: Avro object container files, each distinct schema parsed once;
* :mod:`otrain.io.labels`: labels tables (candid, label);
* :mod:`otrain.io.layout`: the file layout of a training folder and the files beside every model;
* :mod:`otrain.io.card`: the model card: the JSON written beside every model;
* :mod:`otrain.io.ids`: candidate ids: read from a header or a table, matched as text;
* :mod:`otrain.io.jsonfile`: reading the JSON files otrain writes, errors in one line;
* :mod:`otrain.io.progress`: progress bars on the terminal;
* :mod:`otrain.io.parallel`: chunked work over a pool of processes.
"""

__all__ = [
    "alerts",
    "atomic",
    "avro",
    "card",
    "cutoutmeta",
    "cutouts",
    "fitsreader",
    "ids",
    "jsonfile",
    "labels",
    "layout",
    "locking",
    "markers",
    "outputs",
    "parallel",
    "progress",
]
