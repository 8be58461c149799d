"""Guardrails end to end on the twin: cleanup after abort and timeout on every runtime, clusters
launched by someone else, runs cancelled by someone else, and the orphan sweeper."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import load_event
from tests.deployment import Deployed

ALICE = "arn:aws:iam::123456789012:user/alice"
DEPLOYMENT = "autopilot-dev"


@pytest.fixture
def notifications(env: Deployed) -> Iterator[Any]:
    """Messages published to the notifications topic while the test runs (via an SQS subscription)."""
    sqs, sns = env.twin.client("sqs"), env.twin.client("sns")
    queue_url = sqs.create_queue(QueueName=f"notify-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=env.report.outputs["NotificationTopic"], Protocol="sqs", Endpoint=queue_arn)

    def received() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]

    yield received


def _console_run(env: Deployed, pipeline: str) -> tuple[str, str]:
    prefix = {"sales-daily": "sales/", "sales-burst": "burst/"}.get(pipeline, f"{pipeline}/")
    key = f"{prefix}guardrails/{uuid.uuid4().hex[:8]}.txt"  # not .csv: the trigger ignores it
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    name = f"{pipeline}-{uuid.uuid4().hex[:8]}"
    return name, env.start_console_run(name, {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{key}"]})


def _cluster_state(env: Deployed, cluster_id: str) -> str:
    state: str = env.twin.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    return state


def _alarms_of(env: Deployed, cluster_id: str) -> list[str]:
    alarms = env.twin.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"{DEPLOYMENT}-scaling-")["MetricAlarms"]
    return [a["AlarmName"] for a in alarms if cluster_id in a["AlarmName"]]


def test_abort_mid_step_terminates_the_cluster_deletes_its_alarms_and_writes_ledger_aborted(
    env: Deployed, notifications: Any
) -> None:
    # Given a transient-cluster run whose step hangs, with the scaling alarms its workflow made for the cluster
    env.twin.faults.hang_next_job()
    run_id, arn = _console_run(env, "sales-cluster")
    cluster_id = env.running_cluster(run_id)
    env.wait_for(lambda: any(s.state == "RUNNING" for s in env.twin.emr_ec2.clusters[cluster_id].steps), 30, "step")
    alarms = sorted(
        f"{DEPLOYMENT}-scaling-sales-cluster-{cluster_id}-{rule}" for rule in ("out-memory-low", "in-memory-idle")
    )
    assert sorted(_alarms_of(env, cluster_id)) == alarms
    # When an operator (alice) aborts the execution mid-step
    stopped = time.monotonic()
    alice = env.twin.client("stepfunctions", principal=ALICE)
    alice.stop_execution(executionArn=arn)  # no error or cause: the ledger records its own
    entry = env.ledger_when(run_id, "ABORTED")
    latency = time.monotonic() - stopped
    # Then the cluster is terminated, its alarm is gone and the ledger says ABORTED with the reason
    env.wait_for(lambda: _cluster_state(env, cluster_id).startswith("TERMINAT"), 30, "cluster termination")
    assert env.sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
    assert entry["error"] == "ExecutionAborted" and "StopExecution" in entry["cause"]
    assert entry["cleanup"]["clusters_terminated"] == [cluster_id]
    assert sorted(entry["cleanup"]["alarms_deleted"]) == alarms and _alarms_of(env, cluster_id) == []
    assert entry["previous_state"] == "STARTED" and entry["ended_at"]
    # And records what the cluster cost up to the cleanup (the run never reached finalize)
    assert entry["cluster_id"] == cluster_id and entry["cost"]["usd"] > 0
    assert entry["cost"]["price_source"] and entry["cost"]["breakdown"]
    # And names who aborted it (CloudTrail's StopExecution record, whichever of the two arrived first)
    named = env.wait_for(lambda: env.ledger_when(run_id, "ABORTED").get("aborted_by"), 10, "aborted_by")
    assert named == ALICE
    messages = env.wait_for(notifications, 10, "a notification")
    assert any(run_id in m["Message"] and "ABORTED" in m["Subject"] for m in messages)
    print(f"cleanup latency after abort (stop -> ledger ABORTED, cluster terminating): {latency:.2f} s")
    # And the cleanup is idempotent: the same event again changes nothing
    env.twin.wait_idle()
    again = env.ledger_when(run_id, "ABORTED")
    assert again["cleanup"] == entry["cleanup"] and again["aborted_by"] == ALICE


@pytest.mark.parametrize(("pipeline", "capped"), [("sales-daily", False), ("sales-eks", False), ("sales-burst", True)])
def test_abort_cancels_the_serverless_or_eks_job_run_and_frees_its_slot(
    env: Deployed, pipeline: str, capped: bool
) -> None:
    # Given a run whose job hangs
    env.twin.faults.hang_next_job()
    run_id, arn = _console_run(env, pipeline)
    model = env.twin.emr_containers if pipeline == "sales-eks" else env.twin.emr_serverless
    env.wait_for(lambda: model.running(), 30, "the job run to start")
    # When the execution is aborted
    env.sfn.stop_execution(executionArn=arn)
    entry = env.ledger_when(run_id, "ABORTED")
    # Then its job run is cancelled and the ledger names it
    env.wait_for(lambda: not model.running(), 30, "the job run to be cancelled")
    if model is env.twin.emr_serverless:  # the API cancel must stop the run the twin drives, not only its record
        env.wait_for(lambda: all(r.done.is_set() for r in model.runs.values()), 10, "the job run's driver to end")
    assert len(entry["cleanup"]["job_runs_cancelled"]) == 1
    assert entry["error"] == "ExecutionAborted"
    # and records the job run and its cost as the service reports them at the cleanup: an EMR on EKS estimate up to
    # now; EMR Serverless bills a job run once it ended, so a run still CANCELLING has no usage yet (null, and why)
    assert entry["job_run_id"] == entry["cleanup"]["job_runs_cancelled"][0] and entry["job_run"]["state"]
    if pipeline == "sales-eks":
        assert entry["cost"]["usd"] > 0 and "estimate" in " ".join(entry["cost"]["notes"])
    elif entry["job_run"]["state"] == "CANCELLED":
        assert entry["cost"]["usd"] is not None
    else:
        assert entry["cost"]["usd"] is None and "billedResourceUtilization" in entry["cost"]["reason"]
    # Only a capped pipeline (sales-burst: max 2 runs) holds a slot, which the cleanup gives back
    assert entry["cleanup"]["slot_released"] is capped


def test_execution_timeout_cancels_the_job_and_writes_ledger_timed_out(env: Deployed) -> None:
    # Given sales-daily deployed with a 4-second run timeout (the real minimum is 5 minutes)
    machine = env.state_machine_of("sales-daily")
    original = env.sfn.describe_state_machine(stateMachineArn=machine)
    definition = json.loads(original["definition"])
    env.sfn.update_state_machine(stateMachineArn=machine, definition=json.dumps({**definition, "TimeoutSeconds": 4}))
    try:
        env.twin.faults.hang_next_job()
        run_id, arn = _console_run(env, "sales-daily")
        # When the run outlives its timeout
        entry = env.ledger_when(run_id, "TIMED_OUT", timeout=40)
    finally:
        env.sfn.update_state_machine(stateMachineArn=machine, definition=original["definition"])
    # Then the execution TIMED_OUT, its job run was cancelled, the ledger says why
    assert env.sfn.describe_execution(executionArn=arn)["status"] == "TIMED_OUT"
    env.wait_for(lambda: not env.twin.emr_serverless.running(), 30, "the job run to be cancelled")
    assert entry["error"] == "States.Timeout" and len(entry["cleanup"]["job_runs_cancelled"]) == 1


def _launch_by_hand(env: Deployed, tags: dict[str, str], principal: str = ALICE) -> str:
    return env.launch_cluster_by_hand(f"adhoc-{uuid.uuid4().hex[:6]}", tags, principal)


def _auto_termination(env: Deployed, cluster_id: str) -> dict[str, Any] | None:
    policy: dict[str, Any] | None = (
        env.twin.client("emr").get_auto_termination_policy(ClusterId=cluster_id).get("AutoTerminationPolicy")
    )
    return policy


def test_a_cluster_launched_by_hand_without_auto_termination_gets_one_and_the_caller_is_named(
    env: Deployed, notifications: Any
) -> None:
    # Given the EMR model accepts any role names for hand-made clusters
    env.twin.emr_ec2.check_iam = False
    try:
        # When alice launches a cluster with no auto-termination policy, and another tagged long-running
        capped = _launch_by_hand(env, {"team": "analytics"})
        exempt = _launch_by_hand(env, {"autopilot:long-running": "true"})
        env.wait_for(lambda: _auto_termination(env, capped), 30, "an auto-termination policy")
        env.twin.wait_idle()
        # Then only the first got the idle policy (60 minutes), and the notification names alice
        assert _auto_termination(env, capped) == {"IdleTimeout": 3600}
        assert not _auto_termination(env, exempt)
        messages = env.wait_for(notifications, 10, "a notification")
        (message,) = [json.loads(m["Message"]) for m in messages if capped in m["Message"]]
        assert message["launched_by"] == ALICE and message["idle_timeout_minutes"] == 60
        assert not any(exempt in m["Message"] for m in messages)
    finally:
        env.twin.emr_ec2.check_iam = True
        env.twin.client("emr").terminate_job_flows(JobFlowIds=[capped, exempt])


def test_a_guardrail_event_that_keeps_failing_lands_in_the_dead_letter_queue_with_its_error(env: Deployed) -> None:
    """Issue 13.4: EventBridge invokes the guardrail asynchronously; an event it fails on three times (Lambda's
    two retries) is recorded in the dead-letter queue (whose depth alarms the topic), not dropped."""
    sqs = env.twin.client("sqs")
    dlq = sqs.get_queue_url(QueueName=f"{DEPLOYMENT}-trigger-dlq")["QueueUrl"]
    # Given EMR refuses the guardrail's PutAutoTerminationPolicy three times in a row
    env.twin.faults.fail_next("emr", "PutAutoTerminationPolicy", times=3, code="ValidationException", message="nope")
    env.twin.emr_ec2.check_iam = False
    try:
        # When alice launches a cluster without auto-termination
        cluster_id = _launch_by_hand(env, {"team": "analytics"})
    finally:
        env.twin.emr_ec2.check_iam = True

    def recorded() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
        return [m for m in messages if cluster_id in m["Body"]]

    try:
        (message,) = env.wait_for(recorded, 60, "the guardrail's failure record in the dead-letter queue")
        record = json.loads(message["Body"])
        # Then the record names the function, the condition, three attempts, the event and the error
        context = record["requestContext"]
        assert context["functionArn"].endswith(f":function:{DEPLOYMENT}-guardrail:$LATEST")
        assert (context["condition"], context["approximateInvokeCount"]) == ("RetriesExhausted", 3)
        assert record["requestPayload"]["detail"]["responseElements"]["jobFlowId"] == cluster_id
        assert "nope" in record["responsePayload"]["errorMessage"]
        sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
        alarm = env.twin.client("cloudwatch").describe_alarms(AlarmNames=[f"{DEPLOYMENT}-dead-letters"])
        assert alarm["MetricAlarms"][0]["AlarmActions"] == [env.report.outputs["NotificationTopic"]]
    finally:
        env.twin.client("emr").terminate_job_flows(JobFlowIds=[cluster_id])


def test_someone_terminating_a_pipeline_cluster_cancels_the_run_with_their_name(env: Deployed) -> None:
    # Given a transient-cluster run whose step is running
    env.twin.faults.hang_next_job()
    run_id, arn = _console_run(env, "sales-cluster")
    cluster_id = env.running_cluster(run_id)
    # When alice terminates the run's cluster from the console
    env.twin.client("emr", principal=ALICE).terminate_job_flows(JobFlowIds=[cluster_id])
    # Then the workflow ends on its own (it sees the cluster gone) and the ledger says CANCELLED by alice
    described = env.finished(arn, timeout=60)
    assert described["status"] == "FAILED"
    entry = env.ledger_when(run_id, "CANCELLED")
    assert entry["cancelled_by"] == ALICE and entry["cancel_action"] == f"TerminateJobFlows on {cluster_id}"
    assert entry["previous_state"] == "FAILED"


def test_the_sweeper_terminates_a_cluster_whose_execution_is_unknown_and_then_finds_nothing(env: Deployed) -> None:
    # Given a cluster tagged as a run of this deployment whose execution Step Functions does not know
    # (its bookkeeping is gone), created with the app's own tags
    env.twin.emr_ec2.check_iam = False
    machine = env.state_machine_of("sales-cluster")
    ghost = machine.replace(":stateMachine:", ":execution:") + ":sales-cluster-ghost"
    try:
        cluster_id = _launch_by_hand(
            env,
            {
                "autopilot:deployment": DEPLOYMENT,
                "autopilot:pipeline": "sales-cluster",
                "autopilot:run-id": "sales-cluster-ghost",
                "autopilot:execution": ghost,
            },
        )
    finally:
        env.twin.emr_ec2.check_iam = True
    env.twin.wait_idle()
    assert _cluster_state(env, cluster_id) in ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
    # When the sweeper's schedule fires
    env.twin.fire_schedule("Sweeper")
    # Then the cluster is terminated and the ledger records why
    env.wait_for(lambda: _cluster_state(env, cluster_id).startswith("TERMINAT"), 30, "the sweeper")
    entry = env.ledger_when("sales-cluster-ghost", "FAILED")
    assert entry["swept"]["cluster_id"] == cluster_id and entry["swept"]["reason"] == "its execution is UNKNOWN"
    # And the next tick finds nothing (steady state)
    env.twin.wait_idle()
    tick = load_event("scheduled_event.json")
    assert env.twin.runtime.invoke(f"{DEPLOYMENT}-guardrail", tick) == {"handled": True, "findings": 0}
