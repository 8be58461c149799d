"""The CLI's two kinds of failure, by exit code (the commands raise them; `app` prints one line and exits)."""

from __future__ import annotations


class UsageProblem(Exception):
    """Bad input the user can fix (a file, pipeline or environment that does not exist, invalid JSON): exit 2."""


class OperationFailed(Exception):
    """The operation was refused or did not succeed (a run that does not exist, AWS said no): exit 1."""
