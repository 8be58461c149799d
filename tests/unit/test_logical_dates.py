"""Logical dates and partition templates (autopilot_common.logical_dates): what backfill and scheduled pipelines
render partitions with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autopilot_common.logical_dates import (
    MAX_PARTITIONS,
    TemplateError,
    every_of,
    interval_start,
    label,
    logical_dates,
    parse_logical_date,
    partition_of,
    partitions,
    render,
    template_problem,
)
from autopilot_common.names import backfill_run_id, is_legal_execution_name

MOMENT = datetime(2024, 6, 1, 5)


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("sales/dt={ds}/", "sales/dt=2024-06-01/"),
        ("clicks/{yyyy}/{mm}/{dd}/{hh}/", "clicks/2024/06/01/05/"),
        ("a/{{raw}}/{ds}", "a/{raw}/2024-06-01"),
    ],
)
def test_render_fills_every_placeholder(template: str, rendered: str) -> None:
    assert render(template, MOMENT) == rendered


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("sales/dt={date}/", "unknown placeholder {date}; expected one of {ds}, {yyyy}, {mm}, {dd}, {hh}"),
        ("sales/dt={ds/", "malformed braces"),
        ("sales/dt=ds}/", "malformed braces"),
        ("sales/{ds:%Y}/", "placeholder {ds} takes no format or conversion"),
        ("sales/", "has no placeholder"),
        ("sales/{}/", "unknown placeholder {}"),
    ],
)
def test_a_bad_template_is_named_with_the_valid_placeholders(template: str, message: str) -> None:
    problem = template_problem(template)
    assert problem is not None and message in problem and repr(template) in problem, problem
    with pytest.raises(TemplateError, match="sales"):
        render(template, MOMENT)


def test_hh_makes_a_template_hourly() -> None:
    assert every_of("s/{ds}/") == "day"
    assert every_of("s/{ds}/{hh}/") == "hour"


def test_logical_dates_are_inclusive_and_bounded() -> None:
    days = logical_dates(datetime(2024, 2, 27), datetime(2024, 3, 1), "day")
    assert [d.day for d in days] == [27, 28, 29, 1]  # a leap year
    hours = logical_dates(datetime(2024, 6, 1, 22), datetime(2024, 6, 2, 1), "hour")
    assert [h.hour for h in hours] == [22, 23, 0, 1]
    assert logical_dates(MOMENT, MOMENT, "hour") == [MOMENT]
    with pytest.raises(TemplateError, match=r"starts \(2024-06-02T00:00:00\) after it ends"):
        logical_dates(datetime(2024, 6, 2), datetime(2024, 6, 1), "day")
    with pytest.raises(TemplateError, match=f"is 1001 days; at most {MAX_PARTITIONS} partitions"):
        logical_dates(datetime(2020, 1, 1), datetime(2020, 1, 1) + timedelta(days=MAX_PARTITIONS), "day")
    with pytest.raises(TemplateError, match="every: got 'week'"):
        logical_dates(MOMENT, MOMENT, "week")  # type: ignore[arg-type]


def test_parse_logical_date() -> None:
    assert parse_logical_date("2024-06-01", "day", field="--from") == datetime(2024, 6, 1)
    assert parse_logical_date("2024-06-01T05", "hour", field="--from") == MOMENT
    assert parse_logical_date("2024-06-01", "hour", field="--from") == datetime(2024, 6, 1, 0)
    assert parse_logical_date("2024-06-01", "hour", field="--to", end=True) == datetime(2024, 6, 1, 23)
    with pytest.raises(TemplateError, match="--from: got 'June'; expected an ISO date"):
        parse_logical_date("June", "day", field="--from")
    with pytest.raises(TemplateError, match="the partitions are daily"):
        parse_logical_date("2024-06-01T05", "day", field="--to")
    with pytest.raises(TemplateError, match="expected a whole hour"):
        parse_logical_date("2024-06-01T05:30", "hour", field="--to")
    with pytest.raises(TemplateError, match="logical dates have no time zone"):
        parse_logical_date("2024-06-01T05:00+02:00", "hour", field="--to")


def test_partitions_refuse_a_template_that_merges_dates() -> None:
    assert partitions("s/{ds}/", datetime(2024, 6, 1), datetime(2024, 6, 2)) == [
        (datetime(2024, 6, 1), "s/2024-06-01/"),
        (datetime(2024, 6, 2), "s/2024-06-02/"),
    ]
    with pytest.raises(TemplateError, match="renders the same prefix 's/2024/06/' for 2024-06-01 and 2024-06-02"):
        partitions("s/{yyyy}/{mm}/", datetime(2024, 6, 1), datetime(2024, 6, 2))


def test_backfill_run_ids_are_deterministic_legal_execution_names() -> None:
    name = backfill_run_id("sales-daily", "sales/dt=2024-06-01/", "2024-06-01")
    assert name.startswith("sales-daily-20240601-") and len(name) == len("sales-daily-20240601-") + 8
    assert name == backfill_run_id("sales-daily", "sales/dt=2024-06-01/", "2024-06-01")
    assert name != backfill_run_id("sales-daily", "sales/day=2024-06-01/", "2024-06-01")
    longest = backfill_run_id("a" * 40, "x/" * 300, "2024-06-01T05")
    assert is_legal_execution_name(longest) and len(longest) <= 80
    assert is_legal_execution_name(backfill_run_id("a" * 40, "x/"))


# --------------------------------------------------------------------------- firings: the interval start


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("fired", "zone", "expected"),
    [
        # A daily firing at 02:00 Berlin time on 06-03 (00:00 UTC) runs 06-02, Airflow's convention.
        ("2024-06-03T00:00", "Europe/Berlin", datetime(2024, 6, 2)),
        # The same instant on UTC's clock is still 06-02 (23:59 would be 06-01 there).
        ("2024-06-03T00:00", "UTC", datetime(2024, 6, 2)),
        ("2024-06-02T23:59", "UTC", datetime(2024, 6, 1)),
        # DST: 02:00 local the morning after spring-forward (00:00 UTC) and after fall-back (01:00 UTC).
        ("2024-04-01T00:00", "Europe/Berlin", datetime(2024, 3, 31)),
        ("2024-10-28T01:00", "Europe/Berlin", datetime(2024, 10, 27)),
        # A firing in the skipped hour's place on the spring-forward day itself (01:30 UTC = 03:30 CEST).
        ("2024-03-31T01:30", "Europe/Berlin", datetime(2024, 3, 30)),
    ],
)
def test_a_daily_firing_runs_the_local_day_before(fired: str, zone: str, expected: datetime) -> None:
    assert interval_start(_at(fired), "day", zone) == expected


def test_an_hourly_firing_runs_the_hour_before_on_the_local_clock_across_dst() -> None:
    def hours(day: str, zone: str = "Europe/Berlin") -> list[str]:
        return [label(interval_start(_at(f"{day}T{h:02d}:05"), "hour", zone), "hour") for h in range(4)]

    assert hours("2024-06-03", "UTC") == ["2024-06-02T23", "2024-06-03T00", "2024-06-03T01", "2024-06-03T02"]
    # Spring forward (02:00 CET -> 03:00 CEST): 02h never exists locally, so it is never a logical date.
    assert hours("2024-03-31") == ["2024-03-31T00", "2024-03-31T01", "2024-03-31T03", "2024-03-31T04"]
    # Fall back (03:00 CEST -> 02:00 CET): 02h happens twice; both hours are the logical date 02 (one run).
    assert hours("2024-10-27") == ["2024-10-27T01", "2024-10-27T02", "2024-10-27T02", "2024-10-27T03"]


def test_interval_start_names_a_bad_time_zone_or_a_naive_instant() -> None:
    with pytest.raises(TemplateError, match="time zone 'Europe/Berlinn' is not an IANA time zone name"):
        interval_start(_at("2024-06-03T00:00"), "day", "Europe/Berlinn")
    with pytest.raises(TemplateError, match="an instant needs a time zone"):
        interval_start(datetime(2024, 6, 3), "day")


# --------------------------------------------------------------------------- arrivals: the partition of a key


@pytest.mark.parametrize(
    ("template", "key", "expected"),
    [
        ("sales/dt={ds}/", "sales/dt=2024-06-02/part-0.csv", datetime(2024, 6, 2)),
        ("sales/dt={ds}/", "sales/dt=2024-06-02/deep/er/x.csv", datetime(2024, 6, 2)),
        ("clicks/{yyyy}/{mm}/{dd}/{hh}/", "clicks/2024/06/01/05/a.json", datetime(2024, 6, 1, 5)),
        ("s/{ds}/{yyyy}/", "s/2024-06-01/2024/a", datetime(2024, 6, 1)),
        ("s/{{x}}/{ds}/", "s/{x}/2024-06-01/a", datetime(2024, 6, 1)),
        ("sales/dt={ds}/", "sales/dt=2024-13-02/a.csv", None),  # no such date
        ("sales/dt={ds}/", "sales/2024-06-02.csv", None),  # outside every partition
        ("s/{ds}/{yyyy}/", "s/2024-06-01/2023/a", None),  # {ds} and {yyyy} disagree
        ("s/{yyyy}/{mm}/", "s/2024/06/a", None),  # the template does not name the day
    ],
)
def test_partition_of_a_key(template: str, key: str, expected: datetime | None) -> None:
    assert partition_of(template, key) == expected
