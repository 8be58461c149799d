"""Logical dates and date-partition templates: one home for both (`emr-autopilot backfill`, scheduled pipelines).

A partition template is the key prefix of one date partition in the landing bucket, with placeholders for the
partition's logical date, e.g. `sales/dt={ds}/` or `clicks/{yyyy}/{mm}/{dd}/{hh}/`:

==========  ==================  =================
placeholder  is                  for 2024-06-01 05h
==========  ==================  =================
`{ds}`      the date            `2024-06-01`
`{yyyy}`    the year            `2024`
`{mm}`      the month, 2 digits `06`
`{dd}`      the day, 2 digits   `01`
`{hh}`      the hour, 2 digits  `05`
==========  ==================  =================

`{{` and `}}` are a literal `{` and `}`. A template with `{hh}` is hourly (one partition per hour), else daily.
Logical dates are UTC and naive (no time zone): a partition's date is a label, not an instant.
"""

from __future__ import annotations

import string
from datetime import datetime, timedelta
from typing import Literal

Every = Literal["day", "hour"]
EVERY: tuple[Every, ...] = ("day", "hour")
PLACEHOLDERS: dict[str, str] = {
    "ds": "the date, YYYY-MM-DD",
    "yyyy": "the year, 4 digits",
    "mm": "the month, 2 digits",
    "dd": "the day of the month, 2 digits",
    "hh": "the hour, 2 digits (00-23); makes the template hourly",
}
MAX_PARTITIONS = 1000  # one backfill starts at most this many runs: a bigger range is split by the operator
_STEP = {"day": timedelta(days=1), "hour": timedelta(hours=1)}
_VALID = ", ".join("{" + name + "}" for name in PLACEHOLDERS)


class TemplateError(ValueError):
    """A partition template or a logical date range is malformed; the message says what and what is expected."""


def template_problem(template: str) -> str | None:
    """Why `template` is not a partition template (unknown placeholder, malformed braces, no placeholder), or
    None. The message lists the valid placeholders."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # "Single '}' encountered in format string" and friends
        return f"{template!r}: malformed braces ({exc}); placeholders are {_VALID}, and {{{{ }}}} are literal braces"
    for name, spec, conv in fields:
        if name not in PLACEHOLDERS:
            return f"{template!r}: unknown placeholder {{{name}}}; expected one of {_VALID}"
        if spec or conv:
            return f"{template!r}: placeholder {{{name}}} takes no format or conversion; write it as {{{name}}}"
    if not fields:
        return f"{template!r}: has no placeholder, so every date would be the same partition; use one of {_VALID}"
    return None


def check_template(template: str) -> str:
    """`template`, or TemplateError naming what is wrong with it."""
    problem = template_problem(template)
    if problem is not None:
        raise TemplateError(problem)
    return template


def every_of(template: str) -> Every:
    """`hour` when the template has `{hh}`, else `day`."""
    names = {name for _, name, _, _ in string.Formatter().parse(check_template(template))}
    return "hour" if "hh" in names else "day"


def render(template: str, moment: datetime) -> str:
    """The template with `moment`'s placeholders filled in (TemplateError for a malformed template)."""
    check_template(template)
    return template.format(
        ds=moment.strftime("%Y-%m-%d"),
        yyyy=moment.strftime("%Y"),
        mm=moment.strftime("%m"),
        dd=moment.strftime("%d"),
        hh=moment.strftime("%H"),
    )


def parse_logical_date(text: str, every: Every, *, field: str, end: bool = False) -> datetime:
    """An ISO date (`2024-06-01`) or, for hourly partitions, a date-hour (`2024-06-01T05`, `2024-06-01T05:00`).

    Hourly, a bare date as the range's end (`end=True`) means its last hour (23h), as its start its first hour.
    TemplateError naming `field` otherwise."""
    expected = "an ISO date such as 2024-06-01" + (" or a date-hour such as 2024-06-01T05" if every == "hour" else "")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TemplateError(f"{field}: got {text!r}; expected {expected}") from None
    if moment.tzinfo is not None:
        raise TemplateError(
            f"{field}: got {text!r}; logical dates have no time zone (they are UTC); expected {expected}"
        )
    has_time = "T" in text or " " in text.strip()
    if every == "day" and has_time:
        raise TemplateError(f"{field}: got {text!r}; the partitions are daily (no {{hh}}): expected {expected}")
    if moment.minute or moment.second or moment.microsecond:
        raise TemplateError(f"{field}: got {text!r}; expected a whole hour ({expected})")
    if every == "hour" and end and not has_time:
        return moment.replace(hour=23)
    return moment


def logical_dates(start: datetime, end: datetime, every: Every, *, limit: int = MAX_PARTITIONS) -> list[datetime]:
    """Every logical date from `start` to `end`, both included, a day or an hour apart.

    TemplateError when `start` is after `end`, `every` is not day/hour, or the range holds more than `limit`
    dates (naming how many it holds)."""
    if every not in _STEP:
        raise TemplateError(f"every: got {every!r}; expected one of {', '.join(EVERY)}")
    if start > end:
        raise TemplateError(f"the range starts ({start.isoformat()}) after it ends ({end.isoformat()})")
    step = _STEP[every]
    count = (end - start) // step + 1
    if count > limit:
        raise TemplateError(
            f"{start.isoformat()} to {end.isoformat()} is {count} {every}s; at most {limit} partitions at once "
            "(split the range)"
        )
    return [start + step * i for i in range(count)]


def label(moment: datetime, every: Every) -> str:
    """The logical date as people write it: `2024-06-01`, or `2024-06-01T05` for hourly partitions."""
    return moment.strftime("%Y-%m-%dT%H" if every == "hour" else "%Y-%m-%d")


def partitions(template: str, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """(logical date, rendered prefix) for every partition of the template from `start` to `end` (inclusive; daily
    or hourly as the template says). TemplateError when two dates render the same prefix (e.g. `{yyyy}/{mm}/` for
    days: one run would read another's data), naming them."""
    every = every_of(template)
    seen: dict[str, datetime] = {}
    out: list[tuple[datetime, str]] = []
    for moment in logical_dates(start, end, every):
        prefix = render(template, moment)
        if prefix in seen:
            raise TemplateError(
                f"{template!r} renders the same prefix {prefix!r} for {label(seen[prefix], every)} and "
                f"{label(moment, every)}; a {every}ly template needs {{ds}} or {{yyyy}}, {{mm}} and {{dd}}"
                + (" and {hh}" if every == "hour" else "")
            )
        seen[prefix] = moment
        out.append((moment, prefix))
    return out
