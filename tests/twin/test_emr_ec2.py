"""local/emr_ec2/: EMR on EC2 in the twin, through the boto3 `emr` API and the Step Functions integrations.

One twin for the module (no Spark: "instant" steps, or a fake spark-submit for the one runner test), deployed
from a tiny cloud assembly that declares the EMR roles, the instance profile and a security configuration,
so the deployer's AWS::IAM::InstanceProfile and AWS::EMR::SecurityConfiguration handlers are exercised too.
Phases are shortened (`phase_seconds`) so a cluster is WAITING in ~0.1 s.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.emr_ec2 import normalization_factor, parse_dist_cp, parse_spark_submit
from local.spark_runner import SparkRunner
from local.twin import Twin
from tests.twin.twin_helpers import deployed_twin, run_machine, wait_for

SERVICE_ROLE = "emr-service-role"
EC2_ROLE = "emr-ec2-role"
BUCKET = "emr-data"
LOGS = "emr-logs"
ROLE_ARN = "arn:aws:iam::123456789012:role/sfn"
TEMPLATE: dict[str, Any] = {
    "Resources": {
        "ServiceRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {"RoleName": SERVICE_ROLE, "AssumeRolePolicyDocument": {"Version": "2012-10-17"}},
        },
        "Ec2Role": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": EC2_ROLE,
                "AssumeRolePolicyDocument": {"Version": "2012-10-17"},
                # What runs on a cluster reads and writes S3 as this role (the twin's IAM evaluates it)
                "Policies": [
                    {
                        "PolicyName": "s3",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"],
                                    "Resource": [f"arn:aws:s3:::{b}{p}" for b in (BUCKET, LOGS) for p in ("", "/*")],
                                }
                            ],
                        },
                    }
                ],
            },
        },
        "Profile": {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "Ec2Role"}]}},
        "Security": {
            "Type": "AWS::EMR::SecurityConfiguration",
            "Properties": {"SecurityConfiguration": {"EncryptionConfiguration": {"EnableInTransitEncryption": False}}},
        },
        "DiskKey": {"Type": "AWS::KMS::Key", "Properties": {"Description": "local disks", "EnableKeyRotation": True}},
        "Data": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": BUCKET}},
        "Logs": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": LOGS}},
    },
    "Outputs": {
        "Profile": {"Value": {"Ref": "Profile"}},
        "ProfileArn": {"Value": {"Fn::GetAtt": ["Profile", "Arn"]}},
        "Security": {"Value": {"Ref": "Security"}},
        "DiskKeyArn": {"Value": {"Fn::GetAtt": ["DiskKey", "Arn"]}},
    },
}
FAKE_SUBMIT = r"""
import json, sys
print(json.dumps(sys.argv[1:]))
if "--fail" in sys.argv:
    print("ValueError: boom from the job", file=sys.stderr)
    sys.exit(1)
"""


class Env:
    """The module's twin plus request builders and waits."""

    def __init__(self, twin: Twin, outputs: dict[str, Any]) -> None:
        self.twin = twin
        self.outputs = outputs
        self.model = twin.emr_ec2
        self.emr = twin.client("emr")
        self.s3 = twin.client("s3")
        self.sfn = twin.client("stepfunctions")

    def request(self, *, fleets: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
        """A valid RunJobFlow request (instance fleets, kept alive) with `overrides` on top."""
        instances: dict[str, Any] = {"KeepJobFlowAliveWhenNoSteps": True, "InstanceFleets": fleets or FLEETS}
        request = {
            "Name": "test-cluster",
            "ReleaseLabel": "emr-7.5.0",
            "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
            "ServiceRole": SERVICE_ROLE,
            "JobFlowRole": self.outputs["Profile"],
            "LogUri": f"s3://{LOGS}/emr/",
            "Instances": instances,
            "Tags": [{"Key": "pipeline", "Value": "sales"}],
        }
        return request | overrides

    def cluster(self, **overrides: Any) -> str:
        cluster_id: str = self.emr.run_job_flow(**self.request(**overrides))["JobFlowId"]
        return cluster_id

    def ready_cluster(self, **overrides: Any) -> str:
        cluster_id = self.cluster(**overrides)
        self.model.wait_cluster(cluster_id, {"WAITING"})
        return cluster_id

    def add_steps(self, cluster_id: str, *steps: dict[str, Any]) -> list[str]:
        ids: list[str] = self.emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=list(steps))["StepIds"]
        return ids

    def state(self, cluster_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
        return status

    def step(self, cluster_id: str, step_id: str) -> dict[str, Any]:
        step: dict[str, Any] = self.emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
        return step

    def events(self, detail_type: str, cluster_id: str, count: int = 1) -> list[dict[str, Any]]:
        """The twin's events of a type for a cluster, once at least `count` arrived."""

        def found() -> list[dict[str, Any]]:
            return [
                e for e in list(self.twin.events)
                if e["detail-type"] == detail_type and e["detail"].get("clusterId") == cluster_id
            ]  # fmt: skip

        wait_for(lambda: len(found()) >= count, what=f"{count} {detail_type} events")
        return found()

    def log(self, uri: str) -> str:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return gzip.decompress(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()).decode()

    def run_machine(self, name: str, definition: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        return run_machine(self.sfn, name, definition, ROLE_ARN, timeout)


FLEETS: list[dict[str, Any]] = [
    {"Name": "primary", "InstanceFleetType": "MASTER", "TargetOnDemandCapacity": 1,
     "InstanceTypeConfigs": [{"InstanceType": "m5.xlarge"}]},
    {"Name": "core", "InstanceFleetType": "CORE", "TargetOnDemandCapacity": 2, "TargetSpotCapacity": 4,
     "InstanceTypeConfigs": [{"InstanceType": "m5.2xlarge", "WeightedCapacity": 2},
                             {"InstanceType": "r5.2xlarge", "WeightedCapacity": 2}],
     "LaunchSpecifications": {"SpotSpecification": {"TimeoutDurationMinutes": 10,
                                                    "TimeoutAction": "SWITCH_TO_ON_DEMAND"}}},
]  # fmt: skip
GROUPS: list[dict[str, Any]] = [
    {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
    {"Name": "core", "InstanceRole": "CORE", "InstanceType": "m5.2xlarge", "InstanceCount": 2},
    {"Name": "task", "InstanceRole": "TASK", "InstanceType": "m5.large", "InstanceCount": 3, "Market": "SPOT"},
]
GROUP_INSTANCES: dict[str, Any] = {"KeepJobFlowAliveWhenNoSteps": True, "InstanceGroups": GROUPS}
SIX_TYPES: dict[str, Any] = {
    **FLEETS[1],
    "InstanceTypeConfigs": [{"InstanceType": f"m5.{n}xlarge"} for n in range(2, 8)],
}
USER_REQUEST = {"Code": "USER_REQUEST", "Message": "Terminated by user request"}


def step(name: str, args: list[str] | None = None, action: str = "CONTINUE") -> dict[str, Any]:
    """An AddJobFlowSteps step on command-runner.jar (a spark-submit unless `args` say otherwise)."""
    jar_step = {"Jar": "command-runner.jar", "Args": args or ["spark-submit", "s3://b/app.py"]}
    return {"Name": name, "ActionOnFailure": action, "HadoopJarStep": jar_step}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with deployed_twin(tmp_path_factory.mktemp("emr-ec2-twin"), "demo", TEMPLATE) as (twin, outputs):
        yield Env(twin, outputs)


@pytest.fixture
def env(deployed: Env) -> Iterator[Env]:
    """Per test: no faults, short phases, instant steps; afterwards no cluster is left running."""
    model = deployed.model
    deployed.twin.faults.clear()
    model.phase_seconds, model.idle_time_scale, model.runner = 0.05, 1.0, None
    yield deployed
    for cluster_id in model.active_clusters():
        deployed.emr.set_termination_protection(JobFlowIds=[cluster_id], TerminationProtected=False)
        deployed.emr.terminate_job_flows(JobFlowIds=[cluster_id])
    assert model.wait_until(lambda: not model.active_clusters() and not model.busy(), 10), model.active_clusters()


# ---------------------------------------------------------------------------------------------- pure helpers


def test_spark_submit_options_come_before_the_entry_point() -> None:
    args = ["spark-submit", "--deploy-mode", "cluster", "--conf", "a=1", "--verbose", "--conf=b=2", "s3://b/app.py",
            "--conf", "app-arg"]  # fmt: skip
    options, entry, rest = parse_spark_submit(args)
    assert options == ["--deploy-mode", "cluster", "--conf", "a=1", "--verbose", "--conf=b=2"]
    assert (entry, rest) == ("s3://b/app.py", ["--conf", "app-arg"])
    with pytest.raises(ValueError, match="no application"):
        parse_spark_submit(["spark-submit", "--conf", "a=1"])


def test_dist_cp_options_and_normalization_factors() -> None:
    assert parse_dist_cp(["--src=s3://a/x", "--dest", "hdfs:///y", "--deleteOnSuccess"]) == {
        "src": "s3://a/x", "dest": "hdfs:///y", "deleteOnSuccess": ""
    }  # fmt: skip
    factors = {t: normalization_factor(t) for t in ("m5.small", "m5.large", "m5.xlarge", "r5.2xlarge", "c5.24xlarge")}
    assert factors == {"m5.small": 1, "m5.large": 4, "m5.xlarge": 8, "r5.2xlarge": 16, "c5.24xlarge": 192}


# ---------------------------------------------------------------------------------------------- deploy


def test_deploy_registers_the_security_configuration_instance_profile_and_key(env: Env) -> None:
    name = env.outputs["Security"]
    described = env.emr.describe_security_configuration(Name=name)
    expected = TEMPLATE["Resources"]["Security"]["Properties"]["SecurityConfiguration"]
    assert json.loads(described["SecurityConfiguration"]) == expected
    assert name in [c["Name"] for c in env.emr.list_security_configurations()["SecurityConfigurations"]]
    profile = env.twin.client("iam").get_instance_profile(InstanceProfileName=env.outputs["Profile"])["InstanceProfile"]
    assert profile["Arn"] == env.outputs["ProfileArn"]
    assert [r["RoleName"] for r in profile["Roles"]] == [EC2_ROLE]
    with pytest.raises(ClientError, match="already exists"):
        env.emr.create_security_configuration(Name=name, SecurityConfiguration="{}")
    key = env.twin.client("kms").describe_key(KeyId=env.outputs["DiskKeyArn"])["KeyMetadata"]
    assert key["Description"] == "local disks"


# ---------------------------------------------------------------------------------------------- clusters


def test_cluster_progresses_provisions_fleets_and_terminates_with_events(env: Env) -> None:
    cluster_id = env.cluster(SecurityConfiguration=env.outputs["Security"], AutoTerminationPolicy={"IdleTimeout": 3600})
    assert env.state(cluster_id)["State"] == "STARTING"
    assert env.model.wait_cluster(cluster_id, {"WAITING"}) == "WAITING"
    cluster = env.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ClusterArn"] == f"arn:aws:elasticmapreduce:us-east-1:123456789012:cluster/{cluster_id}"
    assert cluster["InstanceCollectionType"] == "INSTANCE_FLEET" and cluster["AutoTerminate"] is False
    assert cluster["LogUri"] == f"s3n://{LOGS}/emr/"  # as EMR reports it
    assert cluster["SecurityConfiguration"] == env.outputs["Security"]
    assert cluster["Tags"] == [{"Key": "pipeline", "Value": "sales"}]
    assert cluster["MasterPublicDnsName"].endswith(".ec2.internal")
    assert "ReadyDateTime" in cluster["Status"]["Timeline"]
    # 1 m5.xlarge (8) + 1 On-Demand and 2 Spot m5.2xlarge of weight 2 (16 each), each rounded up to 1 hour
    assert cluster["NormalizedInstanceHours"] == 8 + 3 * 16
    assert env.emr.get_auto_termination_policy(ClusterId=cluster_id)["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    core = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"][1]
    assert core["Status"]["State"] == "RUNNING"
    assert (core["ProvisionedOnDemandCapacity"], core["ProvisionedSpotCapacity"]) == (2, 4)
    assert [s["WeightedCapacity"] for s in core["InstanceTypeSpecifications"]] == [2, 2]
    assert len(env.emr.list_instances(ClusterId=cluster_id, InstanceFleetType="CORE")["Instances"]) == 3
    assert not env.twin.emr_ec2.busy()  # an idle WAITING cluster is not "in flight"

    env.emr.terminate_job_flows(JobFlowIds=[cluster_id])
    assert env.state(cluster_id)["State"] == "TERMINATING"
    env.model.wait_cluster(cluster_id, {"TERMINATED"})
    assert env.state(cluster_id)["StateChangeReason"] == USER_REQUEST
    assert cluster_id not in env.model.active_clusters()
    fleets = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"]
    assert {f["Status"]["State"] for f in fleets} == {"TERMINATED"}
    events = env.events("EMR Cluster State Change", cluster_id, count=3)
    assert [e["detail"]["state"] for e in events] == ["STARTING", "WAITING", "TERMINATED"]
    last = events[-1]
    assert last["source"] == "aws.emr" and last["detail"]["severity"] == "INFO"
    assert json.loads(last["detail"]["stateChangeReason"]) == {k.lower(): v for k, v in USER_REQUEST.items()}
    assert last["detail"]["message"].startswith(f"Amazon EMR Cluster {cluster_id} (test-cluster) has terminated at ")
    listed = env.emr.list_clusters(ClusterStates=["TERMINATED"])["Clusters"]
    assert cluster_id in [c["Id"] for c in listed]
    assert cluster_id not in [c["Id"] for c in env.emr.list_clusters(ClusterStates=["WAITING"])["Clusters"]]


def test_instance_groups_and_bootstrap_actions(env: Env) -> None:
    env.s3.put_object(Bucket=BUCKET, Key="bootstrap/install.sh", Body=b"#!/bin/bash\n")
    script = f"s3://{BUCKET}/bootstrap/install.sh"
    actions = [{"Name": "install", "ScriptBootstrapAction": {"Path": script, "Args": ["a"]}}]
    cluster_id = env.ready_cluster(Instances=GROUP_INSTANCES, BootstrapActions=actions)
    groups = {g["Name"]: g for g in env.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}
    seen = {n: (g["InstanceGroupType"], g["RunningInstanceCount"], g["Status"]["State"]) for n, g in groups.items()}
    assert seen == {"primary": ("MASTER", 1, "RUNNING"), "core": ("CORE", 2, "RUNNING"), "task": ("TASK", 3, "RUNNING")}
    assert groups["task"]["Market"] == "SPOT"
    assert env.emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"] == [
        {"Name": "install", "ScriptPath": script, "Args": ["a"]}
    ]
    assert env.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["InstanceCollectionType"] == "INSTANCE_GROUP"


VALIDATION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("release label", {"ReleaseLabel": "7.5.0"}, "release label '7.5.0' is not valid"),
    ("fleets and groups", {"Instances": {"InstanceFleets": FLEETS, "InstanceGroups": GROUPS}}, "not both"),
    ("two masters", {"Instances": {"InstanceFleets": [FLEETS[0], FLEETS[0]]}}, "exactly one MASTER"),
    ("master capacity", {"Instances": {"InstanceFleets": [{**FLEETS[0], "TargetOnDemandCapacity": 2}]}}, "exactly 1"),
    ("six types", {"Instances": {"InstanceFleets": [FLEETS[0], SIX_TYPES]}}, "maximum is 5"),
    ("master count", {"Instances": {"InstanceGroups": [{**GROUPS[0], "InstanceCount": 2}]}}, "MASTER instance group"),
    ("security configuration", {"SecurityConfiguration": "nope"}, "Security configuration 'nope' does not exist"),
    ("service role", {"ServiceRole": ""}, "ServiceRole is required"),
    ("unknown profile", {"JobFlowRole": "no-such-profile"}, "Invalid InstanceProfile: no-such-profile"),
    ("idle timeout", {"AutoTerminationPolicy": {"IdleTimeout": 30}}, "IdleTimeout must be between 60"),
    ("step concurrency", {"StepConcurrencyLevel": 300}, "StepConcurrencyLevel must be between 1 and 256"),
]


@pytest.mark.parametrize(("case", "overrides", "message"), VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES])
def test_run_job_flow_is_validated_like_emr(env: Env, case: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientError) as error:
        env.emr.run_job_flow(**env.request(**overrides))
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert message in error.value.response["Error"]["Message"]


def test_unknown_ids_are_invalid_requests(env: Env) -> None:
    with pytest.raises(ClientError) as error:
        env.emr.describe_cluster(ClusterId="j-NOSUCHCLUSTER")
    assert error.value.response["Error"]["Code"] == "InvalidRequestException"
    assert "Cluster id 'j-NOSUCHCLUSTER' is not valid." in str(error.value)


def test_throttling_fault_on_run_job_flow(env: Env) -> None:
    env.twin.faults.fail_next("emr", "RunJobFlow", times=2)
    no_retries = boto3.client(
        "emr", endpoint_url=env.twin.endpoint, region_name="us-east-1", aws_access_key_id="t",
        aws_secret_access_key="t", config=Config(retries={"total_max_attempts": 1}),
    )  # fmt: skip
    for _ in range(2):
        with pytest.raises(ClientError) as error:
            no_retries.run_job_flow(**env.request())
        assert error.value.response["Error"]["Code"] == "ThrottlingException"
    assert env.twin.faults.fired[-2:] == [("emr", "RunJobFlow", "ThrottlingException")] * 2
    env.ready_cluster()  # the fault is spent


# ---------------------------------------------------------------------------------------------- faults


def test_spot_shortage_switches_to_on_demand(env: Env) -> None:
    env.twin.faults.spot_shortage_next()
    cluster_id = env.ready_cluster()
    core = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"][1]
    assert (core["ProvisionedOnDemandCapacity"], core["ProvisionedSpotCapacity"]) == (6, 0)
    assert "SWITCH_TO_ON_DEMAND" in core["Status"]["StateChangeReason"]["Message"]
    markets = {i["Market"] for i in env.emr.list_instances(ClusterId=cluster_id, InstanceFleetType="CORE")["Instances"]}
    assert markets == {"ON_DEMAND"}
    [event] = env.events("EMR Instance Fleet State Change", cluster_id)
    assert event["detail"]["severity"] == "WARN"


def test_spot_reclaimed_under_a_step_fails_it_and_emr_replaces_the_task_instances(env: Env) -> None:
    cluster_id = env.ready_cluster(Instances=GROUP_INSTANCES)
    env.twin.faults.reclaim_spot_during_next_step()
    failing, following = env.add_steps(cluster_id, step("reclaimed"), step("after"))
    env.model.wait_step(cluster_id, following, {"COMPLETED"})
    failed = env.step(cluster_id, failing)["Status"]
    assert failed["State"] == "FAILED" and "reclaimed spot capacity" in failed["FailureDetails"]["Message"]
    assert "injected spot interruption" in env.log(failed["FailureDetails"]["LogFile"])
    task = env.emr.list_instances(ClusterId=cluster_id, InstanceGroupTypes=["TASK"])["Instances"]
    lost = [i for i in task if i["Status"]["State"] == "TERMINATED"]
    assert len(lost) == 3 and {i["Market"] for i in task} == {"SPOT"}
    assert {i["Status"]["StateChangeReason"]["Code"] for i in lost} == {"INSTANCE_FAILURE"}
    assert all("Server.SpotInstanceTermination" in i["Status"]["StateChangeReason"]["Message"] for i in lost)
    assert all(i["Status"]["Timeline"]["EndDateTime"] <= failed["Timeline"]["EndDateTime"] for i in lost)
    assert len([i for i in task if i["Status"]["State"] == "RUNNING"]) == 3  # replaced to the group's count
    others = env.emr.list_instances(ClusterId=cluster_id, InstanceGroupTypes=["MASTER", "CORE"])["Instances"]
    assert {i["Status"]["State"] for i in others} == {"RUNNING"}
    assert env.state(cluster_id)["State"] in {"WAITING", "RUNNING"}  # ActionOnFailure CONTINUE: the cluster stays


def test_spot_shortage_with_terminate_cluster_ends_the_cluster(env: Env) -> None:
    env.twin.faults.spot_shortage_next()
    spot = {"TimeoutDurationMinutes": 5, "TimeoutAction": "TERMINATE_CLUSTER"}
    core = {**FLEETS[1], "LaunchSpecifications": {"SpotSpecification": spot}}
    cluster_id = env.cluster(fleets=[FLEETS[0], core])
    [step_id] = env.add_steps(cluster_id, step("etl"))
    env.model.wait_cluster(cluster_id, {"TERMINATED_WITH_ERRORS"})
    reason = env.state(cluster_id)["StateChangeReason"]
    assert reason["Code"] == "INSTANCE_FLEET_TIMEOUT" and "Spot" in reason["Message"]
    assert env.step(cluster_id, step_id)["Status"]["State"] == "CANCELLED"
    [*_, last] = env.events("EMR Cluster State Change", cluster_id, count=2)
    assert last["detail"]["severity"] == "CRITICAL" and last["detail"]["state"] == "TERMINATED_WITH_ERRORS"


def test_spot_shortage_of_instance_groups(env: Env) -> None:
    env.twin.faults.spot_shortage_next(times=2)
    cluster_id = env.ready_cluster(Instances=GROUP_INSTANCES)
    task = env.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"][2]
    assert (task["RunningInstanceCount"], task["Status"]["State"]) == (0, "PROVISIONING")  # the cluster goes on
    spot_core = [GROUPS[0], {**GROUPS[1], "Market": "SPOT"}]
    failed = env.cluster(Instances={"KeepJobFlowAliveWhenNoSteps": True, "InstanceGroups": spot_core})
    env.model.wait_cluster(failed, {"TERMINATED_WITH_ERRORS"})
    assert env.state(failed)["StateChangeReason"]["Code"] == "INSTANCE_FAILURE"


def test_bootstrap_fault_ends_the_cluster_and_cancels_pending_steps(env: Env) -> None:
    env.twin.faults.fail_next_bootstrap()
    cluster_id = env.cluster()
    step_ids = env.add_steps(cluster_id, step("one"), step("two"))
    env.model.wait_cluster(cluster_id, {"TERMINATED_WITH_ERRORS"})
    reason = env.state(cluster_id)["StateChangeReason"]
    assert reason["Code"] == "BOOTSTRAP_FAILURE"
    master = env.emr.list_instances(ClusterId=cluster_id, InstanceFleetType="MASTER")["Instances"][0]
    assert reason["Message"] == (
        f"On the master instance ({master['Ec2InstanceId']}), bootstrap action 1 returned a non-zero return code"
    )
    assert [env.step(cluster_id, s)["Status"]["State"] for s in step_ids] == ["CANCELLED", "CANCELLED"]
    with pytest.raises(ClientError, match="may not be modified"):
        env.add_steps(cluster_id, step("late"))


def test_missing_bootstrap_script_is_a_bootstrap_failure_naming_the_path(env: Env) -> None:
    path = f"s3://{BUCKET}/bootstrap/missing.sh"
    cluster_id = env.cluster(BootstrapActions=[{"Name": "b", "ScriptBootstrapAction": {"Path": path}}])
    env.model.wait_cluster(cluster_id, {"TERMINATED_WITH_ERRORS"})
    reason = env.state(cluster_id)["StateChangeReason"]
    assert reason["Code"] == "BOOTSTRAP_FAILURE" and path in reason["Message"]


# ---------------------------------------------------------------------------------------------- steps


def test_steps_run_in_order_up_to_the_concurrency_level(env: Env) -> None:
    env.twin.faults.hang_next_job()
    env.twin.faults.hang_next_job()
    cluster_id = env.cluster(StepConcurrencyLevel=2)
    first, second, third = env.add_steps(cluster_id, step("a"), step("b"), step("c"))
    env.model.wait_step(cluster_id, second, {"RUNNING"})
    assert env.state(cluster_id)["State"] == "RUNNING"
    states = [env.step(cluster_id, s)["Status"]["State"] for s in (first, second, third)]
    assert states == ["RUNNING", "RUNNING", "PENDING"]
    assert env.twin.emr_ec2.busy()
    assert env.emr.modify_cluster(ClusterId=cluster_id, StepConcurrencyLevel=3)["StepConcurrencyLevel"] == 3
    env.model.wait_step(cluster_id, third, {"COMPLETED"})
    infos = env.emr.cancel_steps(ClusterId=cluster_id, StepIds=[first, second, third])["CancelStepsInfoList"]
    assert [i["Status"] for i in infos] == ["SUBMITTED", "SUBMITTED", "FAILED"]
    assert env.model.wait_step(cluster_id, first, {"CANCELLED"}) == "CANCELLED"
    env.model.wait_cluster(cluster_id, {"WAITING"})
    step_events = env.events("EMR Step Status Change", cluster_id, count=11)  # a and b: 4 each (to CANCELLED), c: 3
    assert [e["detail"]["state"] for e in step_events if e["detail"]["stepId"] == first] == [
        "PENDING", "RUNNING", "CANCEL_PENDING", "CANCELLED"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "after", "cluster_state"),
    [
        ("CONTINUE", "COMPLETED", "WAITING"),
        ("CANCEL_AND_WAIT", "CANCELLED", "WAITING"),
        ("TERMINATE_CLUSTER", "CANCELLED", "TERMINATED_WITH_ERRORS"),
    ],
)
def test_action_on_failure(env: Env, action: str, after: str, cluster_state: str) -> None:
    env.twin.faults.fail_next_job("Job failed: injected executor loss")
    cluster_id = env.ready_cluster()
    failing, following = env.add_steps(cluster_id, step("failing", action=action), step("following"))
    env.model.wait_step(cluster_id, following, {after})
    env.model.wait_cluster(cluster_id, {cluster_state})
    failed = env.step(cluster_id, failing)["Status"]
    assert failed["State"] == "FAILED"
    assert failed["FailureDetails"] == {
        "Reason": "Job failed: injected executor loss",
        "Message": "Job failed: injected executor loss",
        "LogFile": f"s3://{LOGS}/emr/{cluster_id}/steps/{failing}/stderr.gz",
    }
    assert "injected fault" in env.log(failed["FailureDetails"]["LogFile"])
    if cluster_state == "TERMINATED_WITH_ERRORS":
        reason = env.state(cluster_id)["StateChangeReason"]
        assert reason == {"Code": "STEP_FAILURE", "Message": "Shut down as step failed"}
    failed_event = next(
        e for e in env.events("EMR Step Status Change", cluster_id, count=3) if e["detail"]["state"] == "FAILED"
    )
    assert failed_event["detail"]["severity"] == "ERROR" and failed_event["detail"]["actionOnFailure"] == action
    assert failed_event["detail"]["logUri"] == failed["FailureDetails"]["LogFile"]


def test_termination_protection_and_interrupted_steps(env: Env) -> None:
    env.twin.faults.hang_next_job()
    cluster_id = env.ready_cluster()
    env.emr.set_termination_protection(JobFlowIds=[cluster_id], TerminationProtected=True)
    [running] = env.add_steps(cluster_id, step("hangs"))
    env.model.wait_step(cluster_id, running, {"RUNNING"})
    with pytest.raises(ClientError) as error:
        env.emr.terminate_job_flows(JobFlowIds=[cluster_id])
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "termination protected" in error.value.response["Error"]["Message"]
    env.emr.set_termination_protection(JobFlowIds=[cluster_id], TerminationProtected=False)
    env.emr.terminate_job_flows(JobFlowIds=[cluster_id])
    env.model.wait_cluster(cluster_id, {"TERMINATED"})
    assert env.step(cluster_id, running)["Status"]["State"] == "INTERRUPTED"
    env.emr.terminate_job_flows(JobFlowIds=[cluster_id])  # terminating a terminated cluster is a no-op


def test_list_steps_newest_first_unless_filtered(env: Env) -> None:
    env.twin.faults.fail_next_job()
    cluster_id = env.ready_cluster()
    ids = env.add_steps(cluster_id, step("one"), step("two"), step("three"))
    env.model.wait_step(cluster_id, ids[-1], {"COMPLETED"})
    assert [s["Id"] for s in env.emr.list_steps(ClusterId=cluster_id)["Steps"]] == ids[::-1]
    assert [s["Id"] for s in env.emr.list_steps(ClusterId=cluster_id, StepStates=["FAILED"])["Steps"]] == [ids[0]]
    by_id = env.emr.list_steps(ClusterId=cluster_id, StepIds=[ids[1]], StepStates=["COMPLETED"])["Steps"]
    assert [(s["Id"], s["Name"], s["Config"]["Jar"]) for s in by_id] == [(ids[1], "two", "command-runner.jar")]
    # EMR lists newest first only without a filter: filtered, the twin lists oldest first (an order AWS may give)
    assert [s["Id"] for s in env.emr.list_steps(ClusterId=cluster_id, StepIds=ids)["Steps"]] == ids
    assert [s["Id"] for s in env.emr.list_steps(ClusterId=cluster_id, StepStates=["COMPLETED"])["Steps"]] == ids[1:]


def test_list_steps_and_clusters_come_50_a_page_as_on_emr(env: Env) -> None:
    cluster_id = env.ready_cluster()
    ids = env.add_steps(cluster_id, *[step(f"s{n}") for n in range(55)])
    first = env.emr.list_steps(ClusterId=cluster_id)
    assert [s["Id"] for s in first["Steps"]] == ids[::-1][:50] and first["Marker"]
    rest = env.emr.list_steps(ClusterId=cluster_id, Marker=first["Marker"])
    assert [s["Id"] for s in rest["Steps"]] == ids[::-1][50:] and "Marker" not in rest
    pages = env.emr.get_paginator("list_steps").paginate(ClusterId=cluster_id)
    assert sum(len(p["Steps"]) for p in pages) == 55
    with pytest.raises(ClientError, match="at most 10 step IDs"):
        env.emr.list_steps(ClusterId=cluster_id, StepIds=ids[:11])
    assert len(env.emr.list_clusters()["Clusters"]) <= 50


def test_steps_of_a_cluster_without_keep_alive_then_all_steps_completed(env: Env) -> None:
    request = env.request(Steps=[step("only")])
    request["Instances"] = {**request["Instances"], "KeepJobFlowAliveWhenNoSteps": False}
    cluster_id = env.emr.run_job_flow(**request)["JobFlowId"]
    env.model.wait_cluster(cluster_id, {"TERMINATED"})
    assert env.state(cluster_id)["StateChangeReason"]["Code"] == "ALL_STEPS_COMPLETED"
    [only] = env.emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert only["Status"]["State"] == "COMPLETED"


def test_auto_termination_after_the_idle_timeout(env: Env) -> None:
    env.model.idle_time_scale = 0.005  # 60 s -> 0.3 s
    cluster_id = env.ready_cluster(AutoTerminationPolicy={"IdleTimeout": 60})
    env.model.wait_cluster(cluster_id, {"TERMINATED"})
    reason = env.state(cluster_id)["StateChangeReason"]
    assert "idle timeout of 60 seconds" in reason["Message"]


def test_steps_that_are_not_run_locally_complete_with_a_note(env: Env) -> None:
    cluster_id = env.ready_cluster()
    hive = step("hive", args=["hive-script", "--run-hive-script", "--args", "-f", "s3://b/q.sql"])
    [step_id] = env.add_steps(cluster_id, hive)
    env.model.wait_step(cluster_id, step_id, {"COMPLETED"})
    stderr = env.log(f"s3://{LOGS}/emr/{cluster_id}/steps/{step_id}/stderr.gz")
    assert "local-twin: step not executed (jar command-runner.jar hive-script)" in stderr


def test_s3_dist_cp_round_trips_through_the_clusters_hdfs(env: Env) -> None:
    files = {"in/a.csv": b"a\n1\n", "in/sub/b.csv": b"b\n2\n", "in/skip.txt": b"x"}
    for key, body in files.items():
        env.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    cluster_id = env.ready_cluster()
    csv_only = r"--srcPattern=.*\.csv"
    to_hdfs = step("to-hdfs", ["s3-dist-cp", f"--src=s3://{BUCKET}/in/", "--dest=hdfs:///staging", csv_only])
    to_s3 = step("to-s3", ["s3-dist-cp", "--src", "hdfs:///staging", "--dest", f"s3://{BUCKET}/out"])
    missing = step("missing", ["s3-dist-cp", f"--src=s3://{BUCKET}/nothing/", "--dest=hdfs:///x"])
    first, second, third = env.add_steps(cluster_id, to_hdfs, to_s3, missing)
    env.model.wait_step(cluster_id, third, {"FAILED"})
    assert [env.step(cluster_id, s)["Status"]["State"] for s in (first, second)] == ["COMPLETED", "COMPLETED"]
    out = {o["Key"] for o in env.s3.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"]}
    assert out == {"out/a.csv", "out/sub/b.csv"}
    assert env.s3.get_object(Bucket=BUCKET, Key="out/sub/b.csv")["Body"].read() == b"b\n2\n"
    assert "copied 2 files" in env.log(f"s3://{LOGS}/emr/{cluster_id}/steps/{first}/stderr.gz")
    assert "no files found" in env.step(cluster_id, third)["Status"]["FailureDetails"]["Reason"]


def test_spark_submit_steps_run_on_the_runner_with_emr_ec2_logs(env: Env, tmp_path: Path) -> None:
    fake = tmp_path / "fake_submit.py"
    fake.write_text(FAKE_SUBMIT)
    env.model.runner = SparkRunner(env.s3, workdir=tmp_path / "spark", submit_command=[sys.executable, str(fake)])
    env.s3.put_object(Bucket=BUCKET, Key="jobs/app.py", Body=b"print('app')\n")
    entry = f"s3://{BUCKET}/jobs/app.py"
    cluster_id = env.ready_cluster()
    ok = step("ok", ["spark-submit", "--deploy-mode", "cluster", "--conf", "spark.x=1", entry, "--greeting", "hi"])
    bad = step("bad", ["spark-submit", entry, "--fail"])
    good, failing = env.add_steps(cluster_id, ok, bad)
    env.model.wait_step(cluster_id, failing, {"FAILED"}, timeout=30)
    assert env.step(cluster_id, good)["Status"]["State"] == "COMPLETED"
    argv = json.loads(env.log(f"s3://{LOGS}/emr/{cluster_id}/steps/{good}/stdout.gz"))
    assert "spark.x=1" in argv and "--deploy-mode" not in argv  # cluster placement is dropped for local[N]
    greeting = argv.index("--greeting")
    assert argv[greeting - 1].endswith("app.py") and argv[greeting + 1] == "hi"  # options, entry point, arguments
    details = env.step(cluster_id, failing)["Status"]["FailureDetails"]
    assert details["Reason"] == "ValueError: boom from the job"
    assert details["Message"] == "spark-submit exited with code 1: ValueError: boom from the job"
    assert details["LogFile"] == f"s3://{LOGS}/emr/{cluster_id}/steps/{failing}/stderr.gz"
    assert "ValueError: boom from the job" in env.log(details["LogFile"])


# ---------------------------------------------------------------------------------------------- resizing


def test_modify_instance_fleet_resizes_then_runs(env: Env) -> None:
    cluster_id = env.ready_cluster()
    core_id = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"][1]["Id"]
    resize = {"InstanceFleetId": core_id, "TargetOnDemandCapacity": 6, "TargetSpotCapacity": 0}
    env.emr.modify_instance_fleet(ClusterId=cluster_id, InstanceFleet=resize)
    core = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"][1]
    assert core["Status"]["State"] == "RESIZING" and env.twin.emr_ec2.busy()
    with pytest.raises(ClientError, match="already RESIZING"):
        env.emr.modify_instance_fleet(ClusterId=cluster_id, InstanceFleet={**resize, "TargetOnDemandCapacity": 8})

    def core_fleet() -> dict[str, Any]:
        fleet: dict[str, Any] = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"][1]
        return fleet

    core = wait_for(lambda: (f := core_fleet())["Status"]["State"] == "RUNNING" and f, what="the fleet RUNNING")
    assert (core["ProvisionedOnDemandCapacity"], core["ProvisionedSpotCapacity"]) == (6, 0)
    running = env.emr.list_instances(ClusterId=cluster_id, InstanceFleetId=core_id, InstanceStates=["RUNNING"])
    assert len(running["Instances"]) == 3
    events = env.events("EMR Instance Fleet State Change", cluster_id, count=2)
    assert [e["detail"]["state"] for e in events] == ["RESIZING", "RUNNING"]
    assert "is complete" in events[-1]["detail"]["message"]
    master_id = env.emr.list_instance_fleets(ClusterId=cluster_id)["InstanceFleets"][0]["Id"]
    with pytest.raises(ClientError, match="MASTER"):
        env.emr.modify_instance_fleet(ClusterId=cluster_id, InstanceFleet={"InstanceFleetId": master_id})


def test_modify_instance_groups_resizes_then_runs(env: Env) -> None:
    cluster_id = env.ready_cluster(Instances=GROUP_INSTANCES)
    task_id = env.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"][2]["Id"]
    env.emr.modify_instance_groups(
        ClusterId=cluster_id, InstanceGroups=[{"InstanceGroupId": task_id, "InstanceCount": 1}]
    )
    events = env.events("EMR Instance Group State Change", cluster_id, count=2)
    seen = [(e["detail"]["state"], e["detail"]["runningInstanceCount"]) for e in events]
    assert seen == [("RESIZING", "3"), ("RUNNING", "1")]
    task = env.emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"][2]
    assert (task["RequestedInstanceCount"], task["RunningInstanceCount"], task["Status"]["State"]) == (1, 1, "RUNNING")


# ---------------------------------------------------------------------------------------------- Step Functions


def _create_cluster_state(env: Env, **overrides: Any) -> dict[str, Any]:
    parameters = env.request(**overrides)
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:createCluster.sync",
        "Parameters": parameters,
        "ResultPath": "$.cluster",
        "Retry": [{"ErrorEquals": ["EMR.AmazonElasticMapReduceException"], "IntervalSeconds": 1, "MaxAttempts": 3}],
        "Next": "AddStep",
    }


def _machine(env: Env, add_step_args: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "StartAt": "CreateCluster",
        "States": {
            "CreateCluster": _create_cluster_state(env, **overrides),
            "AddStep": {
                "Type": "Task",
                "Resource": "arn:aws:states:::elasticmapreduce:addStep.sync",
                "Parameters": {
                    "ClusterId.$": "$.cluster.ClusterId",
                    "Step": step("etl", add_step_args),
                },
                "ResultPath": "$.step",
                "Next": "Terminate",
            },
            "Terminate": {
                "Type": "Task",
                "Resource": "arn:aws:states:::elasticmapreduce:terminateCluster.sync",
                "Parameters": {"ClusterId.$": "$.cluster.ClusterId"},
                "ResultPath": "$.terminated",
                "End": True,
            },
        },
    }


def test_step_functions_create_add_step_terminate(env: Env) -> None:
    env.twin.faults.fail_next("emr", "RunJobFlow", times=1)  # throttled once, retried by the workflow
    described = env.run_machine("emr-happy", _machine(env, ["spark-submit", "s3://b/app.py"]))
    assert described["status"] == "SUCCEEDED", described.get("cause")
    output = json.loads(described["output"])
    cluster_id = output["cluster"]["ClusterId"]
    assert output["cluster"]["ClusterArn"].endswith(f":cluster/{cluster_id}")
    assert output["step"]["Step"]["Status"]["State"] == "COMPLETED"
    assert output["terminated"] == {}
    assert env.state(cluster_id)["State"] == "TERMINATED"
    assert ("emr", "RunJobFlow", "ThrottlingException") in env.twin.faults.fired


def test_step_functions_failed_step_fails_the_task_with_its_failure_details(env: Env) -> None:
    env.twin.faults.fail_next_job("Job failed: injected")
    described = env.run_machine("emr-failing", _machine(env, ["spark-submit", "s3://b/app.py"]))
    assert described["status"] == "FAILED"
    assert described["error"] == "States.TaskFailed"
    cause = json.loads(described["cause"])
    assert cause["Step"]["Status"]["State"] == "FAILED"
    assert cause["Step"]["Status"]["FailureDetails"]["Reason"] == "Job failed: injected"
    assert cause["Step"]["Status"]["FailureDetails"]["LogFile"].endswith("/stderr.gz")


def test_step_functions_create_cluster_sync_fails_when_the_cluster_ends(env: Env) -> None:
    env.twin.faults.fail_next_bootstrap("bootstrap action 1 failed on {instance_id}")
    described = env.run_machine("emr-bootstrap", _machine(env, ["spark-submit", "s3://b/app.py"]))
    assert (described["status"], described["error"]) == ("FAILED", "States.TaskFailed")
    cluster = json.loads(described["cause"])
    assert cluster["Status"]["State"] == "TERMINATED_WITH_ERRORS"
    assert cluster["Status"]["StateChangeReason"]["Code"] == "BOOTSTRAP_FAILURE"
    assert cluster["Status"]["StateChangeReason"]["Message"].startswith("bootstrap action 1 failed on i-")


def test_step_functions_create_cluster_requires_keep_alive(env: Env) -> None:
    machine = _machine(env, ["spark-submit", "s3://b/app.py"])
    machine["States"]["CreateCluster"]["Parameters"]["Instances"]["KeepJobFlowAliveWhenNoSteps"] = False
    described = env.run_machine("emr-no-keepalive", machine)
    assert (described["status"], described["error"]) == ("FAILED", "EMR.AmazonElasticMapReduceException")
    assert "KeepJobFlowAliveWhenNoSteps" in described["cause"]


def test_step_functions_failed_step_inside_a_map_is_caught_as_task_failed(env: Env) -> None:
    # moto re-raises a Map iteration's States.* error as a ValueError (States.Runtime); AWS keeps it and its cause.
    cluster_id = env.ready_cluster()
    env.twin.faults.fail_next_job("Job failed: in a map")
    run_step = {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:addStep.sync",
        "Parameters": {"ClusterId": cluster_id, "Step.$": "$"},
        "End": True,
    }
    machine = {
        "StartAt": "RunSteps",
        "States": {
            "RunSteps": {
                "Type": "Map",
                "ItemsPath": "$.steps",
                "MaxConcurrency": 1,
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": "RunStep",
                    "States": {"RunStep": run_step},
                },  # noqa: E501
                "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "Caught"}],
                "Next": "Done",
            },
            "Caught": {"Type": "Pass", "End": True},
            "Done": {"Type": "Succeed"},
        },
    }
    arn = env.sfn.create_state_machine(name="emr-map", definition=json.dumps(machine), roleArn=ROLE_ARN)[
        "stateMachineArn"
    ]
    execution = env.sfn.start_execution(stateMachineArn=arn, input=json.dumps({"steps": [step("a"), step("b")]}))
    wait_for(lambda: env.sfn.describe_execution(executionArn=execution["executionArn"])["status"] != "RUNNING")
    described = env.sfn.describe_execution(executionArn=execution["executionArn"])
    assert described["status"] == "SUCCEEDED", described
    error = json.loads(described["output"])["error"]
    assert error["Error"] == "States.TaskFailed"
    assert json.loads(error["Cause"])["Step"]["Status"]["FailureDetails"]["Reason"] == "Job failed: in a map"
    assert [s["Name"] for s in env.emr.list_steps(ClusterId=cluster_id)["Steps"]] == ["a"]  # the map stopped
