"""EMR-on-EC2 pipelines end to end on the twin: transient clusters (sales-cluster) and steps on a
long-running cluster (sales-adhoc), with the synthesized templates, ASL and handler code."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autopilot_common.pricing import shipped_prices
from tests.deployment import Deployed, Notifications

SAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "sample-data" / "sales"
TRANSIENT, EXISTING = "sales-cluster", "sales-adhoc"
# Happy path of a transient run: states entered (the Map's one step counts as RunSteps + RunStep).
HAPPY_PATH = [
    "Prepare",
    "CheckInput",
    "AcquireRunSlot",
    "RecordStarted",
    "CreateCluster",
    "PlanScalingAlarms",
    "CreateScalingAlarms",
    "PutScalingAlarm",
    "PutScalingAlarm",
    "RunSteps",
    "StepPlan",
    "AllowStartup",
    "RunStep",
    "StepNoticed",
    "TerminateCluster",
    "HasScalingAlarms",
    "FindScalingAlarms",
    "AnyScalingAlarms",
    "DeleteScalingAlarms",
    "ReleaseRunSlot",
    "ReadJobMetrics",
    "FinalizeSucceeded",
    "SucceededLedgerUpdate",
    "RecordSucceeded",
    "RecordSpendIfBudgeted",
    "WriteSuccessMarker",
    "NotifySucceeded",
    "RunSucceededEvent",
    "PublishRunSucceeded",
    "RunSucceeded",
]  # fmt: skip  (sales-cluster scales from two alarms: one PutScalingAlarm each)
# prepare, acquire and release the run slot, finalize, and per step its submission (RunStep: the finalize function)
LAMBDA_INVOCATIONS_PER_RUN = 5


def _land_and_run(env: Deployed, files: dict[str, bytes]) -> dict[str, Any]:
    before = {e["executionArn"] for e in env.executions(TRANSIENT)}
    for key, body in files.items():
        env.s3.put_object(Bucket=env.landing, Key=key, Body=body)
    new = env.wait_for(
        lambda: [e for e in env.executions(TRANSIENT) if e["executionArn"] not in before], what="a run to start"
    )
    (execution,) = new
    return execution


def _console_run(env: Deployed, pipeline: str, key: str) -> tuple[str, str]:
    """A console run over one object that the pipeline's trigger ignores (it only takes .csv)."""
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    env.twin.wait_idle()
    name = f"{pipeline}-{uuid.uuid4().hex[:8]}"
    return name, env.start_console_run(name, {"pipeline": pipeline, "inputs": [f"s3://{env.landing}/{key}"]})


def _entered(env: Deployed, arn: str) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in env.history(arn) if "stateEnteredEventDetails" in e]


def _instances_cost(env: Deployed, cluster_id: str) -> float:
    """What a cluster's instances cost, recomputed from what EMR reports (each instance's launch to end, type and
    market), the twin's spot price history and the shipped price table (EBS not included)."""
    emr, ec2 = env.twin.client("emr"), env.twin.client("ec2")
    table = shipped_prices().region(env.twin.region)
    zone = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Ec2InstanceAttributes"]["Ec2AvailabilityZone"]
    expected = 0.0
    for instance in emr.list_instances(ClusterId=cluster_id)["Instances"]:
        timeline = instance["Status"]["Timeline"]
        hours = max((timeline["EndDateTime"] - timeline["CreationDateTime"]).total_seconds(), 60) / 3600
        prices = table["instances"][instance["InstanceType"]]
        ec2_rate = prices["ec2_hour"]
        if instance["Market"] == "SPOT":
            (spot,) = ec2.describe_spot_price_history(
                InstanceTypes=[instance["InstanceType"]], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"]
            )["SpotPriceHistory"]
            ec2_rate = float(spot["SpotPrice"])
            assert ec2_rate < prices["ec2_hour"]
        expected += hours * (ec2_rate + prices["emr_hour"])
    return expected


def _ebs_usd(cost: dict[str, Any]) -> float:
    return float(sum(line["usd"] for line in cost["breakdown"] if line["item"].startswith("EBS ")))


def _assert_cost_is_every_instance_priced(env: Deployed, ledger: dict[str, Any]) -> None:
    """The run's cost is every instance of its cluster priced (`_instances_cost`) plus the EBS volumes."""
    instances = env.twin.client("emr").list_instances(ClusterId=ledger["cluster_id"])["Instances"]
    cost = ledger["cost"]
    ebs = _ebs_usd(cost)
    assert cost["usd"] == pytest.approx(_instances_cost(env, ledger["cluster_id"]) + ebs, rel=1e-3), cost
    assert ebs > 0 and {i["Market"] for i in instances} == {"ON_DEMAND", "SPOT"}
    assert any(line["item"].endswith(" spot") for line in cost["breakdown"])
    assert cost["prices_as_of"] == shipped_prices().as_of and "not included" in cost["notes"][-1]


def _cluster_state(env: Deployed, cluster_id: str) -> str:
    state: str = env.twin.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    return state


@pytest.mark.spark
def test_csvs_land_and_a_transient_cluster_runs_the_real_spark_step_then_terminates(env: Deployed) -> None:
    # Given clusters run their Spark steps on local Spark
    env.twin.emr_ec2.runner = env.spark_runner
    folder = f"{TRANSIENT}/{uuid.uuid4().hex[:8]}"
    invocations_before = len(env.twin.runtime.invocations)
    started = time.monotonic()
    # When the three sample CSVs land
    execution = _land_and_run(env, {f"{folder}/{p.name}": p.read_bytes() for p in SAMPLES.glob("*.csv")})
    described = env.finished(execution["executionArn"], timeout=240)
    elapsed = time.monotonic() - started
    # Then the run succeeded: Parquet outputs, metrics, _SUCCESS, and the cluster is gone
    assert described["status"] == "SUCCEEDED", described.get("cause")
    run_id = execution["name"]
    ledger = env.ledger(run_id)
    assert ledger["state"] == "SUCCEEDED" and ledger["runtime"] == "emr-ec2"
    assert ledger["metrics"]["rows_in"] == 158 and ledger["metrics"]["rows_out"] == 144
    cluster = ledger["cluster"]
    assert cluster["state"] == "TERMINATED" and ledger["cluster_id"] == cluster["id"]
    fleets = {f["type"]: f for f in cluster["fleets"]}
    assert fleets["TASK"]["provisioned_spot"] == 4 and fleets["CORE"]["provisioned_on_demand"] == 2
    (step,) = ledger["steps"]
    assert step["state"] == "COMPLETED" and step["name"] == f"{run_id}: sales-etl"
    assert ledger["instance_hours_estimate"]["instance_hours"] > 0
    _assert_cost_is_every_instance_priced(env, ledger)
    prefix = f"{TRANSIENT}/run_id={run_id}/"
    keys = [o["Key"] for o in env.s3.list_objects_v2(Bucket=env.outputs, Prefix=prefix)["Contents"]]
    assert any(k.startswith(prefix + "order_date=2024-06-02/") and k.endswith(".parquet") for k in keys)
    assert prefix + "_SUCCESS" in keys
    assert _cluster_state(env, cluster["id"]) == "TERMINATED"
    # Step logs are in EMR's layout under the run's log URI
    logs_bucket = env.report.outputs["LogsBucket"]
    log_prefix = f"emr-ec2/{TRANSIENT}/{run_id}/{cluster['id']}/steps/{step['id']}/"
    log_keys = [o["Key"] for o in env.s3.list_objects_v2(Bucket=logs_bucket, Prefix=log_prefix).get("Contents", [])]
    assert log_prefix + "stdout.gz" in log_keys, log_keys
    gzip.decompress(env.s3.get_object(Bucket=logs_bucket, Key=log_prefix + "stdout.gz")["Body"].read())
    # Budget: states entered and Lambda invocations do not grow with the job's length
    assert _entered(env, execution["executionArn"]) == HAPPY_PATH
    finalizes = [
        i
        for i in env.twin.runtime.invocations[invocations_before:]
        if i.function_name.endswith(("-prepare", "-admission", "-finalize"))
    ]
    assert len(finalizes) == LAMBDA_INVOCATIONS_PER_RUN
    print(f"\ntransient emr-ec2 run with real Spark: {elapsed:.1f} s")


def test_failed_step_terminates_the_cluster_records_the_step_and_notifies(env: Deployed) -> None:
    # Given a subscriber to the notifications topic, and the next step fails
    notifications = Notifications(env)
    env.twin.faults.fail_next_job("Job failed: injected executor loss")
    # When an operator runs the pipeline from the console
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/console-{uuid.uuid4().hex[:8]}/a.input")
    described = env.finished(arn, timeout=90)
    # Then the run fails naming the step and its log; the cluster is terminated; no _SUCCESS
    assert described["status"] == "FAILED"
    assert described["error"] == "StepFailed"
    assert "'" + f"{run_id}: sales-etl" + "'" in described["cause"] and "steps/" in described["cause"]
    ledger = env.ledger(run_id)
    assert ledger["state"] == "FAILED" and ledger["error"] == "StepFailed"
    assert ledger["failed_step"]["state"] == "FAILED"
    assert "injected executor loss" in json.dumps(ledger["failed_step"])
    assert ledger["failed_step"]["failure"]["logfile"].endswith("/stderr.gz")
    assert _cluster_state(env, ledger["cluster_id"]) == "TERMINATED"
    entered = _entered(env, arn)
    assert entered.index("TerminateAfterFailure") < entered.index("RecordFailed") < entered.index("NotifyFailure")
    # The notification: the one-line reason, the cost of the cluster, links, the ledger URI and the step's log tail
    _assert_cost_is_every_instance_priced(env, ledger)
    notification = notifications.of_run(run_id, "FAILED")
    assert notification["Subject"] == f"EMR Autopilot {TRANSIENT}: run FAILED ({run_id})"
    message = notification["Message"]
    assert f"reason:    StepFailed: step '{run_id}: sales-etl'" in message and "injected executor loss" in message
    assert f"cost:      ${ledger['cost']['usd']:.4f}" in message and ledger["links"]["cluster"] in message
    tail = message.split("lines of s3://", 1)[1]
    assert f"/{ledger['cluster_id']}/steps/" in tail.split("\n", 1)[0] and "injected fault: Job failed" in tail
    keys = env.s3.list_objects_v2(Bucket=env.outputs, Prefix=f"{TRANSIENT}/run_id={run_id}/").get("Contents", [])
    assert not [o for o in keys if o["Key"].endswith("_SUCCESS")]


def test_a_cluster_failing_to_bootstrap_is_replaced_and_the_new_one_runs_the_step(env: Deployed) -> None:
    # Given sales-cluster relaunches on bootstrap failures (retry.when: [..., bootstrap_failure], max_attempts 2)
    env.twin.faults.fail_next_bootstrap()
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/boot1-{uuid.uuid4().hex[:8]}/a.input")
    # Then the failed cluster is terminated, a new one is created and runs the step, and the run succeeds
    assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"
    ledger = env.ledger(run_id)
    first, second = ledger["cluster_attempts"]
    assert (first["attempt"], first["state"], first["reason_code"], first["failure_class"]) == (
        1, "TERMINATED_WITH_ERRORS", "BOOTSTRAP_FAILURE", "bootstrap_failure")  # fmt: skip
    assert (second["attempt"], second["state"], second["failure_class"]) == (2, "TERMINATED", None)
    assert ledger["cluster_id"] == second["cluster_id"] != first["cluster_id"]
    (step,) = ledger["steps"]
    assert [(a["cluster_id"], a["state"]) for a in step["attempts"]] == [
        (first["cluster_id"], "CANCELLED"),
        (second["cluster_id"], "COMPLETED"),
    ]
    # Both clusters are gone and both are paid for
    assert _cluster_state(env, first["cluster_id"]) == "TERMINATED_WITH_ERRORS"
    assert _cluster_state(env, second["cluster_id"]) == "TERMINATED"
    both = _instances_cost(env, first["cluster_id"]) + _instances_cost(env, second["cluster_id"])
    assert ledger["cost"]["usd"] == pytest.approx(both + _ebs_usd(ledger["cost"]), rel=1e-3)
    assert any("2 clusters" in note for note in ledger["cost"]["notes"])
    # A fixed number of extra states, once per replaced cluster
    entered = _entered(env, arn)
    assert entered.count("CreateCluster") == 2 and entered.count("ClassifyClusterFailure") == 1
    assert entered.count("TerminateBeforeRelaunch") == 1 and entered.count("NextCluster") == 1
    assert "TerminateAfterFailure" not in entered and entered.count("RunStep") == 2


def test_a_bootstrap_failure_on_the_last_cluster_allowed_fails_the_run_with_every_cluster_recorded(
    env: Deployed,
) -> None:
    env.twin.faults.fail_next_bootstrap()
    env.twin.faults.fail_next_bootstrap()
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/boot2-{uuid.uuid4().hex[:8]}/a.input")
    described = env.finished(arn, timeout=120)
    assert described["status"] == "FAILED"
    assert described["error"] == "ClusterFailed" and "BOOTSTRAP_FAILURE" in described["cause"]
    ledger = env.ledger(run_id)
    assert [(c["attempt"], c["failure_class"]) for c in ledger["cluster_attempts"]] == [
        (1, "bootstrap_failure"),
        (2, "bootstrap_failure"),
    ]
    assert ledger["cluster"]["state_change_reason"]["code"] == "BOOTSTRAP_FAILURE"
    assert all(s["state"] == "CANCELLED" for s in ledger["steps"]), ledger["steps"]
    assert not [a for s in ledger["steps"] for a in s["attempts"] if a["started_at"]]
    entered = _entered(env, arn)
    # the second failure is not classified: no launch left (launch.attempt == launch.max_attempts)
    assert entered.count("CreateCluster") == 2 and entered.count("ClassifyClusterFailure") == 1
    assert entered.index("ClusterAttemptsLeft") < entered.index("TerminateAfterFailure")


def test_spot_shortage_falls_back_to_on_demand_and_the_run_succeeds(env: Deployed) -> None:
    env.twin.faults.spot_shortage_next()
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/spot-{uuid.uuid4().hex[:8]}/a.input")
    assert env.finished(arn, timeout=90)["status"] == "SUCCEEDED"
    fleets = {f["type"]: f for f in env.ledger(run_id)["cluster"]["fleets"]}
    assert fleets["TASK"]["target_spot"] == 4
    assert (fleets["TASK"]["provisioned_spot"], fleets["TASK"]["provisioned_on_demand"]) == (0, 4)


def test_a_transient_run_records_its_cost_and_links_and_notifies_success(env: Deployed) -> None:
    notifications = Notifications(env)
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/cost-{uuid.uuid4().hex[:8]}/a.input")
    assert env.finished(arn, timeout=90)["status"] == "SUCCEEDED"
    ledger = env.ledger(run_id)
    _assert_cost_is_every_instance_priced(env, ledger)
    assert set(ledger["links"]) == {"execution", "cluster", "logs"}
    assert ledger["links"]["cluster"].endswith(f"#/clusterDetails/{ledger['cluster_id']}")
    notification = notifications.of_run(run_id, "SUCCEEDED")
    assert notification["Subject"] == f"EMR Autopilot {TRANSIENT}: run SUCCEEDED ({run_id})"
    assert f"cost:      ${ledger['cost']['usd']:.4f}" in notification["Message"]
    assert ledger["links"]["cluster"] in notification["Message"]


def test_a_step_failing_on_a_spot_interruption_runs_again_and_the_ledger_has_both_attempts(env: Deployed) -> None:
    # Given sales-cluster retries spot interruptions (retry: {max_attempts: 2, when: [spot_interruption]}) and EC2
    # reclaims the task fleet's spot instances while the next step runs
    env.twin.faults.reclaim_spot_during_next_step()
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/reclaim-{uuid.uuid4().hex[:8]}/a.input")
    # Then the step is submitted again on the same cluster and the run succeeds
    assert env.finished(arn, timeout=120)["status"] == "SUCCEEDED"
    ledger = env.ledger(run_id)
    (step,) = ledger["steps"]
    first, second = step["attempts"]
    assert (first["attempt"], first["state"], first["failure_class"]) == (1, "FAILED", "spot_interruption")
    assert "Server.SpotInstanceTermination" in first["reason"]
    assert (second["attempt"], second["state"], second["failure_class"]) == (2, "COMPLETED", None)
    assert step["id"] == second["step_id"] != first["step_id"] and step["state"] == "COMPLETED"
    # EMR saw two submissions of the step; the reclaimed instances are spot, ended with INSTANCE_FAILURE, replaced
    emr = env.twin.client("emr")
    names = [s["Name"] for s in emr.list_steps(ClusterId=ledger["cluster_id"])["Steps"]]
    assert names == [f"{run_id}: sales-etl"] * 2
    instances = emr.list_instances(ClusterId=ledger["cluster_id"])["Instances"]
    reclaimed = [i for i in instances if i["Status"]["StateChangeReason"].get("Code") == "INSTANCE_FAILURE"]
    assert reclaimed and {i["Market"] for i in reclaimed} == {"SPOT"}
    task = {f["type"]: f for f in ledger["cluster"]["fleets"]}["TASK"]
    spot_launched = [i for i in instances if i.get("InstanceFleetId") and i["Market"] == "SPOT"]
    assert len(spot_launched) == len(reclaimed) + task["target_spot"]  # each reclaimed one replaced
    # The failure path ran once; the happy path's Lambda invocations grew by that one classification
    entered = _entered(env, arn)
    assert entered.count("RunStep") == 2 and entered.count("ClassifyStepFailure") == 1
    assert entered.count("NextAttempt") == 1 and "StepFailed" not in entered
    # The recorded cost covers every instance, the reclaimed ones and their replacements included
    _assert_cost_is_every_instance_priced(env, ledger)


def test_a_step_failure_of_a_class_not_retried_fails_the_run_after_one_attempt(env: Deployed) -> None:
    # sales-cluster retries spot interruptions only; the job's own failure is a step_failure
    env.twin.faults.fail_next_job("Job failed: injected bad input")
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/noretry-{uuid.uuid4().hex[:8]}/a.input")
    described = env.finished(arn, timeout=90)
    assert described["status"] == "FAILED" and described["error"] == "StepFailed"
    ledger = env.ledger(run_id)
    (step,) = ledger["steps"]
    (attempt,) = step["attempts"]
    assert (attempt["state"], attempt["failure_class"]) == ("FAILED", "step_failure")
    assert "injected bad input" in attempt["reason"] and ledger["failed_step"]["id"] == attempt["step_id"]
    entered = _entered(env, arn)
    assert entered.count("RunStep") == 1 and entered.count("ClassifyStepFailure") == 1
    assert "NextAttempt" not in entered and entered.index("StepFailed") < entered.index("TerminateAfterFailure")
    assert _cluster_state(env, ledger["cluster_id"]) == "TERMINATED"


def test_spot_interruptions_beyond_max_attempts_fail_the_run_with_every_attempt_recorded(env: Deployed) -> None:
    env.twin.faults.reclaim_spot_during_next_step(times=2)
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/reclaim2-{uuid.uuid4().hex[:8]}/a.input")
    described = env.finished(arn, timeout=120)
    assert described["status"] == "FAILED" and described["error"] == "StepFailed"
    ledger = env.ledger(run_id)
    (step,) = ledger["steps"]
    assert [(a["attempt"], a["state"], a["failure_class"]) for a in step["attempts"]] == [
        (1, "FAILED", "spot_interruption"),
        (2, "FAILED", "spot_interruption"),
    ]
    assert ledger["failed_step"]["id"] == step["attempts"][-1]["step_id"]
    entered = _entered(env, arn)
    # max_attempts 2: the second failure is not even classified (no attempt left)
    assert entered.count("RunStep") == 2 and entered.count("ClassifyStepFailure") == 1
    assert _cluster_state(env, ledger["cluster_id"]) == "TERMINATED"


def test_throttled_run_job_flow_is_retried_without_a_second_cluster(env: Deployed) -> None:
    env.twin.faults.fail_next("emr", "RunJobFlow", times=2, code="ThrottlingException")
    clusters_before = set(env.twin.emr_ec2.clusters)
    run_id, arn = _console_run(env, TRANSIENT, f"{TRANSIENT}/throttle-{uuid.uuid4().hex[:8]}/a.input")
    assert env.finished(arn, timeout=90)["status"] == "SUCCEEDED"
    failures = [
        e["taskFailedEventDetails"]["error"]
        for e in env.history(arn)
        if e["type"] == "TaskFailed" and e["taskFailedEventDetails"]["resource"] == "createCluster"
    ]
    assert failures == ["EMR.AmazonElasticMapReduceException"] * 2  # ThrottlingException is not in EMR's model
    created = [c for c in env.twin.emr_ec2.clusters if c not in clusters_before]
    assert len(created) == 1


def _default_emr_roles(env: Deployed) -> None:
    """EMR's default roles, as `aws emr create-default-roles` makes them (once per twin)."""
    iam = env.twin.client("iam")
    if any(r["RoleName"] == "EMR_DefaultRole" for r in iam.list_roles()["Roles"]):
        return
    for role, service in (("EMR_DefaultRole", "elasticmapreduce"), ("EMR_EC2_DefaultRole", "ec2")):
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": f"{service}.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.create_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    iam.add_role_to_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole", RoleName="EMR_EC2_DefaultRole")


@pytest.fixture
def analytics_cluster(env: Deployed) -> Iterator[str]:
    """A long-running cluster tagged like the sales-adhoc pipeline's target (not made by the app)."""
    _default_emr_roles(env)
    cluster_id = env.launch_cluster_by_hand("analytics", {"team-cluster": "analytics"})
    env.wait_for(lambda: _cluster_state(env, cluster_id) == "WAITING", what="the analytics cluster")
    yield cluster_id
    env.twin.client("emr").terminate_job_flows(JobFlowIds=[cluster_id])
    env.wait_for(lambda: _cluster_state(env, cluster_id) == "TERMINATED", what="teardown")


def test_long_running_cluster_gets_the_steps_and_keeps_running(env: Deployed, analytics_cluster: str) -> None:
    run_id, arn = _console_run(env, EXISTING, f"{EXISTING}/{uuid.uuid4().hex[:8]}/a.input")
    assert env.finished(arn, timeout=90)["status"] == "SUCCEEDED"
    ledger = env.ledger(run_id)
    assert ledger["cluster_id"] == analytics_cluster and ledger["state"] == "SUCCEEDED"
    assert [s["state"] for s in ledger["steps"]] == ["COMPLETED"]
    assert ledger["instance_hours_estimate"] is None
    assert "cost" in ledger and ledger["cost"] is None  # a shared cluster's cost is not one run's: null, explicitly
    assert set(ledger["links"]) == {"execution", "cluster", "logs"}
    assert _cluster_state(env, analytics_cluster) == "WAITING"
    assert "CreateCluster" not in _entered(env, arn) and "TerminateCluster" not in _entered(env, arn)


@pytest.mark.iam_denials
def test_another_teams_cluster_beside_the_target_is_skipped_not_fatal(env: Deployed, analytics_cluster: str) -> None:
    # Given another team's cluster running beside the tagged target: prepare may not describe it (AWS refuses)
    emr = env.twin.client("emr")
    other: str = emr.run_job_flow(
        Name="ml-team",
        ReleaseLabel="emr-7.5.0",
        Instances={
            "InstanceGroups": [
                {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1}
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        ServiceRole="EMR_DefaultRole",
        JobFlowRole="EMR_EC2_DefaultRole",
        Tags=[{"Key": "team-cluster", "Value": "ml"}],
    )["JobFlowId"]
    try:
        env.wait_for(lambda: _cluster_state(env, other) == "WAITING", what="the other cluster")
        denials_before = len(env.twin.iam.stats.denials)
        # When a run resolves its target by tag, Then the refusal means "not ours" and the run succeeds
        run_id, arn = _console_run(env, EXISTING, f"{EXISTING}/{uuid.uuid4().hex[:8]}/o.input")
        assert env.finished(arn, timeout=90)["status"] == "SUCCEEDED"
        assert env.ledger(run_id)["cluster_id"] == analytics_cluster
        refused = env.twin.iam.stats.denials[denials_before:]
        assert [(d.action, d.resource.rsplit("/", 1)[-1]) for d in refused] == [
            ("elasticmapreduce:DescribeCluster", other)
        ]
    finally:
        emr.terminate_job_flows(JobFlowIds=[other])
        env.wait_for(lambda: _cluster_state(env, other) == "TERMINATED", what="teardown")


def test_failed_step_on_a_long_running_cluster_leaves_the_cluster_running(
    env: Deployed, analytics_cluster: str
) -> None:
    env.twin.faults.fail_next_job("Job failed: bad input")
    run_id, arn = _console_run(env, EXISTING, f"{EXISTING}/{uuid.uuid4().hex[:8]}/b.input")
    described = env.finished(arn, timeout=90)
    assert described["status"] == "FAILED" and described["error"] == "StepFailed"
    assert env.ledger(run_id)["state"] == "FAILED"
    assert _cluster_state(env, analytics_cluster) == "WAITING"


def test_no_long_running_cluster_fails_the_run_with_a_clear_reason(env: Deployed) -> None:
    run_id, arn = _console_run(env, EXISTING, f"{EXISTING}/{uuid.uuid4().hex[:8]}/c.input")
    described = env.finished(arn, timeout=60)
    assert described["status"] == "FAILED"
    assert described["error"] == "ClusterNotAvailable"
    assert "no cluster tagged team-cluster=analytics" in described["cause"]
    assert env.ledger(run_id)["state"] == "FAILED"
