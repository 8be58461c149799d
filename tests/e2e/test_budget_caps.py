"""Daily budgets end to end on the twin: pipeline `sales-budget` (EMR Serverless, `max_daily_usd: 0.0006`,
`run_estimate_usd: 0.0005`, `over_budget: wait`): its first run of the day spends what it cost (or, while the
runtime records no cost, keeps its estimate as its spend), so the next one, which reserves that much, waits for
the budget (not a slot), says so in the ledger, and ends with QueueTimeout having launched nothing. Whether the
runtime records a cost or not, two runs do not fit: the test holds either way (it reads which from the ledger).
With `over_budget: fail` (the admission function redeployed with it), a run over budget fails with BudgetExceeded."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

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
    """Every function that reads ADMISSION_CAPS (admission, its sweeper) with `pipeline_caps` for PIPELINE, as a
    deployment of the config with those limits would have them (UpdateFunctionConfiguration: the next invocation is
    a cold start under the new environment); the deployed caps are restored after."""
    lam = env.twin.client("lambda")
    names = [n for n, f in env.twin.runtime.functions.items() if "ADMISSION_CAPS" in f.environment]
    before = {n: lam.get_function_configuration(FunctionName=n)["Environment"]["Variables"] for n in names}
    for name, variables in before.items():
        caps = json.loads(variables["ADMISSION_CAPS"])
        caps["pipelines"][PIPELINE] = {**caps["pipelines"][PIPELINE], **pipeline_caps}
        changed = {**variables, "ADMISSION_CAPS": json.dumps(caps)}
        lam.update_function_configuration(FunctionName=name, Environment={"Variables": changed})
    try:
        yield
    finally:
        for name, variables in before.items():
            lam.update_function_configuration(FunctionName=name, Environment={"Variables": variables})


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
