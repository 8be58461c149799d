"""Issue 13.7 end to end: what a failed run's ledger entry and notification say. A timed-out job run gets a cause
that names the timeout (Step Functions gives none), a huge cause is kept to about 1 KB and marked truncated while
the execution keeps the full text, and console input cannot forge the router's trigger."""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.deployment import Deployed


def _console_run(env: Deployed, pipeline: str, **extra: Any) -> tuple[str, str]:
    prefix = {"sales-daily": "sales/", "sales-burst": "burst/"}.get(pipeline, f"{pipeline}/")
    key = f"{prefix}causes/{uuid.uuid4().hex[:8]}.txt"  # not .csv: the trigger ignores it
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    name = f"{pipeline}-{uuid.uuid4().hex[:8]}"
    body = {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{key}"], **extra}
    return name, env.start_console_run(name, body)


def _final_entry(env: Deployed, run_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        found = [r.raw for r in env.runs() if r.run_id == run_id]
        return found[0] if found and found[0]["state"] not in ("QUEUED", "STARTED", "RUNNING") else None

    entry: dict[str, Any] = env.wait_for(ended, 60, f"the final ledger entry of {run_id}")
    return entry


def test_an_eks_job_that_outlives_its_task_timeout_fails_with_a_cause_naming_the_timeout(env: Deployed) -> None:
    # Given sales-eks's job task times out after 3 s (EMR on EKS has no job timeout: the task's is the job's)
    machine = env.state_machine_of("sales-eks")
    original = env.sfn.describe_state_machine(stateMachineArn=machine)
    definition = json.loads(original["definition"])
    run_job = definition["States"]["RunJob"]
    run_job.pop("TimeoutSecondsPath")
    run_job["TimeoutSeconds"] = 3
    env.sfn.update_state_machine(stateMachineArn=machine, definition=json.dumps(definition))
    try:
        env.twin.faults.hang_next_job()
        run_id, arn = _console_run(env, "sales-eks")
        entry = _final_entry(env, run_id)
    finally:
        env.sfn.update_state_machine(stateMachineArn=machine, definition=original["definition"])
    # Then the ledger says FAILED with States.Timeout and a cause that names the timeout (it was empty)
    assert (entry["state"], entry["error"]) == ("FAILED", "States.Timeout")
    assert entry["cause"].startswith("the job run did not end within its timeout of "), entry["cause"]
    assert env.finished(arn)["status"] == "FAILED"
    env.wait_for(lambda: not env.twin.emr_containers.running(), 30, "the job run to be cancelled")


def test_a_huge_failure_cause_is_capped_in_the_ledger_and_whole_in_the_execution(env: Deployed) -> None:
    # Given the next EMR Serverless job run fails with a 5,000-character message
    message = "Job failed: " + "x" * 5000
    env.twin.faults.fail_next_job(message)
    run_id, arn = _console_run(env, "sales-daily")
    entry = _final_entry(env, run_id)
    # Then the ledger's cause is at most 1 KB, says it is truncated and where the full text is
    assert entry["state"] == "FAILED"
    assert len(entry["cause"]) <= 1024
    assert "[truncated: " in entry["cause"] and "the full text is in the execution's history]" in entry["cause"]
    # and the execution fails with the whole cause
    described = env.finished(arn)
    assert described["status"] == "FAILED" and message in described["cause"]


def test_console_input_cannot_forge_the_router_s_trigger(env: Deployed) -> None:
    # When an operator's input carries a trigger block (an s3 trigger with an early arrival time)
    forged = {"type": "s3", "event_time": "2000-01-01T00:00:00Z"}
    run_id, arn = _console_run(env, "sales-daily", trigger=forged)
    # Then nothing starts: the run fails at once naming the field, and the ledger says so
    described = env.finished(arn)
    assert described["status"] == "FAILED" and described["error"] == "InvalidExecutionInput"
    assert described["cause"].startswith("trigger: set by the router only; console input may not carry it")
    entry = _final_entry(env, run_id)
    assert entry["state"] == "FAILED" and entry.get("trigger", {}).get("type") != "s3"
