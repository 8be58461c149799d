"""Guardrail domain (`lambdas/guardrail/`): settings, CloudTrail reactions, the CANCELLED race,
cleanup idempotency and the sweeper's release of leaked run slots.

S3, DynamoDB and SNS are moto; EMR and Step Functions are small fakes (moto 5.2.5 has no auto-termination
policy API, no CancelSteps, and runs no executions), so each test states exactly the cluster and
execution it starts from. The twin-backed end-to-end versions are in tests/e2e/test_guardrails.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from autopilot_common.admission import AcquireRequest, Caps, Limit, Reservation, acquire, counters, runs
from autopilot_common.clients import Clients
from autopilot_common.pipeline_settings import PipelineSettingsError, settings_parameter_name
from autopilot_common.pricing import shipped_prices
from cloudtrail_reactions import CANCELLATION_KEY_PREFIX, react_to_cloudtrail
from execution_cleanup import clean_up_execution
from guardrail_settings import GuardrailEventError, GuardrailSettings, PipelineRef, UnmanagedPolicy
from orphan_sweeper import sweep
from run_teardown import RunRef
from tests.conftest import load_event
from tests.unit.conftest import create_table, put_memory_alarm

ACCOUNT, REGION = "123456789012", "us-east-1"
DEPLOYMENT, BUCKET, CLAIMS, ADMISSION = "autopilot-test", "outputs-bkt", "claims", "admission"
SM_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:autopilot-test-sales-cluster"
APP_ROLE = f"arn:aws:iam::{ACCOUNT}:role/autopilot-test-sfn"
ALICE = f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/alice"
STARTED = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
NOW = STARTED + timedelta(minutes=20)
PIPELINE = PipelineRef(name="sales-cluster", state_machine_arn=SM_ARN, runtime="emr-ec2")


def _execution_arn(run_id: str) -> str:
    return SM_ARN.replace(":stateMachine:", ":execution:") + f":{run_id}"


def _api_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fakes


@dataclass
class FakeCluster:
    id: str
    name: str
    tags: dict[str, str]
    state: str = "RUNNING"
    auto_termination: dict[str, Any] | None = None
    steps: dict[str, str] = field(default_factory=dict)  # step id -> name
    instances: list[dict[str, Any]] = field(default_factory=list)  # ListInstances' Instances


class _Pages:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self._pages = pages

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        return self._pages


class FakeEmr:
    """The EMR calls the guardrail makes, over an in-memory set of clusters; records every mutation."""

    def __init__(self, *clusters: FakeCluster) -> None:
        self.clusters = {c.id: c for c in clusters}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get_paginator(self, name: str) -> Any:
        if name in {"list_instances", "list_instance_fleets"}:  # an aborted run's cluster, priced
            emr = self

            class ByCluster:
                def paginate(self, ClusterId: str, **_: Any) -> list[dict[str, Any]]:  # noqa: N803
                    if name == "list_instance_fleets":
                        return [{"InstanceFleets": []}]
                    return [{"Instances": emr.clusters[ClusterId].instances}]

            return ByCluster()
        assert name == "list_clusters", name
        active = [c for c in self.clusters.values() if c.state in {"STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"}]
        return _Pages([{"Clusters": [{"Id": c.id, "Name": c.name} for c in active]}])

    def describe_cluster(self, ClusterId: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        if ClusterId not in self.clusters:
            raise _api_error("InvalidRequestException", "DescribeCluster")
        c = self.clusters[ClusterId]
        timeline = {"CreationDateTime": STARTED}
        tags = [{"Key": k, "Value": v} for k, v in c.tags.items()]
        status = {"State": c.state, "Timeline": timeline}
        return {"Cluster": {"Id": c.id, "Name": c.name, "Tags": tags, "Status": status}}

    def describe_step(self, ClusterId: str, StepId: str) -> dict[str, Any]:  # noqa: N803
        return {"Step": {"Id": StepId, "Name": self.clusters[ClusterId].steps[StepId]}}

    def terminate_job_flows(self, JobFlowIds: list[str]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("TerminateJobFlows", {"JobFlowIds": JobFlowIds}))
        for cluster_id in JobFlowIds:
            self.clusters[cluster_id].state = "TERMINATING"
        return {}

    def get_auto_termination_policy(self, ClusterId: str) -> dict[str, Any]:  # noqa: N803
        policy = self.clusters[ClusterId].auto_termination
        return {"AutoTerminationPolicy": policy} if policy else {}

    def put_auto_termination_policy(self, ClusterId: str, AutoTerminationPolicy: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("PutAutoTerminationPolicy", {"ClusterId": ClusterId, **AutoTerminationPolicy}))
        self.clusters[ClusterId].auto_termination = AutoTerminationPolicy
        return {}


@dataclass
class FakeStepFunctions:
    """DescribeExecution over known executions (others do not exist); task answers are recorded."""

    executions: dict[str, str] = field(default_factory=dict)  # execution ARN -> status
    answered: list[str] = field(default_factory=list)
    # execution ARN -> the error and cause StopExecution was given
    stop_reasons: dict[str, dict[str, str]] = field(default_factory=dict)

    def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
        if executionArn not in self.executions:
            raise _api_error("ExecutionDoesNotExist", "DescribeExecution")
        described = {"executionArn": executionArn, "status": self.executions[executionArn], "startDate": STARTED}
        return described | self.stop_reasons.get(executionArn, {})

    def send_task_success(self, taskToken: str, output: str) -> dict[str, Any]:  # noqa: N803
        self.answered.append(taskToken)
        return {}

    def send_task_failure(self, taskToken: str, error: str, cause: str) -> dict[str, Any]:  # noqa: N803
        self.answered.append(taskToken)
        return {}


class Unused:
    """A client a scenario must not touch."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call {name}")


# --------------------------------------------------------------------------- fixtures


@dataclass
class World:
    clients: Clients
    emr: FakeEmr
    sfn: FakeStepFunctions
    messages: list[dict[str, Any]]
    settings: GuardrailSettings

    def ledger(self, run_id: str) -> dict[str, Any]:
        key = RunRef(PIPELINE, run_id, _execution_arn(run_id), STARTED).ledger_key
        entry: dict[str, Any] = json.loads(self.clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return entry

    def put_ledger(self, run_id: str, **fields: Any) -> None:
        key = RunRef(PIPELINE, run_id, _execution_arn(run_id), STARTED).ledger_key
        entry = {"run_id": run_id, "pipeline": PIPELINE.name, "started_at": "2026-11-24T09:30:00.000Z", **fields}
        self.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(entry).encode())

    def published(self) -> list[str]:
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.get_queue_url(QueueName="notes")["QueueUrl"]
        out = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in batch:
                out.append(json.loads(message["Body"])["Subject"])
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return out


@pytest.fixture
def world(moto: str) -> World:
    s3, ddb, sns, sqs = (boto3.client(n, region_name=REGION) for n in ("s3", "dynamodb", "sns", "sqs"))
    s3.create_bucket(Bucket=BUCKET)
    create_table(ddb, CLAIMS, "id")
    create_table(ddb, ADMISSION, "pk", "sk")
    topic = sns.create_topic(Name="notes")["TopicArn"]
    queue = sqs.create_queue(QueueName="notes")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    emr, sfn = FakeEmr(), FakeStepFunctions()
    settings = GuardrailSettings(
        deployment=DEPLOYMENT,
        outputs_bucket=BUCKET,
        topic_arn=topic,
        claims_table=CLAIMS,
        pipelines={PIPELINE.name: PIPELINE},
        app_role_arns=frozenset({APP_ROLE}),
        admission_table=ADMISSION,
        caps=Caps(pipelines={PIPELINE.name: Limit(runs=1)}),
    )
    clients = Clients(
        emr=emr,
        emr_serverless=Unused(),
        emr_containers=Unused(),
        s3=s3,
        sns=sns,
        sfn=sfn,
        cloudwatch=boto3.client("cloudwatch", region_name=REGION),
        dynamodb=ddb,
    )
    return World(clients, emr, sfn, [], settings)


def _run_cluster(world: World, run_id: str, cluster_id: str = "j-RUN0000001") -> FakeCluster:
    cluster = FakeCluster(
        cluster_id,
        f"autopilot {PIPELINE.name} {run_id}",
        {
            "autopilot:deployment": DEPLOYMENT,
            "autopilot:pipeline": PIPELINE.name,
            "autopilot:run-id": run_id,
            "autopilot:execution": _execution_arn(run_id),
        },
    )
    world.emr.clusters[cluster_id] = cluster
    world.sfn.executions[_execution_arn(run_id)] = "RUNNING"
    return cluster


TRAIL_SAMPLES = {
    "RunJobFlow": "emr_run_job_flow_cloudtrail.json",
    "TerminateJobFlows": "emr_terminate_job_flows_cloudtrail.json",
    "StopExecution": "sfn_stop_execution_cloudtrail.json",
}


def _trail(name: str, who: str, params: dict[str, Any], response: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sample CloudTrail record of the call `name` (its EventBridge event's detail), made by `who` (an
    assumed-role session ARN) with `params`, answered with `response`."""
    record = load_event(TRAIL_SAMPLES[name])["detail"]
    record["userIdentity"]["arn"] = who
    record["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"] = who.replace(":sts:", ":iam:").rsplit("/", 1)[0]
    record |= {"eventTime": "2026-11-24T09:45:00Z", "requestParameters": params, "responseElements": response}
    return record


def _ended(run_id: str, status: str, **extra: Any) -> dict[str, Any]:
    """The sample "Step Functions Execution Status Change" detail for run `run_id` ending in `status` after 12
    minutes (no error or cause unless given in `extra`)."""
    detail = load_event("sfn_execution_status_change.json")["detail"]
    return detail | {
        "executionArn": _execution_arn(run_id),
        "stateMachineArn": SM_ARN,
        "name": run_id,
        "status": status,
        "startDate": int(STARTED.timestamp() * 1000),
        "stopDate": int((STARTED + timedelta(minutes=12)).timestamp() * 1000),
        "error": None,
        "cause": None,
        **extra,
    }


# --------------------------------------------------------------------------- settings


MACHINE_PREFIX = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{DEPLOYMENT}-"


def _env(**overrides: str) -> dict[str, str]:
    env = {
        "DEPLOYMENT": DEPLOYMENT,
        "OUTPUTS_BUCKET": BUCKET,
        "TOPIC_ARN": f"arn:aws:sns:{REGION}:{ACCOUNT}:notes",
        "CLAIMS_TABLE": CLAIMS,
        "STATE_MACHINE_ARN_PREFIX": MACHINE_PREFIX,
        "APP_ROLE_ARNS": json.dumps([APP_ROLE]),
        "UNMANAGED_CLUSTERS": json.dumps({"idle_timeout_minutes": 30, "exempt_tag_key": "keep"}),
        "SERVERLESS_IDLE_STOP_MINUTES": "45",
    }
    return env | overrides


def _put_settings(pipeline: str, value: str) -> None:
    """A pipeline's settings parameter, as its stack deploys it (stacks/pipeline_settings.py)."""
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=settings_parameter_name(DEPLOYMENT, pipeline), Value=value, Type="String", Overwrite=True
    )


def test_settings_read_every_variable_and_find_pipelines_by_machine_and_by_longest_run_id_prefix(moto: str) -> None:
    _put_settings("sales", json.dumps({"guardrail": {"runtime": "emr-serverless", "application_id": "00f1"}}))
    _put_settings("sales-cluster", json.dumps({"guardrail": {"runtime": "emr-ec2"}, "caps": {"runs": 1}}))
    settings = GuardrailSettings.from_env(_env())
    assert settings.unmanaged == UnmanagedPolicy(idle_timeout_minutes=30, exempt_tag_key="keep")
    assert settings.serverless_idle_stop_minutes == 45 and settings.admission_table is None
    assert settings.app_role_arns == frozenset({APP_ROLE})
    cluster = settings.pipelines["sales-cluster"]
    assert cluster == PipelineRef("sales-cluster", f"{MACHINE_PREFIX}sales-cluster", "emr-ec2")
    assert settings.pipeline_of_state_machine(f"{MACHINE_PREFIX}sales-cluster") == cluster
    assert settings.pipeline_of_state_machine(f"{MACHINE_PREFIX}other") is None  # no parameter: not deployed
    assert settings.pipeline_of_state_machine(SM_ARN.replace(DEPLOYMENT, "elsewhere")) is None
    # `sales-cluster-<hex>` starts with both `sales-` and `sales-cluster-`: the longer name wins
    assert settings.pipeline_of_run_id("sales-cluster-0123456789abcdef01234567") == cluster
    assert settings.pipeline_of_run_id("sales-20240601-3f2a9c1e").name == "sales"  # type: ignore[union-attr]
    assert settings.pipeline_of_run_id("other-0123") is None
    assert settings.pipeline_of_run_id("Not a run: id-1") is None  # never asks SSM about an impossible name
    # The sweeper lists every deployed pipeline, and every pipeline's caps in the same listing
    assert sorted(settings.pipelines) == ["sales", "sales-cluster"]
    assert settings.caps.listed().pipelines == {"sales-cluster": Limit(runs=1)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DEPLOYMENT": " "}, "DEPLOYMENT is not set; expected the deployment name"),
        ({"CLAIMS_TABLE": ""}, "CLAIMS_TABLE is not set"),
        ({"STATE_MACHINE_ARN_PREFIX": ""}, "STATE_MACHINE_ARN_PREFIX is not set"),
        ({"APP_ROLE_ARNS": json.dumps({"a": 1})}, "APP_ROLE_ARNS is a dict; expected a list"),
        ({"SERVERLESS_IDLE_STOP_MINUTES": "soon"}, "SERVERLESS_IDLE_STOP_MINUTES is 'soon'; expected minutes"),
        ({"PIPELINE_SETTINGS_MAX_AGE_SECONDS": "0"}, "PIPELINE_SETTINGS_MAX_AGE_SECONDS is '0'; expected seconds"),
        ({"ADMISSION_CAPS": json.dumps({"pipelines": {"p": {"runs": 1}}})}, "ADMISSION_CAPS lists pipelines"),
    ],
)
def test_a_bad_environment_fails_the_cold_start_naming_the_variable(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        GuardrailSettings.from_env(_env(**overrides))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{nope", "sales-cluster is not valid JSON; expected an object of sections"),
        ("[]", "sales-cluster is a list; expected an object"),
        (json.dumps({"guardrail": {"runtime": "emr-ec2", "color": 1}}), "sales-cluster: section 'guardrail': .*color"),
        (json.dumps({"guardrail": "emr-ec2"}), "sales-cluster: section 'guardrail': got str; expected an object"),
    ],
)
def test_a_bad_pipeline_parameter_fails_naming_the_parameter(moto: str, value: str, message: str) -> None:
    _put_settings("sales-cluster", value)
    settings = GuardrailSettings.from_env(_env())
    with pytest.raises(PipelineSettingsError, match=f"/{DEPLOYMENT}/pipelines/{message}"):
        settings.pipeline_of_state_machine(f"{MACHINE_PREFIX}sales-cluster")


def test_an_execution_of_a_pipeline_no_longer_deployed_is_left_alone(world: World) -> None:
    """No parameter (its stack was deleted, or it belongs to no pipeline): the cleanup does nothing."""
    _run_cluster(world, "sales-cluster-0123456789abcdef01234567")
    settings = replace(world.settings, pipelines={}, state_machine_prefix=MACHINE_PREFIX)
    detail = _ended(
        "sales-cluster-0123456789abcdef01234567", "ABORTED", stateMachineArn=f"{MACHINE_PREFIX}sales-cluster"
    )
    assert clean_up_execution(detail, settings, world.clients, NOW) is None
    assert world.emr.calls == []  # not even a look at its cluster


# --------------------------------------------------------------------------- CloudTrail: RunJobFlow


def _launched(world: World, tags: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    world.emr.clusters["j-HAND0000001"] = FakeCluster("j-HAND0000001", "adhoc", dict(tags or {}))
    request = {"name": "adhoc", "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()], **params}
    return _trail("RunJobFlow", ALICE, request, {"jobFlowId": "j-HAND0000001"})


def test_a_cluster_launched_by_hand_without_a_policy_gets_one_and_the_caller_is_named(world: World) -> None:
    reaction = react_to_cloudtrail(_launched(world), world.settings, world.clients, NOW)
    assert reaction.action == "auto-termination applied" and reaction.principal == ALICE
    assert world.emr.calls == [("PutAutoTerminationPolicy", {"ClusterId": "j-HAND0000001", "IdleTimeout": 3600})]
    assert world.published() == ["EMR Autopilot: idle auto-termination applied to j-HAND0000001"]
    # A second delivery of the same record finds the policy in place
    redelivered = _trail("RunJobFlow", ALICE, {"name": "adhoc"}, {"jobFlowId": "j-HAND0000001"})
    again = react_to_cloudtrail(redelivered, world.settings, world.clients, NOW)
    assert again.action == "ignored: already has an auto-termination policy"
    assert len(world.emr.calls) == 1


@pytest.mark.parametrize(
    ("tags", "params", "expected"),
    [
        ({"autopilot:deployment": DEPLOYMENT}, {}, "ignored: a cluster of this app"),
        ({"autopilot:long-running": "true"}, {}, "ignored: tagged autopilot:long-running (long-running by intent)"),
        ({}, {"autoTerminationPolicy": {"idleTimeout": 600}}, "ignored: launched with an auto-termination policy"),
        ({}, {"instances": {"keepJobFlowAliveWhenNoSteps": False}}, "ignored: terminates itself after its steps"),
    ],
)
def test_clusters_that_end_on_their_own_or_are_long_running_by_intent_are_left_alone(
    world: World, tags: dict[str, str], params: dict[str, Any], expected: str
) -> None:
    reaction = react_to_cloudtrail(_launched(world, tags, **params), world.settings, world.clients, NOW)
    assert reaction.action == expected
    assert world.emr.calls == [] and world.published() == []


def test_app_calls_failed_calls_and_a_disabled_policy_are_ignored(world: World) -> None:
    own = _launched(world)
    own["userIdentity"]["arn"] = APP_ROLE.replace(":iam:", ":sts:").replace(":role/", ":assumed-role/") + "/x"
    own["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"] = APP_ROLE
    assert react_to_cloudtrail(own, world.settings, world.clients, NOW).action == "ignored: made by this app"
    failed = _launched(world) | {"errorCode": "ValidationException"}
    assert react_to_cloudtrail(failed, world.settings, world.clients, NOW).action.startswith("ignored: the call failed")
    off = GuardrailSettings(**{**world.settings.__dict__, "unmanaged": UnmanagedPolicy(enforce_auto_termination=False)})
    disabled = react_to_cloudtrail(_launched(world), off, world.clients, NOW)
    assert disabled.action.endswith("enforce_auto_termination is off")
    assert world.emr.calls == []


def test_a_record_without_the_new_cluster_id_or_identity_is_one_clear_error(world: World) -> None:
    with pytest.raises(GuardrailEventError, match="detail.responseElements.jobFlowId"):
        react_to_cloudtrail(_trail("RunJobFlow", ALICE, {}, {}), world.settings, world.clients, NOW)
    with pytest.raises(GuardrailEventError, match="detail.eventName / detail.userIdentity"):
        react_to_cloudtrail({"eventName": "RunJobFlow"}, world.settings, world.clients, NOW)


# --------------------------------------------------------------------------- the CANCELLED race


def test_terminated_by_someone_before_the_run_ends_the_cleanup_writes_cancelled(world: World) -> None:
    # Given a running run whose cluster alice terminates
    run_id = "sales-cluster-aaaaaaaaaaaaaaaaaaaaaaaa"
    _run_cluster(world, run_id)
    world.put_ledger(run_id, state="STARTED")
    terminate = _trail("TerminateJobFlows", ALICE, {"jobFlowIds": ["j-RUN0000001"]})
    # When CloudTrail reports it while the workflow is still running
    reaction = react_to_cloudtrail(terminate, world.settings, world.clients, NOW)
    assert reaction.action == "run cancelled" and reaction.run_ids == [run_id]
    assert world.ledger(run_id)["state"] == "STARTED"  # not amended: the run has not ended yet
    # And then the workflow fails (its step died with the cluster) and writes FAILED itself
    world.put_ledger(run_id, state="FAILED", error="StepFailed", ended_at="2026-11-24T09:42:00.000Z")
    world.sfn.executions[_execution_arn(run_id)] = "FAILED"
    result = clean_up_execution(_ended(run_id, "FAILED"), world.settings, world.clients, NOW)
    # Then the ledger says CANCELLED by alice, keeping what it was before
    entry = world.ledger(run_id)
    assert result is not None and result.ledger_state == "CANCELLED"
    assert (entry["state"], entry["previous_state"], entry["cancelled_by"]) == ("CANCELLED", "FAILED", ALICE)
    assert entry["cancel_action"] == "TerminateJobFlows on j-RUN0000001"
    assert entry["ended_at"] == "2026-11-24T09:42:00.000Z"


def test_terminated_by_someone_after_the_run_ended_the_reaction_amends_the_ledger(world: World) -> None:
    # Given a run whose workflow already wrote FAILED and whose cleanup already ran
    run_id = "sales-cluster-bbbbbbbbbbbbbbbbbbbbbbbb"
    _run_cluster(world, run_id)
    world.sfn.executions[_execution_arn(run_id)] = "FAILED"
    world.put_ledger(run_id, state="FAILED", error="StepFailed")
    first = clean_up_execution(_ended(run_id, "FAILED"), world.settings, world.clients, NOW)
    assert first is not None and first.ledger_state == "FAILED"
    # When alice's TerminateJobFlows reaches the guardrail late (CloudTrail delivers in minutes)
    react_to_cloudtrail(
        _trail("TerminateJobFlows", ALICE, {"jobFlowIds": ["j-RUN0000001"]}), world.settings, world.clients, NOW
    )
    # Then the ledger is amended to CANCELLED all the same
    entry = world.ledger(run_id)
    assert (entry["state"], entry["previous_state"], entry["cancelled_by"]) == ("CANCELLED", "FAILED", ALICE)
    stored = world.clients.dynamodb.get_item(TableName=CLAIMS, Key={"id": {"S": CANCELLATION_KEY_PREFIX + run_id}})
    assert stored["Item"]["by"]["S"] == ALICE


def test_terminating_clusters_of_no_run_of_this_app_is_ignored(world: World) -> None:
    world.emr.clusters["j-OTHER000001"] = FakeCluster("j-OTHER000001", "theirs", {"team": "bi"})
    event = _trail("TerminateJobFlows", ALICE, {"jobFlowIds": ["j-OTHER000001", "j-GONE00000001"]})
    reaction = react_to_cloudtrail(event, world.settings, world.clients, NOW)
    assert reaction.action == "ignored: no run of this app affected" and reaction.run_ids == []
    assert world.published() == []


# --------------------------------------------------------------------------- cleanup


def test_cleanup_of_an_abort_terminates_the_cluster_once_and_notifies_once(world: World) -> None:
    run_id = "sales-cluster-cccccccccccccccccccccccc"
    _run_cluster(world, run_id)
    world.put_ledger(run_id, state="STARTED", cluster_id="j-RUN0000001")
    event = _ended(run_id, "ABORTED")
    first = clean_up_execution(event, world.settings, world.clients, NOW)
    assert first is not None and first.teardown.clusters_terminated == ["j-RUN0000001"] and first.notified
    entry = world.ledger(run_id)
    assert (entry["state"], entry["error"], entry["previous_state"]) == ("ABORTED", "ExecutionAborted", "STARTED")
    assert entry["ended_at"] == "2026-11-24T09:42:00.000Z"
    # A redelivered event finds nothing to stop and nothing to change
    second = clean_up_execution(event, world.settings, world.clients, NOW)
    assert second is not None and not second.teardown.acted and not second.notified and not second.ledger_written
    assert [name for name, _ in world.emr.calls] == ["TerminateJobFlows"]
    assert world.published() == ["EMR Autopilot: sales-cluster run ABORTED"]


def test_an_aborted_run_records_what_its_cluster_cost_up_to_the_cleanup(world: World) -> None:
    # Given a transient-cluster run with two on-demand m5.xlarge instances launched 30 minutes before the abort
    run_id = "sales-cluster-eeeeeeeeeeeeeeeeeeeeeeee"
    cluster = _run_cluster(world, run_id)
    launched = NOW - timedelta(minutes=30)
    cluster.instances = [
        {"Id": f"ci-{n}", "InstanceType": "m5.xlarge", "Market": "ON_DEMAND",
         "Status": {"State": "RUNNING", "Timeline": {"CreationDateTime": launched}}}
        for n in (1, 2)
    ]  # fmt: skip
    world.put_ledger(run_id, state="STARTED")
    settings = replace(world.settings, region=REGION)
    # When the cleanup of its abort runs (the run never reached finalize)
    result = clean_up_execution(_ended(run_id, "ABORTED"), settings, world.clients, NOW)
    # Then the ledger has the cluster's cost, priced to the cleanup (the cluster is still terminating)
    entry = world.ledger(run_id)
    rates = shipped_prices().instance(REGION, "m5.xlarge")
    assert entry["cluster_id"] == "j-RUN0000001"
    assert entry["cost"]["usd"] == pytest.approx(2 * 0.5 * (rates["ec2_hour"] + rates["emr_hour"]), abs=1e-4)
    assert any("still terminating" in note for note in entry["cost"]["notes"])
    # and the handler gets that cost for the dashboard's RunCostUsd, once: a redelivered event prices nothing more
    assert result is not None and result.cost_usd == entry["cost"]["usd"]
    again = clean_up_execution(_ended(run_id, "ABORTED"), settings, world.clients, NOW)
    assert again is not None and again.cost_usd is None
    # and without a region (AWS_REGION unset) the cost says why it is unknown rather than guess
    other = "sales-cluster-ffffffffffffffffffffffff"
    _run_cluster(world, other, "j-RUN0000002")
    world.put_ledger(other, state="STARTED")
    clean_up_execution(_ended(other, "ABORTED"), world.settings, world.clients, NOW)
    unknown = world.ledger(other)["cost"]
    assert unknown["usd"] is None and "AWS_REGION" in unknown["reason"]


class RecordingEvents:
    """EventBridge PutEvents, recorded."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3 names
        self.entries += Entries
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "e"} for _ in Entries]}


def test_a_run_the_cleanup_ends_publishes_its_failed_run_event_once(world: World) -> None:
    # Given a run aborted mid-way (its workflow never reaches its own run event)
    run_id = "sales-cluster-abababababababababababab"
    _run_cluster(world, run_id)
    world.put_ledger(run_id, state="STARTED", output_uri=f"s3://{BUCKET}/sales-cluster/run_id={run_id}/")
    events = RecordingEvents()
    clients = replace_clients(world.clients, events=events)
    event = _ended(run_id, "ABORTED")
    clean_up_execution(event, world.settings, clients, NOW)
    # Then pipelines run after it hear "Autopilot Run Failed" with the ledger's state
    (published,) = events.entries
    detail = json.loads(published["Detail"])
    assert (published["Source"], published["DetailType"]) == ("emr-autopilot", "Autopilot Run Failed")
    assert (detail["run_id"], detail["state"], detail["pipeline"]) == (run_id, "ABORTED", PIPELINE.name)
    assert detail["outputs"] == {"prefix": f"s3://{BUCKET}/sales-cluster/run_id={run_id}/"}
    assert detail["ledger_uri"].endswith(f"/{run_id}.json") and detail["ended_at"]
    # and a redelivered status change publishes nothing more
    clean_up_execution(event, world.settings, clients, NOW)
    assert len(events.entries) == 1


def replace_clients(clients: Clients, **given: Any) -> Clients:
    """`clients` with some of them replaced."""
    return Clients(**{**vars(clients), **given})


def test_an_abort_reason_the_event_lacks_is_read_from_the_execution(world: World) -> None:
    # Given a run stopped with an error and cause, and a status-change event that does not repeat them
    run_id = "sales-cluster-dddddddddddddddddddddddd"
    _run_cluster(world, run_id)
    world.put_ledger(run_id, state="STARTED", cluster_id="j-RUN0000001")
    arn = _execution_arn(run_id)
    world.sfn.executions[arn] = "ABORTED"
    world.sfn.stop_reasons[arn] = {"error": "Cancelled", "cause": "wrong input folder"}
    # When the guardrail cleans up
    clean_up_execution(_ended(run_id, "ABORTED"), world.settings, world.clients, NOW)
    # Then the ledger records the reason DescribeExecution gives
    entry = world.ledger(run_id)
    assert (entry["state"], entry["error"], entry["cause"]) == ("ABORTED", "Cancelled", "wrong input folder")


def test_cleanup_writes_an_entry_for_a_run_that_failed_before_writing_one_and_ignores_other_machines(
    world: World,
) -> None:
    run_id = "sales-cluster-dddddddddddddddddddddddd"
    result = clean_up_execution(
        _ended(run_id, "FAILED", error="InvalidInput", cause="inputs[0]: expected s3://"),
        world.settings,
        world.clients,
        NOW,
    )
    entry = world.ledger(run_id)
    assert result is not None and (entry["state"], entry["previous_state"]) == ("FAILED", "UNKNOWN")
    assert (entry["error"], entry["cause"]) == ("InvalidInput", "inputs[0]: expected s3://")
    elsewhere = _ended(run_id, "FAILED") | {"stateMachineArn": SM_ARN + "-other"}
    assert clean_up_execution(elsewhere, world.settings, world.clients, NOW) is None
    with pytest.raises(GuardrailEventError, match="detail.status: got 'SUCCEEDED'"):
        clean_up_execution(_ended(run_id, "SUCCEEDED"), world.settings, world.clients, NOW)
    with pytest.raises(GuardrailEventError, match="detail.startDate: got 'yesterday'"):
        clean_up_execution(_ended(run_id, "FAILED", startDate="yesterday"), world.settings, world.clients, NOW)


# --------------------------------------------------------------------------- sweeper: leaked run slots


def _hold_slot(world: World, run_id: str, arrival_second: int) -> None:
    request = AcquireRequest(
        token=f"token-{run_id}",
        run_id=run_id,
        pipeline=PIPELINE.name,
        arrival={"at": f"2026-11-24T09:30:{arrival_second:02d}.000000Z", "key": f"in/{run_id}.csv"},
        reservation=Reservation(),
        execution_arn=_execution_arn(run_id),
    )
    acquire(world.clients.dynamodb, world.sfn, world.clients.s3, ADMISSION, world.settings.caps, request)


def test_the_sweeper_frees_a_slot_held_by_an_execution_that_ended_and_admits_the_next(world: World) -> None:
    # Given a cap of 1: a run holds the slot, a second waits; the first run's execution ended but its
    # cleanup never released the slot (it failed until the DLQ)
    leaked, waiting = ("sales-cluster-" + c * 24 for c in "ef")
    world.sfn.executions |= {_execution_arn(leaked): "ABORTED", _execution_arn(waiting): "RUNNING"}
    _hold_slot(world, leaked, 1)
    _hold_slot(world, waiting, 2)
    assert world.sfn.answered == [f"token-{leaked}"]
    # When the sweeper runs
    report = sweep(world.settings, world.clients, NOW)
    # Then the leaked slot is released and the waiting run admitted; the running one is left alone
    assert report.slots_released == [
        {"run_id": leaked, "execution_arn": _execution_arn(leaked), "reason": "its execution is ABORTED"}
    ]
    assert world.sfn.answered == [f"token-{leaked}", f"token-{waiting}"]
    assert [r["sk"] for r in runs(world.clients.dynamodb, ADMISSION)] == [waiting]
    assert counters(world.clients.dynamodb, ADMISSION)[f"pipeline#{PIPELINE.name}"]["runs"] == 1
    # And a run whose execution Step Functions no longer knows is released too; the next tick finds nothing
    world.sfn.executions.pop(_execution_arn(waiting))
    assert sweep(world.settings, world.clients, NOW).slots_released[0]["reason"] == "its execution is UNKNOWN"
    assert sweep(world.settings, world.clients, NOW).findings == 0
    assert runs(world.clients.dynamodb, ADMISSION) == []


# --------------------------------------------------------------------------- sweeper: alarms left behind


def _alarm(world: World, cluster_id: str, rule: str = "out-memory-low") -> str:
    name = f"{DEPLOYMENT}-scaling-{PIPELINE.name}-{cluster_id}-{rule}"
    put_memory_alarm(world.clients.cloudwatch, name, cluster_id)
    return name


def test_the_sweeper_deletes_scaling_alarms_of_ended_clusters_only_and_counts_clusters_still_up(
    world: World,
) -> None:
    # Given alarms of a running run's cluster, of a terminated cluster, of a cluster EMR forgot, and
    # another deployment's alarm that merely shares the prefix's first words
    running = _run_cluster(world, "sales-cluster-" + "1" * 24, "j-RUNNING0001")
    ended = _run_cluster(world, "sales-cluster-" + "2" * 24, "j-ENDED000001")
    ended.state = "TERMINATED_WITH_ERRORS"
    keep = [_alarm(world, running.id), _alarm(world, running.id, "in-memory-idle")]
    gone = [_alarm(world, ended.id), _alarm(world, "j-FORGOTTEN01")]
    world.clients.cloudwatch.put_metric_alarm(
        AlarmName=f"{DEPLOYMENT}-scalingx-j-ENDED000001-out",
        Namespace="AWS/ElasticMapReduce",
        MetricName="IsIdle",
        Statistic="Average",
        Period=300,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    # When the sweeper runs
    report = sweep(world.settings, world.clients, NOW)
    # Then only the ended clusters' alarms are gone, and the running cluster is counted
    assert sorted(report.orphan_alarms) == sorted(gone)
    left = {a["AlarmName"] for a in world.clients.cloudwatch.describe_alarms()["MetricAlarms"]}
    assert left == {*keep, f"{DEPLOYMENT}-scalingx-j-ENDED000001-out"}
    assert report.active_clusters == 1 and report.orphan_clusters == []
    assert sweep(world.settings, world.clients, NOW).orphan_alarms == []


# --------------------------------------------------------------------------- who aborted a run


def _stopped(run_id: str, who: str = ALICE) -> dict[str, Any]:
    return _trail("StopExecution", who, {"executionArn": _execution_arn(run_id)}, {"stopDate": 1795550000.0})


def test_stopped_before_the_cleanup_the_aborted_entry_names_who(world: World) -> None:
    run_id = "sales-cluster-" + "3" * 24
    _run_cluster(world, run_id)
    world.put_ledger(run_id, state="STARTED")
    # CloudTrail's record of alice's StopExecution arrives first
    reaction = react_to_cloudtrail(_stopped(run_id), world.settings, world.clients, NOW)
    assert reaction.action == "run stop recorded" and reaction.run_ids == [run_id]
    assert "aborted_by" not in world.ledger(run_id)  # nothing ABORTED to amend yet
    clean_up_execution(_ended(run_id, "ABORTED"), world.settings, world.clients, NOW)
    entry = world.ledger(run_id)
    assert (entry["state"], entry["aborted_by"]) == ("ABORTED", ALICE)
    assert entry["cause"] == f"the execution was stopped (StopExecution) by {ALICE}"


def test_stopped_after_the_cleanup_the_reaction_amends_the_entry_once(world: World) -> None:
    run_id = "sales-cluster-" + "4" * 24
    _run_cluster(world, run_id)
    world.put_ledger(run_id, state="STARTED")
    clean_up_execution(_ended(run_id, "ABORTED"), world.settings, world.clients, NOW)
    assert "aborted_by" not in world.ledger(run_id)
    react_to_cloudtrail(_stopped(run_id), world.settings, world.clients, NOW)
    entry = world.ledger(run_id)
    assert (entry["aborted_by"], entry["cause"]) == (ALICE, f"the execution was stopped (StopExecution) by {ALICE}")
    # A second report (another principal, or a redelivery) changes nothing: the first stop is the one
    react_to_cloudtrail(_stopped(run_id, who=f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/bob"), world.settings,
                        world.clients, NOW)  # fmt: skip
    assert world.ledger(run_id)["aborted_by"] == ALICE


def test_stops_of_other_state_machines_and_by_the_app_are_ignored(world: World) -> None:
    other = _trail("StopExecution", ALICE, {"executionArn": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:other:x"})
    assert react_to_cloudtrail(other, world.settings, world.clients, NOW).action == (
        "ignored: not an execution of this app"
    )
    own = _stopped(
        "sales-cluster-" + "5" * 24, who=APP_ROLE.replace(":iam:", ":sts:").replace(":role/", ":assumed-role/")
    )
    own["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"] = APP_ROLE
    assert react_to_cloudtrail(own, world.settings, world.clients, NOW).action == "ignored: made by this app"


def test_the_sweepers_tick_admits_a_run_waiting_for_its_budget_once_a_new_day_begins(world: World) -> None:
    # Given a daily budget spent yesterday: one run admitted, the next waiting for the budget (not a slot)
    settings = replace(world.settings, caps=Caps(pipelines={PIPELINE.name: Limit(usd=1.0)}))
    first, second = ("sales-cluster-" + c * 24 for c in "ab")
    world.sfn.executions |= {_execution_arn(first): "RUNNING", _execution_arn(second): "RUNNING"}
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for second_of_arrival, run_id in enumerate((first, second), start=1):
        request = AcquireRequest(
            token=f"token-{run_id}",
            run_id=run_id,
            pipeline=PIPELINE.name,
            arrival={"at": f"2026-11-24T09:30:{second_of_arrival:02d}.000000Z", "key": f"in/{run_id}.csv"},
            reservation=Reservation(usd=0.8),
            execution_arn=_execution_arn(run_id),
        )
        acquire(
            world.clients.dynamodb,
            world.sfn,
            world.clients.s3,
            ADMISSION,
            settings.caps,
            request,
            clock=lambda: yesterday,
        )
    assert world.sfn.answered == [f"token-{first}"]
    # When the sweeper ticks today
    sweep(settings, world.clients, NOW)
    # Then the waiting run is admitted on today's budget
    assert world.sfn.answered == [f"token-{first}", f"token-{second}"]
