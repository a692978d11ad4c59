"""Vetting: the scored night's page for human scanners, and reading their marks back.

Modules:

* :mod:`otrain.vet.report`: otrain-report and its page (templates/vetting.html);
* :mod:`otrain.vet.thumbs`: the page's thumbnails and Grad-CAM overlays, drawn into sprite sheets;
* :mod:`otrain.vet.relabel`: otrain-relabel: a scanner's marks into labelled folders.
"""

__all__ = ["relabel", "report", "thumbs"]
