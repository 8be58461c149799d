"""Concurrency and budget caps as synthesized: the run slot in every workflow, the table, the function's grants."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from autopilot_common.admission import EXPIRES_AT, Caps, Limit
from config.capacity import queue_timeout_seconds, run_reservation
from config.loader import load_config
from tests.infra.conftest import Synthesized
from tests.infra.test_workflow import PIPELINES, _graph, _role_statements, definition_of, state_machine, workflow_role

STATEMACHINES = Path(__file__).resolve().parents[2] / "statemachines" / "rendered"
CONFIG = load_config("dev")
# Where each runtime's failure path starts, and the state right after each release.
FAILURE_ENTRY = {
    "emr_serverless_job": "CancelJobIfStarted",
    "emr_eks_job": "CancelJobIfStarted",
    "emr_ec2_transient": "TerminateIfCreated",
    "emr_ec2_existing": "FinalizeFailed",
}


def _asl(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((STATEMACHINES / f"{name}.asl.json").read_text(encoding="utf-8"))
    return result


def _reachable(asl: dict[str, Any], target: str, without: str) -> bool:
    """True when `target` can be reached from the start without passing through `without`."""
    edges, seen, todo = _graph(asl), set(), [asl["StartAt"]]
    while todo:
        node = todo.pop()
        if node in seen or node == without:
            continue
        seen.add(node)
        todo.extend(edges[node])
    return target in seen


@pytest.mark.parametrize("name", sorted(FAILURE_ENTRY))
def test_every_workflow_waits_for_a_run_slot_before_launching_anything(name: str) -> None:
    asl = _asl(name)
    states = asl["States"]
    assert states["CheckInput"]["Default"] == "AcquireRunSlot"
    acquire = states["AcquireRunSlot"]
    assert acquire["Resource"] == "arn:${Partition}:states:::lambda:invoke.waitForTaskToken"
    payload = acquire["Parameters"]["Payload"]
    assert payload["token.$"] == "$$.Task.Token" and payload["action"] == "acquire"
    assert {"run_id.$", "arrival.$", "reservation.$", "ledger_key.$", "ledger.$"} <= set(payload)
    assert acquire["TimeoutSecondsPath"] == "$.run.queue_timeout_seconds"
    assert acquire["ResultPath"] == "$.run.ledger.admission"  # every later ledger write carries it
    assert acquire["Next"] == "RecordStarted"
    # A queue timeout fails the run as QueueTimeout; any other error takes the ordinary failure path.
    catches = {c["ErrorEquals"][0]: c["Next"] for c in acquire["Catch"]}
    assert catches == {"States.Timeout": "QueueTimedOut", "States.ALL": FAILURE_ENTRY[name]}
    assert states["QueueTimedOut"]["Parameters"]["Error"] == "QueueTimeout"
    assert states["QueueTimedOut"]["Next"] == FAILURE_ENTRY[name]
    assert acquire["Retry"][0] == {"ErrorEquals": ["States.Timeout", "ReservationExceedsCap"], "MaxAttempts": 0}


@pytest.mark.parametrize("name", sorted(FAILURE_ENTRY))
def test_every_way_out_releases_the_slot_before_the_ledger(name: str) -> None:
    asl = _asl(name)
    # No success without ReleaseRunSlot, no failure ledger entry without ReleaseAfterFailure.
    assert not _reachable(asl, "RunSucceeded", without="ReleaseRunSlot")
    assert not _reachable(asl, "RecordFailed", without="ReleaseAfterFailure")
    for state_name in ("ReleaseRunSlot", "ReleaseAfterFailure"):
        state = asl["States"][state_name]
        assert state["Parameters"]["Payload"]["action"] == "release"
        assert state["Parameters"]["Payload"]["reservation.$"] == "$.run.reservation"  # saves a read
        assert state["Retry"][0]["ErrorEquals"] == ["States.ALL"] and state["Retry"][0]["MaxAttempts"] >= 3
        (catch,) = state["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"] and catch["Next"] == state["Next"]  # never fails the run
        assert catch["ResultPath"] != "$.error"  # keeps the run's own error for the ledger


def test_admission_table_is_on_demand_with_point_in_time_recovery(synth: Synthesized) -> None:
    (table,) = [
        t["Properties"]
        for t in synth.resources("AWS::DynamoDB::GlobalTable").values()
        if t["Properties"]["TableName"] == "autopilot-dev-admission"
    ]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    # SPEND items (a budgeted run's reservation) expire when the run's end never settles them
    assert table["TimeToLiveSpecification"] == {"AttributeName": EXPIRES_AT, "Enabled": True}
    (replica,) = table["Replicas"]
    assert replica["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def _admission_function(synth: Synthesized) -> dict[str, Any]:
    (function,) = [
        f["Properties"]
        for f in synth.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == "autopilot-dev-admission"
    ]
    return function


def test_admission_function_gets_the_caps_from_config(synth: Synthesized) -> None:
    env = _admission_function(synth)["Environment"]["Variables"]
    deployment_caps = Caps.from_env(env)
    assert deployment_caps.pipelines == {}  # the environment holds the deployment's caps only, whatever the pipelines
    parameters = synth.pipeline_settings()
    caps = replace(
        deployment_caps, pipelines={n: Limit.from_json(s["caps"]) for n, s in parameters.items() if "caps" in s}
    )
    deployment = CONFIG.guardrails.limits
    assert caps.deployment == Limit(
        deployment.max_concurrent_runs,
        deployment.max_concurrent_clusters,
        deployment.max_vcpus,
        deployment.max_daily_usd,
    )
    assert caps.pipelines == {
        name: Limit(
            p.limits.max_concurrent_runs,
            p.limits.max_concurrent_clusters,
            p.limits.max_vcpus,
            p.limits.max_daily_usd,
            p.limits.over_budget,
        )
        for name, p in CONFIG.pipelines.items()
        if p.limits.capped or p.limits.over_budget == "fail"
    }
    assert "sales-burst" in caps.pipelines and caps.pipelines["sales-burst"].runs == 2
    assert caps.pipelines["sales-budget"].usd == 0.0006  # a daily budget
    assert "ADMISSION_TABLE" in env and "LEDGER_BUCKET" in env and "TOPIC_ARN" in env
    assert env["DEPLOYMENT"] == "autopilot-dev"
    ssm = {a: s["Resource"] for s in _role_statements(synth, "PlatformAdmissionAdmissionFunction") for a in
           _listed(s["Action"]) if a.startswith("ssm:")}  # fmt: skip
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/autopilot-dev/pipelines/*"
    assert ssm == {"ssm:GetParameter": arn}  # one pipeline's parameter by name; never a listing


def test_admission_function_may_answer_tokens_and_write_only_ledger_entries(synth: Synthesized) -> None:
    statements = _role_statements(synth, "PlatformAdmissionAdmissionFunction")
    actions = {a: s["Resource"] for s in statements for a in _listed(s["Action"])}
    # Task responses support no resource-level permissions; nothing else of Step Functions is allowed.
    assert actions["states:SendTaskSuccess"] == actions["states:SendTaskFailure"] == "*"
    assert {a for a in actions if a.startswith("states:")} == {"states:SendTaskSuccess", "states:SendTaskFailure"}
    assert json.dumps(actions["s3:PutObject"]).endswith('/_runs/*"]]}')
    # Exactly what conditional transactions, reads, the counters' batch read and queries need: no scans, no batch
    # writes.
    assert {a for a in actions if a.startswith("dynamodb:")} == {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }


def _listed(action: str | list[str]) -> list[str]:
    return action if isinstance(action, list) else [action]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_each_workflow_invokes_the_admission_function_with_its_settings(synth: Synthesized, pipeline: str) -> None:
    statements = _role_statements(synth, workflow_role(pipeline))
    invokes = json.dumps([s["Resource"] for s in statements if s["Action"] == "lambda:InvokeFunction"])
    assert "PlatformAdmissionAdmissionFunction" in invokes
    subs = state_machine(synth, f"autopilot-dev-{pipeline}")["DefinitionSubstitutions"]
    settings = json.loads(subs["AdmissionJson"].replace('\\"', '"'))
    assert settings == {
        "reservation": run_reservation(CONFIG, pipeline).as_dict(),
        "queue_timeout_seconds": queue_timeout_seconds(CONFIG.pipelines[pipeline]),
    }
    assert "AcquireRunSlot" in definition_of(synth, pipeline)["States"]
