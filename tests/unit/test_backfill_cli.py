"""`emr-autopilot backfill` against the moto-backed "real account" of test_operator_cli (the stack registered in
CloudFormation, no twin): partitions of config/dev.yaml's sales-daily (`sales/dt={ds}/`, `.csv` only)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from autopilot_cli import backfill, deployment, watch
from autopilot_common.names import backfill_run_id
from config.loader import load_config
from tests.unit.test_operator_cli import REGION, _arn, _end, _write, account, cli

__all__ = ["account"]  # the fixture, shared

LANDING = "landing"


@pytest.fixture
def landing(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Three days of sales: 06-01 two CSVs (and a .txt and a zero-byte CSV the trigger ignores), 06-02 nothing,
    06-03 one CSV. Yields the sleeps between starts."""
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=LANDING, CreateBucketConfiguration={"LocationConstraint": REGION})
    for key, body in [
        ("sales/dt=2024-06-01/a.csv", b"order_date,amount\n2024-06-01,1\n"),
        ("sales/dt=2024-06-01/b.csv", b"order_date,amount\n2024-06-01,2\n"),
        ("sales/dt=2024-06-01/readme.txt", b"not data"),
        ("sales/dt=2024-06-01/empty.csv", b""),
        ("sales/dt=2024-06-03/c.csv", b"order_date,amount\n2024-06-03,3\n"),
        ("sales/dt=2024-06-030/other.csv", b"another partition whose name starts the same"),
    ]:
        s3.put_object(Bucket=LANDING, Key=key, Body=body)
    sleeps: list[float] = []
    monkeypatch.setattr(backfill, "_sleep", sleeps.append)
    return sleeps


def _executions(account: dict[str, Any]) -> list[dict[str, Any]]:
    sfn = account["sfn"]
    listed = sfn.list_executions(stateMachineArn=account["machine"])["executions"]
    return [sfn.describe_execution(executionArn=e["executionArn"]) for e in listed]


def _actions(*args: str) -> list[str]:
    """A backfill of sales-daily that exits 0: each partition's action."""
    result = cli("backfill", "sales-daily", *args, "--json")
    assert result.exit_code == 0, result.output
    return [row["action"] for row in json.loads(result.stdout)]


def _run_id(day: str) -> str:
    return backfill_run_id("sales-daily", f"sales/dt={day}/", day)


def test_dry_run_lists_every_partition_and_starts_nothing(account: dict[str, Any], landing: list[float]) -> None:
    result = cli("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-03", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["partition"], r["prefix"], r["objects"], r["action"]) for r in rows] == [
        ("2024-06-01", "sales/dt=2024-06-01/", 2, "start"),
        ("2024-06-02", "sales/dt=2024-06-02/", 0, "empty: not started"),
        ("2024-06-03", "sales/dt=2024-06-03/", 1, "start"),
    ]
    assert rows[0]["bytes"] == 2 * len(b"order_date,amount\n2024-06-01,1\n")
    assert rows[0]["run_id"] == _run_id("2024-06-01") and rows[2]["run_id"] == _run_id("2024-06-03")
    assert _executions(account) == []
    table = cli("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-03", "--dry-run")
    assert table.exit_code == 0, table.output
    text = " ".join(table.stdout.split())
    assert "dry run: nothing started" in text and "empty: not started" in text and _run_id("2024-06-01") in text
    assert "dry run: 2 would start, 0 already started, 1 empty; nothing started" in " ".join(table.stderr.split())
    assert _executions(account) == []


def test_backfill_starts_one_run_per_non_empty_partition_at_the_rate(
    account: dict[str, Any], landing: list[float]
) -> None:
    result = cli("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-03", "--rate", "12", "--json")
    assert result.exit_code == 0, result.output
    started = {e["name"]: json.loads(e["input"]) for e in _executions(account)}
    # 06-01 holds a .txt that prepare would read from the prefix: the run gets the trigger's objects themselves.
    assert started == {
        _run_id("2024-06-01"): {
            "pipeline": "sales-daily",
            "inputs": [f"s3://{LANDING}/sales/dt=2024-06-01/a.csv", f"s3://{LANDING}/sales/dt=2024-06-01/b.csv"],
            "logical_date": "2024-06-01",
        },
        _run_id("2024-06-03"): {
            "pipeline": "sales-daily",
            "inputs": [f"s3://{LANDING}/sales/dt=2024-06-03/"],
            "logical_date": "2024-06-03",
        },
    }
    assert landing == [5.0]  # 12 a minute: one pause between the two starts
    actions = [r["action"] for r in json.loads(result.stdout)]
    assert actions == ["started", "empty: not started", "started"]
    err = " ".join(result.stderr.split())
    assert f"[1/2] 2024-06-01: started {_run_id('2024-06-01')}" in err
    assert "started 2 runs of sales-daily; 0 already started, 1 empty (not started)" in err
    assert "`emr-autopilot status` shows the line" in err

    again = _actions("--from", "2024-06-01", "--to", "2024-06-03")
    assert again == ["already started (RUNNING)", "empty: not started", "already started (RUNNING)"]
    assert len(_executions(account)) == 2


def test_a_closed_execution_of_the_same_name_is_already_started_not_a_failure(
    account: dict[str, Any], landing: list[float]
) -> None:
    assert cli("backfill", "sales-daily", "--from", "2024-06-03", "--to", "2024-06-03").exit_code == 0
    (execution,) = _executions(account)
    account["sfn"].stop_execution(executionArn=execution["executionArn"])
    actions = _actions("--from", "2024-06-01", "--to", "2024-06-03")
    assert actions == ["started", "empty: not started", "already started (ABORTED)"]


def test_a_start_that_aws_refuses_exits_1_naming_the_partition(
    account: dict[str, Any], landing: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    account["sfn"].delete_state_machine(stateMachineArn=account["machine"])
    result = cli("backfill", "sales-daily", "--from", "2024-06-03", "--to", "2024-06-03")
    assert result.exit_code == 1, result.output
    assert "1 partition(s) not started: 2024-06-03: refused: StateMachineDoesNotExist" in " ".join(
        result.stderr.split()
    )


def test_fail_on_empty_exits_1_after_starting_the_others(account: dict[str, Any], landing: list[float]) -> None:
    result = cli("backfill", "sales-daily", "--from", "2024-06-02", "--to", "2024-06-03", "--fail-on-empty")
    assert result.exit_code == 1, result.output
    assert "--fail-on-empty: 1 partition(s) hold no input objects: 2024-06-02" in result.stderr
    assert [e["name"] for e in _executions(account)] == [_run_id("2024-06-03")]


def test_prefixes_and_an_hourly_template(account: dict[str, Any], landing: list[float]) -> None:
    result = cli("backfill", "sales-daily", "--prefixes", "sales/dt=2024-06-03/",
                 "--prefixes", f"s3://{LANDING}/sales/dt=2024-06-030/", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["partition"], r["objects"], r["action"]) for r in rows] == [
        ("sales/dt=2024-06-03/", 1, "started"),
        ("sales/dt=2024-06-030/", 1, "started"),
    ]
    names = sorted(e["name"] for e in _executions(account))
    assert names == sorted(backfill_run_id("sales-daily", r["prefix"]) for r in rows)
    hourly = cli("backfill", "sales-daily", "--template", "sales/dt={ds}/h={hh}/", "--from", "2024-06-01T22",
                 "--to", "2024-06-02", "--dry-run", "--json")  # fmt: skip
    assert hourly.exit_code == 0, hourly.output
    assert [r["partition"] for r in json.loads(hourly.stdout)] == [f"2024-06-0{d}T{h:02d}" for d in (1, 2)
                                                                   for h in range(24) if d == 2 or h >= 22]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2024-06-01"], "--to: required (the logical date range), or give --prefixes instead"),
        (["--prefixes", "sales/x/", "--from", "2024-06-01"], "--prefixes and --from: give either --from/--to"),
        (["--from", "2024-06-03", "--to", "2024-06-01"], "the range starts (2024-06-03T00:00:00) after it ends"),
        (["--from", "June", "--to", "2024-06-01"], "--from: got 'June'; expected an ISO date"),
        (
            ["--from", "2024-06-01", "--to", "2024-06-01", "--template", "sales/{day}/"],
            "--template: 'sales/{day}/': unknown placeholder {day}; expected one of {ds}, {yyyy}, {mm}, {dd}, {hh}",
        ),
        (
            ["--from", "2024-06-01", "--to", "2024-06-01", "--template", "orders/{ds}/"],
            "--template 'orders/{ds}/' renders 'orders/2024-06-01/', which is not under the trigger's prefix 'sales/'",
        ),
        (["--prefixes", "s3://elsewhere/sales/"], "--prefixes: 's3://elsewhere/sales/' is not in the landing bucket"),
        (["--prefixes", "orders/"], "--prefixes: 'orders/' is not under the trigger's prefix 'sales/'"),
        (["--from", "2024-01-01", "--to", "2026-12-31", "--dry-run"], "is 1096 days; at most 1000 partitions"),
    ],  # fmt: skip
)
def test_bad_usage_exits_2_naming_the_flag(
    account: dict[str, Any], landing: list[float], args: list[str], message: str
) -> None:
    result = cli("backfill", "sales-daily", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr
    assert _executions(account) == []


def test_a_pipeline_without_a_template_needs_one(
    account: dict[str, Any], landing: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    def without_template(env: str) -> Any:
        config = load_config(env)
        trigger = config.pipelines["sales-daily"].trigger
        assert trigger is not None and trigger.partition_template == "sales/dt={ds}/"
        pipeline = config.pipelines["sales-daily"]
        bare = trigger.model_copy(update={"partition_template": None})
        config.pipelines["sales-daily"] = pipeline.model_copy(update={"trigger": bare})
        return config

    monkeypatch.setattr(deployment, "load_config", without_template)
    result = cli("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-01")
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "pipeline 'sales-daily' has no trigger.partition_template in config: pass --template" in message
    assert "or give --prefixes" in message
    with_flag = cli("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-01", "--template",
                    "sales/dt={ds}/", "--dry-run", "--json")  # fmt: skip
    assert with_flag.exit_code == 0 and json.loads(with_flag.stdout)[0]["objects"] == 2, with_flag.output


def test_wait_follows_the_started_runs_and_exits_1_naming_the_one_that_failed(
    account: dict[str, Any], landing: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, bad = _run_id("2024-06-01"), _run_id("2024-06-03")

    def runs_end(seconds: float) -> None:  # the world moves on while the CLI polls
        for run_id, state in ((ok, "SUCCEEDED"), (bad, "FAILED")):
            _write(run_id, state, error="States.TaskFailed" if state == "FAILED" else None)
            _end(_arn(run_id), state)

    monkeypatch.setattr(watch, "_sleep", runs_end)
    result = cli("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-03", "--wait")
    assert result.exit_code == 1, result.output
    err = " ".join(result.stderr.split())
    assert f"2024-06-01: {ok} SUCCEEDED" in err and f"2024-06-03: {bad} FAILED" in err
    assert err.endswith(f"emr-autopilot: error: 1 of 2 runs did not succeed: {bad} FAILED: States.TaskFailed")
