"""The twin's CloudTrail (local/cloudtrail.py), scheduled rules and Step Functions abort / timeout.

One twin for the module (no Spark), deployed from a small cloud assembly with the EMR roles, a state
machine role, a Lambda function (a real asset folder) with its execution role, buckets, queues, schedule
rules and a rule on CloudTrail events. EMR phases are shortened so clusters are ready in ~0.1 s.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.cloudtrail import DETAIL_TYPE
from local.twin import Twin
from tests.twin.twin_helpers import wait_for

ACCOUNT = "123456789012"
SFN_ROLE = "autopilot-sfn-role"
FN_ROLE = "trail-guard-role"
FUNCTION = "trail-guard"
LOGGED, QUIET, VERSIONED = "trail-logged", "trail-quiet", "trail-versioned"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
OPERATOR = f"arn:aws:iam::{ACCOUNT}:user/twin-operator"
RAW_KEY = "sales/Q1 report+final %20ü.csv"
TICK_RULE = "autopilot-dev-TickRuleA1B2C3-XYZ"
GUARD_RULE = "autopilot-dev-GuardScheduleRuleD4E5-QRS"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
HANDLER = """
import json, time, boto3

def handler(event, context):
    if "sleep" in event:
        time.sleep(event["sleep"])
        return {"slept": event["sleep"]}
    if "terminate" in event:
        boto3.client("emr").terminate_job_flows(JobFlowIds=[event["terminate"]])
        return {}
    if "put" in event:
        boto3.client("s3").put_object(Bucket=event["put"], Key=event["key"], Body=b"from lambda")
        return {}
    boto3.client("s3").put_object(Bucket="trail-quiet", Key=f"ticks/{event['id']}.json", Body=json.dumps(event))
    return {}
"""


def _queue(name: str) -> dict[str, Any]:
    return {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": name}}


def _role(name: str, *, allow_all: bool = False) -> dict[str, Any]:
    """A role; `allow_all` for the principals whose identities these tests record (the twin's IAM evaluates their
    calls, and what they may do is not what is tested here)."""
    props: dict[str, Any] = {"RoleName": name, "AssumeRolePolicyDocument": {}}
    if allow_all:
        statement = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        document = {"Version": "2012-10-17", "Statement": [statement]}
        props["Policies"] = [{"PolicyName": "all", "PolicyDocument": document}]
    return {"Type": "AWS::IAM::Role", "Properties": props}


def _events_may_send(queue: str, *rules: str) -> dict[str, Any]:
    """A queue policy letting EventBridge deliver `rules`' events to `queue`."""
    statement = {
        "Effect": "Allow",
        "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": {"Fn::GetAtt": [queue, "Arn"]},
        "Condition": {"ArnEquals": {"aws:SourceArn": [{"Fn::GetAtt": [r, "Arn"]} for r in rules]}},
    }
    return {
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {"Queues": [{"Ref": queue}], "PolicyDocument": {"Statement": [statement]}},
    }


def _schedule(name: str, expression: str, target: str, state: str = "ENABLED") -> dict[str, Any]:
    targets = [{"Id": "t", "Arn": {"Fn::GetAtt": [target, "Arn"]}}]
    return {
        "Type": "AWS::Events::Rule",
        "Properties": {"Name": name, "ScheduleExpression": expression, "State": state, "Targets": targets},
    }


TEMPLATE: dict[str, Any] = {
    "Resources": {
        "ServiceRole": _role("trail-emr-service-role"),
        "Ec2Role": _role("trail-emr-ec2-role"),
        "Profile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"InstanceProfileName": "trail-emr-profile", "Roles": [{"Ref": "Ec2Role"}]},
        },
        "SfnRole": _role(SFN_ROLE, allow_all=True),
        "FnRole": _role(FN_ROLE, allow_all=True),
        "Logged": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": LOGGED}},
        "Quiet": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": QUIET}},
        "Versioned": {
            "Type": "AWS::S3::Bucket",
            "Properties": {"BucketName": VERSIONED, "VersioningConfiguration": {"Status": "Enabled"}},
        },
        "Guard": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "FunctionName": FUNCTION,
                "Handler": "handler.handler",
                "Runtime": "python3.12",
                "Timeout": 30,
                "Role": {"Fn::GetAtt": ["FnRole", "Arn"]},
                "Code": {"S3Bucket": "cdk-assets", "S3Key": "guard.zip"},
            },
        },
        "Ticks": _queue("trail-ticks"),
        "Trail": _queue("trail-events"),
        "TickRule": _schedule(TICK_RULE, "rate(5 minutes)", "Ticks"),
        "GuardRule": _schedule(GUARD_RULE, "cron(0 3 * * ? *)", "Guard"),
        "OffRule": _schedule("autopilot-dev-OffRule-JKL", "rate(1 day)", "Ticks", state="DISABLED"),
        "TrailRule": {
            "Type": "AWS::Events::Rule",
            "Properties": {
                "EventPattern": {
                    "source": ["aws.elasticmapreduce"],
                    "detail-type": ["AWS API Call via CloudTrail"],
                    "detail": {"eventName": ["TerminateJobFlows"]},
                },
                "Targets": [{"Id": "q", "Arn": {"Fn::GetAtt": ["Trail", "Arn"]}}],
            },
        },
        # EventBridge may deliver only what the targets allow (the twin's IAM evaluates these, as AWS does).
        "TicksPolicy": _events_may_send("Ticks", "TickRule", "OffRule"),
        "TrailPolicy": _events_may_send("Trail", "TrailRule"),
        "GuardPermission": {
            "Type": "AWS::Lambda::Permission",
            "Properties": {
                "Action": "lambda:InvokeFunction",
                "FunctionName": {"Fn::GetAtt": ["Guard", "Arn"]},
                "Principal": "events.amazonaws.com",
                "SourceArn": {"Fn::GetAtt": ["GuardRule", "Arn"]},
            },
        },
        "App": {
            "Type": "AWS::EMRServerless::Application",
            "Properties": {"Name": "trail-app", "ReleaseLabel": "emr-7.5.0", "Type": "Spark"},
        },
        "Vc": {
            "Type": "AWS::EMRContainers::VirtualCluster",
            "Properties": {
                "Name": "trail-vc",
                "ContainerProvider": {"Id": "eks", "Type": "EKS", "Info": {"EksInfo": {"Namespace": "trail"}}},
            },
        },
    },
    "Outputs": {
        "SfnRoleArn": {"Value": {"Fn::GetAtt": ["SfnRole", "Arn"]}},
        "FnRoleArn": {"Value": {"Fn::GetAtt": ["FnRole", "Arn"]}},
        "App": {"Value": {"Ref": "App"}},
        "Vc": {"Value": {"Ref": "Vc"}},
    },
}


def write_assembly(directory: Path) -> Path:
    """A one-stack cloud assembly whose Lambda function has a real asset folder (HANDLER)."""
    (directory / "asset.guard").mkdir(parents=True)
    (directory / "asset.guard" / "handler.py").write_text(HANDLER)
    (directory / "trail.template.json").write_text(json.dumps(TEMPLATE))
    files = {
        "guard": {
            "source": {"path": "asset.guard", "packaging": "zip"},
            "destinations": {"current": {"bucketName": "cdk-assets", "objectKey": "guard.zip"}},
        }
    }
    (directory / "trail.assets.json").write_text(json.dumps({"version": "36.0.0", "files": files}))
    artifacts = {
        "trail.assets": {"type": "cdk:asset-manifest", "properties": {"file": "trail.assets.json"}},
        "trail": {
            "type": "aws:cloudformation:stack",
            "environment": "aws://unknown-account/unknown-region",
            "properties": {"templateFile": "trail.template.json"},
            "dependencies": ["trail.assets"],
        },
    }
    (directory / "manifest.json").write_text(json.dumps({"version": "36.0.0", "artifacts": artifacts}))
    return directory


class Env:
    """The module's twin, clients and helpers."""

    def __init__(self, twin: Twin, outputs: dict[str, Any]) -> None:
        self.twin = twin
        self.outputs = outputs
        self.trail = twin.cloudtrail
        self.emr = twin.client("emr")
        self.s3 = twin.client("s3")
        self.sqs = twin.client("sqs")
        self.sfn = twin.client("stepfunctions")

    def cluster_request(self, **overrides: Any) -> dict[str, Any]:
        master = {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1}
        request = {
            "Name": "guarded",
            "ReleaseLabel": "emr-7.5.0",
            "ServiceRole": "trail-emr-service-role",
            "JobFlowRole": "trail-emr-profile",
            "Instances": {"KeepJobFlowAliveWhenNoSteps": True, "InstanceGroups": [master]},
        }
        return request | overrides

    def cluster(self, client: Any = None, **overrides: Any) -> str:
        cluster_id: str = (client or self.emr).run_job_flow(**self.cluster_request(**overrides))["JobFlowId"]
        self.twin.emr_ec2.wait_cluster(cluster_id, {"WAITING"})
        return cluster_id

    def records(self, name: str, where: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[dict[str, Any]]:
        return [r for r in list(self.trail.events) if r["eventName"] == name and where(r)]

    def record(self, name: str, where: Callable[[dict[str, Any]], bool] = lambda r: True) -> dict[str, Any]:
        """The one record named `name` matching `where` (waits for it; fails on duplicates)."""
        found: list[dict[str, Any]] = wait_for(lambda: self.records(name, where), what=f"a {name} record")
        assert len(found) == 1, found
        return found[0]

    def messages(self, queue: str, count: int = 1) -> list[dict[str, Any]]:
        url = self.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        got: list[dict[str, Any]] = []

        def enough() -> bool:
            for message in self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                got.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            return len(got) >= count

        wait_for(enough, what=f"{count} messages on {queue}")
        return got

    def start(self, definition: dict[str, Any], role_arn: str | None = None) -> str:
        name = f"m-{uuid.uuid4().hex[:8]}"
        arn = self.sfn.create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=role_arn or self.outputs["SfnRoleArn"]
        )["stateMachineArn"]
        execution: str = self.sfn.start_execution(stateMachineArn=arn, input="{}")["executionArn"]
        return execution

    def status(self, execution: str) -> str:
        return str(self.sfn.describe_execution(executionArn=execution)["status"])

    def finish(self, execution: str, timeout: float = 10) -> dict[str, Any]:
        wait_for(lambda: self.status(execution) != "RUNNING", timeout, what=f"{execution} to end")
        described: dict[str, Any] = self.sfn.describe_execution(executionArn=execution)
        return described

    def status_events(self, execution: str) -> list[dict[str, Any]]:
        return [
            e["detail"]
            for e in list(self.twin.events)
            if e["detail-type"] == "Step Functions Execution Status Change" and e["detail"]["executionArn"] == execution
        ]

    def history(self, execution: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.sfn.get_execution_history(executionArn=execution)["events"]
        return events

    def entered(self, execution: str) -> list[str]:
        return [
            e["stateEnteredEventDetails"]["name"] for e in self.history(execution) if "stateEnteredEventDetails" in e
        ]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("cloudtrail-twin")
    twin = Twin(workdir=workdir, spark=False, time_scale=0.002).start()  # EMR .sync polls every 0.12 s
    try:
        report = twin.deploy(write_assembly(workdir / "cdk.out"))
        twin.emr_ec2.phase_seconds = 0.05
        yield Env(twin, report.outputs)
    finally:
        twin.stop()


@pytest.fixture
def env(deployed: Env) -> Iterator[Env]:
    """Per test: no faults, no delay, short EMR phases; afterwards no cluster is left running."""
    deployed.twin.faults.clear()
    deployed.trail.delay_seconds = 0.0
    deployed.twin.emr_ec2.phase_seconds = 0.05
    yield deployed
    model = deployed.twin.emr_ec2
    for cluster_id in model.active_clusters():
        if model.describe_cluster(cluster_id)["Status"]["State"] != "TERMINATING":  # not already on its way out
            model.set_termination_protection({"JobFlowIds": [cluster_id], "TerminationProtected": False})
            model.terminate_job_flows({"JobFlowIds": [cluster_id]})
    assert model.wait_until(lambda: not model.active_clusters(), 10), model.active_clusters()


# ---------------------------------------------------------------------------------------------- EMR management events


def test_run_job_flow_is_recorded_in_the_cloudtrail_shape(env: Env) -> None:
    configurations = [{"Classification": "spark-env", "Properties": {"JAVA_HOME": "/usr/lib/jvm/java-17"}}]
    cluster_id = env.cluster(
        Tags=[{"Key": "pipeline", "Value": "sales"}],
        AutoTerminationPolicy={"IdleTimeout": 900},
        Configurations=configurations,
    )
    record = env.record("RunJobFlow", lambda r: (r["responseElements"] or {}).get("jobFlowId") == cluster_id)
    assert record["eventVersion"] == "1.11" and ISO.match(record["eventTime"])
    assert (record["eventSource"], record["awsRegion"]) == ("elasticmapreduce.amazonaws.com", "us-east-1")
    assert record["sourceIPAddress"] == "127.0.0.1" and record["userAgent"].startswith("Boto3/")
    assert record["userIdentity"] == {
        "type": "IAMUser",
        "principalId": record["userIdentity"]["principalId"],
        "arn": OPERATOR,
        "accountId": ACCOUNT,
        "accessKeyId": "twin",
        "userName": "twin-operator",
    }
    assert record["userIdentity"]["principalId"].startswith("AIDA")
    params = record["requestParameters"]
    assert (params["name"], params["releaseLabel"], params["serviceRole"]) == (
        "guarded",
        "emr-7.5.0",
        "trail-emr-service-role",
    )
    assert params["instances"]["keepJobFlowAliveWhenNoSteps"] is True
    assert params["instances"]["instanceGroups"][0] == {
        "name": "primary",
        "instanceRole": "MASTER",
        "instanceType": "m5.xlarge",
        "instanceCount": 1,
    }
    assert params["tags"] == [{"key": "pipeline", "value": "sales"}]
    assert params["autoTerminationPolicy"] == {"idleTimeout": 900}
    # map keys (configuration properties) keep their case: only API member names are lower-camel-cased
    assert params["configurations"] == [
        {"classification": "spark-env", "properties": {"JAVA_HOME": "/usr/lib/jvm/java-17"}}
    ]
    assert record["responseElements"] == {
        "jobFlowId": cluster_id,
        "clusterArn": f"arn:aws:elasticmapreduce:us-east-1:{ACCOUNT}:cluster/{cluster_id}",
    }
    assert UUID.match(record["requestID"]) and UUID.match(record["eventID"])
    assert {
        k: record[k] for k in ("readOnly", "eventType", "managementEvent", "recipientAccountId", "eventCategory")
    } == {
        "readOnly": False,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
    }
    on_bus = wait_for(lambda: [e for e in list(env.twin.events) if e["detail"] == record], what="the bus event")
    assert on_bus[0]["source"] == "aws.elasticmapreduce" and on_bus[0]["detail-type"] == "AWS API Call via CloudTrail"
    assert on_bus[0]["time"] == record["eventTime"] and on_bus[0]["resources"] == []


def test_a_client_with_principal_alice_terminates_a_cluster(env: Env) -> None:
    cluster_id = env.cluster()
    alice = env.twin.client("emr", principal=ALICE)
    alice.terminate_job_flows(JobFlowIds=[cluster_id])
    record = env.record("TerminateJobFlows", lambda r: r["requestParameters"] == {"jobFlowIds": [cluster_id]})
    identity = record["userIdentity"]
    assert (identity["type"], identity["arn"], identity["userName"]) == ("IAMUser", ALICE, "alice")
    assert identity["accessKeyId"].startswith("AKIA") and len(identity["accessKeyId"]) == 20
    assert record["responseElements"] is None and "errorCode" not in record
    # the rule on CloudTrail events delivered it (through the bus, like any other event)
    [delivered] = [m for m in env.messages("trail-events") if m["detail"]["eventID"] == record["eventID"]]
    assert delivered["detail"]["userIdentity"]["arn"] == ALICE
    # the same principal always signs with the same key; another principal with another
    assert env.trail.access_key_for(ALICE) == identity["accessKeyId"]
    assert env.trail.access_key_for(f"arn:aws:iam::{ACCOUNT}:user/bob") != identity["accessKeyId"]


def test_an_assumed_role_principal_is_recorded_with_its_session_issuer(env: Env) -> None:
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/SomeRole/ops-session"
    cluster_id = env.cluster(client=env.twin.client("emr", principal=session))
    identity = env.record("RunJobFlow", lambda r: (r["responseElements"] or {}).get("jobFlowId") == cluster_id)[
        "userIdentity"
    ]
    assert (identity["type"], identity["arn"], identity["accountId"]) == ("AssumedRole", session, ACCOUNT)
    assert identity["accessKeyId"].startswith("ASIA") and identity["principalId"].endswith(":ops-session")
    issuer = identity["sessionContext"]["sessionIssuer"]
    assert issuer == {
        "type": "Role",
        "principalId": identity["principalId"].split(":")[0],
        "arn": f"arn:aws:iam::{ACCOUNT}:role/SomeRole",
        "accountId": ACCOUNT,
        "userName": "SomeRole",
    }
    assert identity["sessionContext"]["attributes"]["mfaAuthenticated"] == "false"
    assert "invokedBy" not in identity
    with pytest.raises(ValueError, match="not an IAM user"):
        env.twin.client("emr", principal="alice")


def test_other_mutating_calls_are_recorded_and_read_only_calls_are_not(env: Env) -> None:
    cluster_id = env.cluster()
    step = {
        "Name": "s",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://b/app.py"]},
    }
    env.twin.faults.hang_next_job()
    [step_id] = env.emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"]
    env.twin.emr_ec2.wait_step(cluster_id, step_id, {"RUNNING"})
    env.emr.cancel_steps(ClusterId=cluster_id, StepIds=[step_id])
    env.emr.put_auto_termination_policy(ClusterId=cluster_id, AutoTerminationPolicy={"IdleTimeout": 600})
    env.emr.add_tags(ResourceId=cluster_id, Tags=[{"Key": "owner", "Value": "guard"}])
    env.emr.set_termination_protection(JobFlowIds=[cluster_id], TerminationProtected=True)
    group_id = env.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"][0]["Id"]
    env.emr.describe_cluster(ClusterId=cluster_id)
    env.emr.list_steps(ClusterId=cluster_id)
    mine = [r for r in list(env.trail.events) if cluster_id in json.dumps(r["requestParameters"])]
    assert [r["eventName"] for r in mine] == [
        "AddJobFlowSteps",
        "CancelSteps",
        "PutAutoTerminationPolicy",
        "AddTags",
        "SetTerminationProtection",
    ]
    added, cancelled, policy, tags, protection = mine
    assert added["requestParameters"] == {
        "jobFlowId": cluster_id,
        "steps": [
            {
                "name": "s",
                "actionOnFailure": "CONTINUE",
                "hadoopJarStep": {"jar": "command-runner.jar", "args": ["spark-submit", "s3://b/app.py"]},
            }
        ],
    }
    assert added["responseElements"] == {"stepIds": [step_id]}
    assert cancelled["requestParameters"] == {"clusterId": cluster_id, "stepIds": [step_id]}
    assert cancelled["responseElements"] == {
        "cancelStepsInfoList": [{"stepId": step_id, "status": "SUBMITTED", "reason": ""}]
    }
    assert policy["requestParameters"] == {"clusterId": cluster_id, "autoTerminationPolicy": {"idleTimeout": 600}}
    assert policy["responseElements"] is None
    assert tags["requestParameters"] == {"resourceId": cluster_id, "tags": [{"key": "owner", "value": "guard"}]}
    assert protection["requestParameters"] == {"jobFlowIds": [cluster_id], "terminationProtected": True}
    assert group_id and not env.records("DescribeCluster") and not env.records("ListSteps")


def test_failed_calls_are_recorded_with_their_error(env: Env) -> None:
    cluster_id = env.cluster(Instances={**env.cluster_request()["Instances"], "TerminationProtected": True})
    with pytest.raises(ClientError, match="termination protected"):
        env.emr.terminate_job_flows(JobFlowIds=[cluster_id])
    refused = env.record("TerminateJobFlows", lambda r: r["requestParameters"] == {"jobFlowIds": [cluster_id]})
    assert refused["errorCode"] == "ValidationException" and "termination protected" in refused["errorMessage"]
    assert refused["responseElements"] is None
    env.twin.faults.fail_next("emr", "AddTags", code="AccessDeniedException", message="not authorized")
    with pytest.raises(ClientError, match="AccessDeniedException"):
        env.emr.add_tags(ResourceId=cluster_id, Tags=[{"Key": "k", "Value": "v"}])
    denied = env.record("AddTags", lambda r: r["requestParameters"]["resourceId"] == cluster_id)
    assert (denied["errorCode"], denied["errorMessage"]) == ("AccessDeniedException", "not authorized")


# ------------------------------------------------------------------------------------- who: Step Functions, Lambda


def test_step_functions_emr_calls_are_recorded_as_the_state_machine_role(env: Env) -> None:
    env.trail.log_data_events(LOGGED)
    create = {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:createCluster.sync",
        "Parameters": env.cluster_request(Name="from-sfn"),
        "ResultPath": "$.cluster",
        "Next": "Ledger",
    }
    ledger = {
        "Type": "Task",
        "Resource": "arn:aws:states:::aws-sdk:s3:putObject",
        "ResultPath": None,
        "Parameters": {"Bucket": LOGGED, "Key": "ledger/from-sfn.json", "Body": "{}"},
        "Next": "Terminate",
    }
    terminate = {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:terminateCluster",
        "Parameters": {"ClusterId.$": "$.cluster.ClusterId"},
        "End": True,
    }
    execution = env.start({"StartAt": "Create", "States": {"Create": create, "Ledger": ledger, "Terminate": terminate}})
    assert env.finish(execution)["status"] == "SUCCEEDED"
    created = env.record("RunJobFlow", lambda r: r["requestParameters"]["name"] == "from-sfn")
    cluster_id = created["responseElements"]["jobFlowId"]
    terminated = env.record("TerminateJobFlows", lambda r: r["requestParameters"] == {"jobFlowIds": [cluster_id]})
    written = env.record("PutObject", lambda r: r["requestParameters"]["key"] == "ledger/from-sfn.json")
    identity = created["userIdentity"]
    assert identity["type"] == "AssumedRole" and identity["invokedBy"] == "states.amazonaws.com"
    assert re.match(rf"^arn:aws:sts::{ACCOUNT}:assumed-role/{SFN_ROLE}/[A-Za-z]{{32}}$", identity["arn"])
    assert identity["sessionContext"]["sessionIssuer"]["arn"] == env.outputs["SfnRoleArn"]
    assert identity["sessionContext"]["sessionIssuer"]["userName"] == SFN_ROLE
    assert created["sourceIPAddress"] == created["userAgent"] == "states.amazonaws.com"
    # one role session per execution: the EMR calls and moto's aws-sdk integration all carry it
    assert terminated["userIdentity"] == identity
    assert written["userIdentity"]["arn"] == identity["arn"] and written["sourceIPAddress"] == "states.amazonaws.com"


def test_lambda_calls_are_recorded_as_the_function_execution_role(env: Env) -> None:
    cluster_id = env.cluster()
    env.trail.log_data_events(LOGGED)
    env.twin.runtime.invoke(FUNCTION, {"terminate": cluster_id})
    env.twin.runtime.invoke(FUNCTION, {"put": LOGGED, "key": "from-lambda.txt"})
    identity = env.record("TerminateJobFlows", lambda r: r["requestParameters"] == {"jobFlowIds": [cluster_id]})[
        "userIdentity"
    ]
    assert identity["type"] == "AssumedRole" and "invokedBy" not in identity
    assert identity["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{FN_ROLE}/{FUNCTION}"
    assert identity["sessionContext"]["sessionIssuer"]["arn"] == env.outputs["FnRoleArn"]
    written = env.record("PutObject", lambda r: r["requestParameters"]["key"] == "from-lambda.txt")
    assert written["userIdentity"] == identity
    # the test's own default clients are unaffected by the function's environment
    env.emr.add_tags(ResourceId=cluster_id, Tags=[{"Key": "after", "Value": "lambda"}])
    assert (
        env.record("AddTags", lambda r: r["requestParameters"]["resourceId"] == cluster_id)["userIdentity"]["arn"]
        == OPERATOR
    )


# ---------------------------------------------------------------------------------------------- S3 data events


def test_put_object_on_a_logged_bucket_is_a_data_event_with_the_raw_key(env: Env) -> None:
    env.trail.log_data_events(LOGGED)
    body = b"region,amount\neu,1\n"
    env.s3.put_object(Bucket=LOGGED, Key=RAW_KEY, Body=body)
    env.s3.put_object(Bucket=QUIET, Key=RAW_KEY, Body=body)
    record = env.record("PutObject", lambda r: r["requestParameters"]["key"] == RAW_KEY)
    assert record["requestParameters"] == {
        "bucketName": LOGGED,
        "Host": env.twin.endpoint.removeprefix("http://"),
        "key": RAW_KEY,
    }
    assert record["resources"] == [
        {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{LOGGED}/{RAW_KEY}"},
        {"accountId": ACCOUNT, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{LOGGED}"},
    ]
    assert (record["eventSource"], record["eventCategory"], record["managementEvent"], record["readOnly"]) == (
        "s3.amazonaws.com",
        "Data",
        False,
        False,
    )
    assert record["responseElements"] is None and record["userIdentity"]["arn"] == OPERATOR
    extra = record["additionalEventData"]
    assert (extra["SignatureVersion"], extra["AuthenticationMethod"]) == ("SigV4", "AuthHeader")
    assert (extra["bytesTransferredIn"], extra["bytesTransferredOut"]) == (len(body), 0)
    assert [e for e in list(env.twin.events) if e["detail"] == record][0]["source"] == "aws.s3"
    assert not env.records("PutObject", lambda r: r["requestParameters"]["bucketName"] == QUIET)


def test_copy_multipart_and_versioned_writes_and_what_is_not_a_write(env: Env) -> None:
    env.trail.log_data_events(VERSIONED)
    version = env.s3.put_object(Bucket=VERSIONED, Key="v/one.csv", Body=b"1")["VersionId"]
    put = env.record("PutObject", lambda r: r["requestParameters"]["key"] == "v/one.csv")
    assert put["responseElements"]["x-amz-version-id"] == version
    env.s3.copy_object(Bucket=VERSIONED, Key="v/copy of one.csv", CopySource={"Bucket": VERSIONED, "Key": "v/one.csv"})
    copied = env.record("CopyObject", lambda r: r["requestParameters"]["key"] == "v/copy of one.csv")
    assert copied["requestParameters"]["x-amz-copy-source"] == f"{VERSIONED}/v/one.csv"
    upload = env.s3.create_multipart_upload(Bucket=VERSIONED, Key="v/big.bin")["UploadId"]
    etag = env.s3.upload_part(Bucket=VERSIONED, Key="v/big.bin", UploadId=upload, PartNumber=1, Body=b"x" * 10)["ETag"]
    env.s3.complete_multipart_upload(
        Bucket=VERSIONED, Key="v/big.bin", UploadId=upload, MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]}
    )
    completed = env.record("CompleteMultipartUpload", lambda r: r["requestParameters"]["key"] == "v/big.bin")
    assert completed["requestParameters"]["uploadId"] == upload
    env.s3.put_object_tagging(Bucket=VERSIONED, Key="v/one.csv", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    env.s3.get_object(Bucket=VERSIONED, Key="v/one.csv")
    mine = [
        r["eventName"]
        for r in list(env.trail.events)
        if r["eventSource"] == "s3.amazonaws.com" and r["requestParameters"]["bucketName"] == VERSIONED
    ]
    assert mine == ["PutObject", "CopyObject", "CompleteMultipartUpload"]
    env.trail.log_data_events(VERSIONED, enabled=False)
    env.s3.put_object(Bucket=VERSIONED, Key="v/two.csv", Body=b"2")
    assert not env.records("PutObject", lambda r: r["requestParameters"]["key"] == "v/two.csv")


def test_delivery_can_lag_like_cloudtrail(env: Env) -> None:
    env.trail.log_data_events(LOGGED)
    env.trail.delay_seconds = 0.4
    env.s3.put_object(Bucket=LOGGED, Key="late.txt", Body=b"x")
    assert not env.records("PutObject", lambda r: r["requestParameters"]["key"] == "late.txt")
    assert env.twin.busy() and env.trail.pending()
    started = time.monotonic()
    env.record("PutObject", lambda r: r["requestParameters"]["key"] == "late.txt")
    assert 0.2 < time.monotonic() - started < 2
    wait_for(lambda: not env.trail.pending(), what="no pending record")


# ---------------------------------------------------------------------------------------------- schedules


def test_fire_schedule_delivers_a_scheduled_event_to_its_sqs_target(env: Env) -> None:
    event = env.twin.fire_schedule("TickRule")
    assert event is not None
    [message] = env.messages("trail-ticks")
    rule_arn = f"arn:aws:events:us-east-1:{ACCOUNT}:rule/{TICK_RULE}"
    assert message == event
    assert (message["source"], message["detail-type"], message["detail"]) == ("aws.events", "Scheduled Event", {})
    assert message["resources"] == [rule_arn] and ISO.match(message["time"]) and message["account"] == ACCOUNT
    assert env.twin.fire_schedule("autopilot-dev-OffRule-JKL") is None  # a DISABLED rule delivers nothing
    with pytest.raises(LookupError, match="several scheduled rules"):
        env.twin.fire_schedule("autopilot-dev")
    with pytest.raises(LookupError, match="no scheduled rule"):
        env.twin.fire_schedule("TrailRule")  # a pattern rule is not a schedule


def test_fire_schedule_reaches_a_lambda_target(env: Env) -> None:
    event = env.twin.fire_schedule("GuardSchedule")
    assert event is not None

    def delivered() -> Any:
        try:
            return json.loads(env.s3.get_object(Bucket=QUIET, Key=f"ticks/{event['id']}.json")["Body"].read())
        except ClientError:
            return None

    assert wait_for(delivered, what="the function's tick") == event
    assert event["resources"] == [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/{GUARD_RULE}"]


def test_start_schedules_ticks_rate_rules_in_the_background(env: Env) -> None:
    try:
        assert env.twin.start_schedules(scale=0.001) == [TICK_RULE]  # 5 minutes -> 0.3 s; cron and DISABLED: not run
        ticks = env.messages("trail-ticks", count=2)
        assert {t["resources"][0].rsplit("/", 1)[-1] for t in ticks} == {TICK_RULE}
    finally:
        env.twin.stop_schedules()
    time.sleep(0.4)
    env.sqs.purge_queue(QueueUrl=env.sqs.get_queue_url(QueueName="trail-ticks")["QueueUrl"])


# ---------------------------------------------------------------------------------------------- abort and timeout


def _assert_aborted_once(env: Env, execution: str, stopped_at: float) -> None:
    """ABORTED within 2 s of StopExecution, with exactly one ABORTED status change event (stopDate set)."""
    wait_for(lambda: env.status(execution) == "ABORTED", 2, what="ABORTED")
    assert time.monotonic() - stopped_at < 2
    assert env.sfn.describe_execution(executionArn=execution)["stopDate"]
    wait_for(lambda: [e for e in env.status_events(execution) if e["status"] != "RUNNING"], what="the status event")
    time.sleep(0.3)  # a second (late) status event would arrive by now
    events = env.status_events(execution)
    assert [e["status"] for e in events] == ["RUNNING", "ABORTED"]
    assert events[1]["stopDate"] is not None and events[1]["stopDate"] >= events[1]["startDate"]
    assert not [e for e in env.history(execution) if e["type"] in {"TaskSucceeded", "ExecutionFailed"}]


def test_abort_while_create_cluster_sync_waits_leaves_the_cluster_running(env: Env) -> None:
    env.twin.emr_ec2.phase_seconds = 0.5  # STARTING and BOOTSTRAPPING: 1 s
    create = {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:createCluster.sync",
        "Parameters": env.cluster_request(Name="aborted-create"),
        "Next": "After",
    }
    execution = env.start({"StartAt": "Create", "States": {"Create": create, "After": {"Type": "Pass", "End": True}}})
    record = env.record("RunJobFlow", lambda r: r["requestParameters"]["name"] == "aborted-create")
    cluster_id = record["responseElements"]["jobFlowId"]
    assert env.twin.emr_ec2.describe_cluster(cluster_id)["Status"]["State"] in {"STARTING", "BOOTSTRAPPING"}
    stopped_at = time.monotonic()
    env.sfn.stop_execution(executionArn=execution)
    _assert_aborted_once(env, execution, stopped_at)
    # Step Functions does not clean up: the cluster carries on to WAITING (the product's cleanup must end it)
    assert env.twin.emr_ec2.wait_cluster(cluster_id, {"WAITING"}) == "WAITING"
    assert "After" not in env.entered(execution)
    assert not env.records("TerminateJobFlows", lambda r: r["requestParameters"] == {"jobFlowIds": [cluster_id]})


def test_abort_while_emr_serverless_and_eks_job_runs_wait(env: Env) -> None:
    app, vc = env.outputs["App"], env.outputs["Vc"]
    role = f"arn:aws:iam::{ACCOUNT}:role/job"
    serverless = {
        "Type": "Task",
        "Resource": "arn:aws:states:::emr-serverless:startJobRun.sync",
        "End": True,
        "Parameters": {
            "ApplicationId": app,
            "ExecutionRoleArn": role,
            "ClientToken": uuid.uuid4().hex,
            "JobDriver": {"SparkSubmit": {"EntryPoint": "s3://b/app.py"}},
        },
    }
    eks = {
        "Type": "Task",
        "Resource": "arn:aws:states:::emr-containers:startJobRun.sync",
        "End": True,
        "Parameters": {
            "VirtualClusterId": vc,
            "Name": "j",
            "ExecutionRoleArn": role,
            "ClientToken": uuid.uuid4().hex,
            "ReleaseLabel": "emr-7.5.0-latest",
            "JobDriver": {"SparkSubmitJobDriver": {"EntryPoint": "s3://b/app.py"}},
        },
    }
    for state, running in ((serverless, env.twin.emr_serverless.running), (eks, env.twin.emr_containers.running)):
        env.twin.faults.hang_next_job()
        execution = env.start({"StartAt": "Run", "States": {"Run": state}})
        wait_for(
            lambda: running() and "TaskSubmitted" in [e["type"] for e in env.history(execution)],  # noqa: B023
            what="the job run",
        )
        stopped_at = time.monotonic()
        env.sfn.stop_execution(executionArn=execution)
        _assert_aborted_once(env, execution, stopped_at)
        assert running(), "the job run must still be running: aborting does not cancel it"
    for run in env.twin.emr_serverless.running():
        env.twin.emr_serverless.cancel_job_run(run.application_id, run.job_run_id)
    for job in env.twin.emr_containers.running():
        env.twin.emr_containers.cancel_job_run(job.virtual_cluster_id, job.id)
    wait_for(lambda: not env.twin.emr_serverless.running() and not env.twin.emr_containers.running(), what="cancel")


def test_abort_during_a_lambda_task_runs_no_further_state(env: Env) -> None:
    nap = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Next": "After",
        "Parameters": {"FunctionName": FUNCTION, "Payload": {"sleep": 1.0}},
    }
    execution = env.start({"StartAt": "Nap", "States": {"Nap": nap, "After": {"Type": "Pass", "End": True}}})
    wait_for(lambda: "TaskStarted" in [e["type"] for e in env.history(execution)], what="the Lambda task")
    stopped_at = time.monotonic()
    env.sfn.stop_execution(executionArn=execution)
    assert env.status(execution) == "ABORTED"  # at once, though the function is still running
    _assert_aborted_once(env, execution, stopped_at)
    time.sleep(1.0)  # the function returns; nothing follows
    assert env.entered(execution) == ["Nap"]
    assert [e["status"] for e in env.status_events(execution)] == ["RUNNING", "ABORTED"]


def test_abort_inside_a_map_runs_no_further_iteration_or_state(env: Env) -> None:
    nap = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "End": True,
        "Parameters": {"FunctionName": FUNCTION, "Payload": {"sleep": 0.6}},
    }
    each = {
        "Type": "Map",
        "ItemsPath": "$.items",
        "MaxConcurrency": 1,
        "Next": "After",
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Nap", "States": {"Nap": nap}},
    }
    definition = {
        "StartAt": "Items",
        "States": {
            "Items": {"Type": "Pass", "Result": [1, 2, 3], "ResultPath": "$.items", "Next": "Each"},
            "Each": each,
            "After": {"Type": "Pass", "End": True},
        },
    }
    before = len(env.twin.runtime.invocations)
    execution = env.start(definition)
    wait_for(lambda: "TaskStarted" in [e["type"] for e in env.history(execution)], what="the first iteration")
    stopped_at = time.monotonic()
    env.sfn.stop_execution(executionArn=execution)
    _assert_aborted_once(env, execution, stopped_at)
    time.sleep(1.0)
    assert len(env.twin.runtime.invocations) - before == 1  # the running iteration finished; no other started
    assert "After" not in env.entered(execution)
    assert [e["status"] for e in env.status_events(execution)] == ["RUNNING", "ABORTED"]


def test_top_level_timeout_ends_timed_out_and_stops_the_sync_wait(env: Env) -> None:
    cluster_id = env.cluster()
    env.twin.faults.hang_next_job()
    step = {
        "Name": "hangs",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "s3://b/app.py"]},
    }
    add = {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:addStep.sync",
        "Next": "After",
        "Parameters": {"ClusterId": cluster_id, "Step": step},
    }
    execution = env.start(
        {"TimeoutSeconds": 1, "StartAt": "Add", "States": {"Add": add, "After": {"Type": "Pass", "End": True}}}
    )
    described = env.finish(execution, timeout=5)
    assert described["status"] == "TIMED_OUT" and described["stopDate"] >= described["startDate"]
    time.sleep(0.5)  # the .sync waiter notices within 0.2 s; nothing may follow
    events = env.status_events(execution)
    assert [e["status"] for e in events] == ["RUNNING", "TIMED_OUT"] and events[1]["stopDate"] is not None
    history = [e["type"] for e in env.history(execution)]
    assert history[-1] == "ExecutionTimedOut" and "TaskSucceeded" not in history and "ExecutionFailed" not in history
    assert "After" not in env.entered(execution)
    [step_id] = [s["Id"] for s in env.emr.list_steps(ClusterId=cluster_id)["Steps"]]
    assert env.twin.emr_ec2.describe_step(cluster_id, step_id)["Status"]["State"] == "RUNNING"  # left running
    assert env.twin.emr_ec2.describe_cluster(cluster_id)["Status"]["State"] == "RUNNING"


def test_stop_execution_keeps_its_error_and_cause_for_describe_and_the_aborted_event(env: Env) -> None:
    execution = env.start({"StartAt": "Nap", "States": {"Nap": {"Type": "Wait", "Seconds": 30, "End": True}}})
    stopped_at = time.monotonic()
    env.sfn.stop_execution(executionArn=execution, error="Cancelled", cause="bad input data")
    _assert_aborted_once(env, execution, stopped_at)
    described = env.sfn.describe_execution(executionArn=execution)
    assert (described["error"], described["cause"]) == ("Cancelled", "bad input data")
    aborted = env.status_events(execution)[-1]
    assert (aborted["error"], aborted["cause"]) == ("Cancelled", "bad input data")
    # without them, as before: none
    plain = env.start({"StartAt": "Nap", "States": {"Nap": {"Type": "Wait", "Seconds": 30, "End": True}}})
    env.sfn.stop_execution(executionArn=plain)
    _assert_aborted_once(env, plain, time.monotonic())
    assert "error" not in env.sfn.describe_execution(executionArn=plain)
    assert env.status_events(plain)[-1]["error"] is None


def test_stop_execution_is_recorded_with_who_stopped_it_and_a_failed_stop_is_not(env: Env) -> None:
    execution = env.start({"StartAt": "Nap", "States": {"Nap": {"Type": "Wait", "Seconds": 30, "End": True}}})
    alice = env.twin.client("stepfunctions", principal=ALICE)
    alice.stop_execution(executionArn=execution)
    record = env.record("StopExecution", lambda r: r["requestParameters"] == {"executionArn": execution})
    assert (record["eventSource"], record["userIdentity"]["arn"]) == ("states.amazonaws.com", ALICE)
    assert set(record["responseElements"]) == {"stopDate"} and record["managementEvent"] is True
    # on the bus, as source aws.states (the bus delivers asynchronously: wait for it)
    wait_for(lambda: record["eventID"] in [r["eventID"] for r in _stop_records(env)], what="the record on the bus")
    # Stopping an execution that does not exist fails and is not recorded
    before = len(_stop_records(env))
    with pytest.raises(ClientError):
        alice.stop_execution(executionArn=execution.rsplit(":", 1)[0] + ":no-such-run")
    assert len(_stop_records(env)) == before


def _stop_records(env: Env) -> list[dict[str, Any]]:
    return [
        e["detail"] for e in list(env.twin.events) if e["source"] == "aws.states" and e["detail-type"] == DETAIL_TYPE
    ]
