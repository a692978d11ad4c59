"""The public names of :mod:`otrain.options`, under their former module while the imports are rewritten."""

from otrain.options import *  # noqa: F403
from otrain.options import __all__  # noqa: F401
