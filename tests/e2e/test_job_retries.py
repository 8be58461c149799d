"""EMR Serverless retry policies end to end on the twin (pipeline sales-retry, `runtime.retry.max_attempts: 2`): the
service retries within the one job run, the workflow waits through every attempt, and the ledger records each
attempt; the cost covers them all. EMR on EKS (sales-eks, `max_attempts: 2`): tests/e2e/test_eks_pipeline.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from autopilot_common.pricing import shipped_prices
from config.loader import load_config
from tests.deployment import Deployed

SERVERLESS = "sales-retry"


def _console_run(env: Deployed, pipeline: str) -> tuple[str, str]:
    key = f"{pipeline}/{uuid.uuid4().hex[:8]}/a.csv.input"  # a suffix no trigger listens to: only this run reads it
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    name = f"{pipeline}-{uuid.uuid4().hex[:8]}"
    return name, env.start_console_run(name, {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{key}"]})


def _run_failing(env: Deployed, pipeline: str, *failures: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A console run of `pipeline` whose next job attempts fail with `failures`: (its execution, its ledger entry)."""
    for message in failures:
        env.twin.faults.fail_next_job(message)
    run_id, arn = _console_run(env, pipeline)
    return env.finished(arn), env.ledger(run_id)


def _attempts_cost(env: Deployed, ledger: dict[str, Any]) -> float:
    """The cost recomputed from GetJobRun of each attempt (the twin's API) and the price table."""
    client = env.twin.client("emr-serverless")
    job = {"applicationId": ledger["application_id"], "jobRunId": ledger["job_run_id"]}
    latest = client.get_job_run(**job)["jobRun"]["attempt"]
    config = load_config("dev")
    application = config.serverless_applications["shared-spark"]
    rates = shipped_prices().serverless(env.twin.region, application.architecture)
    total = 0.0
    for attempt in range(1, latest + 1):
        billed = client.get_job_run(**job, attempt=attempt)["jobRun"]["billedResourceUtilization"]
        assert billed == ledger["attempts"][attempt - 1]["billed_resource_utilization"]
        total += (
            billed["vCPUHour"] * rates["vcpu_hour"]
            + billed["memoryGBHour"] * rates["memory_gb_hour"]
            + billed["storageGBHour"] * rates["storage_gb_hour"]
        )
    return total


def test_a_serverless_job_failing_once_under_two_attempts_succeeds_with_both_attempts_in_the_ledger(
    env: Deployed,
) -> None:
    # Given the first attempt of the next job run fails, when a run of the pipeline with max_attempts 2 runs
    described, ledger = _run_failing(env, SERVERLESS, "Job failed: injected executor loss")
    # Then the run succeeded on the job run's second attempt, and the ledger has both, the failed one with its reason
    assert described["status"] == "SUCCEEDED", described.get("cause")
    assert [(a["attempt"], a["state"]) for a in ledger["attempts"]] == [(1, "FAILED"), (2, "SUCCESS")]
    assert "injected executor loss" in ledger["attempts"][0]["state_details"]
    assert ledger["attempts"][0]["ended_at"] <= ledger["attempts"][1]["started_at"]
    assert ledger["job_run"]["attempt"] == 2
    # and its cost covers both attempts (each billed its one-minute minimum at least)
    assert ledger["cost"]["usd"] == pytest.approx(_attempts_cost(env, ledger), abs=1e-6)
    assert any("2 attempts" in note for note in ledger["cost"]["notes"])
    # The one job run was started once, with the policy (ListJobRunAttempts lists both attempts, newest first)
    listed = env.twin.client("emr-serverless").list_job_run_attempts(
        applicationId=ledger["application_id"], jobRunId=ledger["job_run_id"]
    )["jobRunAttempts"]
    assert [(a["attempt"], a["state"]) for a in listed] == [(2, "SUCCESS"), (1, "FAILED")]
    job = env.twin.client("emr-serverless").get_job_run(
        applicationId=ledger["application_id"], jobRunId=ledger["job_run_id"]
    )["jobRun"]
    assert job["retryPolicy"] == {"maxAttempts": 2}


def test_a_serverless_job_failing_every_attempt_ends_failed_with_both_attempts(env: Deployed) -> None:
    described, ledger = _run_failing(env, SERVERLESS, "Job failed: first", "Job failed: second")
    assert described["status"] == "FAILED" and described["error"] == "States.TaskFailed"
    assert ledger["state"] == "FAILED" and "Job failed: second" in ledger["cause"]
    assert [(a["attempt"], a["state"], a["state_details"]) for a in ledger["attempts"]] == [
        (1, "FAILED", "Job failed: first"),
        (2, "FAILED", "Job failed: second"),
    ]
    assert ledger["cost"]["usd"] == pytest.approx(_attempts_cost(env, ledger), abs=1e-6)
