"""A function's environment, read one way: every variable is checked at cold start, and a bad one fails the
cold start with one message naming the variable and what was expected (never a KeyError deep in a run).

Each function's settings are a frozen dataclass with a `from_env` classmethod built on `Environment`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class SettingsError(RuntimeError):
    """An environment variable is missing or malformed; the message names it and what was expected."""


class Environment:
    """Typed, validated reads of a function's environment variables (values are stripped of blanks)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def required(self, name: str, meaning: str) -> str:
        """The variable's value; SettingsError when it is unset or blank."""
        value = self._env.get(name, "").strip()
        if not value:
            raise SettingsError(f"environment variable {name} is not set; expected {meaning}")
        return value

    def optional(self, name: str) -> str | None:
        """The variable's value, or None when it is unset or blank."""
        return self._env.get(name, "").strip() or None

    def positive_int(self, name: str, default: int, unit: str) -> int:
        """A whole number of `unit` (e.g. "seconds"), at least 1; `default` when unset."""
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise SettingsError(
                f"environment variable {name} is {raw!r}; expected {unit}, a positive whole number (default {default})"
            )
        return int(raw)

    def json(
        self, name: str, kind: type[dict[Any, Any]] | type[list[Any]], *, expected: str, meaning: str | None = None
    ) -> Any:
        """The variable parsed as JSON, which must be of `kind` (`dict` for an object, `list` for an array);
        `expected` names the kind for people ("an object"), `meaning` what it holds."""
        try:
            value = json.loads(self._env.get(name, ""))
        except ValueError:
            raise SettingsError(
                f"environment variable {name} is not valid JSON; expected {meaning or expected}"
            ) from None
        if not isinstance(value, kind):
            raise SettingsError(f"environment variable {name} is a {type(value).__name__}; expected {expected}")
        return value
