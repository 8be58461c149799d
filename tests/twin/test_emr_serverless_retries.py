"""local/emr_serverless.py: a job run's retry policy (`retryPolicy.maxAttempts`): a failed attempt with attempts left
starts the next attempt of the same job run, each attempt keeps its own state, times and usage. No Spark (`instant`)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from local.emr_serverless import EmrServerlessTwin
from local.faults import FaultInjector, TwinClientError

ROLE = "arn:aws:iam::123456789012:role/job"


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def model(moto: str, events: list[dict[str, Any]]) -> EmrServerlessTwin:
    return EmrServerlessTwin(
        account="123456789012", region=moto, runner=None, faults=FaultInjector(), emit=events.append
    )


def _application(model: EmrServerlessTwin, release: str = "emr-7.5.0") -> str:
    client = boto3.client("emr-serverless", region_name=model.region)
    return str(client.create_application(name="a", releaseLabel=release, type="SPARK")["applicationId"])


def _start(model: EmrServerlessTwin, app: str, **overrides: Any) -> str:
    started = model.start_job_run(
        {
            "ApplicationId": app,
            "ExecutionRoleArn": ROLE,
            "JobDriver": {"SparkSubmit": {"EntryPoint": "s3://b/app.py"}},
            **overrides,
        }
    )
    assert model.wait(app, started["JobRunId"], timeout=10)
    return str(started["JobRunId"])


def test_a_job_failing_once_under_two_attempts_succeeds_on_its_second(
    model: EmrServerlessTwin, events: list[dict[str, Any]]
) -> None:
    # Given a job run allowed 2 attempts whose first attempt fails
    app = _application(model)
    model.faults.fail_next_job("Job failed: spot capacity lost")
    # When it runs
    job = _start(model, app, RetryPolicy={"MaxAttempts": 2})
    # Then the job run succeeded on attempt 2, and attempt 1 is FAILED with its reason and its own usage
    tracked = model.runs[(app, job)]
    first, second = tracked.attempts()
    assert (first.attempt, first.state, first.state_details) == (1, "FAILED", "Job failed: spot capacity lost")
    assert (second.attempt, second.state) == (2, "SUCCESS")
    assert tracked.attempt_record(None) is second and tracked.attempt_record(1) is first
    assert first.attempt_created_at <= first.attempt_updated_at <= second.attempt_created_at
    assert first.billed_resource_utilization and second.billed_resource_utilization
    assert first.billed_resource_utilization is not second.billed_resource_utilization
    assert model.describe(app, job)["Attempt"] == 2
    # the job run never showed FAILED: it went back through its states for the second attempt
    states = [e["detail"]["state"] for e in events]
    assert states == ["SUBMITTED", "SCHEDULED", "RUNNING", "PENDING", "SCHEDULED", "RUNNING", "SUCCESS"]
    with pytest.raises(TwinClientError, match="no attempt 3"):
        tracked.attempt_record(3)


def test_a_job_failing_every_attempt_ends_failed_after_its_last(model: EmrServerlessTwin) -> None:
    app = _application(model)
    model.faults.fail_next_job("first")
    model.faults.fail_next_job("second")
    job = _start(model, app, RetryPolicy={"MaxAttempts": 2})
    attempts = model.runs[(app, job)].attempts()
    assert [(a.attempt, a.state, a.state_details) for a in attempts] == [
        (1, "FAILED", "first"),
        (2, "FAILED", "second"),
    ]
    assert model.describe(app, job)["State"] == "FAILED"


def test_without_a_retry_policy_a_failed_job_run_has_one_attempt(model: EmrServerlessTwin) -> None:
    app = _application(model)
    model.faults.fail_next_job()
    job = _start(model, app)
    assert [a.state for a in model.runs[(app, job)].attempts()] == ["FAILED"]


@pytest.mark.parametrize(
    ("release", "overrides", "message"),
    [
        ("emr-7.5.0", {"RetryPolicy": {"MaxAttempts": 11}}, "between 1 and 10"),
        ("emr-7.5.0", {"RetryPolicy": {"MaxAttempts": 2}, "Mode": "STREAMING"}, "only applicable for BATCH"),
        ("emr-7.0.0", {"RetryPolicy": {"MaxAttempts": 2}}, "emr-7.1.0 or later"),
    ],
)
def test_a_retry_policy_aws_refuses_is_refused(
    model: EmrServerlessTwin, release: str, overrides: dict[str, Any], message: str
) -> None:
    app = _application(model, release)
    with pytest.raises(TwinClientError, match=message):
        model.start_job_run({"ApplicationId": app, "ExecutionRoleArn": ROLE, "JobDriver": {}, **overrides})
