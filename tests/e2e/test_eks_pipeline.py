"""EMR on EKS end to end on the twin (pipeline sales-eks), and one pipeline contract across all three runtimes."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from autopilot_common.pricing import shipped_prices
from tests.deployment import Deployed, Notifications

SAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "sample-data" / "sales"
EKS = "sales-eks"
# The pipelines that run the same job (sales_etl.py, --date-column order_date) on each runtime.
RUNTIMES = {"sales-daily": "emr-serverless", "sales-cluster": "emr-ec2", "sales-eks": "emr-eks"}
INPUT_PREFIXES = {"sales-daily": "sales/", "sales-cluster": "sales-cluster/", "sales-eks": "sales-eks/"}


def _console_run(env: Deployed, pipeline: str, keys: list[str]) -> tuple[str, str]:
    name = f"{pipeline}-{uuid.uuid4().hex[:8]}"
    body = {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{k}" for k in keys]}
    return name, env.start_console_run(name, body)


def _upload(env: Deployed, prefix: str, files: dict[str, bytes]) -> list[str]:
    """Objects under `prefix` with a suffix the pipelines' triggers ignore, so only the console run reads them."""
    keys = []
    for name, body in files.items():
        key = f"{prefix}{name}.input"
        env.s3.put_object(Bucket=env.landing, Key=key, Body=body)
        keys.append(key)
    env.twin.wait_idle()
    return keys


def _outputs(env: Deployed, pipeline: str, run_id: str) -> dict[str, bytes]:
    prefix = f"{pipeline}/run_id={run_id}/"
    listed = env.s3.list_objects_v2(Bucket=env.outputs, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: env.s3.get_object(Bucket=env.outputs, Key=o["Key"])["Body"].read() for o in listed}


def test_job_failure_on_eks_writes_ledger_failed_notifies_and_leaves_no_success(env: Deployed) -> None:
    notifications = Notifications(env)
    keys = _upload(env, f"{EKS}/{uuid.uuid4().hex[:8]}/", {"a.csv": b"order_id,order_date\n1,2024-06-01\n"})
    # sales-eks retries its job once (retry.max_attempts 2): both attempts fail
    env.twin.faults.fail_next_job("Job failed: driver pod OOMKilled")
    env.twin.faults.fail_next_job("Job failed: driver pod OOMKilled")
    run_id, arn = _console_run(env, EKS, keys)
    described = env.finished(arn)
    assert described["status"] == "FAILED" and described["error"] == "States.TaskFailed"
    ledger = env.ledger(run_id)
    assert ledger["state"] == "FAILED" and "OOMKilled" in ledger["cause"]
    assert [a["state"] for a in ledger["attempts"]] == ["FAILED", "FAILED"]
    assert ledger["runtime"] == "emr-eks" and ledger["job_run_id"]
    assert ledger["cost"]["usd"] == pytest.approx(_eks_cost(env, ledger), abs=1e-6)
    notification = notifications.of_run(run_id, "FAILED")
    assert notification["Subject"] == f"EMR Autopilot {EKS}: run FAILED ({run_id})"
    assert "reason:    States.TaskFailed: " in notification["Message"] and "OOMKilled" in notification["Message"]
    assert "(estimate)" in notification["Message"]
    assert "_SUCCESS" not in _outputs(env, EKS, run_id)


# The sales-eks job's pods (config/dev.yaml: --conf spark.executor.cores=2 --conf spark.executor.memory=4g; Spark's
# defaults otherwise: driver 1 core and 1g, 2 executors, memory overhead 10% with a 384 MiB floor):
EKS_VCPU = 1 + 2 * 2
EKS_MEMORY_GB = (1024 + 384) / 1024 + 2 * (4096 + 409.6) / 1024


def _eks_cost(env: Deployed, ledger: dict[str, Any]) -> float:
    """The estimate recomputed from the job's requested resources and DescribeJobRun's timestamps."""
    job = env.twin.client("emr-containers").describe_job_run(
        id=ledger["job_run_id"], virtualClusterId=ledger["virtual_cluster_id"]
    )["jobRun"]
    seconds = math.ceil((job["finishedAt"] - job["createdAt"]).total_seconds())
    assert ledger["job_run"]["usage_estimate"]["seconds"] == seconds
    assert ledger["job_run"]["usage_estimate"]["vcpu"] == EKS_VCPU
    assert ledger["job_run"]["usage_estimate"]["memory_gb"] == pytest.approx(EKS_MEMORY_GB, abs=1e-3)
    rates = shipped_prices().eks(env.twin.region)
    return (EKS_VCPU * rates["vcpu_hour"] + EKS_MEMORY_GB * rates["memory_gb_hour"]) * seconds / 3600


def test_an_eks_run_records_an_estimated_cost_and_links_and_notifies_success(env: Deployed) -> None:
    notifications = Notifications(env)
    keys = _upload(env, f"{EKS}/{uuid.uuid4().hex[:8]}/", {"c.csv": b"order_id,order_date\n1,2024-06-01\n"})
    env.twin.faults.run_next_job_for(3)  # a job that takes a few seconds, so its duration is not zero
    run_id, arn = _console_run(env, EKS, keys)
    assert env.finished(arn)["status"] == "SUCCEEDED"
    ledger = env.ledger(run_id)
    assert ledger["cost"]["usd"] == pytest.approx(_eks_cost(env, ledger), abs=1e-6)
    notes = " ".join(ledger["cost"]["notes"])
    assert "estimate from the resources the job's pods requested" in notes and "EKS nodes" in notes
    assert set(ledger["links"]) == {"execution", "job run", "logs"}
    assert (
        f"/virtual-clusters/{ledger['virtual_cluster_id']}/job-runs/{ledger['job_run_id']}"
        in (ledger["links"]["job run"])
    )
    notification = notifications.of_run(run_id, "SUCCEEDED")
    assert f"cost:      ${ledger['cost']['usd']:.4f} (estimate)" in notification["Message"]


def test_an_eks_job_failing_once_under_two_attempts_succeeds_with_both_attempts_in_the_ledger(env: Deployed) -> None:
    # Given sales-eks's retry policy (retryPolicyConfiguration maxAttempts 2) and a driver that fails once
    keys = _upload(env, f"{EKS}/{uuid.uuid4().hex[:8]}/", {"r.csv": b"order_id,order_date\n1,2024-06-01\n"})
    env.twin.faults.fail_next_job("Job failed: driver pod evicted")
    run_id, arn = _console_run(env, EKS, keys)
    # Then EMR on EKS runs the driver again within the one job run, and the run succeeds
    assert env.finished(arn)["status"] == "SUCCEEDED"
    ledger = env.ledger(run_id)
    first, second = ledger["attempts"]
    assert (first["attempt"], first["state"], second["attempt"], second["state"]) == (1, "FAILED", 2, "COMPLETED")
    job = env.twin.client("emr-containers").describe_job_run(
        id=ledger["job_run_id"], virtualClusterId=ledger["virtual_cluster_id"]
    )["jobRun"]
    assert job["retryPolicyConfiguration"] == {"maxAttempts": 2}
    assert job["retryPolicyExecution"]["currentAttemptCount"] == 2
    # and the cost estimate covers the job run through both attempts
    assert ledger["cost"]["usd"] == pytest.approx(_eks_cost(env, ledger), abs=1e-6)
    assert "_SUCCESS" in _outputs(env, EKS, run_id)


@pytest.mark.slow  # ~125 s: the shortest execution_timeout_minutes is 1, x 2 attempts; Step Functions time is unscaled
def test_a_hung_eks_job_is_cancelled_when_the_run_times_out_its_task(env: Deployed) -> None:
    keys = _upload(env, f"{EKS}/{uuid.uuid4().hex[:8]}/", {"h.csv": b"order_id\n1\n"})
    env.twin.faults.hang_next_job()
    name = f"{EKS}-{uuid.uuid4().hex[:8]}"
    body = {"pipeline": EKS, "inputs": [f"s3://{env.landing}/{keys[0]}"], "overrides": {"execution_timeout_minutes": 1}}
    arn = env.start_console_run(name, body)
    described = env.finished(arn, timeout=200)
    assert described["status"] == "FAILED" and described["error"] == "States.Timeout"
    ledger = env.ledger(name)
    assert ledger["state"] == "FAILED"
    assert not env.twin.emr_containers.running()  # the failure path cancelled the job run


@pytest.mark.spark
@pytest.mark.slow  # ~150 s on 2 cores: three real Spark runs
def test_the_same_inputs_give_the_same_outputs_and_ledger_shape_on_all_three_runtimes(env: Deployed) -> None:
    # Given every runtime runs its jobs on local Spark
    env.twin.emr_serverless.runner = env.spark_runner
    env.twin.emr_ec2.runner = env.spark_runner
    env.twin.emr_containers.runner = env.spark_runner
    samples = {p.name: p.read_bytes() for p in SAMPLES.glob("*.csv")}
    runs: dict[str, tuple[str, str]] = {}
    for pipeline in RUNTIMES:
        keys = _upload(env, f"{INPUT_PREFIXES[pipeline]}same-{uuid.uuid4().hex[:8]}/", samples)
        runs[pipeline] = _console_run(env, pipeline, keys)
    # When the three runs finish
    for pipeline, (_, arn) in runs.items():
        described = env.finished(arn, timeout=300)
        assert described["status"] == "SUCCEEDED", (pipeline, described.get("cause"))
    # Then the outputs are the same files with the same rows, and the ledgers have the same core shape
    outputs = {p: _outputs(env, p, run_id) for p, (run_id, _) in runs.items()}
    partitions = {p: sorted({k.split("/")[0] for k in files if "=" in k.split("/")[0]}) for p, files in outputs.items()}
    assert len({tuple(v) for v in partitions.values()}) == 1, partitions
    # _metrics.json: rows in/out/rejected, input objects and bytes, partitions and columns (not the run id)
    metrics = {p: json.loads(files["_metrics.json"]) for p, files in outputs.items()}
    comparable = {p: {k: v for k, v in m.items() if k != "run_id"} for p, m in metrics.items()}
    assert comparable["sales-daily"] == comparable["sales-cluster"] == comparable["sales-eks"], comparable
    assert all("_SUCCESS" in files for files in outputs.values())
    parquet = {p: sorted(k.split("/")[0] for k in files if k.endswith(".parquet")) for p, files in outputs.items()}
    assert parquet["sales-daily"] == parquet["sales-cluster"] == parquet["sales-eks"], parquet
    ledgers = {p: env.ledger(run_id) for p, (run_id, _) in runs.items()}
    # One shape: every field of the serverless entry, except what only job runs have (`job_run`, `attempts`: an EMR
    # on EC2 run records its cluster, steps and each step's attempts instead)
    core = set(ledgers["sales-daily"]) - {"job_run", "attempts"}
    for pipeline, ledger in ledgers.items():
        assert core <= set(ledger), (pipeline, core - set(ledger))
        assert ledger["runtime"] == RUNTIMES[pipeline] and ledger["state"] == "SUCCEEDED"
        assert ledger["metrics"]["rows_in"] == 158 and ledger["metrics"]["rows_out"] == 144
    logs_bucket = env.report.outputs["LogsBucket"]
    eks_run = runs["sales-eks"][0]
    log_keys = [
        o["Key"]
        for o in env.s3.list_objects_v2(Bucket=logs_bucket, Prefix=f"emr-eks/{EKS}/{eks_run}/").get("Contents", [])
    ]
    assert any(k.endswith("-driver/stdout.gz") for k in log_keys), log_keys
