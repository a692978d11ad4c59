"""Exceptions that the command-line layer turns into one-line messages and exit codes."""

from __future__ import annotations

__all__ = ["DataError", "OptionError", "OtrainError"]


class OtrainError(Exception):
    """Base class of every error otrain reports to a user as one line.

    Attributes
    ----------
    exit_code : int
        The process exit status the command-line layer uses for this error.
    """

    exit_code = 1


class DataError(OtrainError):
    """Input data (a file, a folder's content) breaks a rule; exit status 1."""

    exit_code = 1


class OptionError(OtrainError):
    """An option's value is wrong in a way only visible after validation; exit status 2."""

    exit_code = 2
