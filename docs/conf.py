"""Sphinx configuration of otrain's documentation site (``make docs`` builds it into docs/_build)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The otrain of this checkout, whatever is installed; and the command-reference extension.
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]

from otrain import __version__  # noqa: E402
from otrain.cli.tf_setup import prepare_tensorflow  # noqa: E402

# The API pages of the networks import TensorFlow: as the commands do, without its C++ start-up lines.
prepare_tensorflow()

project = "otrain"
author = "otrain developers"
copyright = "otrain developers"  # noqa: A001 - Sphinx's name
release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "otrain_commands",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# Text as typed: "--outdir" is an option, not an en dash; quotes stay straight.
smartquotes = False
exclude_patterns = ["_build"]
templates_path = ["_templates"]

# Every broken cross-reference to otrain's own code is an error (make docs runs with -W -n);
# names of other libraries are not resolved (no inventories are fetched: the build is offline).
nitpicky = True
# An option type's annotation names its private validators (Planes: otrain.options.base._plane_name),
# which the API reference does not document.
nitpick_ignore_regex = [(r"py:.*", r"(?!otrain\b).*"), (r"py:class", r"otrain(\.\w+)*\._\w+")]

# The API reference: one page per module, generated from the docstrings at build time.
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# Markdown pages: headings get anchors (links such as onnx.md#the-check-what-float32-allows).
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

html_theme = "alabaster"
html_title = f"otrain {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "O'TRAIN real/bogus classifier, as a reproducible pipeline",
    "page_width": "1100px",
}
