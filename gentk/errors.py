"""User-facing errors.

A `GentkError` is a mistake the user can fix (a recipe typo, a missing dataset file, a
plugin that fails to load). The CLI prints its message as one paragraph and exits with
code 2, without a traceback; every other exception is a bug and keeps its traceback.
Messages say what was found, what was expected and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GentkError(Exception):
    """A user error: printed without traceback, exit code 2."""

    exit_code = 2


class RecipeError(GentkError):
    """A recipe that cannot be read, merged or validated."""


class RegistryError(GentkError):
    """An unknown or duplicate component name."""


class DuplicateNameError(RegistryError):
    """A component name registered by two plugins."""


class PluginError(GentkError):
    """A plugin that failed to load or register (raised only in strict mode)."""


class ContractError(GentkError):
    """A component that lacks a member its contract (`gentk.contracts`) requires."""


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `word`, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'x'?' or an empty string."""
    match = closest(word, candidates)
    return f" Did you mean '{match}'?" if match else ""


class TrainingError(GentkError):
    """A run that cannot start or go on: a bad device, a resume that does not fit, a NaN loss."""


class TrainingInterrupted(GentkError):
    """A run stopped by SIGINT or SIGTERM after saving a checkpoint; the message says how to resume."""

    exit_code = 130

    def __init__(self, message: str, *, run_dir=None, step: int = 0) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.step = step


class StorageError(GentkError):
    """A file that cannot be written: a full disk, a read-only place, no permission."""


class ResultsNotSaved(StorageError):
    """Results that were computed but could not be written; `record` holds them."""

    def __init__(self, message: str, record: dict) -> None:
        super().__init__(message)
        self.record = record
