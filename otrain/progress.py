"""The one progress helper: library code reports progress only through this module.

Bars go to standard error and appear only for work that lasts more than a second.
Set ``OTRAIN_PROGRESS=0`` to turn them off (the tests do).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm import tqdm

__all__ = ["announce", "progress_bar", "track"]

T = TypeVar("T")


def _disabled() -> bool:
    return os.environ.get("OTRAIN_PROGRESS", "1").strip().lower() in {"0", "false", "no", "off"}


@contextmanager
def progress_bar(total: int, description: str, unit: str = "file") -> Iterator[tqdm]:
    """Open a progress bar for ``total`` units of work; call ``update(n)`` on it.

    Parameters
    ----------
    total : int
        Units of work expected.
    description : str
        Short label shown before the bar.
    unit : str
        Name of one unit of work.

    Yields
    ------
    tqdm
        The bar; it is closed on exit.
    """
    bar = tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=sys.stderr,
        delay=1.0,
        mininterval=0.5,
        dynamic_ncols=True,
        disable=_disabled(),
    )
    try:
        yield bar
    finally:
        bar.close()


def track(iterable: Iterable[T], total: int | None, description: str, unit: str = "file") -> Iterator[T]:
    """Iterate over ``iterable`` while showing a progress bar.

    Parameters
    ----------
    iterable : Iterable
        The work items.
    total : int or None
        Number of items, when known.
    description : str
        Short label shown before the bar.
    unit : str
        Name of one item.

    Yields
    ------
    object
        The items of ``iterable``, unchanged.
    """
    with progress_bar(total or 0, description, unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def announce(line: str) -> None:
    """Print one progress line (an epoch, a step of a study) to standard output, at once."""
    print(line, flush=True)
