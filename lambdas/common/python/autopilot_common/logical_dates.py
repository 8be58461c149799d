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
Logical dates are naive (no time zone): a partition's date is a label, not an instant. A backfill's dates are the
labels the operator gives; a scheduled firing's (and an arrival deadline's) is `interval_start`: the partition that
ended last before the firing, on the pipeline's clock (its IANA time zone, UTC by default).
"""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
# What each placeholder matches in an object key (`partition_of`).
_KEY_PATTERNS = {"ds": r"\d{4}-\d{2}-\d{2}", "yyyy": r"\d{4}", "mm": r"\d{2}", "dd": r"\d{2}", "hh": r"\d{2}"}
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


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. `Europe/Berlin`, `UTC`); TemplateError naming it otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateError(
            f"time zone {name!r} is not an IANA time zone name; expected e.g. 'UTC' or 'Europe/Berlin'"
        ) from None


def interval_start(fired_at: datetime, every: Every, zone: str = "UTC") -> datetime:
    """The logical date of a schedule firing (or an arrival deadline) at the instant `fired_at`: the start of the
    partition (day or hour) that ended last before it, on the clock of `zone`.

    Daily: the local calendar day before the firing's (a daily firing at 02:00 on 2024-06-03 is 2024-06-02, Airflow's
    convention; whatever the hour of the firing, DST days included). Hourly: the local hour before the one the
    firing falls in, stepped back one real hour, so the repeated hour of a fall-back gives the same label twice
    (both firings are the same run) and the hour skipped by a spring-forward never is a logical date."""
    if fired_at.tzinfo is None:
        raise TemplateError(f"fired at {fired_at.isoformat()}: an instant needs a time zone (expected UTC)")
    clock = time_zone(zone)
    local = fired_at.astimezone(clock)
    if every == "day":
        day = local.date() - timedelta(days=1)
        return datetime(day.year, day.month, day.day)
    if every != "hour":
        raise TemplateError(f"every: got {every!r}; expected one of {', '.join(EVERY)}")
    hour = local.replace(minute=0, second=0, microsecond=0)  # keeps the fold: which of a repeated hour
    return (hour.astimezone(UTC) - _STEP["hour"]).astimezone(clock).replace(tzinfo=None)


def partition_of(template: str, key: str) -> datetime | None:
    """The logical date of the partition an object key lies in (the key starts with the template rendered for that
    date), or None when it lies in none (another prefix, digits that are no date, a template that does not name the
    day). Daily partitions get hour 0."""
    pattern: list[str] = []
    named: set[str] = set()
    for literal, name, _, _ in string.Formatter().parse(check_template(template)):
        pattern.append(re.escape(literal))
        if name is None:
            continue
        pattern.append(f"(?P={name})" if name in named else f"(?P<{name}>{_KEY_PATTERNS[name]})")
        named.add(name)
    match = re.match("".join(pattern), key)
    if match is None:
        return None
    found = match.groupdict()
    try:
        if "ds" in found:
            moment = datetime.strptime(found["ds"], "%Y-%m-%d")
            parts = zip(("yyyy", "mm", "dd"), found["ds"].split("-"), strict=True)
            if any(found.get(k) not in (None, v) for k, v in parts):
                return None  # `{ds}` and `{yyyy}/{mm}/{dd}` disagree
        elif {"yyyy", "mm", "dd"} <= set(found):
            moment = datetime(int(found["yyyy"]), int(found["mm"]), int(found["dd"]))
        else:
            return None
        return moment.replace(hour=int(found["hh"])) if "hh" in found else moment
    except ValueError:
        return None
