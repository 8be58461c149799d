"""Clock triggers of a pipeline: `trigger.schedule` (runs by the clock) and `trigger.expect` (an arrival deadline).

Both deploy as EventBridge Scheduler schedules (`stacks.schedules`); their firings reach the router, which computes the
firing's logical date with `autopilot_common.logical_dates.interval_start`. Expressions follow EventBridge Scheduler's
syntax ("Schedule types on EventBridge Scheduler", Scheduler user guide): `cron(minutes hours day-of-month month
day-of-week year)` and `rate(value unit)`; one-time `at(...)` schedules are not pipeline schedules.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from autopilot_common.logical_dates import Every, TemplateError, time_zone
from config.base import StrictModel

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_RATE = re.compile(r"^rate\((\d+) ([a-z]+)\)$")
_RATE_UNITS = ("minute", "hour", "day")
_BY = re.compile(r"^(?P<hour>[01]\d|2[0-3])?:(?P<minute>[0-5]\d)$")


class _CronField:
    """One field of a cron expression: its name, range, value names and the special characters it allows."""

    def __init__(self, name: str, low: int, high: int, names: tuple[str, ...] = (), special: str = "") -> None:
        self.name, self.low, self.high, self.names, self.special = name, low, high, names, special

    def value(self, text: str) -> int | None:
        if text.isdigit():
            number = int(text)
            return number if self.low <= number <= self.high else None
        upper = text.upper()
        return self.low + self.names.index(upper) if upper in self.names else None

    def problem(self, text: str) -> str | None:
        """Why `text` is not a valid value of this field, or None."""
        if text == "?":
            return None if "?" in self.special else "'?' is allowed only in day-of-month and day-of-week"
        for item in text.split(","):
            if not self._item_ok(item):
                names = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
                extra = f"; special characters here: {' '.join(self.special)}" if self.special else ""
                what = f"a value, range (a-b), list (a,b) or step (*/n, a/n) of {self.low}-{self.high}{names}"
                return f"{item!r} is not {what}{extra}"
        return None

    def _item_ok(self, item: str) -> bool:
        if item == "*":
            return True
        if "L" in self.special and item == "L":
            return True
        if "W" in self.special and (item == "LW" or (item.endswith("W") and self.value(item[:-1]) is not None)):
            return True
        if "L" in self.special and self.name == "day-of-week" and item.endswith("L"):
            return self.value(item[:-1]) is not None
        if "#" in self.special and "#" in item:
            day, _, nth = item.partition("#")
            return self.value(day) is not None and nth in ("1", "2", "3", "4", "5")
        base, slash, step = item.partition("/")
        if slash and not (step.isdigit() and int(step) >= 1):
            return False
        if base == "*" and slash:
            return True
        low, dash, high = base.partition("-")
        if dash:
            return self.value(low) is not None and self.value(high) is not None
        return self.value(base) is not None


_CRON_FIELDS = (
    _CronField("minutes", 0, 59),
    _CronField("hours", 0, 23),
    _CronField("day-of-month", 1, 31, special="?LW"),
    _CronField("month", 1, 12, _MONTHS),
    _CronField("day-of-week", 1, 7, _WEEKDAYS, special="?L#"),
    _CronField("year", 1970, 2199),
)


def expression_problem(expression: str) -> str | None:
    """Why `expression` is not an EventBridge Scheduler cron or rate expression, or None."""
    example = (
        "expected cron(minutes hours day-of-month month day-of-week year), e.g. 'cron(0 2 * * ? *)', or "
        "rate(value unit), e.g. 'rate(1 day)'"
    )
    if expression.startswith("rate("):
        match = _RATE.match(expression)
        if not match:
            return f"{expression!r}: {example}"
        value, unit = int(match.group(1)), match.group(2)
        singular = unit.removesuffix("s")
        if value < 1 or singular not in _RATE_UNITS:
            return f"{expression!r}: a rate is a positive number and minute(s), hour(s) or day(s); {example}"
        if (value == 1) != (unit == singular):
            return (
                f"{expression!r}: the unit is singular for 1 and plural above, e.g. 'rate(1 {singular})', "
                f"'rate(2 {singular}s)'"
            )
        return None
    if not (expression.startswith("cron(") and expression.endswith(")")):
        return f"{expression!r}: {example} (one-time at(...) schedules are not pipeline schedules)"
    fields = expression[5:-1].split()
    if len(fields) != len(_CRON_FIELDS):
        return f"{expression!r}: has {len(fields)} fields; {example}"
    for spec, text in zip(_CRON_FIELDS, fields, strict=True):
        problem = spec.problem(text)
        if problem:
            return f"{expression!r}: {spec.name}: {problem}"
    if (fields[2] == "?") == (fields[4] == "?"):
        return f"{expression!r}: exactly one of day-of-month and day-of-week must be '?' (EventBridge Scheduler)"
    return None


def _check_zone(value: str) -> str:
    try:
        time_zone(value)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return value


class Schedule(StrictModel):
    """Runs by the clock: an EventBridge Scheduler schedule whose every firing starts one run over the partition of
    its logical date (`trigger.partition_template`). A scheduled pipeline does not start on arrivals."""

    expression: str = Field(
        description="EventBridge Scheduler `cron(minutes hours day-of-month month day-of-week year)` or "
        "`rate(value unit)`, e.g. `cron(0 2 * * ? *)` (02:00 every day in `timezone`).",
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the expression and of the logical dates.")
    flexible_window_minutes: int | None = Field(
        default=None,
        ge=1,
        le=1440,
        description="Let Scheduler fire up to this many minutes after the scheduled time (spreads load); the "
        "logical date stays the scheduled time's. null: fire on time.",
    )
    on_empty: Literal["skip", "fail"] = Field(
        default="skip",
        description="When the firing's partition holds no object the trigger accepts: `skip` writes a SKIPPED "
        "ledger entry naming the prefix; `fail` writes a FAILED entry and notifies.",
    )

    @field_validator("expression")
    @classmethod
    def _expression(cls, value: str) -> str:
        problem = expression_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    _zone = field_validator("timezone")(_check_zone)


class Expectation(StrictModel):
    """An arrival deadline: if no run has started for a logical date by `by`, a MISSED ledger entry and a
    notification name the pipeline, the date and the prefix that stayed empty. A later arrival still runs."""

    by: str = Field(
        description="The deadline on the `timezone` clock: `HH:MM` each day (`every: day`) for the day before, "
        "`:MM` past each hour (`every: hour`) for the hour before.",
    )
    timezone: str = Field(default="UTC", description="IANA time zone of `by` and of the logical dates.")
    every: Every = Field(default="day", description="`day` or `hour`: the partition_template's period.")

    _zone = field_validator("timezone")(_check_zone)

    @model_validator(mode="after")
    def _by_matches_every(self) -> Expectation:
        match = _BY.match(self.by)
        daily = self.every == "day"
        if not match or (match.group("hour") is None) == daily:
            expected = "'HH:MM', e.g. '06:00'" if daily else "':MM' (minutes past each hour), e.g. ':45'"
            raise ValueError(f"by: got {self.by!r}; with every: {self.every} expected {expected}")
        return self

    @property
    def expression(self) -> str:
        """The Scheduler cron expression that fires at each deadline."""
        match = _BY.match(self.by)
        assert match is not None  # validated
        hour = match.group("hour")
        return f"cron({int(match.group('minute'))} {int(hour) if hour else '*'} * * ? *)"
