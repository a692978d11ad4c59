"""otrain: the O'TRAIN real/bogus CNN classifier for optical transients, as an MLOps pipeline."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("otrain")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
