"""local/emr_serverless.py: the usage an EMR Serverless job run reports at its end (GetJobRun's billed and total
resource utilization) and the driver log a failed job leaves. No Spark: job runs complete at once (`instant`)."""

from __future__ import annotations

import gzip
from typing import Any

import boto3
import pytest

from local.emr_serverless import EmrServerlessTwin
from local.faults import FaultInjector

ROLE = "arn:aws:iam::123456789012:role/job"
PARAMETERS = (
    "--conf spark.executor.cores=2 --conf spark.executor.memory=4g --conf spark.emr-serverless.executor.disk=30g"
)
# driver: 4 vCPU / 16 GB / 20 GB (defaults); 3 executors: 2 vCPU / 5 GB (4g + 10% overhead, whole GB) / 30 GB
VCPU, MEMORY_GB, STORAGE_BEYOND_20_GB, STORAGE_GB = 4 + 3 * 2, 16 + 3 * 5, 3 * 10, 20 + 3 * 30


@pytest.fixture
def model(moto: str) -> EmrServerlessTwin:
    twin = EmrServerlessTwin(
        account="123456789012", region=moto, runner=None, faults=FaultInjector(), emit=lambda e: None
    )
    twin.s3_for_role = lambda role, session: boto3.client("s3", region_name=moto)
    return twin


def _start(model: EmrServerlessTwin, **overrides: Any) -> tuple[str, str]:
    client = boto3.client("emr-serverless", region_name=model.region)
    app = client.create_application(name="a", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    started = model.start_job_run(
        {
            "ApplicationId": app,
            "ExecutionRoleArn": ROLE,
            "ClientToken": "t1",
            "JobDriver": {"SparkSubmit": {"EntryPoint": "s3://b/app.py", "SparkSubmitParameters": PARAMETERS}},
            **overrides,
        }
    )
    assert model.wait(app, started["JobRunId"], timeout=10)
    return app, started["JobRunId"]


def test_a_job_run_reports_its_workers_usage_with_the_one_minute_minimum(model: EmrServerlessTwin) -> None:
    app, job = _start(model)
    run = boto3.client("emr-serverless", region_name=model.region).get_job_run(applicationId=app, jobRunId=job)
    run = run["jobRun"]
    assert run["state"] == "SUCCESS" and run["attempt"] == 1
    assert run["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"] == PARAMETERS  # the API's casing
    seconds = run["totalExecutionDurationSeconds"]
    assert seconds <= 2  # instant
    assert run["billedResourceUtilization"] == {
        "vCPUHour": round(VCPU * 60 / 3600, 6),
        "memoryGBHour": round(MEMORY_GB * 60 / 3600, 6),
        "storageGBHour": round(STORAGE_BEYOND_20_GB * 60 / 3600, 6),
    }
    assert run["totalResourceUtilization"] == {
        "vCPUHour": round(VCPU * seconds / 3600, 6),
        "memoryGBHour": round(MEMORY_GB * seconds / 3600, 6),
        "storageGBHour": round(STORAGE_GB * seconds / 3600, 6),
    }
    assert run["startedAt"] <= run["endedAt"] and run["createdAt"] <= run["startedAt"]


def test_usage_follows_the_runs_real_duration_beyond_the_minimum(model: EmrServerlessTwin) -> None:
    app, job = _start(model)
    tracked = model.runs[(app, job)]
    model._record_usage(tracked, 125.2)  # what the end of a 125.2 s run records: whole seconds, rounded up
    assert tracked.moto_run.total_execution_duration_seconds == 126
    assert tracked.moto_run.billed_resource_utilization["vCPUHour"] == round(VCPU * 126 / 3600, 6)


def test_a_failed_job_leaves_its_driver_log_with_the_error(model: EmrServerlessTwin) -> None:
    s3 = boto3.client("s3", region_name=model.region)
    s3.create_bucket(Bucket="job-logs")
    model.faults.fail_next_job("Job failed: injected")
    overrides = {"S3MonitoringConfiguration": {"LogUri": "s3://job-logs/runs/r1"}}
    app, job = _start(model, ConfigurationOverrides={"MonitoringConfiguration": overrides})
    key = f"runs/r1/applications/{app}/jobs/{job}/SPARK_DRIVER/stderr.gz"
    text = gzip.decompress(s3.get_object(Bucket="job-logs", Key=key)["Body"].read()).decode()
    assert "ERROR SparkContext: Job failed: injected" in text
    assert model.runs[(app, job)].moto_run.state == "FAILED"
