"""The end of a run (issue 16): the job's requested resources, the job-run finalize module (EMR Serverless and EMR on
EKS cost), and the notification text with its log tail. Fakes for the EMR clients; moto for S3."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from autopilot_common.pricing import eks_cost, serverless_cost, shipped_prices
from autopilot_common.spark_resources import eks_pods, serverless_workers, spark_conf
from job_runs import JobRunClients, JobRunRequest, finalize_job_run
from run_notice import MAX_SUBJECT_CHARS, log_tail, notice

TABLE = shipped_prices()
REGION = "us-east-1"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------ requested resources


def test_serverless_workers_use_emr_serverless_defaults_and_round_memory_up_to_whole_gb() -> None:
    default = serverless_workers("")
    # 4 vCPU and 14G + 10% overhead (1.4G) = a 16 GB worker; 1 driver and 3 executors, 20 GB disk each
    assert [(w.role, w.count, w.vcpu, w.memory_gb, w.disk_gb) for w in default.workers] == [
        ("driver", 1, 4, 16, 20.0),
        ("executor", 3, 4, 16, 20.0),
    ]
    assert default.vcpu == 16 and default.memory_gb == 64
    sized = serverless_workers(
        "--conf spark.executor.cores=2 --executor-memory=4g --num-executors 5 "
        "--conf spark.emr-serverless.executor.disk=50g --conf spark.driver.memoryOverhead=2g --name x"
    )
    driver, executor = sized.workers
    assert (driver.vcpu, driver.memory_gb) == (4, 16)  # 14g + 2g overhead
    assert (executor.count, executor.vcpu, executor.memory_gb, executor.disk_gb) == (5, 2, 5, 50.0)  # 4g + 409.6m
    assert "EMR Serverless default spark.executor.cores=4" not in sized.notes
    assert "EMR Serverless default spark.driver.memory=14g" in sized.notes
    # cores between the sizes EMR Serverless offers round up to the next one
    assert serverless_workers("--conf spark.executor.cores=3").workers[1].vcpu == 4


def test_eks_pods_use_spark_defaults_spark_defaults_classification_and_request_cores() -> None:
    pods = eks_pods("--conf spark.executor.cores=2 --conf spark.executor.memory=4g")
    assert [(p.role, p.count, p.vcpu) for p in pods.workers] == [("driver", 1, 1.0), ("executor", 2, 2.0)]
    assert pods.memory_gb == pytest.approx((1024 + 384) / 1024 + 2 * (4096 + 409.6) / 1024, abs=1e-3)
    overridden = eks_pods(
        "--conf spark.kubernetes.executor.request.cores=0.5",
        {"spark.executor.instances": "4", "spark.kubernetes.memoryOverheadFactor": "0.4"},
    )
    executor = overridden.workers[1]
    assert (executor.count, executor.vcpu, executor.memory_gb) == (4, 0.5, pytest.approx(1.4, abs=1e-3))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("--conf spark.executor.memory=lots", "spark.executor.memory: got 'lots'; expected a size such as 4g"),
        ("--conf spark.executor.instances=many", "spark.executor.instances: got 'many'; expected a number"),
        ("--conf novalue", "--conf 'novalue' is not key=value"),
        ("--executor-memory", "--executor-memory needs a value"),
        ("--conf 'unclosed", "cannot parse"),
    ],
)
def test_unreadable_sizing_is_one_clear_error_naming_the_setting(parameters: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        serverless_workers(parameters)


def test_spark_conf_last_setting_wins_as_in_spark_submit() -> None:
    assert spark_conf("--conf a.b=1 --conf=a.b=2 -c x.y=3 --driver-cores 2")["a.b"] == "2"
    assert spark_conf("--driver-cores 2")["spark.driver.cores"] == "2"


# ---------------------------------------------------------------------------------------- job runs


class FakeServerless:
    def __init__(self, run: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.run, self.error, self.calls = run or {}, error, []  # type: ignore[var-annotated]

    def get_job_run(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "GetJobRun")
        return {"jobRun": self.run}


class FakeContainers:
    def __init__(self, run: dict[str, Any]) -> None:
        self.run, self.calls = run, []  # type: ignore[var-annotated]

    def describe_job_run(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"jobRun": self.run}


def _event(runtime: str, outcome: str = "SUCCEEDED", job_run_id: str | None = "job-1", **extra: Any) -> dict[str, Any]:
    container = {"application_id": "app-1"} if runtime == "emr-serverless" else {"virtual_cluster_id": "vc-1"}
    return {
        "runtime": runtime,
        "outcome": outcome,
        "run_id": "r1",
        "pipeline": "p",
        "job": {"JobRunId": job_run_id},
        **container,
        **extra,
    }


def _finalize(event: dict[str, Any], serverless: Any = None, containers: Any = None) -> dict[str, Any]:
    clients = JobRunClients(serverless or FakeServerless(), containers or FakeContainers({}))
    return finalize_job_run(JobRunRequest.from_event(event), clients, TABLE, REGION, now=T0)  # type: ignore[arg-type]


def test_serverless_run_costs_its_billed_utilization_at_its_architectures_rates() -> None:
    billed = {"vCPUHour": 0.5, "memoryGBHour": 2.0, "storageGBHour": 1.0}
    run = {
        "state": "SUCCESS",
        "attempt": 1,
        "createdAt": T0,
        "startedAt": T0 + timedelta(seconds=5),
        "endedAt": T0 + timedelta(minutes=3),
        "totalExecutionDurationSeconds": 175,
        "billedResourceUtilization": billed,
        "queuedDurationMilliseconds": 1500,
    }
    client = FakeServerless(run)
    update = _finalize(_event("emr-serverless", architecture="ARM64", metrics={"rows_in": 1}), serverless=client)
    assert client.calls == [{"applicationId": "app-1", "jobRunId": "job-1"}]
    assert update["cost"] == serverless_cost(TABLE, REGION, "ARM64", billed)
    rates = TABLE.serverless(REGION, "ARM64")
    assert update["cost"]["usd"] == pytest.approx(
        0.5 * rates["vcpu_hour"] + 2.0 * rates["memory_gb_hour"] + rates["storage_gb_hour"], abs=1e-6
    )
    assert update["state"] == "SUCCEEDED" and update["metrics"] == {"rows_in": 1}
    job_run = update["job_run"]
    assert job_run["attempt"] == 1 and job_run["queued_seconds"] == 1.5
    assert job_run["started_at"] == "2026-12-01T10:00:05Z" and job_run["ended_at"] == "2026-12-01T10:03:00Z"


def test_a_job_run_read_while_still_cancelling_says_its_usage_may_be_incomplete() -> None:
    run = {"state": "CANCELLING", "billedResourceUtilization": {"vCPUHour": 0.1, "memoryGBHour": 0.1}}
    update = _finalize(
        _event("emr-serverless", "FAILED", failure={"error": "States.Timeout", "cause": "c"}),
        serverless=FakeServerless(run),
    )
    assert update["error"] == "States.Timeout" and update["cause"] == "c"
    assert any("CANCELLING when read" in n for n in update["cost"]["notes"])


def test_a_run_that_started_no_job_run_has_no_cost_and_calls_nothing() -> None:
    client = FakeServerless()
    update = _finalize(_event("emr-serverless", "FAILED", job_run_id=None), serverless=client)
    assert update["cost"] is None and update["job_run"] is None and client.calls == []


def test_an_unreadable_job_run_still_ends_the_run_with_the_reason_in_the_cost() -> None:
    update = _finalize(_event("emr-serverless"), serverless=FakeServerless(error="AccessDeniedException"))
    assert update["state"] == "SUCCEEDED"
    assert update["cost"]["usd"] is None
    assert update["cost"]["reason"] == "GetJobRun failed: AccessDeniedException: no"


def test_eks_cost_is_an_estimate_from_requested_resources_over_created_to_finished() -> None:
    run = {
        "state": "COMPLETED",
        "createdAt": T0,
        "finishedAt": T0 + timedelta(seconds=600, milliseconds=200),
        "jobDriver": {"sparkSubmitJobDriver": {"sparkSubmitParameters": "--conf spark.executor.instances=3"}},
        "configurationOverrides": {
            "applicationConfiguration": [
                {"classification": "spark-defaults", "properties": {"spark.driver.cores": "2"}},
            ]
        },
    }
    client = FakeContainers(run)
    update = _finalize(_event("emr-eks"), containers=client)
    assert client.calls == [{"id": "job-1", "virtualClusterId": "vc-1"}]
    # driver 2 vCPU (spark-defaults) + 3 executors x 1 vCPU; memory 1g + 384 MiB each; 601 s (rounded up)
    vcpu, memory = 2 + 3, 4 * (1024 + 384) / 1024
    expected = eks_cost(TABLE, REGION, vcpu * 601 / 3600, memory * 601 / 3600)
    assert update["cost"]["usd"] == pytest.approx(expected["usd"], abs=1e-6)
    assert update["job_run"]["usage_estimate"]["seconds"] == 601
    notes = " ".join(update["cost"]["notes"])
    assert "estimate from the resources the job's pods requested" in notes and "EKS nodes" in notes


def test_eks_job_with_unreadable_sizing_has_no_number_and_says_why() -> None:
    run = {
        "createdAt": T0,
        "jobDriver": {"sparkSubmitJobDriver": {"sparkSubmitParameters": "--conf spark.driver.memory=big"}},
    }
    update = _finalize(_event("emr-eks"), containers=FakeContainers(run))
    assert update["cost"]["usd"] is None and "spark.driver.memory: got 'big'" in update["cost"]["reason"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runtime": "emr-ec2"}, "runtime: got 'emr-ec2'; expected one of emr-serverless, emr-eks"),
        ({"outcome": "DONE"}, "outcome: got 'DONE'"),
        ({"application_id": None}, "application_id: missing"),
    ],
)
def test_a_bad_request_is_one_clear_error(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobRunRequest.from_event(_event("emr-serverless") | change)


# ------------------------------------------------------------------------------------ notifications


def _entry(**extra: Any) -> dict[str, Any]:
    return {
        "run_id": "r1",
        "pipeline": "sales",
        "runtime": "emr-serverless",
        "started_at": "2026-12-01T10:00:00Z",
        "ended_at": "2026-12-01T11:02:03Z",
        "links": {"execution": "https://console/x", "job run": "https://console/j"},
        **extra,
    }


def test_failed_notice_is_text_with_the_reason_cost_links_ledger_and_log_tail() -> None:
    cost = serverless_cost(TABLE, REGION, "X86_64", {"vCPUHour": 1.0, "memoryGBHour": 4.0, "storageGBHour": 0})
    tail = {"uri": "s3://logs/x/stderr.gz", "lines": ["a", "Exception: boom"], "note": None}
    entry = _entry(state="FAILED", error="States.TaskFailed", cause='{"StateDetails": "boom\\n at x"}', cost=cost)
    text = notice(entry, "s3://out/_runs/sales/r1.json", tail)  # type: ignore[arg-type]
    assert text["subject"] == "EMR Autopilot sales: run FAILED (r1)"
    message = text["message"]
    assert "reason:    States.TaskFailed: boom at x" in message
    assert "duration:  1h 2m 3s" in message
    assert f"cost:      ${cost['usd']:.4f} at list prices as of {cost['prices_as_of']}" in message
    assert "  job run: https://console/j" in message and "ledger entry: s3://out/_runs/sales/r1.json" in message
    assert message.endswith("last 2 lines of s3://logs/x/stderr.gz:\n  a\n  Exception: boom\n")


def test_succeeded_notice_has_rows_and_says_when_there_is_no_cost() -> None:
    text = notice(_entry(state="SUCCEEDED", metrics={"rows_in": 10, "rows_out": 8}, cost=None), None)
    assert "rows:      in 10, out 8" in text["message"]
    assert "cost:      none recorded" in text["message"] and "reason:" not in text["message"]
    unknown = notice(_entry(state="SUCCEEDED", cost={"usd": None, "reason": "no prices for region x"}), None)
    assert "cost:      unknown: no prices for region x" in unknown["message"]


def test_subject_stays_under_the_sns_limit() -> None:
    text = notice(_entry(state="SUCCEEDED", pipeline="p" * 40, run_id="r" * 80), None)
    assert len(text["subject"]) <= MAX_SUBJECT_CHARS and "\n" not in text["subject"]


def test_log_tail_reads_the_drivers_stderr_else_stdout_and_says_when_there_is_none(moto: str) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="run-logs")
    prefix = "emr-serverless/p/r1/applications/a/jobs/j/SPARK_DRIVER/"
    assert log_tail(s3, "s3://run-logs/emr-serverless/p/r1/")["note"] == (
        "no driver or step log under s3://run-logs/emr-serverless/p/r1/ yet"
    )
    s3.put_object(Bucket="run-logs", Key=prefix + "stdout.gz", Body=gzip.compress(b"out 1\nout 2\n"))
    assert log_tail(s3, "s3://run-logs/emr-serverless/p/r1/")["lines"] == ["out 1", "out 2"]
    lines = "".join(f"line {i}\n" for i in range(30)) + "x" * 400 + "\n"
    s3.put_object(Bucket="run-logs", Key=prefix + "stderr.gz", Body=gzip.compress(lines.encode()))
    tail = log_tail(s3, "s3://run-logs/emr-serverless/p/r1")
    assert tail["uri"] == f"s3://run-logs/{prefix}stderr.gz"
    assert tail["lines"][0] == "line 11" and len(tail["lines"]) == 20 and tail["lines"][-1].endswith("x...")
    assert log_tail(s3, None)["note"] == "the run has no S3 log location"
    assert log_tail(s3, "s3://missing-bucket/p/")["note"] == "the logs could not be read (NoSuchBucket)"


class FakeServerlessAttempts(FakeServerless):
    """GetJobRun of a retried job run: each attempt's own record; the latest without `attempt`."""

    def __init__(self, attempts: list[dict[str, Any]]) -> None:
        super().__init__(attempts[-1])
        self.attempts = attempts

    def get_job_run(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"jobRun": self.attempts[int(kwargs.get("attempt", len(self.attempts))) - 1]}


def test_a_retried_serverless_job_run_records_every_attempt_and_costs_them_all() -> None:
    # Given a job run whose first attempt failed after 2 minutes and whose second succeeded
    first_billed = {"vCPUHour": 0.2, "memoryGBHour": 0.8, "storageGBHour": 0.0}
    second_billed = {"vCPUHour": 0.5, "memoryGBHour": 2.0, "storageGBHour": 1.0}
    first = {
        "state": "FAILED",
        "stateDetails": "Job failed: executor lost",
        "attempt": 1,
        "startedAt": T0,
        "endedAt": T0 + timedelta(minutes=2),
        "totalExecutionDurationSeconds": 120,
        "billedResourceUtilization": first_billed,
    }
    second = {
        "state": "SUCCESS",
        "attempt": 2,
        "startedAt": T0 + timedelta(minutes=3),
        "endedAt": T0 + timedelta(minutes=6),
        "totalExecutionDurationSeconds": 180,
        "billedResourceUtilization": second_billed,
    }
    client = FakeServerlessAttempts([first, second])
    # When the run is finalized
    update = _finalize(_event("emr-serverless"), serverless=client)
    # Then each earlier attempt was read by number, and both attempts are in the ledger with the first's reason
    assert client.calls == [
        {"applicationId": "app-1", "jobRunId": "job-1"},
        {"applicationId": "app-1", "jobRunId": "job-1", "attempt": 1},
    ]
    assert [(a["attempt"], a["state"], a["state_details"]) for a in update["attempts"]] == [
        (1, "FAILED", "Job failed: executor lost"),
        (2, "SUCCESS", None),
    ]
    assert update["attempts"][0]["ended_at"] == "2026-12-01T10:02:00Z"
    assert update["attempts"][1]["billed_resource_utilization"] == second_billed
    # and the cost is that of both attempts' usage
    total = {k: first_billed[k] + second_billed[k] for k in first_billed}
    assert update["cost"]["usd"] == pytest.approx(serverless_cost(TABLE, REGION, "X86_64", total)["usd"], abs=1e-6)
    assert update["cost"]["usd"] > serverless_cost(TABLE, REGION, "X86_64", second_billed)["usd"]
    assert any("2 attempts" in note for note in update["cost"]["notes"])
    assert update["job_run"]["total_execution_duration_seconds"] == 300
    assert update["job_run"]["attempt"] == 2


def test_a_job_run_without_retries_has_one_attempt() -> None:
    run = {"state": "FAILED", "stateDetails": "boom", "attempt": 1, "billedResourceUtilization": {"vCPUHour": 0.1}}
    update = _finalize(_event("emr-serverless", "FAILED"), serverless=FakeServerless(run))
    assert [(a["attempt"], a["state"], a["state_details"]) for a in update["attempts"]] == [(1, "FAILED", "boom")]
    assert "notes" not in update["cost"]


def test_a_retried_eks_job_run_records_its_attempt_count() -> None:
    run = {
        "state": "COMPLETED",
        "createdAt": T0,
        "finishedAt": T0 + timedelta(seconds=600),
        "retryPolicyConfiguration": {"maxAttempts": 3},
        "retryPolicyExecution": {"currentAttemptCount": 2},
    }
    update = _finalize(_event("emr-eks"), containers=FakeContainers(run))
    assert [(a["attempt"], a["state"]) for a in update["attempts"]] == [(1, "FAILED"), (2, "COMPLETED")]
    assert update["attempts"][1]["ended_at"] == "2026-12-01T10:10:00Z"
    assert update["job_run"]["attempt"] == 2
    assert any("2 driver attempts" in note for note in update["cost"]["notes"])
