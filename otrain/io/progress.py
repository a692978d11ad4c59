"""The one progress helper: library code reports progress only through this module.

Progress goes to standard error and appears only for work that lasts more than a second. In a
terminal it is a tqdm bar updated in place; elsewhere (a file, a pipe: DVC's and CI's logs) it
is a plain line now and then: when at least a tenth of the work and ``LOG_EVERY_SECONDS`` have
passed since the last one, and at the end. Set ``OTRAIN_PROGRESS=0`` to turn it off (the tests do).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["LOG_EVERY_SECONDS", "announce", "progress_bar", "track"]

T = TypeVar("T")

#: Outside a terminal, the least time between two progress lines.
LOG_EVERY_SECONDS = 10.0

_DELAY = 1.0


def _disabled() -> bool:
    return os.environ.get("OTRAIN_PROGRESS", "1").strip().lower() in {"0", "false", "no", "off"}


class _LogLines(tqdm):
    """A tqdm that writes each state it shows as one plain line, for a log rather than a terminal.

    tqdm's own display rewrites one line with carriage returns, and its close shows the last
    state again: in a log file that is one ever-growing line with the end written twice.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._shown: float | None = None
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # a request to clear the line: a log keeps what it has
            return False
        if self.n != self._shown:
            self._shown = self.n
            self.fp.write(str(self) + "\n")
            self.fp.flush()
        return True

    def close(self) -> None:
        # tqdm shows the end only if it has shown something before, which the long interval
        # between lines can prevent; work that lasted less than the delay shows nothing.
        if not self.disable and self._time() - self.start_t >= self.delay:
            with self._lock:
                self.display()
        self.leave = False
        super().close()


@contextmanager
def progress_bar(total: int, description: str, unit: str = "file") -> Iterator[tqdm]:
    """Show the progress of ``total`` units of work; call ``update(n)`` on what this yields.

    Parameters
    ----------
    total : int
        Units of work expected (0 when unknown).
    description : str
        Short label shown before the progress.
    unit : str
        Name of one unit of work.

    Yields
    ------
    tqdm
        The progress display; it is closed on exit.
    """
    options: dict[str, Any] = {"total": total, "desc": description, "unit": unit, "file": sys.stderr}
    options.update(delay=_DELAY, disable=_disabled())
    if sys.stderr.isatty():
        bar = tqdm(**options, mininterval=0.5, dynamic_ncols=True)
    else:
        # ncols=0: tqdm's statistics without the bar. maxinterval=inf keeps tqdm's monitor
        # thread from lowering miniters, so that lines stay a tenth of the work apart.
        tenth = max(1, math.ceil(total / 10)) if total else 1
        bar = _LogLines(**options, mininterval=LOG_EVERY_SECONDS, miniters=tenth, maxinterval=math.inf, ncols=0)
    try:
        yield bar
    finally:
        bar.close()


def track(iterable: Iterable[T], total: int | None, description: str, unit: str = "file") -> Iterator[T]:
    """Iterate over ``iterable`` while showing its progress (see :func:`progress_bar`).

    Parameters
    ----------
    iterable : Iterable
        The work items.
    total : int or None
        Number of items, when known.
    description : str
        Short label shown before the progress.
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
