"""local/emr_containers.py: EMR on EKS in the twin, through the model, the boto3 `emr-containers` API and
the Step Functions `emr-containers:*` integrations. No Spark: job runs complete at once (`instant` mode).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.emr_containers import EmrContainersTwin, camel, pascal
from local.faults import FaultInjector, TwinClientError
from local.twin import Twin
from tests.twin.twin_helpers import deployed_twin, run_machine, wait_for

ROLE = "arn:aws:iam::123456789012:role/eks-job"
SFN_ROLE = "arn:aws:iam::123456789012:role/sfn"
DRIVER = {"sparkSubmitJobDriver": {"entryPoint": "s3://b/app.py", "entryPointArguments": ["--day", "1"]}}
PROVIDER = {"id": "eks-main", "type": "EKS", "info": {"eksInfo": {"namespace": "emr"}}}


# ---------------------------------------------------------------------------------------------- model


@pytest.fixture
def model() -> EmrContainersTwin:
    events: list[dict[str, Any]] = []
    twin = EmrContainersTwin(account="123456789012", region="eu-west-1", runner=None, faults=FaultInjector(),
                             emit=events.append)  # fmt: skip
    twin.events = events  # type: ignore[attr-defined]
    return twin


def _vc(model: EmrContainersTwin, namespace: str = "emr") -> str:
    provider = {**PROVIDER, "info": {"eksInfo": {"namespace": namespace}}}
    vc_id: str = model.create_virtual_cluster({"name": f"vc-{namespace}", "containerProvider": provider})["id"]
    return vc_id


def _start(model: EmrContainersTwin, vc_id: str, **extra: Any) -> dict[str, Any]:
    request = {"name": "job", "virtualClusterId": vc_id, "executionRoleArn": ROLE,
               "releaseLabel": "emr-7.5.0-latest", "jobDriver": DRIVER} | extra  # fmt: skip
    return model.start_job_run(request)


def test_virtual_cluster_ids_arns_and_one_per_namespace(model: EmrContainersTwin) -> None:
    provider = {"Id": "eks-main", "Type": "EKS", "Info": {"EksInfo": {"Namespace": "emr"}}}
    created = model.create_virtual_cluster({"Name": "vc", "ContainerProvider": provider, "Tags": {"Team": "data"}})
    vc_id = created["id"]
    assert len(vc_id) == 25 and vc_id.isalnum() and vc_id == vc_id.lower()
    assert created["arn"] == f"arn:aws:emr-containers:eu-west-1:123456789012:/virtualclusters/{vc_id}"
    described = model.describe_virtual_cluster(vc_id)
    assert described["state"] == "RUNNING" and described["tags"] == {"Team": "data"}
    assert described["containerProvider"]["info"]["eksInfo"]["namespace"] == "emr"
    with pytest.raises(TwinClientError, match="already exists in the given namespace"):
        _vc(model)
    model.delete_virtual_cluster(vc_id)
    assert model.describe_virtual_cluster(vc_id)["state"] == "TERMINATED"
    assert [c["id"] for c in model.list_virtual_clusters({"states": ["RUNNING"]})] == []
    assert _vc(model) != vc_id  # the namespace is free again


def test_job_run_progresses_with_events_and_is_idempotent(model: EmrContainersTwin) -> None:
    vc_id = _vc(model)
    first = _start(model, vc_id, clientToken="tok-1", tags={"pipeline": "sales"})
    assert _start(model, vc_id, clientToken="tok-1") == first
    job_id = first["id"]
    assert len(job_id) == 19 and job_id.isalnum() and job_id == job_id.lower()
    assert first["arn"] == f"arn:aws:emr-containers:eu-west-1:123456789012:/virtualclusters/{vc_id}/jobruns/{job_id}"
    assert model.wait(vc_id, job_id, 5)
    run = model.describe_job_run(vc_id, job_id)
    assert run["state"] == "COMPLETED" and "failureReason" not in run and run["finishedAt"] >= run["createdAt"]
    assert run["tags"] == {"pipeline": "sales"} and run["releaseLabel"] == "emr-7.5.0-latest"
    events = model.events  # type: ignore[attr-defined]
    assert [e["detail"]["state"] for e in events] == ["PENDING", "SUBMITTED", "RUNNING", "COMPLETED"]
    assert {e["source"] for e in events} == {"aws.emr-containers"}
    assert {e["detail-type"] for e in events} == {"EMR Job Run State Change"}
    assert events[-1]["detail"]["virtualClusterId"] == vc_id and events[-1]["resources"] == [first["arn"]]
    assert len(model.list_job_runs(vc_id)) == 1 and model.list_job_runs(vc_id, {"states": ["FAILED"]}) == []
    with pytest.raises(TwinClientError, match="COMPLETED state and cannot be cancelled") as rejected:
        model.cancel_job_run(vc_id, job_id)
    assert rejected.value.code == "ValidationException"
    assert not model.running()


def test_fail_and_hang_faults_then_cancel(model: EmrContainersTwin) -> None:
    vc_id = _vc(model)
    model.faults.fail_next_job("Job failed: injected")
    failed = _start(model, vc_id)["id"]
    assert model.wait(vc_id, failed, 5)
    run = model.describe_job_run(vc_id, failed)
    assert (run["state"], run["failureReason"], run["stateDetails"]) == ("FAILED", "USER_ERROR", "Job failed: injected")

    model.faults.hang_next_job()
    hung = _start(model, vc_id)["id"]
    wait_for(lambda: model.describe_job_run(vc_id, hung)["state"] == "RUNNING", what="RUNNING")
    assert not model.wait(vc_id, hung, 0.2) and model.running()
    assert model.cancel_job_run(vc_id, hung) == {"id": hung, "virtualClusterId": vc_id}
    assert model.wait(vc_id, hung, 5)
    assert model.describe_job_run(vc_id, hung)["state"] == "CANCELLED"
    states = [e["detail"]["state"] for e in model.events if e["detail"]["id"] == hung]  # type: ignore[attr-defined]
    assert states[-2:] == ["CANCEL_PENDING", "CANCELLED"]


def test_missing_or_terminated_virtual_cluster_and_deleting_one_with_a_running_job(model: EmrContainersTwin) -> None:
    with pytest.raises(TwinClientError, match="Virtual cluster nope doesn't exist") as missing:
        _start(model, "nope")
    assert missing.value.code == "ResourceNotFoundException"
    vc_id = _vc(model)
    model.faults.hang_next_job()
    job_id = _start(model, vc_id)["id"]
    wait_for(lambda: model.describe_job_run(vc_id, job_id)["state"] == "RUNNING", what="RUNNING")
    model.delete_virtual_cluster(vc_id)
    assert model.wait(vc_id, job_id, 5)
    assert model.describe_job_run(vc_id, job_id)["failureReason"] == "CLUSTER_UNAVAILABLE"
    with pytest.raises(TwinClientError, match="TERMINATED") as terminated:
        _start(model, vc_id)
    assert terminated.value.code == "ValidationException"
    with pytest.raises(TwinClientError, match="doesn't exist in virtual cluster"):
        model.describe_job_run("other", job_id)


def test_recasing_keeps_user_keys() -> None:
    request = {"JobDriver": {"SparkSubmitJobDriver": {"EntryPoint": "x"}}, "Tags": {"Team": "a"},
               "ConfigurationOverrides": {"ApplicationConfiguration": [{"Classification": "spark-defaults",
                                                                       "Properties": {"Spark.X": "1"}}]}}  # fmt: skip
    assert camel(request) == {"jobDriver": {"sparkSubmitJobDriver": {"entryPoint": "x"}}, "tags": {"Team": "a"},
                              "configurationOverrides": {"applicationConfiguration": [
                                  {"classification": "spark-defaults", "properties": {"Spark.X": "1"}}]}}  # fmt: skip
    assert pascal(camel(request)) == request


# ---------------------------------------------------------------------------------------------- started twin

TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Cluster": {
            "Type": "AWS::EMRContainers::VirtualCluster",
            "Properties": {
                "Name": "pipeline-vc",
                "ContainerProvider": {"Id": "eks-main", "Type": "EKS", "Info": {"EksInfo": {"Namespace": "emr"}}},
                "Tags": [{"Key": "app", "Value": "autopilot"}],
            },
        }
    },
    "Outputs": {"Id": {"Value": {"Ref": "Cluster"}}, "Arn": {"Value": {"Fn::GetAtt": ["Cluster", "Arn"]}}},
}


class Env:
    def __init__(self, twin: Twin, outputs: dict[str, Any]) -> None:
        self.twin = twin
        self.vc_id: str = outputs["Id"]
        self.vc_arn: str = outputs["Arn"]
        self.model = twin.emr_containers
        self.eks = twin.client("emr-containers")
        self.sfn = twin.client("stepfunctions")

    def run_machine(self, name: str, definition: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        return run_machine(self.sfn, name, definition, SFN_ROLE, timeout)

    def task(self, resource: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """A one-Task state machine definition."""
        state = {"Type": "Task", "Resource": f"arn:aws:states:::emr-containers:{resource}",
                 "Parameters": parameters, "End": True}  # fmt: skip
        return {"StartAt": "Run", "States": {"Run": state}}

    def start_parameters(self, token: str) -> dict[str, Any]:
        return {
            "VirtualClusterId": self.vc_id,
            "Name": "sfn-job",
            "ClientToken": token,
            "ExecutionRoleArn": ROLE,
            "ReleaseLabel": "emr-7.5.0-latest",
            "JobDriver": {"SparkSubmitJobDriver": {"EntryPoint": "s3://b/app.py", "EntryPointArguments": ["a"],
                                                   "SparkSubmitParameters": "--conf spark.executor.cores=2"}},
            "ConfigurationOverrides": {"MonitoringConfiguration": {
                "S3MonitoringConfiguration": {"LogUri": "s3://logs/eks/"}}},
            "Tags": {"pipeline": "sales"},
        }  # fmt: skip


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with deployed_twin(tmp_path_factory.mktemp("emr-eks-twin"), "eks", TEMPLATE) as (twin, outputs):
        yield Env(twin, outputs)


@pytest.fixture
def env(deployed: Env) -> Iterator[Env]:
    deployed.twin.faults.clear()
    deployed.model.runner = None
    yield deployed
    for run in deployed.model.running():
        deployed.model.cancel_job_run(run.virtual_cluster_id, run.id)
    wait_for(lambda: not deployed.model.running(), what="no job run left running")


def test_deploy_creates_the_virtual_cluster(env: Env) -> None:
    cluster = env.eks.describe_virtual_cluster(id=env.vc_id)["virtualCluster"]
    assert cluster["arn"] == env.vc_arn and cluster["state"] == "RUNNING" and cluster["name"] == "pipeline-vc"
    assert cluster["tags"] == {"app": "autopilot"}
    assert cluster["containerProvider"] == {"id": "eks-main", "type": "EKS", "info": {"eksInfo": {"namespace": "emr"}}}
    assert env.vc_id in [c["id"] for c in env.eks.list_virtual_clusters()["virtualClusters"]]


def test_http_api_job_run_lifecycle(env: Env) -> None:
    request = {"virtualClusterId": env.vc_id, "name": "http-job", "executionRoleArn": ROLE,
               "releaseLabel": "emr-7.5.0-latest", "jobDriver": DRIVER, "clientToken": "http-1"}  # fmt: skip
    started = env.eks.start_job_run(**request)
    assert env.eks.start_job_run(**request)["id"] == started["id"]
    assert env.model.wait(env.vc_id, started["id"], 5)
    run = env.eks.describe_job_run(virtualClusterId=env.vc_id, id=started["id"])["jobRun"]
    assert run["state"] == "COMPLETED" and run["jobDriver"] == DRIVER and run["arn"] == started["arn"]
    listed = env.eks.list_job_runs(virtualClusterId=env.vc_id, states=["COMPLETED"])["jobRuns"]
    assert started["id"] in [r["id"] for r in listed]
    with pytest.raises(ClientError) as rejected:
        env.eks.cancel_job_run(virtualClusterId=env.vc_id, id=started["id"])
    assert rejected.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as missing:
        env.eks.start_job_run(**{**request, "virtualClusterId": "a" * 25, "clientToken": "http-2"})
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"

    env.twin.faults.hang_next_job()
    hung = env.eks.start_job_run(**{**request, "clientToken": "http-3"})["id"]
    wait_for(lambda: env.model.describe_job_run(env.vc_id, hung)["state"] == "RUNNING", what="RUNNING")
    env.eks.cancel_job_run(virtualClusterId=env.vc_id, id=hung)
    assert env.model.wait(env.vc_id, hung, 5)
    assert env.eks.describe_job_run(virtualClusterId=env.vc_id, id=hung)["jobRun"]["state"] == "CANCELLED"


def test_http_throttling_fault(env: Env) -> None:
    env.twin.faults.fail_next("emr-containers", "DescribeJobRun", times=3)  # the client retries twice
    with pytest.raises(ClientError) as throttled:
        env.eks.describe_job_run(virtualClusterId=env.vc_id, id="x")
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"


def test_state_machine_sync_job_succeeds(env: Env) -> None:
    described = env.run_machine("eks-sync-ok", env.task("startJobRun.sync", env.start_parameters("sfn-ok")))
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["State"] == "COMPLETED" and output["VirtualClusterId"] == env.vc_id
    assert output["Tags"] == {"pipeline": "sales"}
    assert output["JobDriver"]["SparkSubmitJobDriver"]["SparkSubmitParameters"] == "--conf spark.executor.cores=2"
    run = env.model.describe_job_run(env.vc_id, output["Id"])
    assert run["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"]["logUri"] == (
        "s3://logs/eks/"
    )


def test_state_machine_request_response_and_cancel(env: Env) -> None:
    env.twin.faults.hang_next_job()
    started = env.run_machine("eks-rr", env.task("startJobRun", env.start_parameters("sfn-rr")))
    assert started["status"] == "SUCCEEDED", started
    result = json.loads(started["output"])
    assert set(result) == {"Id", "Name", "Arn", "VirtualClusterId"}
    cancel = env.task("cancelJobRun", {"VirtualClusterId": env.vc_id, "Id": result["Id"]})
    cancelled = env.run_machine("eks-cancel", cancel)
    assert json.loads(cancelled["output"]) == {"Id": result["Id"], "VirtualClusterId": env.vc_id}
    assert env.model.wait(env.vc_id, result["Id"], 5)
    again = env.run_machine("eks-cancel-again", cancel)
    assert again["status"] == "FAILED" and again["error"] == "EMRContainers.ValidationException"


def test_state_machine_sync_job_fails_with_states_task_failed(env: Env) -> None:
    env.twin.faults.fail_next_job("Job failed: boom")
    described = env.run_machine("eks-sync-fail", env.task("startJobRun.sync", env.start_parameters("sfn-fail")))
    assert described["status"] == "FAILED" and described["error"] == "States.TaskFailed"
    cause = json.loads(described["cause"])
    assert (cause["State"], cause["FailureReason"], cause["StateDetails"]) == ("FAILED", "USER_ERROR",
                                                                               "Job failed: boom")  # fmt: skip


def test_state_machine_throttling_and_missing_cluster_errors(env: Env) -> None:
    env.twin.faults.fail_next("emr-containers", "StartJobRun")
    throttled = env.run_machine("eks-throttled", env.task("startJobRun.sync", env.start_parameters("sfn-th")))
    # ThrottlingException is not in the EMR on EKS model: the integration raises the SDK's base exception
    assert throttled["status"] == "FAILED" and throttled["error"] == "EMRContainers.AmazonEMRContainersException"
    assert "Error Code: ThrottlingException" in throttled["cause"]
    assert ("emr-containers", "StartJobRun", "ThrottlingException") in env.twin.faults.fired
    missing = env.run_machine(
        "eks-missing", env.task("startJobRun", {**env.start_parameters("sfn-missing"), "VirtualClusterId": "nope"})
    )
    assert missing["error"] == "EMRContainers.ResourceNotFoundException"


def test_state_machine_creates_and_deletes_a_virtual_cluster(env: Env) -> None:
    provider = {"Id": "eks-main", "Type": "EKS", "Info": {"EksInfo": {"Namespace": "other"}}}
    created = env.run_machine(
        "eks-create-vc", env.task("createVirtualCluster", {"Name": "vc2", "ContainerProvider": provider})
    )
    vc = json.loads(created["output"])
    assert set(vc) == {"Id", "Name", "Arn"}
    deleted = env.run_machine("eks-delete-vc", env.task("deleteVirtualCluster.sync", {"Id": vc["Id"]}))
    assert deleted["status"] == "SUCCEEDED", deleted
    assert env.model.describe_virtual_cluster(vc["Id"])["state"] == "TERMINATED"


def test_twin_busy_while_a_job_runs(env: Env) -> None:
    env.twin.faults.hang_next_job()
    job_id = env.model.start_job_run(camel(env.start_parameters("busy")))["id"]
    wait_for(lambda: env.model.describe_job_run(env.vc_id, job_id)["state"] == "RUNNING", what="RUNNING")
    assert env.twin.busy() and [r.id for r in env.model.running()] == [job_id]
    threading.Timer(0.1, env.model.cancel_job_run, (env.vc_id, job_id)).start()
    env.twin.wait_idle(timeout=10, settle=0.05)
    assert env.model.describe_job_run(env.vc_id, job_id)["state"] == "CANCELLED"


def test_a_retry_policy_restarts_a_failed_driver_and_counts_the_attempts(model: EmrContainersTwin) -> None:
    # Given a job run allowed 2 driver attempts whose first driver fails
    vc_id = _vc(model)
    model.faults.fail_next_job("Job failed: driver lost")
    job_id = _start(model, vc_id, retryPolicyConfiguration={"maxAttempts": 2})["id"]
    assert model.wait(vc_id, job_id, 5)
    # Then it completed on its second attempt, never showing FAILED
    run = model.describe_job_run(vc_id, job_id)
    assert run["state"] == "COMPLETED" and run["retryPolicyExecution"] == {"currentAttemptCount": 2}
    events = model.events  # type: ignore[attr-defined]
    assert [e["detail"]["state"] for e in events] == ["PENDING", "SUBMITTED", "RUNNING", "COMPLETED"]
    # and a driver failing every attempt fails the job run after its last one
    model.faults.fail_next_job("one")
    model.faults.fail_next_job("two")
    failed = _start(model, vc_id, retryPolicyConfiguration={"maxAttempts": 2})["id"]
    assert model.wait(vc_id, failed, 5)
    run = model.describe_job_run(vc_id, failed)
    assert (run["state"], run["stateDetails"], run["retryPolicyExecution"]) == (
        "FAILED", "two", {"currentAttemptCount": 2}
    )  # fmt: skip
    # without a policy DescribeJobRun has no retryPolicyExecution (as AWS leaves absent values out)
    assert "retryPolicyExecution" not in model.describe_job_run(vc_id, _start(model, vc_id)["id"])


def test_state_machine_sync_job_waits_through_a_retried_driver(env: Env) -> None:
    # Given the workflow's StartJobRun with a retry policy (validated against botocore's model) and a first driver
    # attempt that fails
    env.twin.faults.fail_next_job("Job failed: driver pod OOMKilled")
    parameters = {**env.start_parameters("sfn-retry"), "RetryPolicyConfiguration": {"MaxAttempts": 2}}
    # When the .sync task runs, then it waits through both attempts and succeeds with the second
    described = env.run_machine("eks-sync-retry", env.task("startJobRun.sync", parameters))
    assert described["status"] == "SUCCEEDED", described
    output = json.loads(described["output"])
    assert output["State"] == "COMPLETED"
    assert output["RetryPolicyConfiguration"] == {"MaxAttempts": 2}
    assert output["RetryPolicyExecution"] == {"CurrentAttemptCount": 2}
