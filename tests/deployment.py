"""The synthesized app deployed on one twin per test package (tests/e2e, tests/twin/app).

Its conftests import `deployed` and `env` so that each package gets its own deployment, torn down (moto restored)
before other suites run in the same process; tests isolate by object keys and run ids."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from moto.core.base_backend import BackendDict
from moto.s3.models import S3Backend

from autopilot_cli.ledger import RunRecord, read_runs
from autopilot_common.ledger import LEDGER_PREFIX
from config.ledger_schema import ledger_schema
from local.deploy import DeployReport
from local.spark_runner import SparkRunner
from local.twin import Twin
from tests.twin.twin_helpers import wait_for


@dataclass
class Deployed:
    """The twin with the app deployed, plus shortcuts the scenarios share."""

    twin: Twin
    report: DeployReport
    spark_runner: SparkRunner

    @property
    def landing(self) -> str:
        return str(self.report.outputs["LandingBucket"])

    @property
    def outputs(self) -> str:
        return str(self.report.outputs["OutputsBucket"])

    @property
    def state_machine(self) -> str:
        return self.state_machine_of("sales-daily")

    def state_machine_of(self, pipeline: str) -> str:
        return str(self.report.outputs[f"StateMachine{pipeline.replace('-', '')}"])

    @property
    def s3(self) -> Any:
        return self.twin.client("s3")

    @property
    def sfn(self) -> Any:
        return self.twin.client("stepfunctions")

    def runs(self) -> list[RunRecord]:
        return read_runs(self.s3, self.outputs)

    def executions(self, pipeline: str = "sales-daily") -> list[dict[str, Any]]:
        pages = self.sfn.get_paginator("list_executions").paginate(stateMachineArn=self.state_machine_of(pipeline))
        return [e for page in pages for e in page["executions"]]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
        return wait_for(predicate, timeout, what, interval=0.2)

    def finished(self, execution_arn: str, timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            described: dict[str, Any] = self.sfn.describe_execution(executionArn=execution_arn)
            return described if described["status"] != "RUNNING" else None

        result: dict[str, Any] = self.wait_for(done, timeout, f"execution {execution_arn}")
        self.twin.wait_idle(timeout=timeout)
        return result

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        pages = self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
        return [e for page in pages for e in page["events"]]

    def ledger(self, run_id: str) -> dict[str, Any]:
        (record,) = [r for r in self.runs() if r.run_id == run_id]
        return record.raw

    def ledger_when(self, run_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        """The run's ledger entry once it is in `state` (a guardrail amends it after the execution ended)."""

        def reached() -> dict[str, Any] | None:
            found = [r.raw for r in self.runs() if r.run_id == run_id]
            return found[0] if found and found[0]["state"] == state else None

        entry: dict[str, Any] = self.wait_for(reached, timeout, f"ledger {state} for {run_id}")
        return entry

    def start_console_run(self, name: str, body: Any) -> str:
        machine = self.state_machine_of(
            body.get("pipeline", "sales-daily") if isinstance(body, dict) else "sales-daily"
        )
        arn: str = self.sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(body))["executionArn"]
        return arn

    def clusters_left_running(self) -> list[str]:
        """Clusters a run created that are not terminated (long-running clusters a test made are excluded)."""
        model = self.twin.emr_ec2
        return [cid for cid in model.active_clusters() if "autopilot:run-id" in model.clusters[cid].tags]

    def running_cluster(self, run_id: str, timeout: float = 30) -> str:
        """The id of the run's cluster, once it is RUNNING or WAITING."""

        def found() -> str | None:
            model = self.twin.emr_ec2
            for cluster_id in model.active_clusters():
                cluster = model.clusters[cluster_id]
                if cluster.tags.get("autopilot:run-id") == run_id and cluster.state in ("RUNNING", "WAITING"):
                    return cluster_id
            return None

        cluster_id: str = self.wait_for(found, timeout, "the run's cluster to be running")
        return cluster_id

    def launch_cluster_by_hand(self, name: str, tags: dict[str, str], principal: str | None = None) -> str:
        """A long-running Spark cluster (one primary and two core m5.xlarge, EMR's default roles) launched outside
        the app by `principal` (the twin's operator without one); returns its id."""
        cluster_id: str = self.twin.client("emr", principal=principal).run_job_flow(
            Name=name,
            ReleaseLabel="emr-7.5.0",
            Applications=[{"Name": "Spark"}],
            Instances={
                "InstanceGroups": [
                    {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                    {"Name": "core", "InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2},
                ],
                "KeepJobFlowAliveWhenNoSteps": True,
            },
            ServiceRole="EMR_DefaultRole",
            JobFlowRole="EMR_EC2_DefaultRole",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )["JobFlowId"]
        return cluster_id

    def scaling_alarms(self, cluster_id: str = "") -> list[str]:
        """Scaling alarms of this deployment (of one cluster, given its id): `<deployment>-scaling-...`."""
        prefix = f"{self.report.stacks[0]}-scaling-"
        pages = self.twin.client("cloudwatch").get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix)
        names = [a["AlarmName"] for page in pages for a in page["MetricAlarms"]]
        return [n for n in names if not cluster_id or f"-{cluster_id}-" in n]


IAM_SUMMARY: dict[str, Any] = {}
"""What the twin's IAM did over the session's deployments (tests/conftest.py prints it)."""
LEDGER_WRITES: list[tuple[str, bytes]] = []
"""Every ledger entry any writer (workflow, admission, finalize, guardrails, scaler, router) put, as S3 got it."""
LEDGER_SCHEMA = jsonschema.Draft202012Validator(ledger_schema())


def ledger_problems(writes: list[tuple[str, bytes]]) -> list[str]:
    """Each way an entry breaks the published ledger schema (config/ledger.schema.json), by key."""
    return [
        f"{key}: {'/'.join(map(str, error.absolute_path)) or '(entry)'}: {error.message}"
        for key, body in writes
        for error in LEDGER_SCHEMA.iter_errors(json.loads(body))
    ]


def _recording_ledger_writes(patch: pytest.MonkeyPatch) -> None:
    """Record each PutObject under `_runs/` as S3 (moto's backend) receives it, whoever wrote it."""
    original = S3Backend.put_object

    def put_object(self: S3Backend, bucket_name: str, key_name: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
        if key_name.startswith(LEDGER_PREFIX):
            LEDGER_WRITES.append((key_name, bytes(value)))
        return original(self, bucket_name, key_name, value, *args, **kwargs)

    patch.setattr(S3Backend, "put_object", put_object)


@pytest.fixture(scope="package")  # torn down (moto restored) before other suites run in the same process
def deployed(cloud_assembly: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    patch = pytest.MonkeyPatch()
    _recording_ledger_writes(patch)
    workdir = tmp_path_factory.mktemp("twin")
    twin = Twin(workdir=workdir, spark=False, time_scale=0.05, retry_delay_seconds=0.5).start()
    assert twin.iam.enabled, "every e2e deployment runs with IAM enforcement on"
    report = twin.deploy(cloud_assembly)
    runner = SparkRunner(twin.client("s3"), workdir=workdir / "spark", s3_for_role=twin._role_s3)
    yield Deployed(twin=twin, report=report, spark_runner=runner)
    IAM_SUMMARY.update(twin.iam.stats.snapshot())
    twin.stop()
    patch.undo()
    BackendDict.reset()  # moto's state outlives the twin: a later twin in this process must not see the app


@pytest.fixture
def env(deployed: Deployed, request: pytest.FixtureRequest) -> Iterator[Deployed]:
    """Per test: no pending faults, instant job runs unless the test asks for Spark, and nothing in flight after;
    no call the IAM table does not know, no IAM refusal unless the test is marked `iam_denials`, and every ledger
    entry written valid against the published schema (config/ledger.schema.json)."""
    deployed.twin.faults.clear()
    deployed.twin.emr_serverless.runner = None
    deployed.twin.emr_ec2.runner = None
    deployed.twin.emr_containers.runner = None
    stats = deployed.twin.iam.stats
    denials_before, unmapped_before = len(stats.denials), len(stats.unmapped)
    writes_before = len(LEDGER_WRITES)
    yield deployed
    deployed.twin.wait_idle(timeout=120)
    problems = ledger_problems(LEDGER_WRITES[writes_before:])
    assert not problems, "ledger entries that break config/ledger.schema.json:\n" + "\n".join(problems)
    assert stats.unmapped[unmapped_before:] == [], "calls the twin's IAM table does not know (add rows)"
    if request.node.get_closest_marker("iam_denials") is None:
        refused = [d.message for d in stats.denials[denials_before:]]
        assert not refused, "AWS would refuse these calls:\n" + "\n".join(refused)
    assert not deployed.twin.emr_serverless.running(), "a job run was left running"
    assert not deployed.twin.emr_containers.running(), "an EMR on EKS job run was left running"
    assert not deployed.clusters_left_running(), "a run left its cluster running"
    alarms = [a for a in deployed.scaling_alarms() if not any(c in a for c in deployed.twin.emr_ec2.active_clusters())]
    assert not alarms, f"scaling alarms outlived their cluster: {alarms}"


class Notifications:
    """A queue subscribed to the deployment's notifications topic (as an operator's subscriber would be)."""

    def __init__(self, env: Deployed) -> None:
        self.sqs, sns = env.twin.client("sqs"), env.twin.client("sns")
        self.queue_url = self.sqs.create_queue(QueueName=f"notify-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        sns.subscribe(
            TopicArn=env.report.outputs["NotificationTopic"],
            Protocol="sqs",
            Endpoint=attributes["Attributes"]["QueueArn"],
        )
        self.seen: list[dict[str, Any]] = []

    def received(self) -> list[dict[str, Any]]:
        """Every SNS envelope received so far (Subject, Message, MessageAttributes)."""
        while messages := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            self.seen += [json.loads(m["Body"]) for m in messages]
            for m in messages:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return self.seen

    def of_run(self, run_id: str, state: str) -> dict[str, Any]:
        """The one notification of `run_id` with message attribute `state`."""
        (found,) = [
            n
            for n in self.received()
            if n["MessageAttributes"]["state"]["Value"] == state and f"run:       {run_id}\n" in n["Message"]
        ]
        return found
