"""The emr-ec2 and emr-eks runtimes: config rules, config -> EMR request shapes, prepare's step rendering and
cluster resolution, and finalize's ledger update (EMR faked with moto-free stubs)."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from autopilot_common.pricing import shipped_prices
from config.ec2 import Ec2Runtime
from config.loader import ConfigError, validate_config
from finalization import ClusterPricing, FinalizeRequest, finalize_run
from preparation import prepare_run, resolve_cluster, step_name
from stacks.emr_ec2_spec import cluster_request, launch_settings, step_templates
from tests.unit.conftest import SPARK, ec2_config, ec2_runtime

# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"instances": {"mode": "fleets", "core": {"spot_units": 1}}}, "spot for core nodes"),
        ({"instances": {"mode": "groups", "primary": {"market": "spot"}}}, "spot for primary nodes"),
        ({"instances": {"mode": "fleets", "core": {"on_demand_units": 0}}}, "at least 1"),
        ({"instances": {"mode": "groups"}, "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]},
         "instance groups take one subnet"),
        ({"steps": [SPARK, SPARK]}, "duplicate step name"),
        ({"steps": [{**SPARK, "arguments": ["{{nope}}"]}]}, "unknown token {{nope}}"),
        ({"applications": ["Hadoop"]}, "Spark steps need 'Spark'"),
        ({"steps": [{**SPARK, "entry_point": "missing.py"}]}, "runtime.steps[0].entry_point: got 'missing.py'"),
        ({"bootstrap_actions": [{"name": "x", "script": "nope.sh"}]}, "bootstrap_actions[0].script: got 'nope.sh'"),
        ({"existing_cluster": {"cluster_id": "j-ABCDEFGH1234"}, "step_concurrency": 2}, "apply only to transient"),
        ({"existing_cluster": {"cluster_id": "j-ABCDEFGH1234", "tag_key": "k", "tag_value": "v"}}, "not both"),
        ({"scaling": {"mode": "managed", "minimum_units": 5, "maximum_units": 2}}, "must not exceed"),
        ({"instances": {"mode": "fleets", "task": {"instance_types": [{"type": "M5 XL"}]}}}, "instances.task"),
        ({"steps": [{"type": "pig", "name": "x"}]}, "steps.0.type: got 'pig'"),
    ],
)  # fmt: skip
def test_bad_ec2_config_gets_one_clear_error(runtime: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(ec2_config(runtime))
    assert message in str(err.value)
    assert "pipeline 'pipe'" in str(err.value)


def test_spot_for_core_is_allowed_explicitly_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = ec2_runtime(
            instances={"mode": "fleets", "core": {"spot_units": 2}}, allow_spot_for_primary_and_core=True
        )
    assert runtime.instances.core.spot_units == 2  # type: ignore[union-attr]
    assert any("spot capacity for core nodes" in str(w.message) for w in caught)


def test_primary_size_follows_node_count() -> None:
    assert ec2_runtime().primary_instance_type() == "m5.large"
    big = ec2_runtime(instances={"mode": "fleets", "task": {"spot_units": 60}})
    assert big.primary_instance_type() == "m5.xlarge"
    scaled = ec2_runtime(scaling={"mode": "managed", "minimum_units": 2, "maximum_units": 80})
    assert scaled.primary_instance_type() == "m5.xlarge"


def test_execution_timeout_covers_start_up_and_every_step() -> None:
    runtime = ec2_runtime(startup_timeout_minutes=20, steps=[{**SPARK, "timeout_minutes": 30}, {**SPARK, "name": "b"}])
    assert runtime.execution_timeout_minutes == 20 + 30 + 60
    # Each step's own timeout; the first step run on a cluster waits PENDING while it starts, so RunSteps adds the
    # launch's startup_seconds to that step's task timeout: it is the one that bounds start-up.
    assert [t["timeout_seconds"] for t in step_templates(runtime, "art")] == [30 * 60, 60 * 60]
    assert launch_settings(runtime)["startup_seconds"] == 20 * 60
    existing = ec2_runtime(existing_cluster={"cluster_id": "j-ABCDEFGHIJKL"}, steps=[{**SPARK, "timeout_minutes": 30}])
    assert existing.execution_timeout_minutes == 30  # a running cluster has no start-up to wait for
    assert [t["timeout_seconds"] for t in step_templates(existing, "art")] == [30 * 60]
    assert launch_settings(existing) == {
        "attempt": 1,
        "max_attempts": 1,
        "resume_from": 0,
        "startup_seconds": 0,
        "retry_when": [],
        "earlier": [],
    }


def test_a_run_timeout_error_names_the_fields_the_pipelines_runtime_has() -> None:
    pipe = {**ec2_config({})["pipelines"]["pipe"], "run_timeout_minutes": 80}
    with pytest.raises(ConfigError) as ec2_error:
        validate_config({"pipelines": {"pipe": pipe}})
    message = str(ec2_error.value)
    assert "runtime.startup_timeout_minutes (30) + runtime.steps[0].timeout_minutes (60) = 90" in message
    assert "execution_timeout_minutes" not in message  # an emr-ec2 pipeline has no such field
    serverless = {
        "pipelines": {
            "pipe": {
                "runtime": {"type": "emr-serverless", "application": {}, "entry_point": "x.py",
                            "execution_timeout_minutes": 90},
                "run_timeout_minutes": 60,
            }
        }
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"runtime\.execution_timeout_minutes \(90\)") as serverless_error:
        validate_config(serverless)
    assert "startup_timeout_minutes" not in str(serverless_error.value)


# -------------------------------------------------------------------------------------- EMR shapes


def test_groups_request_with_managed_scaling_ami_and_user_configuration_merged_over_glue() -> None:
    runtime = ec2_runtime(
        instances={"mode": "groups", "task": {"count": 3, "bid_price_usd": "0.10"}},
        subnet_ids=["subnet-0123456789abcdef0"],
        scaling={"mode": "managed", "minimum_units": 3, "maximum_units": 10, "maximum_on_demand_units": 3},
        custom_ami_id="ami-0123456789abcdef0",
        configurations=[{"classification": "spark-hive-site", "properties": {"x": "1"}}],
        glue_catalog=True,
    )
    request = cluster_request(runtime)
    groups = {g["InstanceRole"]: g for g in request["Instances"]["InstanceGroups"]}
    assert groups["MASTER"]["InstanceType"] == "m5.large" and groups["MASTER"]["Market"] == "ON_DEMAND"
    assert groups["TASK"] | {"EbsConfiguration": None} == {
        "Name": "task", "InstanceRole": "TASK", "Market": "SPOT", "InstanceType": "m5.xlarge", "InstanceCount": 3,
        "BidPrice": "0.10", "EbsConfiguration": None,
    }  # fmt: skip
    assert request["Instances"]["Ec2SubnetId"] == "subnet-0123456789abcdef0"
    assert request["ManagedScalingPolicy"]["ComputeLimits"] == {
        "UnitType": "Instances", "MinimumCapacityUnits": 3, "MaximumCapacityUnits": 10,
        "MaximumOnDemandCapacityUnits": 3,
    }  # fmt: skip
    assert request["CustomAmiId"] == "ami-0123456789abcdef0"
    hive = next(c for c in request["Configurations"] if c["Classification"] == "spark-hive-site")
    assert hive["Properties"]["x"] == "1" and "hive.metastore.client.factory.class" in hive["Properties"]


def test_step_templates_render_spark_distcp_and_jar(tmp_path: Any) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "etl.py").write_text("")
    (jobs / "report.q").write_text("")
    (jobs / "tool.jar").write_text("")
    raw = ec2_config(
        {
            "applications": ["Hadoop", "Spark", "Hive"],
            "steps": [
                {**SPARK, "entry_point": "etl.py", "spark_submit_parameters": "--conf a=b", "arguments": ["{{input}}"]},
                {"type": "s3distcp", "name": "stage", "src": "{{input}}", "dest": "hdfs:///stage/"},
                {"type": "hive", "name": "report", "script": "report.q", "variables": {"DAY": "1"}},
                {"type": "jar", "name": "custom", "jar": "tool.jar", "main_class": "com.example.Main"},
            ],
        }
    )
    runtime = validate_config(raw, jobs_dir=jobs).pipelines["pipe"].runtime
    assert isinstance(runtime, Ec2Runtime)
    spark, distcp, hive, jar = (t["hadoop_jar_step"] for t in step_templates(runtime, "art"))
    assert spark["Args"] == [
        "spark-submit", "--deploy-mode", "cluster", "--conf", "a=b", "s3://art/jobs/etl.py",
        "--manifest", "{{manifest}}", "--output", "{{output}}", "--run-id", "{{run_id}}", "{{input}}",
    ]  # fmt: skip
    assert distcp["Args"] == ["s3-dist-cp", "--src={{input}}", "--dest=hdfs:///stage/"]
    assert hive["Args"][:5] == ["hive-script", "--run-hive-script", "--args", "-f", "s3://art/jobs/report.q"]
    assert "DAY=1" in hive["Args"] and "OUTPUT={{output}}" in hive["Args"]
    assert jar == {"Jar": "s3://art/jobs/tool.jar", "Args": [], "MainClass": "com.example.Main"}


# ----------------------------------------------------------------------------------------- prepare


def _ec2_settings(**extra: str) -> dict[str, str]:
    steps = [
        {
            "name": "etl",
            "timeout_seconds": 600,
            "hadoop_jar_step": {
                "Jar": "command-runner.jar",
                "Args": ["spark-submit", "s3://art/jobs/x.py", "--manifest", "{{manifest}}", "--output", "{{output}}"],
            },
        }
    ]
    return {
        "pipeline": "p",
        "runtime": "emr-ec2",
        "landing_bucket": "land",
        "input_prefix": "p/",
        "artifacts_bucket": "art",
        "outputs_bucket": "out",
        "output_prefix": "p",
        "logs_bucket": "logs",
        "steps_json": json.dumps(steps),
        "cluster_tags_json": json.dumps({"autopilot:pipeline": "p"}),
        "launch_json": json.dumps(
            {
                "attempt": 1,
                "max_attempts": 1,
                "resume_from": 0,
                "startup_seconds": 1200,
                "retry_when": [],
                "earlier": [],
            }  # fmt: skip
        ),
        **extra,
    }


EXECUTION = {
    "id": "arn:aws:states:us-east-1:1:execution:m:run-9",
    "name": "run-9",
    "start_time": "2024-06-02T03:04:05Z",
}
ROUTER_INPUT = {"pipeline": "p", "manifest": "s3://art/manifests/p/run-9.json", "object_count": 2}


def test_prepare_renders_the_steps_cluster_tags_and_log_uri_for_the_run() -> None:
    payload = {
        "input": {**ROUTER_INPUT, "overrides": {"arguments": ["--dry-run"], "spark_submit_parameters": "--conf z=1"}},
        "execution": EXECUTION,
        "settings": _ec2_settings(),
    }
    result = prepare_run(payload, s3=None)
    run = result["run"]
    assert result["cluster"] == {"ClusterId": None}
    (step,) = run["steps"]
    assert step["name"] == step_name("run-9", "etl") == "run-9: etl"
    assert step["timeout_seconds"] == 600
    assert step["hadoop_jar_step"]["Args"] == [
        "spark-submit", "--conf", "z=1", "s3://art/jobs/x.py", "--manifest", "s3://art/manifests/p/run-9.json",
        "--output", "s3://out/p/run_id=run-9", "--dry-run",
    ]  # fmt: skip
    assert run["step_names"] == ["run-9: etl"]
    tags = {t["Key"]: t["Value"] for t in run["cluster"]["tags"]}
    assert tags == {"autopilot:pipeline": "p", "autopilot:run-id": "run-9", "autopilot:execution": EXECUTION["id"]}
    assert run["cluster"]["log_uri"] == "s3://logs/emr-ec2/p/run-9/"
    assert run["ledger"]["runtime"] == "emr-ec2" and run["ledger"]["cluster_id"] is None


def test_prepare_rejects_a_job_timeout_override_for_ec2() -> None:
    payload = {
        "input": {**ROUTER_INPUT, "overrides": {"execution_timeout_minutes": 5}},
        "execution": EXECUTION,
        "settings": _ec2_settings(),
    }
    result = prepare_run(payload, s3=None)
    assert result["valid"] is False and "each step's timeout_minutes" in result["cause"]


class FakeEmr:
    """Just enough of the EMR client for cluster resolution and finalize."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions
        ClientError = RuntimeError

    def __init__(self, clusters: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None) -> None:
        self.clusters = {c["Id"]: c for c in clusters}
        self.steps = steps or []
        self.cancelled: list[str] = []

    def describe_cluster(self, ClusterId: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        return {"Cluster": self.clusters[ClusterId]}

    def cancel_steps(self, ClusterId: str, StepIds: list[str], StepCancellationOption: str) -> None:  # noqa: N803
        self.cancelled += StepIds

    def get_paginator(self, operation: str) -> Any:
        emr = self

        class Pages:
            def paginate(self, **kwargs: Any) -> list[dict[str, Any]]:
                if operation == "list_clusters":
                    wanted = set(kwargs["ClusterStates"])
                    return [{"Clusters": [c for c in emr.clusters.values() if c["Status"]["State"] in wanted]}]
                if operation == "list_steps":  # a cluster's own `_steps`, else every step given
                    states = set(kwargs.get("StepStates") or [])
                    steps = emr.clusters.get(kwargs.get("ClusterId", ""), {}).get("_steps", emr.steps)
                    return [{"Steps": [s for s in steps if not states or s["Status"]["State"] in states]}]
                if operation == "list_instance_fleets":
                    return [{"InstanceFleets": emr.clusters[kwargs["ClusterId"]].get("_fleets", [])}]
                if operation == "list_instances":
                    return [{"Instances": emr.clusters[kwargs["ClusterId"]].get("_instances", [])}]
                return [{operation.removeprefix("list_").title().replace("_", ""): []}]

        return Pages()


def _cluster(cid: str, state: str, tags: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "Id": cid,
        "Name": cid,
        "Status": {"State": state, "Timeline": {"CreationDateTime": datetime(2024, 6, 2, tzinfo=UTC)}, **extra},
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        "InstanceCollectionType": "INSTANCE_FLEET",
    }


def test_resolve_long_running_cluster_by_tag_or_id_with_clear_reasons() -> None:
    emr = FakeEmr(
        [
            _cluster("j-A", "WAITING", {"team": "analytics"}),
            _cluster("j-B", "TERMINATED", {"team": "analytics"}),
            _cluster("j-C", "RUNNING", {"team": "ml"}),
            _cluster("j-D", "RUNNING", {"team": "ml"}),
        ]
    )
    assert resolve_cluster(emr, {"tag_key": "team", "tag_value": "analytics"}) == ("j-A", None)
    assert resolve_cluster(emr, {"cluster_id": "j-C"}) == ("j-C", None)
    none, why = resolve_cluster(emr, {"cluster_id": "j-B"})
    assert none is None and "j-B is TERMINATED" in str(why)
    none, why = resolve_cluster(emr, {"tag_key": "team", "tag_value": "ml"})
    assert none is None and "several clusters are tagged team=ml (j-C, j-D)" in str(why)
    none, why = resolve_cluster(emr, {"tag_key": "team", "tag_value": "bi"})
    assert none is None and "no cluster tagged team=bi" in str(why)


class TagScopedEmr(FakeEmr):
    """EMR as the prepare role sees it in AWS: DescribeCluster is allowed only on clusters tagged team=analytics."""

    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions
        ClientError = ClientError

    def describe_cluster(self, ClusterId: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        tags = {t["Key"]: t["Value"] for t in self.clusters[ClusterId]["Tags"]}
        if tags.get("team") != "analytics":
            error = {"Code": "AccessDeniedException", "Message": "not authorized to perform: DescribeCluster"}
            raise ClientError({"Error": error}, "DescribeCluster")
        return super().describe_cluster(ClusterId)


def test_resolving_by_tag_skips_clusters_the_role_may_not_describe() -> None:
    # Given another team's cluster running beside ours, which the role may not describe (AWS refuses it)
    emr = TagScopedEmr(
        [_cluster("j-OTHER", "RUNNING", {"team": "ml"}), _cluster("j-A", "WAITING", {"team": "analytics"})]
    )
    # When the target is resolved by tag, Then the refusal means "not ours", not a failed run
    assert resolve_cluster(emr, {"tag_key": "team", "tag_value": "analytics"}) == ("j-A", None)


def test_prepare_reports_an_unavailable_long_running_cluster_for_the_workflow_to_fail_on() -> None:
    settings = _ec2_settings(existing_cluster_json=json.dumps({"tag_key": "team", "tag_value": "bi"}))
    result = prepare_run({"input": ROUTER_INPUT, "execution": EXECUTION, "settings": settings}, None, FakeEmr([]))
    assert result["valid"] is True and result["cluster"] == {"ClusterId": None}
    assert result["cluster_problem"]["Error"] == "ClusterNotAvailable"


# ---------------------------------------------------------------------------------------- finalize


def _step(sid: str, name: str, state: str, **failure: str) -> dict[str, Any]:
    start = datetime(2024, 6, 2, 1, tzinfo=UTC)
    status: dict[str, Any] = {
        "State": state,
        "Timeline": {"CreationDateTime": start, "StartDateTime": start, "EndDateTime": start + timedelta(seconds=90)},
    }
    if failure:
        status["FailureDetails"] = failure
    return {"Id": sid, "Name": name, "Status": status}


def _request(outcome: str, transient: bool = True, **extra: Any) -> FinalizeRequest:
    return FinalizeRequest.from_event(
        {
            "outcome": outcome,
            "transient": "true" if transient else "false",
            "run_id": "run-9",
            "pipeline": "p",
            "cluster_id": "j-A",
            "step_names": ["run-9: etl", "run-9: load"],
            **extra,
        }
    )


def test_finalize_names_the_failed_step_and_its_log() -> None:
    cluster = _cluster("j-A", "TERMINATED", {}, StateChangeReason={"Code": "USER_REQUEST", "Message": "by user"})
    steps = [
        _step("s-1", "run-9: etl", "FAILED", Reason="Unknown Error.", Message="boom", LogFile="s3://logs/x/stderr.gz"),
        _step("s-2", "run-9: load", "CANCELLED"),
        _step("s-9", "other-run: etl", "COMPLETED"),
    ]
    update = finalize_run(
        _request("FAILED", error={"Error": "States.TaskFailed", "Cause": "{}"}), FakeEmr([cluster], steps)
    )
    assert update["error"] == "StepFailed"
    assert update["cause"] == "step 'run-9: etl' (s-1) FAILED: boom; log: s3://logs/x/stderr.gz"
    assert [s["id"] for s in update["steps"]] == ["s-1", "s-2"]  # other runs' steps are not ours
    assert update["steps"][0]["duration_seconds"] == 90.0
    assert update["cluster"]["state_change_reason"] == {"code": "USER_REQUEST", "message": "by user"}


def test_finalize_reports_a_bootstrap_failure_from_the_cluster_reason() -> None:
    reason = {"Code": "BOOTSTRAP_FAILURE", "Message": "bootstrap action 1 returned a non-zero return code"}
    cluster = _cluster("j-A", "TERMINATED_WITH_ERRORS", {}, StateChangeReason=reason)
    update = finalize_run(
        _request("FAILED", error={"Error": "States.TaskFailed", "Cause": "x"}),
        FakeEmr([cluster], [_step("s-1", "run-9: etl", "CANCELLED")]),
    )
    assert update["error"] == "ClusterFailed"
    assert "BOOTSTRAP_FAILURE" in update["cause"] and "j-A" in update["cause"]


def test_finalize_on_a_shared_cluster_cancels_the_runs_unfinished_steps_only() -> None:
    cluster = _cluster("j-A", "WAITING", {})
    steps = [_step("s-1", "run-9: etl", "RUNNING"), _step("s-2", "someone-else", "RUNNING")]
    emr = FakeEmr([cluster], steps)
    update = finalize_run(_request("FAILED", transient=False, error={"Error": "States.Timeout", "Cause": ""}), emr)
    assert emr.cancelled == ["s-1"] and update["cancelled_steps"] == ["s-1"]
    assert update["instance_hours_estimate"] is None  # a shared cluster's hours are not this run's


def test_finalize_success_estimates_instance_hours_from_provisioned_capacity() -> None:
    created = datetime(2024, 6, 2, tzinfo=UTC)
    cluster = _cluster("j-A", "TERMINATED", {})
    cluster["Status"]["Timeline"] = {"CreationDateTime": created, "EndDateTime": created + timedelta(minutes=30)}
    cluster["_fleets"] = [
        {"Name": "core", "ProvisionedOnDemandCapacity": 2, "ProvisionedSpotCapacity": 0},
        {"Name": "task", "ProvisionedOnDemandCapacity": 0, "ProvisionedSpotCapacity": 4},
    ]
    update = finalize_run(_request("SUCCEEDED", metrics={"rows_in": 3}), FakeEmr([cluster]))
    assert update["state"] == "SUCCEEDED" and update["metrics"] == {"rows_in": 3}
    assert update["instance_hours_estimate"]["instance_hours"] == 3.0
    assert [f["name"] for f in update["cluster"]["fleets"]] == ["core", "task"]


class FakeEc2:
    """DescribeSpotPriceHistory answering `price`, or refusing as EC2 does without the grant."""

    def __init__(self, price: str | None) -> None:
        self.price, self.calls = price, []  # type: list[dict[str, Any]]

    def describe_spot_price_history(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.price is None:
            raise ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "denied"}}, "DescribeSpotPriceHistory"
            )
        return {"SpotPriceHistory": [{"SpotPrice": self.price, "InstanceType": kwargs["InstanceTypes"][0]}]}


def _priced_cluster() -> dict[str, Any]:
    created = datetime(2024, 6, 2, tzinfo=UTC)
    cluster = _cluster("j-A", "TERMINATED", {})
    cluster["Ec2InstanceAttributes"] = {"Ec2AvailabilityZone": "us-east-1b"}
    gp3 = [{"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": 32}, "Device": "/dev/sdf"}]
    cluster["_fleets"] = [
        {"Id": "if-core", "InstanceTypeSpecifications": [{"InstanceType": "m5.xlarge", "EbsBlockDevices": gp3}]},
        {"Id": "if-task", "InstanceTypeSpecifications": [{"InstanceType": "r5.xlarge", "EbsBlockDevices": []}]},
    ]

    def instance(fleet: str, instance_type: str, market: str, minutes: int) -> dict[str, Any]:
        timeline = {"CreationDateTime": created, "EndDateTime": created + timedelta(minutes=minutes)}
        return {
            "InstanceFleetId": fleet,
            "InstanceType": instance_type,
            "Market": market,
            "Status": {"Timeline": timeline},
        }

    cluster["_instances"] = [
        instance("if-core", "m5.xlarge", "ON_DEMAND", 30),
        instance("if-task", "r5.xlarge", "SPOT", 15),
    ]
    return cluster


@pytest.mark.parametrize("spot_price", ["0.0800", None], ids=["spot-price-known", "spot-price-refused"])
def test_finalize_prices_a_transient_clusters_instances(spot_price: str | None) -> None:
    table = shipped_prices()
    ec2 = FakeEc2(spot_price)
    pricing = ClusterPricing(table, "us-east-1", ec2)  # type: ignore[arg-type]
    update = finalize_run(_request("SUCCEEDED"), FakeEmr([_priced_cluster()]), pricing=pricing)
    m5, r5 = (table.instance("us-east-1", t) for t in ("m5.xlarge", "r5.xlarge"))
    spot_rate = float(spot_price) if spot_price else r5["ec2_hour"]
    expected = 0.5 * (m5["ec2_hour"] + m5["emr_hour"]) + 0.25 * (spot_rate + r5["emr_hour"]) + 32 * 0.5 / 730 * 0.08
    cost = update["cost"]
    assert cost["usd"] == pytest.approx(expected, abs=1e-5)
    assert ec2.calls[0]["AvailabilityZone"] == "us-east-1b" and ec2.calls[0]["InstanceTypes"] == ["r5.xlarge"]
    assert ec2.calls[0]["ProductDescriptions"] == ["Linux/UNIX"]
    flagged = [n for n in cost["notes"] if "priced at the on-demand price" in n]
    assert bool(flagged) == (spot_price is None)
    # A shared (long-running) cluster's cost is not the run's: null, said explicitly (the final ledger update of
    # every runtime carries `cost`, issue 16)
    shared = finalize_run(_request("SUCCEEDED", transient=False), FakeEmr([_priced_cluster()]), pricing=pricing)
    assert "cost" in shared and shared["cost"] is None


# ------------------------------------------------------------------------------------------ emr-eks


EKS_RUNTIME = {
    "type": "emr-eks",
    "eks_cluster_name": "data-platform",
    "namespace": "emr-jobs",
    "job_role": {"oidc_issuer": "oidc.eks.us-east-1.amazonaws.com/id/ABCDEF0123"},
    "entry_point": "sales_etl.py",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"virtual_cluster_id": "abcdefghij0123456789abcde"}, "either virtual_cluster_id, or eks_cluster_name"),
        ({"namespace": None}, "eks_cluster_name and namespace go together"),
        ({"job_role": {}}, "set either existing_role_arn, or oidc_issuer"),
        ({"release_label": "emr-7.5.0"}, "an EMR on EKS release label like 'emr-7.5.0-latest'"),
        ({"namespace": "Bad_NS"}, "runtime.namespace"),
        ({"driver_pod_template": "missing.yaml"}, "runtime.driver_pod_template: got 'missing.yaml'"),
    ],
)
def test_bad_eks_config_gets_one_clear_error(change: dict[str, Any], message: str) -> None:
    runtime = {k: v for k, v in {**EKS_RUNTIME, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        validate_config({"pipelines": {"pipe": {"runtime": runtime}}})
    assert message in str(err.value)


def test_eks_job_task_timeout_is_the_job_timeout_itself() -> None:
    settings = {
        **{k: v for k, v in _ec2_settings().items() if k not in {"steps_json", "cluster_tags_json", "launch_json"}},
        "runtime": "emr-eks",
        "entry_point": "s3://art/jobs/x.py",
        "execution_timeout_minutes": "30",
        "application_id": "vc123",
    }
    result = prepare_run({"input": ROUTER_INPUT, "execution": EXECUTION, "settings": settings}, s3=None)
    job = result["run"]["job"]
    assert job["task_timeout_seconds"] == 30 * 60  # EMR on EKS has no job timeout: the task's is the job's
    assert result["run"]["log_uri"] == "s3://logs/emr-eks/p/run-9/"
    assert "cluster" not in result


def test_finalize_copies_the_clusters_scaling_actions_into_the_ledger_update() -> None:
    from autopilot_common.scaling_state import CLUSTER_PREFIX
    from finalization import ScalingState

    class Table:
        """GetItem of the scaler's cluster item (the shape `claim_action` stores)."""

        def __init__(self, items: dict[str, dict[str, Any]]) -> None:
            self.items, self.reads = items, 0

        def get_item(self, TableName: str, Key: dict[str, Any], ConsistentRead: bool) -> dict[str, Any]:  # noqa: N803
            assert TableName == "state" and ConsistentRead
            self.reads += 1
            found = self.items.get(Key["id"]["S"])
            return {"Item": found} if found else {}

    action = {"M": {"direction": {"S": "out"}, "from_units": {"N": "2"}, "to_units": {"N": "4"}}}
    table = Table({CLUSTER_PREFIX + "j-A": {"id": {"S": CLUSTER_PREFIX + "j-A"}, "actions": {"L": [action]}}})
    cluster = _cluster("j-A", "TERMINATED", {}, StateChangeReason={"Code": "USER_REQUEST", "Message": "by user"})
    update = finalize_run(_request("SUCCEEDED"), FakeEmr([cluster], []), scaling=ScalingState(table, "state"))
    assert update["scaling"] == {"actions": [{"direction": "out", "from_units": 2, "to_units": 4}]}
    # A cluster the scaler never touched adds nothing, and without a table nothing is read
    quiet = finalize_run(_request("SUCCEEDED", cluster_id="j-B"), FakeEmr([_cluster("j-B", "TERMINATED", {})], []),
                         scaling=ScalingState(table, "state"))  # fmt: skip
    assert "scaling" not in quiet and table.reads == 2
    assert "scaling" not in finalize_run(_request("SUCCEEDED"), FakeEmr([cluster], []))
