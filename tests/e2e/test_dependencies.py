"""Pipelines run `after` others (config/dev.yaml: sales-east-report after sales-east; sales-summary after sales-east
and sales-west), end to end on the twin: each run's event on the default bus, the upstream rule, the router's fan-in,
the downstream run over the upstream outputs, UPSTREAM_FAILED entries.

Job runs are instant unless a test asks for Spark: those tests write the upstream run's output objects themselves
(where the job would), which keeps them fast; the `spark` test runs the real chain (sales_etl.py -> sales_report.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from autopilot_cli.inputs import rerun_input
from autopilot_common.manifest import InputManifest
from tests.deployment import Deployed

EAST, WEST, EAST_REPORT, SUMMARY = "sales-east", "sales-west", "sales-east-report", "sales-summary"
SAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "sample-data" / "sales"
# What a sales_etl.py run leaves in its run folder besides its data: none of it is the downstream's input
NOT_DATA = {"_metrics.json": b'{"rows_in": 1}', "order_date=2024-06-01/.part-00000.parquet.crc": b"crc"}


def _start_upstream(env: Deployed, pipeline: str, outputs: dict[str, bytes] | None = None) -> str:
    """A console run of an upstream pipeline (an instant job run); `outputs` are written to its run folder first,
    where its job would write them. Returns the run id."""
    run_id = f"{pipeline}-{uuid.uuid4().hex[:12]}"
    key = f"{pipeline}/{uuid.uuid4().hex[:8]}/orders.csv"
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id\n1\n")
    for name, body in (outputs or {}).items():
        env.s3.put_object(Bucket=env.outputs, Key=f"{pipeline}/run_id={run_id}/{name}", Body=body)
    env.start_console_run(run_id, {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{key}"]})
    return run_id


def _execution_arn(env: Deployed, pipeline: str, run_id: str) -> str:
    return env.state_machine_of(pipeline).replace(":stateMachine:", ":execution:") + f":{run_id}"


def _finished(env: Deployed, pipeline: str, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
    return env.finished(_execution_arn(env, pipeline, run_id), timeout=timeout)


def _runs_of(env: Deployed, pipeline: str, before: set[str]) -> list[dict[str, Any]]:
    return [e for e in env.executions(pipeline) if e["executionArn"] not in before]


def _arns(env: Deployed, pipeline: str) -> set[str]:
    return {e["executionArn"] for e in env.executions(pipeline)}


def _manifest(env: Deployed, execution: dict[str, Any]) -> InputManifest:
    described = env.sfn.describe_execution(executionArn=execution["executionArn"])
    uri = json.loads(described["input"])["manifest"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return InputManifest.from_json(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _lineage(env: Deployed, pipeline: str, run_id: str) -> dict[str, str]:
    entry = env.ledger(run_id)
    assert entry["pipeline"] == pipeline
    uri = f"s3://{env.outputs}/_runs/{pipeline}/{entry['started_at'][:10].replace('-', '/')}/{run_id}.json"
    return {"pipeline": pipeline, "run_id": run_id, "ledger_uri": uri}


def test_a_succeeded_run_starts_its_downstream_over_exactly_its_outputs(env: Deployed) -> None:
    # Given sales-east-report runs after sales-east
    before = _arns(env, EAST_REPORT)
    data = {f"order_date=2024-06-0{d}/part-00000-{uuid.uuid4().hex[:6]}.c000.snappy.parquet": b"PAR1" for d in (1, 2)}
    # When a sales-east run succeeds with two data files (and its metrics, a checksum and _SUCCESS)
    upstream = _start_upstream(env, EAST, data | NOT_DATA)
    assert _finished(env, EAST, upstream)["status"] == "SUCCEEDED"
    # Then one sales-east-report run starts, over exactly the two data files, and names its upstream run
    downstream = env.wait_for(lambda: _runs_of(env, EAST_REPORT, before), what="the downstream run")
    env.twin.wait_idle(timeout=60)
    (execution,) = _runs_of(env, EAST_REPORT, before)
    assert _finished(env, EAST_REPORT, execution["name"])["status"] == "SUCCEEDED"
    assert sorted(o.key for o in _manifest(env, downstream[0]).objects) == sorted(
        f"{EAST}/run_id={upstream}/{name}" for name in data
    )
    entry = env.ledger(execution["name"])
    assert entry["upstream_runs"] == [_lineage(env, EAST, upstream)]
    assert entry["trigger"]["type"] == "upstream" and entry["trigger"]["after"] == [EAST]
    # And the downstream's own event carries the lineage too (what Airflow or a third pipeline would see)
    (event,) = [e for e in env.twin.events if e["detail"].get("run_id") == execution["name"]]
    assert event["detail-type"] == "Autopilot Run Succeeded"
    assert event["detail"]["upstream_runs"] == entry["upstream_runs"]
    # And an operator can run it again over the same upstream outputs (`emr-autopilot rerun`)
    (record,) = [r for r in env.runs() if r.run_id == execution["name"]]
    again = f"{EAST_REPORT}-rerun-{uuid.uuid4().hex[:8]}"
    env.start_console_run(again, rerun_input(env.s3, record))
    assert _finished(env, EAST_REPORT, again)["status"] == "SUCCEEDED"
    assert env.ledger(again)["object_count"] == len(data) and env.ledger(again)["rerun_of"] == execution["name"]


def test_two_upstreams_start_one_downstream_run_after_both_succeeded(env: Deployed) -> None:
    # Given sales-summary runs after sales-east and sales-west
    before = _arns(env, SUMMARY)
    # When a sales-east run succeeds
    east = _start_upstream(env, EAST, {"order_date=2024-06-01/part-e.parquet": b"PAR1"})
    assert _finished(env, EAST, east)["status"] == "SUCCEEDED"
    env.twin.wait_idle(timeout=60)
    # Then sales-summary waits for sales-west
    assert _runs_of(env, SUMMARY, before) == []
    # When a sales-west run succeeds too
    west = _start_upstream(env, WEST, {"order_date=2024-06-01/part-w.parquet": b"PAR1"})
    assert _finished(env, WEST, west)["status"] == "SUCCEEDED"
    env.wait_for(lambda: _runs_of(env, SUMMARY, before), what="the fan-in run")
    env.twin.wait_idle(timeout=60)
    # Then exactly one sales-summary run, over both runs' outputs, naming both
    (execution,) = _runs_of(env, SUMMARY, before)
    assert _finished(env, SUMMARY, execution["name"])["status"] == "SUCCEEDED"
    assert sorted(o.key for o in _manifest(env, execution).objects) == [
        f"{EAST}/run_id={east}/order_date=2024-06-01/part-e.parquet",
        f"{WEST}/run_id={west}/order_date=2024-06-01/part-w.parquet",
    ]
    assert env.ledger(execution["name"])["upstream_runs"] == [_lineage(env, EAST, east), _lineage(env, WEST, west)]
    # And the same events delivered again start nothing more
    for run_id in (east, west):
        (event,) = [e for e in env.twin.events if e["detail"].get("run_id") == run_id]
        env.twin.put_event({k: event[k] for k in ("source", "detail-type", "resources", "detail")})
    env.twin.wait_idle(timeout=60)
    assert len(_runs_of(env, SUMMARY, before)) == 1


def test_a_failed_upstream_run_starts_nothing_and_the_downstream_ledger_names_it(env: Deployed) -> None:
    before = _arns(env, EAST_REPORT)
    # When a sales-east run fails
    env.twin.faults.fail_next_job("Job failed: injected bad input")
    upstream = _start_upstream(env, EAST, {"order_date=2024-06-01/part-0.parquet": b"PAR1"})
    assert _finished(env, EAST, upstream)["status"] == "FAILED"
    env.twin.wait_idle(timeout=60)
    # Then no sales-east-report run starts, and its ledger has an UPSTREAM_FAILED entry naming the failed run
    assert _runs_of(env, EAST_REPORT, before) == []

    def entry() -> dict[str, Any] | None:
        found = [r.raw for r in env.runs() if r.raw.get("failed_upstream", {}).get("run_id") == upstream]
        return found[0] if found else None

    failed = env.wait_for(entry, what="the downstream's UPSTREAM_FAILED entry")
    assert failed["pipeline"] == EAST_REPORT and failed["state"] == "UPSTREAM_FAILED"
    assert failed["failed_upstream"] == _lineage(env, EAST, upstream)
    assert failed["reason"].startswith(f"upstream {EAST} run {upstream} FAILED")


def test_an_aborted_upstream_run_tells_its_downstream_through_the_cleanup(env: Deployed) -> None:
    before = _arns(env, EAST_REPORT)
    # When a sales-east run is stopped mid-job (its workflow never reaches its own run event)
    env.twin.faults.hang_next_job()
    upstream = _start_upstream(env, EAST)
    env.wait_for(lambda: env.twin.emr_serverless.running(), 30, "the upstream's job run")
    env.sfn.stop_execution(executionArn=_execution_arn(env, EAST, upstream), error="Operator", cause="wrong day")

    # Then the guardrail's cleanup publishes its "Autopilot Run Failed" (state ABORTED): no downstream run starts and
    # the downstream's ledger names the aborted run
    def entry() -> dict[str, Any] | None:
        found = [r.raw for r in env.runs() if r.raw.get("failed_upstream", {}).get("run_id") == upstream]
        return found[0] if found else None

    failed = env.wait_for(entry, 60, "the downstream's UPSTREAM_FAILED entry")
    assert failed["pipeline"] == EAST_REPORT and failed["state"] == "UPSTREAM_FAILED"
    assert env.ledger(upstream)["state"] == "ABORTED"
    env.twin.wait_idle(timeout=60)
    assert _runs_of(env, EAST_REPORT, before) == []


@pytest.mark.spark
@pytest.mark.slow  # two real Spark runs, one after the other
def test_real_spark_chain_the_report_reads_what_the_etl_wrote(env: Deployed) -> None:
    # Given the twin runs job runs on local Spark
    env.twin.emr_serverless.runner = env.spark_runner
    before = _arns(env, EAST_REPORT)
    # When the sample sales CSVs run through sales-east (sales_etl.py)
    folder = f"{EAST}/{uuid.uuid4().hex[:8]}"
    for sample in sorted(SAMPLES.glob("*.csv")):
        env.s3.put_object(Bucket=env.landing, Key=f"{folder}/{sample.name}", Body=sample.read_bytes())
    upstream = f"{EAST}-{uuid.uuid4().hex[:12]}"
    env.start_console_run(upstream, {"pipeline": EAST, "inputs": [f"s3://{env.landing}/{folder}/"]})
    assert _finished(env, EAST, upstream, timeout=150)["status"] == "SUCCEEDED"
    # Then sales-east-report (sales_report.py) runs over its Parquet and succeeds, having read every cleaned row
    env.wait_for(lambda: _runs_of(env, EAST_REPORT, before), what="the report run")
    (execution,) = _runs_of(env, EAST_REPORT, before)
    assert _finished(env, EAST_REPORT, execution["name"], timeout=150)["status"] == "SUCCEEDED"
    report = env.ledger(execution["name"])
    assert [u["run_id"] for u in report["upstream_runs"]] == [upstream]
    assert report["metrics"]["rows_in"] == env.ledger(upstream)["metrics"]["rows_out"] > 0
    assert report["metrics"]["rows_out"] > 0
