"""Daily budgets end to end on the twin: pipeline `sales-budget` (EMR Serverless, `max_daily_usd: 0.0006`,
`run_estimate_usd: 0.0005`, `over_budget: wait`): its first run of the day spends what it cost (or, while the
runtime records no cost, keeps its estimate as its spend), so the next one, which reserves that much, waits for
the budget (not a slot), says so in the ledger, and ends with QueueTimeout having launched nothing. Whether the
runtime records a cost or not, two runs do not fit: the test holds either way (it reads which from the ledger).
With `over_budget: fail` (the pipeline's settings parameter redeployed with it, seen by the warm admission function
once its cached settings are older than their max age), a run over budget fails with BudgetExceeded."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from autopilot_common.admission import CAPS_ENV
from autopilot_common.pipeline_settings import MAX_AGE_ENV, settings_parameter_name
from tests.deployment import LEDGER_WRITES, Deployed, Notifications
from tests.e2e.test_concurrency_caps import _with_queue_timeout

PIPELINE, BUDGET, FIRST_ESTIMATE = "sales-budget", 0.0006, 0.0005
TABLE = "autopilot-dev-admission"
CSV = b"order_id,order_date,customer_id,amount\n1,2024-06-01,c1,9.5\n"


def _entered(env: Deployed, arn: str) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in env.history(arn) if e["type"].endswith("StateEntered")]


def _spend_today(env: Deployed) -> float:
    item = env.twin.client("dynamodb").get_item(
        TableName=TABLE, Key={"pk": {"S": "LINE"}, "sk": {"S": f"CAP#pipeline#{PIPELINE}"}}, ConsistentRead=True
    )["Item"]
    return float(item[f"usd@{datetime.now(UTC).date().isoformat()}"]["N"])


def _writes(run_id: str) -> list[dict[str, Any]]:
    return [json.loads(body) for key, body in LEDGER_WRITES if key.endswith(f"/{run_id}.json")]


def test_a_run_over_the_daily_budget_waits_for_it_and_the_ledger_shows_reservation_and_spend(env: Deployed) -> None:
    folder = f"budget/{uuid.uuid4().hex[:8]}/"
    keys = [f"{folder}first.txt", f"{folder}second.txt"]  # console runs' inputs: the trigger takes only .csv
    for key in keys:
        env.s3.put_object(Bucket=env.landing, Key=key, Body=CSV)
    env.twin.wait_idle()
    # Given the day's first run of the pipeline, admitted on its configured estimate
    first = f"budget-first-{uuid.uuid4().hex[:8]}"
    arn = env.start_console_run(first, {"pipeline": PIPELINE, "inputs": [f"s3://{env.landing}/{keys[0]}"]})
    assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"
    ledger = env.ledger(first)
    reserved = ledger["admission"]["budget"]
    assert reserved["reserved_usd"] == FIRST_ESTIMATE and reserved["scopes"] == [f"pipeline#{PIPELINE}"]
    # When it ends, its recorded cost replaces the estimate (an unknown cost keeps the estimate as its spend)
    cost = (ledger.get("cost") or {}).get("usd")
    spent = FIRST_ESTIMATE if cost is None else cost
    assert 2 * spent > BUDGET, f"the scenario needs two runs not to fit the budget; the first cost {cost}"
    entered = _entered(env, arn)
    assert entered.index("RecordSucceeded") < entered.index("RecordSpend") < entered.index("WriteSuccessMarker")
    assert _spend_today(env) == pytest.approx(spent, abs=1e-6)
    # Then the next run (a copy of the workflow that waits at most 3 s) reserves that cost and waits for the budget
    machine = _with_queue_timeout(env, seconds=3, pipeline=PIPELINE)
    second = f"budget-second-{uuid.uuid4().hex[:8]}"
    arn = env.sfn.start_execution(
        stateMachineArn=machine,
        name=second,
        input=json.dumps({"pipeline": PIPELINE, "inputs": [f"s3://{env.landing}/{keys[1]}"]}),
    )["executionArn"]
    described = env.finished(arn, timeout=60)
    (queued,) = [w for w in _writes(second) if w["state"] == "QUEUED"]
    assert queued["admission"]["waiting_for"] == "budget"
    hold = queued["admission"]["over_budget"]
    assert hold["scope"] == f"pipeline#{PIPELINE}" and hold["max_daily_usd"] == BUDGET
    assert hold["spent_usd"] == pytest.approx(spent, abs=1e-6)
    assert hold["estimate_usd"] == pytest.approx(spent, abs=1e-6)
    # and, still over budget when its wait ends, it fails as QueueTimeout having launched nothing
    assert described["status"] == "FAILED" and described["error"] == "QueueTimeout"
    assert env.ledger(second)["state"] == "FAILED"
    entered = _entered(env, arn)
    assert "StartJob" not in entered and "RecordSpendAfterFailure" in entered
    assert _spend_today(env) == pytest.approx(spent, abs=1e-6)  # it reserved nothing: the spend is the first's


@contextmanager
def _caps(env: Deployed, pipeline_caps: dict[str, Any]) -> Iterator[None]:
    """PIPELINE's settings parameter with `pipeline_caps` in its `caps` section, written as a deploy of its pipeline
    stack with those limits writes it (CloudFormation updates the parameter; the platform stack is untouched).

    The functions that read caps (admission, and the guardrail that releases slots) cache a pipeline's settings for
    PIPELINE_SETTINGS_MAX_AGE_SECONDS (60 s deployed; 1 s here). The admission function first reads the old caps
    (a release of no run), so the change reaches a warm container through the max age, not a cold start. The
    deployed parameter and environments are restored after."""
    lam, ssm = env.twin.client("lambda"), env.twin.client("ssm")
    name = settings_parameter_name("autopilot-dev", PIPELINE)
    deployed_value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    readers = [n for n, f in env.twin.runtime.functions.items() if CAPS_ENV in f.environment]
    variables = {n: lam.get_function_configuration(FunctionName=n)["Environment"]["Variables"] for n in readers}
    for function, before in variables.items():
        lam.update_function_configuration(
            FunctionName=function, Environment={"Variables": {**before, MAX_AGE_ENV: "1"}}
        )
    admission = next(n for n in readers if n.endswith("-admission"))
    warm = {"action": "release", "run_id": "nobody", "pipeline": PIPELINE, "reservation": {"runs": 1}}
    assert env.twin.runtime.invoke(admission, warm) == {"released": False}  # as the workflow's ReleaseRunSlot does
    sections = json.loads(deployed_value)
    sections["caps"] = {**sections["caps"], **pipeline_caps}
    ssm.put_parameter(Name=name, Value=json.dumps(sections), Type="String", Overwrite=True)
    time.sleep(1.5)  # past the max age: the next read of PIPELINE's settings asks SSM again
    try:
        yield
    finally:
        ssm.put_parameter(Name=name, Value=deployed_value, Type="String", Overwrite=True)
        for function, before in variables.items():
            lam.update_function_configuration(FunctionName=function, Environment={"Variables": before})


def test_a_run_over_the_daily_budget_fails_with_budget_exceeded_when_configured_to(env: Deployed) -> None:
    notifications = Notifications(env)
    folder = f"budget/fail-{uuid.uuid4().hex[:8]}/"
    keys = [f"{folder}first.txt", f"{folder}second.txt"]
    for key in keys:
        env.s3.put_object(Bucket=env.landing, Key=key, Body=CSV)
    env.twin.wait_idle()
    if not _spend_today(env):  # the day's first run is never over budget: spend something first
        first = f"budget-fail-first-{uuid.uuid4().hex[:8]}"
        arn = env.start_console_run(first, {"pipeline": PIPELINE, "inputs": [f"s3://{env.landing}/{keys[0]}"]})
        assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"
    spent = _spend_today(env)
    assert spent > 0
    # Given the pipeline's budget is what it already spent today, and over_budget: fail
    with _caps(env, {"usd": spent, "over_budget": "fail"}):
        run_id = f"budget-fail-{uuid.uuid4().hex[:8]}"
        arn = env.start_console_run(run_id, {"pipeline": PIPELINE, "inputs": [f"s3://{env.landing}/{keys[1]}"]})
        described = env.finished(arn, timeout=60)
    # Then the run fails at once with BudgetExceeded naming the budget, having launched nothing and spent nothing
    assert described["status"] == "FAILED" and described["error"] == "BudgetExceeded"
    assert f"pipeline#{PIPELINE}" in described["cause"] and f"${spent:.6f}" in described["cause"]
    ledger = env.ledger(run_id)
    assert (ledger["state"], ledger["error"]) == ("FAILED", "BudgetExceeded")
    assert not [w for w in _writes(run_id) if w["state"] == "QUEUED"]  # refused, never waited
    entered = _entered(env, arn)
    assert "StartJob" not in entered and "ReleaseAfterFailure" in entered
    assert _spend_today(env) == pytest.approx(spent, abs=1e-9)
    notice = notifications.of_run(run_id, "FAILED")
    assert "BudgetExceeded" in notice["Message"] and f"pipeline#{PIPELINE}" in notice["Message"]
