"""Exceptions that the command-line layer turns into one-line messages and exit codes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = [
    "EXIT_BAD_DATA",
    "EXIT_BAD_OPTION",
    "EXIT_INTERRUPTED",
    "DataError",
    "OptionError",
    "OtrainError",
    "first_line",
    "log_listed",
]

#: Exit statuses: bad data or failed work, bad options, interrupted (128 + SIGINT).
EXIT_BAD_DATA = 1
EXIT_BAD_OPTION = 2
EXIT_INTERRUPTED = 130


def first_line(error: BaseException) -> str:
    """Return the first line of an exception's message (its type when it has none), for one-line errors.

    Parameters
    ----------
    error : BaseException
        An exception raised by a library (astropy, Keras, MLflow...), often with many lines.

    Returns
    -------
    str
        Its first non-empty line, or the exception's type name.
    """
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def log_listed(messages: Sequence[str], level: int, more: str, limit: int) -> None:
    """Log the first ``limit`` messages one per line on otrain's logger, then how many were left out.

    Parameters
    ----------
    messages : sequence of str
        One per bad file, each naming the file and the problem.
    level : int
        A :mod:`logging` level.
    more : str
        What the rest are, after "... and N more" (for example "unreadable cutouts").
    limit : int
        How many to list (``otrain.options.base.MAX_LISTED_BAD_FILES``).
    """
    logger = logging.getLogger("otrain")
    for message in messages[:limit]:
        logger.log(level, "%s", message)
    if len(messages) > limit:
        logger.log(level, "... and %d more %s", len(messages) - limit, more)


class OtrainError(Exception):
    """Base class of every error otrain reports to a user as one line.

    Attributes
    ----------
    exit_code : int
        The process exit status the command-line layer uses for this error.
    """

    exit_code = EXIT_BAD_DATA


class DataError(OtrainError):
    """Input data (a file, a folder's content) breaks a rule; exit status 1."""

    exit_code = EXIT_BAD_DATA


class OptionError(OtrainError):
    """An option's value is wrong in a way only visible after validation; exit status 2."""

    exit_code = EXIT_BAD_OPTION
