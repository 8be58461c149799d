"""The EMR Serverless pipeline end to end on the twin: the synthesized templates, ASL and handler code."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from autopilot_common.pricing import shipped_prices
from autopilot_common.spark_resources import serverless_workers
from config.loader import load_config
from tests.deployment import Deployed, Notifications

SAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "sample-data" / "sales"
# The budget: states entered on the happy path (14 with a job that writes _metrics.json, 15 without:
# NoJobMetrics) and Lambda invocations per run, whatever the job's length.
HAPPY_PATH_STATES = 18  # with the daily budget's Choice (RecordSpendIfBudgeted), skipped without a budget
LAMBDA_INVOCATIONS_PER_RUN = 4  # prepare, acquire and release the run slot, finalize (cost, links, notification)


def _new_runs(env: Deployed, before: set[str]) -> list[dict[str, Any]]:
    return [e for e in env.executions() if e["executionArn"] not in before]


def _land(env: Deployed, keys_and_bodies: dict[str, bytes]) -> set[str]:
    before = {e["executionArn"] for e in env.executions()}
    for key, body in keys_and_bodies.items():
        env.s3.put_object(Bucket=env.landing, Key=key, Body=body)
    return before


def _one_new_run(env: Deployed, before: set[str]) -> dict[str, Any]:
    env.wait_for(lambda: _new_runs(env, before), what="a run to start")
    env.twin.wait_idle(timeout=150)
    (execution,) = _new_runs(env, before)
    return execution


def _entered_states(history: list[dict[str, Any]]) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in history if "stateEnteredEventDetails" in e]


@pytest.mark.spark
@pytest.mark.slow  # ~55 s: `make test` runs the EC2 real-Spark run; `make e2e` runs this one too
def test_csvs_land_and_one_real_spark_run_writes_parquet_ledger_then_success(env: Deployed) -> None:
    # Given the twin runs job runs on local Spark
    env.twin.emr_serverless.runner = env.spark_runner
    folder = f"sales/{uuid.uuid4().hex[:8]}"
    # When the three sample CSVs land (one name has a space and a '+')
    before = _land(env, {f"{folder}/{p.name}": p.read_bytes() for p in SAMPLES.glob("*.csv")})
    execution = _one_new_run(env, before)
    # Then one run succeeded, with Parquet partitions, metrics in the ledger, and _SUCCESS after the ledger
    described = env.finished(execution["executionArn"], timeout=150)
    assert described["status"] == "SUCCEEDED", described.get("cause")
    run_id = execution["name"]
    ledger = env.ledger(run_id)
    assert ledger["state"] == "SUCCEEDED"
    assert ledger["object_count"] == 3
    assert ledger["metrics"]["rows_in"] == 158 and ledger["metrics"]["rows_out"] == 144
    prefix = f"sales-daily/run_id={run_id}/"
    keys = [o["Key"] for o in env.s3.list_objects_v2(Bucket=env.outputs, Prefix=prefix)["Contents"]]
    assert any(k.startswith(prefix + "order_date=2024-06-02/") and k.endswith(".parquet") for k in keys)
    assert prefix + "_SUCCESS" in keys
    assert not [k for k in keys if k.endswith(".crc")]
    entered = _entered_states(env.history(execution["executionArn"]))
    assert entered.index("RecordSucceeded") < entered.index("WriteSuccessMarker")
    # Driver logs landed under the monitoring log URI, in the EMR Serverless layout
    logs_bucket = env.report.outputs["LogsBucket"]
    log_keys = [
        o["Key"]
        for o in env.s3.list_objects_v2(Bucket=logs_bucket, Prefix=f"emr-serverless/sales-daily/{run_id}/").get(
            "Contents", []
        )
    ]
    assert any(k.endswith("SPARK_DRIVER/stdout.gz") for k in log_keys), log_keys
    stdout = env.s3.get_object(Bucket=logs_bucket, Key=next(k for k in log_keys if k.endswith("stdout.gz")))
    assert gzip.decompress(stdout["Body"].read()) is not None


def test_run_budget_transitions_and_lambda_invocations(env: Deployed) -> None:
    before = _land(env, {f"sales/{uuid.uuid4().hex[:8]}/a.csv": b"order_id\n1\n"})
    invocations_before = len(env.twin.runtime.invocations)
    execution = _one_new_run(env, before)
    assert env.finished(execution["executionArn"])["status"] == "SUCCEEDED"
    history = env.history(execution["executionArn"])
    entered = _entered_states(history)
    assert len(entered) == HAPPY_PATH_STATES, entered
    assert entered == [
        "Prepare", "CheckInput", "AcquireRunSlot", "RecordStarted", "StartJob", "RunJob", "ReleaseRunSlot",
        "ReadJobMetrics", "NoJobMetrics", "FinalizeSucceeded", "SucceededLedgerUpdate", "RecordSucceeded",
        "RecordSpendIfBudgeted", "WriteSuccessMarker", "NotifySucceeded", "RunSucceededEvent", "PublishRunSucceeded",
        "RunSucceeded",
    ]  # fmt: skip
    lambda_tasks = [
        e
        for e in history
        if e["type"] == "TaskScheduled" and e["taskScheduledEventDetails"]["resourceType"] == "lambda"
    ]
    assert len(lambda_tasks) == LAMBDA_INVOCATIONS_PER_RUN
    # The run's event reached the default bus (PublishRunSucceeded catches every error: check it really did)
    (published,) = [
        e
        for e in env.twin.events
        if e["detail-type"] == "Autopilot Run Succeeded" and e["detail"]["execution_arn"] == execution["executionArn"]
    ]
    detail = published["detail"]
    assert published["source"] == "emr-autopilot" and detail["state"] == "SUCCEEDED"
    assert detail["outputs"]["success_marker"].endswith(f"/run_id={execution['name']}/_SUCCESS")
    assert detail["ledger_uri"].endswith(f"/{execution['name']}.json") and detail["deployment"] == "autopilot-dev"
    assert set(detail) == {"schema_version", "deployment", "pipeline", "run_id", "state", "execution_arn",
                           "ledger_uri", "outputs", "started_at", "ended_at"}  # fmt: skip
    invoked = [
        i
        for i in env.twin.runtime.invocations[invocations_before:]
        if i.function_name.endswith(("-prepare", "-admission", "-finalize"))
    ]
    assert len(invoked) == LAMBDA_INVOCATIONS_PER_RUN


def test_the_same_event_delivered_twice_starts_one_run(env: Deployed) -> None:
    # Given an object that landed and started its run
    key = f"sales/{uuid.uuid4().hex[:8]}/dup.csv"
    before = _land(env, {key: b"order_id\n1\n"})
    execution = _one_new_run(env, before)
    original = next(
        e
        for e in reversed(env.twin.events)
        if e["detail-type"] == "Object Created" and e["detail"]["object"]["key"] == key
    )
    # When EventBridge delivers the very same event again (at-least-once delivery)
    env.twin.put_event({k: original[k] for k in ("source", "detail-type", "resources", "detail")})
    env.twin.wait_idle()
    # Then no second run starts
    assert _new_runs(env, before) == [execution]


def test_fifty_objects_in_one_window_make_one_run_listing_fifty(env: Deployed) -> None:
    # Given a batching window long enough for 50 uploads (the pipeline's 30 s, scaled to 9 s)
    env.twin.time_scale = 0.3
    folder = f"sales/{uuid.uuid4().hex[:8]}"
    try:
        before = _land(env, {f"{folder}/part-{i:02d}.csv": b"order_id\n1\n" for i in range(50)})
        execution = _one_new_run(env, before)
    finally:
        env.twin.time_scale = 0.05
    assert env.finished(execution["executionArn"])["status"] == "SUCCEEDED"
    ledger = env.ledger(execution["name"])
    assert ledger["object_count"] == 50
    bucket, _, key = ledger["input_manifest"].removeprefix("s3://").partition("/")
    manifest = json.loads(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert sorted(o["key"] for o in manifest["objects"]) == [f"{folder}/part-{i:02d}.csv" for i in range(50)]


def test_console_run_with_valid_input_succeeds(env: Deployed) -> None:
    key = f"sales/console-{uuid.uuid4().hex[:8]}/x.csv"
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id\n1\n")
    env.twin.wait_idle()
    name = f"console-{uuid.uuid4().hex[:8]}"
    arn = env.start_console_run(name, {"pipeline": "sales-daily", "inputs": [f"s3://{env.landing}/{key}"]})
    assert env.finished(arn)["status"] == "SUCCEEDED"
    ledger = env.ledger(name)
    assert ledger["trigger"] == {"type": "console"} and ledger["object_count"] == 1


def test_console_run_with_bad_input_fails_at_once_naming_the_field(env: Deployed) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    arn = env.start_console_run(name, {"pipeline": "sales-daily", "inputs": ["/tmp/local.csv"]})
    described = env.finished(arn)
    assert described["status"] == "FAILED"
    assert described["error"] == "InvalidExecutionInput"
    assert described["cause"].startswith("inputs[0]: got '/tmp/local.csv'; expected an S3 URI")
    entered = _entered_states(env.history(arn))
    assert entered == ["Prepare", "CheckInput", "InvalidInput"]
    # Nothing was started, but every run gets a ledger entry: the guardrail writes it from the FAILED event.
    (record,) = [r for r in env.runs() if r.run_id == name]
    assert record.state == "FAILED" and record.error == "InvalidExecutionInput"
    assert record.raw["cleanup"]["clusters_terminated"] == [] and record.raw["cleanup"]["job_runs_cancelled"] == []


def test_failed_job_writes_ledger_failed_notifies_and_leaves_no_success(env: Deployed) -> None:
    # Given a queue subscribed to the notifications topic, and the next job run fails
    notifications = Notifications(env)
    env.twin.faults.fail_next_job("Job failed: injected executor loss")
    # When data lands
    before = _land(env, {f"sales/{uuid.uuid4().hex[:8]}/f.csv": b"order_id\n1\n"})
    execution = _one_new_run(env, before)
    described = env.finished(execution["executionArn"])
    # Then the run fails with the job's error, the ledger says FAILED with the cause, SNS got it, no _SUCCESS
    assert described["status"] == "FAILED"
    assert described["error"] == "States.TaskFailed"
    run_id = execution["name"]
    ledger = env.ledger(run_id)
    assert ledger["state"] == "FAILED"
    assert "injected executor loss" in ledger["cause"]
    assert ledger["job_run_id"] and ledger["job_run"]["state"] == "FAILED"
    # The failed job run was billed too (its one-minute minimum at least): the cost is GetJobRun's usage, priced
    assert ledger["cost"]["usd"] == pytest.approx(_serverless_cost(env, ledger), abs=1e-6)
    assert ledger["cost"]["usd"] > 0
    # The notification is text people read: the one-line reason, cost, links, the ledger URI and the log tail
    notification = notifications.of_run(run_id, "FAILED")
    assert notification["Subject"] == f"EMR Autopilot sales-daily: run FAILED ({run_id})"
    message = notification["Message"]
    assert "reason:    States.TaskFailed: job run " in message and "Job failed: injected executor loss" in message
    assert f"cost:      ${ledger['cost']['usd']:.4f}" in message
    assert ledger["links"]["job run"] in message and ledger["links"]["logs"] in message
    assert f"ledger entry: s3://{env.outputs}/_runs/sales-daily/" in message and f"/{run_id}.json" in message
    tail = message.split("lines of s3://", 1)[1]
    assert tail.split("\n", 1)[0].endswith("/SPARK_DRIVER/stderr.gz:")
    assert 'Exception in thread "main" org.apache.spark.SparkException: Job failed: injected executor loss' in tail
    with pytest.raises(ValueError):
        json.loads(message)  # not a JSON blob any more
    keys = env.s3.list_objects_v2(Bucket=env.outputs, Prefix=f"sales-daily/run_id={execution['name']}/").get(
        "Contents", []
    )
    assert not [o for o in keys if o["Key"].endswith("_SUCCESS")]


def _serverless_cost(env: Deployed, ledger: dict[str, Any]) -> float:
    """The run's cost recomputed from GetJobRun's billedResourceUtilization and the price table's rates for the
    architecture the pipeline's application has in config."""
    job = env.twin.client("emr-serverless").get_job_run(
        applicationId=ledger["application_id"], jobRunId=ledger["job_run_id"]
    )["jobRun"]
    billed = job["billedResourceUtilization"]
    assert billed == ledger["job_run"]["billed_resource_utilization"]
    config = load_config("dev")
    application = config.pipelines["sales-daily"].runtime.application  # type: ignore[union-attr]
    if isinstance(application, str):
        application = config.serverless_applications[application]
    rates = shipped_prices().serverless(env.twin.region, application.architecture)
    return float(
        billed["vCPUHour"] * rates["vcpu_hour"]
        + billed["memoryGBHour"] * rates["memory_gb_hour"]
        + billed["storageGBHour"] * rates["storage_gb_hour"]
    )


def test_a_run_records_its_cost_and_links_and_notifies_success(env: Deployed) -> None:
    # Given a subscriber to the notifications topic
    notifications = Notifications(env)
    # When a run succeeds
    before = _land(env, {f"sales/{uuid.uuid4().hex[:8]}/c.csv": b"order_id\n1\n"})
    execution = _one_new_run(env, before)
    assert env.finished(execution["executionArn"])["status"] == "SUCCEEDED"
    run_id = execution["name"]
    ledger = env.ledger(run_id)
    # Then the ledger's cost is GetJobRun's billed usage at the table's rates
    assert ledger["cost"]["usd"] == pytest.approx(_serverless_cost(env, ledger), abs=1e-6)
    # and the twin billed what EMR Serverless would: the workers the job asked for, one minute at least
    job = env.twin.client("emr-serverless").get_job_run(
        applicationId=ledger["application_id"], jobRunId=ledger["job_run_id"]
    )["jobRun"]
    workers = serverless_workers(job["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    seconds = max(job["totalExecutionDurationSeconds"], 60)
    assert job["billedResourceUtilization"]["vCPUHour"] == pytest.approx(workers.vcpu * seconds / 3600, abs=1e-6)
    assert job["billedResourceUtilization"]["memoryGBHour"] == pytest.approx(
        workers.memory_gb * seconds / 3600, abs=1e-6
    )
    assert ledger["job_run"]["state"] == "SUCCESS" and ledger["job_run"]["attempt"] == 1
    # the ledger carries the run's console links
    assert set(ledger["links"]) == {"execution", "job run", "logs"}
    assert ledger["links"]["execution"].endswith(execution["executionArn"])
    assert (
        f"/serverless-applications/{ledger['application_id']}/job-runs/{ledger['job_run_id']}"
        in (ledger["links"]["job run"])
    )
    # and a SUCCEEDED notification says what it cost, with the links
    notification = notifications.of_run(run_id, "SUCCEEDED")
    assert notification["Subject"] == f"EMR Autopilot sales-daily: run SUCCEEDED ({run_id})"
    assert f"cost:      ${ledger['cost']['usd']:.4f}" in notification["Message"]
    assert ledger["links"]["execution"] in notification["Message"]
    assert "rows:      not reported" in notification["Message"]


def test_throttled_start_job_run_is_retried_and_the_run_succeeds(env: Deployed) -> None:
    env.twin.faults.fail_next("emr-serverless", "StartJobRun", times=2, code="ThrottlingException")
    before = _land(env, {f"sales/{uuid.uuid4().hex[:8]}/t.csv": b"order_id\n1\n"})
    execution = _one_new_run(env, before)
    assert env.finished(execution["executionArn"], timeout=90)["status"] == "SUCCEEDED"
    failures = [
        e["taskFailedEventDetails"]
        for e in env.history(execution["executionArn"])
        if e["type"] == "TaskFailed" and e["taskFailedEventDetails"]["resource"] == "startJobRun"
    ]
    assert [f["error"] for f in failures] == ["EMRServerless.AWSEMRServerlessException"] * 2  # not modeled: the base
    assert all("Error Code: ThrottlingException" in f["cause"] for f in failures)
    assert env.ledger(execution["name"])["state"] == "SUCCEEDED"


def test_malformed_trigger_message_is_retried_then_redriven_to_the_dlq(env: Deployed) -> None:
    # Given a message on the pipeline's arrival queue that the router cannot parse
    sqs = env.twin.client("sqs")
    arrivals = sqs.get_queue_url(QueueName="autopilot-dev-sales-daily-arrivals")["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName="autopilot-dev-trigger-dlq")["QueueUrl"]
    marker = f"not-json-{uuid.uuid4().hex}"
    invocations_before = len(env.twin.runtime.invocations)
    # When it arrives
    sqs.send_message(QueueUrl=arrivals, MessageBody=marker)

    # Then the router reports it as a batch item failure on each of the 5 receives, and SQS moves it to the DLQ
    def in_dlq() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
        return [m for m in messages if m["Body"] == marker]

    (dead,) = env.wait_for(in_dlq, timeout=60, what="the message in the DLQ")
    sqs.delete_message(QueueUrl=dlq, ReceiptHandle=dead["ReceiptHandle"])
    router_calls = [i for i in env.twin.runtime.invocations[invocations_before:] if i.function_name.endswith("-router")]
    assert len(router_calls) == 5  # maxReceiveCount


def test_multipart_upload_emits_one_object_created_with_its_reason_and_raw_key(env: Deployed) -> None:
    key = f"sales/{uuid.uuid4().hex[:8]}/Q1 report+final %20ü.csv"
    upload = env.s3.create_multipart_upload(Bucket=env.landing, Key=key)
    part = env.s3.upload_part(
        Bucket=env.landing, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"order_id\n1\n"
    )
    before = {e["executionArn"] for e in env.executions()}
    env.s3.complete_multipart_upload(
        Bucket=env.landing,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    execution = _one_new_run(env, before)
    events = [
        e for e in env.twin.events if e["detail-type"] == "Object Created" and e["detail"]["object"]["key"] == key
    ]
    assert [e["detail"]["reason"] for e in events] == ["CompleteMultipartUpload"]
    manifest_uri = env.ledger(execution["name"])["input_manifest"] if env.finished(execution["executionArn"]) else ""
    bucket, _, manifest_key = manifest_uri.removeprefix("s3://").partition("/")
    manifest = json.loads(env.s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert [o["key"] for o in manifest["objects"]] == [key]


def test_eventbridge_rules_deliver_to_step_functions_and_lambda_targets(env: Deployed) -> None:
    # Given a rule (as a user might add) that turns a custom event into a console-style run and pings the router
    key = f"sales/eb-{uuid.uuid4().hex[:8]}/x.csv"
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id\n1\n")
    env.twin.wait_idle()
    events = env.twin.client("events")
    source = f"test.autopilot.{uuid.uuid4().hex[:6]}"
    rule_arn = events.put_rule(
        Name=f"rule-{source}", EventPattern=json.dumps({"source": [source], "detail": {"n": [{"numeric": [">", 1]}]}})
    )["RuleArn"]
    router_arn = next(f.arn for f in env.twin.runtime.functions.values() if f.name.endswith("-router"))
    # As in AWS: EventBridge starts a state machine with a role the target names, and invokes a function its
    # resource-based policy allows (the twin's IAM evaluates both)
    iam = env.twin.client("iam")
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sts:AssumeRole"}]}  # fmt: skip
    role_arn = iam.create_role(RoleName=f"events-{source[-6:]}", AssumeRolePolicyDocument=json.dumps(trust))["Role"][
        "Arn"
    ]
    start = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "states:StartExecution", "Resource": env.state_machine}],
    }
    iam.put_role_policy(RoleName=f"events-{source[-6:]}", PolicyName="start", PolicyDocument=json.dumps(start))
    env.twin.client("lambda").add_permission(
        FunctionName=router_arn,
        StatementId=f"events-{source[-6:]}",
        Action="lambda:InvokeFunction",
        Principal="events.amazonaws.com",
        SourceArn=rule_arn,
    )
    events.put_targets(
        Rule=f"rule-{source}",
        Targets=[
            {
                "Id": "run",
                "Arn": env.state_machine,
                "RoleArn": role_arn,
                "InputTransformer": {
                    "InputPathsMap": {"uri": "$.detail.uri"},
                    "InputTemplate": '{"pipeline": "sales-daily", "inputs": [<uri>]}',
                },
            },
            {"Id": "ping", "Arn": router_arn, "Input": '{"Records": []}'},
        ],
    )
    before = {e["executionArn"] for e in env.executions()}
    invocations_before = len(env.twin.runtime.invocations)
    # When a matching event and a non-matching one are put on the bus
    events.put_events(
        Entries=[
            {"Source": source, "DetailType": "t", "Detail": json.dumps({"n": 2, "uri": f"s3://{env.landing}/{key}"})},
            {"Source": source, "DetailType": "t", "Detail": json.dumps({"n": 1, "uri": "s3://nope/x"})},
        ]
    )
    # Then exactly one run starts from the transformed input, and the router was invoked once
    execution = _one_new_run(env, before)
    assert env.finished(execution["executionArn"])["status"] == "SUCCEEDED"
    assert env.ledger(execution["name"])["object_count"] == 1
    pings = [i for i in env.twin.runtime.invocations[invocations_before:] if i.function_name.endswith("-router")]
    assert len(pings) == 1 and pings[0].error is None
