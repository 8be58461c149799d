"""Prepare: console-input validation, input expansion into a manifest, the run record."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from autopilot_common.manifest import InputManifest
from preparation import prepare_run

LANDING, ARTIFACTS, OUTPUTS, LOGS = "landing-bkt", "artifacts-bkt", "outputs-bkt", "logs-bkt"
SETTINGS = {
    "pipeline": "sales-daily",
    "runtime": "emr-serverless",
    "landing_bucket": LANDING,
    "input_prefix": "sales/",
    "artifacts_bucket": ARTIFACTS,
    "outputs_bucket": OUTPUTS,
    "output_prefix": "sales-daily",
    "logs_bucket": LOGS,
    "entry_point": f"s3://{ARTIFACTS}/jobs/sales_etl.py",
    "arguments_json": '["--date-column", "order_date"]',
    "spark_submit_parameters": "--conf spark.executor.cores=2",
    "execution_timeout_minutes": "60",
    "application_id": "00abc",
}
EXECUTION = {
    "id": "arn:aws:states:us-east-1:123456789012:execution:autopilot-dev-sales-daily:run-1",
    "name": "run-1",
    "start_time": "2024-06-02T03:04:05.678Z",
}


@pytest.fixture
def s3(moto: str) -> Any:
    client = boto3.client("s3", region_name=moto)
    for bucket in (LANDING, ARTIFACTS, OUTPUTS):
        client.create_bucket(Bucket=bucket)
    return client


def _run(s3: Any, execution_input: Any) -> dict[str, Any]:
    return prepare_run({"input": execution_input, "execution": EXECUTION, "settings": SETTINGS}, s3)


def test_console_run_expands_objects_and_prefixes_into_a_manifest(s3: Any) -> None:
    # Given two files under a folder, one file elsewhere, and noise that must be skipped
    for key, body in {
        "sales/2024-06/a.csv": b"1",
        "sales/2024-06/b c+d%20ü.csv": b"22",
        "sales/2024-06/_temporary/x.csv": b"3",
        "sales/2024-06/.hidden": b"4",
        "sales/2024-06/empty.csv": b"",
        "sales/single.csv": b"55555",
    }.items():
        s3.put_object(Bucket=LANDING, Key=key, Body=body)
    # When an operator runs the pipeline on the folder and the single file (listed twice)
    result = _run(
        s3,
        {
            "pipeline": "sales-daily",
            "inputs": [
                f"s3://{LANDING}/sales/2024-06/",
                f"s3://{LANDING}/sales/single.csv",
                f"s3://{LANDING}/sales/single.csv",
            ],
        },
    )
    # Then the manifest lists exactly the three data files, keys byte-exact, once each
    assert result["valid"] is True
    run = result["run"]
    assert run["object_count"] == 3
    body = s3.get_object(Bucket=ARTIFACTS, Key="manifests/sales-daily/run-1.json")["Body"].read()
    manifest = InputManifest.from_json(body)
    assert [o.key for o in manifest.objects] == [
        "sales/2024-06/a.csv",
        "sales/2024-06/b c+d%20ü.csv",
        "sales/single.csv",
    ]
    assert [o.size for o in manifest.objects] == [1, 2, 5]
    assert run["manifest_uri"] == f"s3://{ARTIFACTS}/manifests/sales-daily/run-1.json"
    assert run["ledger"]["trigger"] == {"type": "console"}


def test_a_rerun_records_the_run_it_runs_again_in_its_trigger_and_ledger_entry(s3: Any) -> None:
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    body = {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"], "rerun_of": "run-0"}
    ledger = _run(s3, body)["run"]["ledger"]
    assert ledger["trigger"] == {"type": "console", "rerun_of": "run-0"} and ledger["rerun_of"] == "run-0"
    plain = _run(s3, {k: v for k, v in body.items() if k != "rerun_of"})["run"]["ledger"]
    assert "rerun_of" not in plain and plain["trigger"] == {"type": "console"}
    refused = _run(s3, body | {"rerun_of": "a b"})
    assert refused["valid"] is False and refused["cause"].startswith("rerun_of: got 'a b'; expected a run id")


def test_a_backfill_records_its_logical_date_in_its_trigger_and_ledger_entry(s3: Any) -> None:
    s3.put_object(Bucket=LANDING, Key="sales/dt=2024-06-01/a.csv", Body=b"x")
    body = {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/dt=2024-06-01/"], "logical_date": "2024-06-01"}
    ledger = _run(s3, body)["run"]["ledger"]
    assert ledger["trigger"] == {"type": "console", "logical_date": "2024-06-01"}
    assert ledger["logical_date"] == "2024-06-01"
    assert _run(s3, body | {"logical_date": "2024-06-01T05"})["run"]["ledger"]["logical_date"] == "2024-06-01T05"
    refused = _run(s3, body | {"logical_date": "June 1st"})
    assert refused["valid"] is False
    assert refused["cause"].startswith("logical_date: got 'June 1st'; expected a date such as 2024-06-01")


def test_run_record_paths_and_job_parameters(s3: Any) -> None:
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    run = _run(s3, {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"]})["run"]
    assert run["output_uri"] == f"s3://{OUTPUTS}/sales-daily/run_id=run-1/"
    assert run["success_key"] == "sales-daily/run_id=run-1/_SUCCESS"
    assert run["metrics_key"] == "sales-daily/run_id=run-1/_metrics.json"
    assert run["ledger_key"] == "_runs/sales-daily/2024/06/02/run-1.json"
    assert run["log_uri"] == f"s3://{LOGS}/emr-serverless/sales-daily/run-1/"
    job = run["job"]
    assert job["arguments"] == [
        "--manifest", run["manifest_uri"], "--output", f"s3://{OUTPUTS}/sales-daily/run_id=run-1",
        "--run-id", "run-1", "--date-column", "order_date",
    ]  # fmt: skip
    assert job["execution_timeout_minutes"] == 60
    assert job["task_timeout_seconds"] == 60 * 60 + 600
    ledger = run["ledger"]
    assert ledger["state"] == "STARTED"
    assert ledger["execution_arn"] == EXECUTION["id"]
    assert ledger["started_at"] == EXECUTION["start_time"]
    assert set(ledger) >= {"run_id", "pipeline", "trigger", "input_manifest", "object_count", "runtime",
                           "job_run_id", "ended_at", "output_uri", "log_uri", "error", "cause"}  # fmt: skip


def test_router_input_is_passed_through_without_listing(s3: Any) -> None:
    manifest = f"s3://{ARTIFACTS}/manifests/sales-daily/run-1.json"
    trigger = {"type": "s3", "mode": "window", "bucket": LANDING, "first_key": "sales/a.csv"}
    result = _run(s3, {"pipeline": "sales-daily", "manifest": manifest, "object_count": 1000, "trigger": trigger})
    assert result["valid"] is True
    assert result["run"]["manifest_uri"] == manifest
    assert result["run"]["object_count"] == 1000
    assert result["run"]["ledger"]["trigger"] == trigger
    assert result["job"] == {"JobRunId": None}


UPSTREAM_RUNS = [
    {"pipeline": "orders", "run_id": "orders-1", "ledger_uri": f"s3://{OUTPUTS}/_runs/orders/2024/06/02/orders-1.json"},
    {"pipeline": "stock", "run_id": "stock-1", "ledger_uri": f"s3://{OUTPUTS}/_runs/stock/2024/06/02/stock-1.json"},
]


def test_the_run_event_starts_with_what_the_run_is_and_no_object_list(s3: Any) -> None:
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    settings = SETTINGS | {"deployment": "autopilot-dev"}
    body = {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"]}
    run = prepare_run({"input": body, "execution": EXECUTION, "settings": settings}, s3)["run"]
    assert run["event"] == {
        "schema_version": 1,
        "deployment": "autopilot-dev",
        "pipeline": "sales-daily",
        "run_id": "run-1",
        "execution_arn": EXECUTION["id"],
        "ledger_uri": f"s3://{OUTPUTS}/_runs/sales-daily/2024/06/02/run-1.json",
        "started_at": EXECUTION["start_time"],
    }  # no logical_date nor upstream_runs: the run has neither


def test_a_run_started_after_its_upstreams_records_them_once_in_its_entry_and_its_event(s3: Any) -> None:
    manifest = f"s3://{ARTIFACTS}/manifests/sales-daily/run-1.json"
    trigger = {"type": "upstream", "after": ["orders", "stock"], "upstream_runs": UPSTREAM_RUNS,
               "logical_date": "2024-06-01"}  # fmt: skip
    run = _run(s3, {"pipeline": "sales-daily", "manifest": manifest, "object_count": 2, "trigger": trigger})["run"]
    ledger = run["ledger"]
    assert ledger["upstream_runs"] == UPSTREAM_RUNS
    assert ledger["trigger"] == {"type": "upstream", "after": ["orders", "stock"], "logical_date": "2024-06-01"}
    assert run["event"]["upstream_runs"] == UPSTREAM_RUNS and run["event"]["logical_date"] == "2024-06-01"


def test_a_pipeline_run_after_others_may_run_by_hand_over_its_upstreams_outputs_only(s3: Any) -> None:
    # Given sales-daily runs after orders, whose run left data, its metrics and _SUCCESS; and another pipeline's data
    settings = SETTINGS | {"upstream_outputs_json": '["orders"]'}
    for key in ("orders/run_id=o-1/part-0.parquet", "orders/run_id=o-1/_metrics.json", "orders/run_id=o-1/_SUCCESS",
                "secrets/run_id=x/part-0.parquet"):  # fmt: skip
        s3.put_object(Bucket=OUTPUTS, Key=key, Body=b"x")

    def run(inputs: list[str]) -> dict[str, Any]:
        body = {"pipeline": "sales-daily", "inputs": inputs}
        return prepare_run({"input": body, "execution": EXECUTION, "settings": settings}, s3)

    # When an operator reruns it over the upstream run's folder: its data only
    result = run([f"s3://{OUTPUTS}/orders/run_id=o-1/"])
    assert result["valid"] is True and result["run"]["object_count"] == 1
    # Then outputs of a pipeline it does not run after are refused, naming where inputs may be
    refused = run([f"s3://{OUTPUTS}/secrets/run_id=x/part-0.parquet"])
    assert refused["valid"] is False
    assert refused["cause"].startswith(
        f"inputs[0]: got 's3://{OUTPUTS}/secrets/run_id=x/part-0.parquet'; expected an object or prefix under "
        f"s3://{LANDING}/sales/ or s3://{OUTPUTS}/orders/"
    ), refused["cause"]


@pytest.mark.parametrize("runs", [None, [], [{"pipeline": "orders"}], [{**UPSTREAM_RUNS[0], "extra": "x"}]])
def test_malformed_upstream_runs_are_refused_naming_the_field(s3: Any, runs: Any) -> None:
    manifest = f"s3://{ARTIFACTS}/manifests/sales-daily/run-1.json"
    trigger = {"type": "upstream", "after": ["orders"], "upstream_runs": runs}
    result = _run(s3, {"pipeline": "sales-daily", "manifest": manifest, "object_count": 1, "trigger": trigger})
    assert result["valid"] is False
    assert result["cause"].startswith("trigger.upstream_runs: got "), result["cause"]
    assert "expected a non-empty list of {ledger_uri, pipeline, run_id}" in result["cause"]


def test_run_carries_its_place_in_line_and_reservation(s3: Any) -> None:
    # S3 runs queue by the first object's event time and key; console runs by their start time.
    manifest = f"s3://{ARTIFACTS}/manifests/sales-daily/run-1.json"
    trigger = {"type": "s3", "mode": "per_object", "first_key": "sales/a.csv", "event_time": "2024-06-01T10:00:00Z"}
    settings = {**SETTINGS, "admission_json": '{"reservation": {"runs": 1, "clusters": 0, "vcpus": 64}, '
                '"queue_timeout_seconds": 3600}'}  # fmt: skip
    payload = {"pipeline": "sales-daily", "manifest": manifest, "object_count": 1, "trigger": trigger}
    run = prepare_run({"input": payload, "execution": EXECUTION, "settings": settings}, s3)["run"]
    assert run["arrival"] == {"at": "2024-06-01T10:00:00.000000Z", "key": "sales/a.csv"}
    assert run["reservation"] == {"runs": 1, "clusters": 0, "vcpus": 64}
    assert run["queue_timeout_seconds"] == 3600
    assert run["ledger"]["admission"] is None  # filled in by AcquireRunSlot
    s3.put_object(Bucket=LANDING, Key="sales/b.csv", Body=b"1")
    console = _run(s3, {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/b.csv"]})["run"]
    assert console["arrival"] == {"at": "2024-06-02T03:04:05.678000Z", "key": ""}
    assert console["reservation"] == {"runs": 1, "clusters": 0, "vcpus": 0}  # no admission settings: the default


def test_overrides_apply(s3: Any) -> None:
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    overrides = {"arguments": ["--strict"], "spark_submit_parameters": "--conf a=b", "execution_timeout_minutes": 5}
    run = _run(s3, {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"], "overrides": overrides})[
        "run"
    ]
    assert run["job"]["arguments"][-1] == "--strict"
    assert run["job"]["spark_submit_parameters"] == "--conf a=b --conf spark.emr-autopilot.run-id=run-1"
    assert run["job"]["execution_timeout_minutes"] == 5
    assert run["ledger"]["overrides"] == overrides


@pytest.mark.parametrize(
    ("execution_input", "cause"),
    [
        (["x"], "input: got list; expected a JSON object"),
        ({"inputs": ["s3://landing-bkt/sales/a.csv"]}, "pipeline: got None; expected 'sales-daily'"),
        ({"pipeline": "other", "inputs": []}, "pipeline: got 'other'; expected 'sales-daily'"),
        ({"pipeline": "sales-daily"}, "inputs: required; expected a list of S3 URIs"),
        ({"pipeline": "sales-daily", "inputs": []}, "inputs: got []; expected a non-empty list"),
        ({"pipeline": "sales-daily", "inputs": "s3://x/y"}, "inputs: got 's3://x/y'; expected a non-empty list"),
        ({"pipeline": "sales-daily", "inputs": ["/tmp/a.csv"]}, "inputs[0]: got '/tmp/a.csv'; expected an S3 URI"),
        (
            {"pipeline": "sales-daily", "inputs": ["s3://other-bkt/sales/a.csv"]},
            "inputs[0]: got 's3://other-bkt/sales/a.csv'; expected an object or prefix under s3://landing-bkt/sales/",
        ),
        (
            {"pipeline": "sales-daily", "inputs": ["s3://landing-bkt/sales/missing.csv"]},
            "inputs[0]: 's3://landing-bkt/sales/missing.csv' does not exist",
        ),
        ({"pipeline": "sales-daily", "inputs": ["s3://landing-bkt/sales/empty/"]}, "inputs[0]: no input objects under"),
        ({"pipeline": "sales-daily", "input": ["s3://landing-bkt/sales/a.csv"]}, "input: unknown key(s) ['input']"),
        (
            {"pipeline": "sales-daily", "inputs": ["s3://landing-bkt/sales/a.csv"], "overrides": {"memory": 1}},
            "overrides: unknown key(s) ['memory']",
        ),
        (
            {
                "pipeline": "sales-daily",
                "inputs": ["s3://landing-bkt/sales/a.csv"],
                "overrides": {"execution_timeout_minutes": 0},
            },
            "overrides.execution_timeout_minutes: got 0; expected an integer from 1 to 10080",
        ),
        (
            {"pipeline": "sales-daily", "manifest": "s3://evil/m.json", "object_count": 1},
            "manifest: got 's3://evil/m.json'",
        ),
        (
            {
                "pipeline": "sales-daily",
                "manifest": f"s3://{ARTIFACTS}/manifests/sales-daily/run-1.json",
                "object_count": 0,
            },
            "object_count: got 0; expected a positive integer",
        ),
        (  # issue 13.7: console input may not set what the router sets (a forged s3 trigger and arrival time)
            {
                "pipeline": "sales-daily",
                "inputs": ["s3://landing-bkt/sales/a.csv"],
                "trigger": {"type": "s3", "event_time": "2000-01-01T00:00:00Z"},
            },
            "trigger: set by the router only; console input may not carry it",
        ),
        (  # router-shaped input naming another run's manifest is a replay, not the router
            {
                "pipeline": "sales-daily",
                "manifest": f"s3://{ARTIFACTS}/manifests/sales-daily/x.json",
                "object_count": 1,
            },
            "manifest: got 's3://artifacts-bkt/manifests/sales-daily/x.json'; expected this run's own manifest "
            "s3://artifacts-bkt/manifests/sales-daily/run-1.json",
        ),
    ],
)
def test_bad_console_input_names_the_field(s3: Any, execution_input: Any, cause: str) -> None:
    result = _run(s3, execution_input)
    assert result["valid"] is False
    assert result["error"] == "InvalidExecutionInput"
    assert result["cause"].startswith(cause), result["cause"]
    # Nothing was started: no manifest written.
    assert s3.list_objects_v2(Bucket=ARTIFACTS).get("KeyCount", 0) == 0


def test_a_huge_rejected_value_is_shown_short_and_the_cause_stays_under_1_kb(s3: Any) -> None:
    """Issue 13.7: a 100 KB override used to be echoed whole into a 100,077-character cause."""
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    overrides = {"spark_submit_parameters": "--conf a=" + "b" * 100_000}
    result = _run(s3, {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"], "overrides": overrides})
    assert result["valid"] is False
    assert result["cause"].startswith("overrides.spark_submit_parameters: got '--conf a=bbb")
    assert "... (100011 characters); expected a string (<= 10240 chars)" in result["cause"]
    assert len(result["cause"]) <= 1024


def test_execution_input_from_prepare_output_fits_step_functions_limits(s3: Any) -> None:
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    result = _run(s3, {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"]})
    assert len(json.dumps(result).encode()) < 8 * 1024


def test_handler_returns_prepare_result(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import load_handler
    from tests.unit.fakes import lambda_context

    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "EmrAutopilot")
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    handler = load_handler("prepare")
    event = {"input": {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"]}, "execution": EXECUTION,
             "settings": SETTINGS}  # fmt: skip
    result = handler.lambda_handler(event, lambda_context("autopilot-dev-prepare"))
    assert result["valid"] is True
    assert result["run"]["object_count"] == 1


@pytest.mark.parametrize(("runtime", "margin"), [("emr-serverless", 600), ("emr-eks", 0)])
def test_the_workflow_waits_on_the_job_run_through_every_attempt_of_its_retry_policy(
    s3: Any, runtime: str, margin: int
) -> None:
    # Given a pipeline whose job runs may take 3 attempts of up to 60 minutes each (runtime.retry.max_attempts)
    settings = {**SETTINGS, "runtime": runtime, "max_attempts": "3"}
    payload = {"input": {"pipeline": "sales-daily", "inputs": [f"s3://{LANDING}/sales/a.csv"]}}
    s3.put_object(Bucket=LANDING, Key="sales/a.csv", Body=b"x")
    job = prepare_run({**payload, "execution": EXECUTION, "settings": settings}, s3)["run"]["job"]
    # Then the service still gets the per-attempt timeout, and the workflow's wait covers all three attempts
    assert job["execution_timeout_minutes"] == 60
    assert job["task_timeout_seconds"] == 3 * 60 * 60 + margin


def test_a_job_without_spark_parameters_still_sends_non_blank_ones_naming_the_run() -> None:
    # EMR Serverless and EMR on EKS refuse a blank sparkSubmitParameters (min length 1, pattern .*\S.*)
    import botocore.session

    from preparation import job_spark_parameters

    for service, shape in (("emr-serverless", "SparkSubmit"), ("emr-containers", "SparkSubmitJobDriver")):
        member = botocore.session.get_session().get_service_model(service).shape_for(shape).members
        assert member["sparkSubmitParameters"].metadata["min"] == 1
    assert job_spark_parameters("", "r-1") == "--conf spark.emr-autopilot.run-id=r-1"
    assert job_spark_parameters(" --conf a=b ", "r-1") == "--conf a=b --conf spark.emr-autopilot.run-id=r-1"
