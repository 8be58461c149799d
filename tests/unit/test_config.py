"""Config validation: every kind of bad input gives one message naming file, pipeline, field, value, allowed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from config import docs
from config.loader import ConfigError, load_config
from tests.unit.conftest import dev_config


def _error(mutate: Any) -> str:
    with pytest.raises(ConfigError) as info:
        dev_config(mutate)
    return str(info.value)


def _sales(raw: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = raw["pipelines"]["sales-daily"]
    return result


def _sales_case(case_id: str, section: str, change: dict[str, Any], expected: str) -> Any:
    """A case that updates the sales-daily pipeline (its `section`, dotted, or its top level for "") with `change`
    and expects a message about that pipeline starting with `expected` after the pipeline's name."""

    def mutate(raw: dict[str, Any]) -> None:
        target = _sales(raw)
        for key in filter(None, section.split(".")):
            target = target[key]
        target.update(change)

    return pytest.param(mutate, f"config/dev.yaml: pipeline 'sales-daily': {expected}", id=case_id)


def test_shipped_dev_config_is_valid() -> None:
    config = load_config("dev")
    pipeline = config.pipelines["sales-daily"]
    assert pipeline.trigger is not None and pipeline.trigger.prefix == "sales/"
    assert pipeline.runtime.application == "shared-spark"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        _sales_case(
            "unknown-key",
            "trigger",
            {"colour": "red"},
            "trigger.colour: unknown key; expected one of: after, batching, expect, ignore_zero_byte, "
            "partition_template, prefix, schedule, sources, suffixes",
        ),
        _sales_case(
            "wrong-type",
            "runtime",
            {"execution_timeout_minutes": "60"},
            "runtime.execution_timeout_minutes: got '60'; expected an integer",
        ),
        _sales_case(
            "out-of-range",
            "trigger.batching",
            {"window_seconds": 900},
            "trigger.batching.window_seconds: got 900; expected a number <= 300",
        ),
        _sales_case(
            "bad-enum",
            "trigger.batching",
            {"mode": "windowed"},
            "trigger.batching.mode: got 'windowed'; expected one of 'per_object', 'window', 'marker'",
        ),
        pytest.param(
            lambda r: r["pipelines"].update({"Sales_Daily": r["pipelines"].pop("sales-daily")}),
            "config/dev.yaml: pipelines: name 'Sales_Daily' is invalid; expected 2-40 characters",
            id="bad-name",
        ),
        _sales_case(
            "undefined-application",
            "runtime",
            {"application": "spark-big"},
            "runtime.application: got 'spark-big'; expected one of "
            "'shared-spark' (names are defined under serverless_applications)",
        ),
        _sales_case(
            "missing-job-file",
            "runtime",
            {"entry_point": "nope.py"},
            "runtime.entry_point: got 'nope.py'; expected a file under jobs/",
        ),
        pytest.param(
            lambda r: r["pipelines"].update(
                {"eu-sales": {**copy.deepcopy(_sales(r)), "output_prefix": "eu", "trigger": {"prefix": "sales/eu/"}}}
            ),
            "config/dev.yaml: pipelines 'eu-sales' and 'sales-daily': trigger: overlapping triggers",
            id="overlapping-triggers",
        ),
        pytest.param(
            lambda r: r["pipelines"].update(
                {
                    "copy": {
                        **copy.deepcopy(_sales(r)),
                        "trigger": {"prefix": "other/"},
                        "output_prefix": "sales-daily/x",
                    }
                }
            ),
            "config/dev.yaml: pipelines 'copy' and 'sales-daily': output_prefix: 'sales-daily/x/' and 'sales-daily/' "
            "overlap",
            id="overlapping-outputs",
        ),
        _sales_case(
            "timeouts",
            "",
            {"run_timeout_minutes": 30},
            "run_timeout_minutes (30) must be greater than the job's time, runtime.execution_timeout_minutes (60)",
        ),
        pytest.param(
            lambda r: _sales(r)["runtime"].pop("entry_point"),
            "config/dev.yaml: pipeline 'sales-daily': runtime.entry_point: required but missing",
            id="missing-field",
        ),
        _sales_case(
            "unknown-runtime",
            "runtime",
            {"type": "emr-ec3"},
            "runtime.type: got 'emr-ec3'; expected one of 'emr-serverless'",
        ),
        pytest.param(
            lambda r: r["serverless_applications"]["shared-spark"].update(release_label="7.5"),
            "config/dev.yaml: serverless application 'shared-spark': release_label: got '7.5'; "
            "expected an EMR release label like 'emr-7.5.0'",
            id="bad-release-label",
        ),
        pytest.param(
            lambda r: r["tags"].update({"aws:owner": "x"}),
            "config/dev.yaml: tags: key 'aws:owner' is reserved",
            id="reserved-tag",
        ),
        _sales_case(
            "partition-template-unknown-placeholder",
            "trigger",
            {"partition_template": "sales/dt={date}/"},
            "trigger: partition_template: 'sales/dt={date}/': unknown placeholder {date}; expected one of {ds}, "
            "{yyyy}, {mm}, {dd}, {hh}",
        ),
        _sales_case(
            "partition-template-malformed",
            "trigger",
            {"partition_template": "sales/dt={ds/"},
            "trigger: partition_template: 'sales/dt={ds/': malformed braces",
        ),
        _sales_case(
            "partition-template-outside-prefix",
            "trigger",
            {"partition_template": "orders/dt={ds}/"},
            "trigger: partition_template: 'orders/dt={ds}/' does not start with the trigger's prefix 'sales/'",
        ),
        _sales_case(
            "schedule-expression",
            "trigger",
            {"schedule": {"expression": "cron(0 2 * * * *)"}},
            "trigger.schedule.expression: 'cron(0 2 * * * *)': exactly one of day-of-month and day-of-week must be '?'",
        ),
        _sales_case(
            "schedule-cron-field",
            "trigger",
            {"schedule": {"expression": "cron(0 24 * * ? *)"}},
            "trigger.schedule.expression: 'cron(0 24 * * ? *)': hours: '24' is not a value, range (a-b), list (a,b) "
            "or step (*/n, a/n) of 0-23",
        ),
        _sales_case(
            "schedule-at",
            "trigger",
            {"schedule": {"expression": "at(2024-06-03T02:00:00)"}},
            "trigger.schedule.expression: 'at(2024-06-03T02:00:00)': expected cron(minutes hours day-of-month month "
            "day-of-week year)",
        ),
        _sales_case(
            "schedule-rate-unit",
            "trigger",
            {"schedule": {"expression": "rate(1 days)"}},
            "trigger.schedule.expression: 'rate(1 days)': the unit is singular for 1 and plural above",
        ),
        _sales_case(
            "schedule-timezone",
            "trigger",
            {"schedule": {"expression": "rate(1 day)", "timezone": "Europe/Berlinn"}},
            "trigger.schedule.timezone: time zone 'Europe/Berlinn' is not an IANA time zone name; expected e.g. 'UTC'",
        ),
        _sales_case(
            "schedule-needs-template",
            "trigger",
            {"schedule": {"expression": "rate(1 day)"}, "partition_template": None},
            "trigger: schedule: needs partition_template (the partition of each logical date), e.g. 'sales/dt={ds}/'",
        ),
        _sales_case(
            "schedule-on-empty",
            "trigger",
            {"schedule": {"expression": "rate(1 day)", "on_empty": "ignore"}},
            "trigger.schedule.on_empty: got 'ignore'; expected one of 'skip' or 'fail'",
        ),
        _sales_case(
            "expect-by",
            "trigger",
            {"expect": {"by": "6:00"}},
            "trigger.expect: by: got '6:00'; with every: day expected 'HH:MM', e.g. '06:00'",
        ),
        _sales_case(
            "expect-every-vs-template",
            "trigger",
            {"expect": {"by": ":45", "every": "hour"}},
            "trigger: expect.every: got 'hour', but partition_template 'sales/dt={ds}/' is daily; expected every: day",
        ),
        _sales_case(
            "expect-with-schedule",
            "trigger",
            {"expect": {"by": "06:00"}, "schedule": {"expression": "rate(1 day)"}},
            "trigger: expect: is for pipelines that start on arrivals",
        ),
        _sales_case(
            "reserved-output",
            "",
            {"output_prefix": "_runs/sales"},
            "output_prefix: got '_runs/sales'; expected a prefix not under _runs",
        ),
    ],
)
def test_bad_config_gives_one_clear_message(mutate: Any, expected: str) -> None:
    message = _error(mutate)
    assert message.startswith(expected), message
    assert len(message.splitlines()) == 1, message


def test_duplicate_yaml_keys_are_rejected(tmp_path: Path) -> None:
    # PyYAML would silently keep the second value.
    path = tmp_path / "dup.yaml"
    path.write_text("project: a1\nproject: b2\npipelines: {}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'project' at line 2"):
        load_config(path=path)


def test_unknown_environment_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"config/nosuch.yaml: file not found; available environments: .*dev"):
        load_config("nosuch")


def test_schema_and_docs_reference_are_current() -> None:
    assert docs.main(["--check"]) == 0, "run `make docs`"


def test_docs_reference_documents_every_pipeline_field() -> None:
    reference = docs.reference_markdown()
    for field in ("trigger", "runtime", "output_prefix", "run_timeout_minutes", "window_seconds", "marker_name"):
        assert f"`{field}`" in reference


def _eks(raw: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = raw["pipelines"]["sales-eks"]
    return result


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda r: _sales(r)["runtime"].update(retry={"max_attempts": 11}),
            "pipeline 'sales-daily': runtime.retry.max_attempts: got 11; expected a number <= 10",
            id="above-aws-maximum",
        ),
        pytest.param(
            lambda r: _sales(r)["runtime"].update(retry={"max_attempts": 0}),
            "pipeline 'sales-daily': runtime.retry.max_attempts: got 0; expected a number >= 1",
            id="no-attempt",
        ),
        pytest.param(
            lambda r: _sales(r)["runtime"].update(retry={"max_attempts": 2}),
            "pipeline 'sales-daily': run_timeout_minutes (120) must be greater than the job's time, "
            "runtime.execution_timeout_minutes (60) x runtime.retry.max_attempts (2) = 120",
            id="run-timeout-below-every-attempt",
        ),
        pytest.param(
            lambda r: (
                _sales(r).update(run_timeout_minutes=121),
                _sales(r)["runtime"].update(retry={"max_attempts": 2}),
                r["serverless_applications"]["shared-spark"].update(release_label="emr-7.0.0"),
            ),
            "pipeline 'sales-daily': runtime.retry.max_attempts (2) needs EMR Serverless release 7.1.0 or later; "
            "got emr-7.0.0",
            id="serverless-release-without-job-resiliency",
        ),
        pytest.param(
            lambda r: _eks(r)["runtime"].update(retry={"max_attempts": 2}, release_label="emr-6.8.0-latest"),
            "pipeline 'sales-eks': runtime: retry.max_attempts (2) needs EMR on EKS release 6.9.0 or later; "
            "got emr-6.8.0-latest",
            id="eks-release-without-retry-policies",
        ),
    ],
)
def test_bad_retry_gives_one_clear_message(mutate: Any, expected: str) -> None:
    message = _error(mutate)
    assert message.startswith(f"config/dev.yaml: {expected}"), message
    assert len(message.splitlines()) == 1, message


def test_retry_defaults_to_one_attempt_and_fits_within_the_run_timeout() -> None:
    assert load_config("dev").pipelines["sales-daily"].runtime.retry.max_attempts == 1

    def retried(raw: dict[str, Any]) -> None:
        _sales(raw).update(run_timeout_minutes=121)
        _sales(raw)["runtime"].update(retry={"max_attempts": 2})
        _eks(raw).update(run_timeout_minutes=121)
        _eks(raw)["runtime"].update(retry={"max_attempts": 2})

    config = dev_config(retried)
    assert config.pipelines["sales-daily"].runtime.retry.retries
    assert config.pipelines["sales-eks"].runtime.retry.max_attempts == 2


# ------------------------------------------------------------------------------------- trigger.after (dependencies)


def _downstream(after: list[str], **trigger: Any) -> Any:
    """A mutation adding pipeline `report` (console-less, runs after `after`) next to the dev pipelines."""

    def mutate(raw: dict[str, Any]) -> None:
        report = copy.deepcopy(_sales(raw))
        report["trigger"] = {"after": after, **trigger}
        report.pop("output_prefix", None)
        raw["pipelines"]["report"] = report

    return mutate


def test_a_pipeline_after_others_has_no_arrival_trigger_and_needs_no_prefix() -> None:
    config = dev_config(_downstream(["sales-daily", "sales-nightly"], suffixes=[".parquet"]))
    report = config.pipelines["report"]
    assert report.upstreams == ["sales-daily", "sales-nightly"]
    assert report.arrivals is None and report.trigger is not None and report.trigger.prefix is None
    assert config.pipelines["sales-daily"].arrivals is config.pipelines["sales-daily"].trigger


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            _downstream(["sales-daly"]),
            "config/dev.yaml: pipeline 'report': trigger.after: got 'sales-daly'; expected a pipeline of this config "
            "(one of 'sales-adhoc', ",
            id="unknown-upstream",
        ),
        pytest.param(
            _downstream(["report"]),
            "config/dev.yaml: pipeline 'report': trigger.after: names the pipeline itself; expected other pipelines",
            id="itself",
        ),
        pytest.param(
            _downstream(["sales-daily", "sales-daily"]),
            "config/dev.yaml: pipeline 'report': trigger: after: ['sales-daily', 'sales-daily'] names a pipeline "
            "twice; expected each upstream once",
            id="twice",
        ),
        pytest.param(
            _downstream(["sales-daily"], prefix="sales/"),
            "config/dev.yaml: pipeline 'report': trigger: prefix: a pipeline with `after` (sales-daily) has no "
            "arrival trigger, so it takes no prefix; remove it (its inputs are its upstreams' outputs)",
            id="prefix-with-after",
        ),
        pytest.param(
            _downstream(["sales-daily"], batching={"mode": "per_object"}, sources=["cloudtrail"]),
            "config/dev.yaml: pipeline 'report': trigger: batching: a pipeline with `after` (sales-daily) has no "
            "arrival trigger, so it takes no batching, sources; remove them",
            id="arrival-fields-with-after",
        ),
        pytest.param(
            lambda raw: _sales(raw)["trigger"].pop("prefix"),
            "config/dev.yaml: pipeline 'sales-daily': trigger: prefix: required; expected a key prefix in the landing "
            "bucket such as 'sales/' (or `after`: upstream pipelines whose runs start this one)",
            id="no-prefix-no-after",
        ),
    ],
)
def test_bad_dependencies_give_one_clear_message(mutate: Any, expected: str) -> None:
    message = _error(mutate)
    assert message.startswith(expected), message
    assert len(message.splitlines()) == 1, message


def test_a_dependency_cycle_is_named_once_with_its_path() -> None:
    def mutate(raw: dict[str, Any]) -> None:
        _downstream(["report"])(raw)
        raw["pipelines"]["summary"] = raw["pipelines"].pop("report")  # summary runs after report
        _downstream(["summary"])(raw)  # and report after summary

    message = _error(mutate)
    assert message == (
        "config/dev.yaml: pipeline 'report': trigger.after: a cycle (report -> summary -> report, each running after "
        "the next); expected dependencies without a loop"
    ), message


@pytest.mark.parametrize(("field", "value"), [("sources", ["cloudtrail"]), ("batching", {"mode": "per_object"})])
def test_a_scheduled_pipeline_takes_no_arrival_fields(field: str, value: Any) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["pipelines"]["sales-nightly"]["trigger"][field] = value

    assert _error(mutate) == (
        f"config/dev.yaml: pipeline 'sales-nightly': trigger: {field}: a scheduled pipeline starts by the clock (no "
        f"arrival rule is deployed), so {field} would have no effect; remove it or the schedule"
    )


def test_a_fan_in_of_dated_and_undated_upstreams_is_refused() -> None:
    # sales-daily's runs carry the date of their partition; sales-east (console runs only) carries none
    assert load_config("dev").pipelines["sales-daily"].trigger.partition_template  # type: ignore[union-attr]
    message = _error(_downstream(["sales-daily", "sales-east"]))
    assert message == (
        "config/dev.yaml: pipeline 'report': trigger.after: 'sales-daily' run(s) carry a logical date (their "
        "partition_template) and 'sales-east' run(s) do not, so no date group and no undated group would ever hold a "
        "run of each and the pipeline would never start; expected upstreams that all have a partition_template (one "
        "run per date) or none of them (the newest run of each)"
    ), message


def test_a_fan_in_after_a_dated_fan_in_is_dated_too() -> None:
    # report runs after sales-daily (dated), so its runs carry dates: a fan-in of report and sales-daily is fine
    def mutate(raw: dict[str, Any]) -> None:
        _downstream(["sales-daily"])(raw)
        raw["pipelines"]["both"] = copy.deepcopy(raw["pipelines"]["report"])
        raw["pipelines"]["both"]["trigger"] = {"after": ["report", "sales-daily"]}

    assert dev_config(mutate).pipelines["both"].upstreams == ["report", "sales-daily"]


def test_too_many_pipelines_for_the_pipeline_stacks_names_the_count_that_fits() -> None:
    # Given 30 copies of sales-east (no trigger, no overlap) in one pipeline stack (the default)
    def crowd(raw: dict[str, Any]) -> None:
        for i in range(30):
            raw["pipelines"][f"east-{i:02d}"] = copy.deepcopy(raw["pipelines"]["sales-east"])

    message = _error(crowd)
    # Then one message names the field, the stack, the limit and the count that fits
    total = len(load_config("dev").pipelines) + 30
    expected = f"pipeline_stacks: got 1; pipeline stack 1 would hold {total} pipelines; expected at most 25 per stack"
    assert expected in message
    assert "set pipeline_stacks to 2 or more" in message

    def spread(raw: dict[str, Any]) -> None:
        crowd(raw)
        raw["pipeline_stacks"] = 4

    config = dev_config(spread)
    assert config.pipeline_stacks == 4
