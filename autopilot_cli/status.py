"""What a deployment is running now, in a bounded number of calls: the pipelines' RUNNING executions (one
ListExecutions page each) with their ledger state and place in line (one GetObject each), the active EMR clusters
its runs launched (ListClusters; DescribeCluster only for clusters named as a run's cluster, to check the
`autopilot:deployment` tag) and the active job runs of its EMR Serverless applications and EMR on EKS virtual
clusters (found by name: `<deployment>-<application or pipeline>`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from autopilot_cli.deployment import Deployment
from autopilot_cli.ledger import run_at
from autopilot_common.ledger import QUEUED, ledger_key
from autopilot_common.tags import TAG_DEPLOYMENT, TAG_PIPELINE, TAG_RUN_ID

MAX_EXECUTIONS = 100  # per pipeline: one ListExecutions page
ACTIVE_CLUSTER_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]
ACTIVE_SERVERLESS_STATES = ["SUBMITTED", "PENDING", "SCHEDULED", "RUNNING", "QUEUED"]
ACTIVE_EKS_STATES = ["PENDING", "SUBMITTED", "RUNNING"]


@dataclass
class Status:
    executions: list[dict[str, Any]] = field(default_factory=list)
    more_executions: list[str] = field(default_factory=list)  # pipelines with more than MAX_EXECUTIONS running
    clusters: list[dict[str, Any]] = field(default_factory=list)
    job_runs: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"executions": self.executions, "more_executions": self.more_executions, "clusters": self.clusters,
                "job_runs": self.job_runs}  # fmt: skip


def running_now(deployment: Deployment) -> Status:
    status = Status()
    _executions(deployment, status)
    _clusters(deployment, status)
    _job_runs(deployment, status)
    return status


def _executions(deployment: Deployment, status: Status) -> None:
    sfn, s3 = deployment.client("stepfunctions"), deployment.client("s3")
    for pipeline, machine in sorted(deployment.state_machines().items()):
        page = sfn.list_executions(stateMachineArn=machine, statusFilter="RUNNING", maxResults=MAX_EXECUTIONS)
        if page.get("nextToken"):
            status.more_executions.append(pipeline)
        for item in page.get("executions", []):
            started = item["startDate"]
            record = run_at(s3, deployment.outputs_bucket, ledger_key(pipeline, started, item["name"]))
            position = record.admission.get("position") if record is not None and record.state == QUEUED else None
            status.executions.append({
                "pipeline": pipeline,
                "run_id": item["name"],
                "started_at": started.isoformat(),
                "ledger_state": record.state if record is not None else None,
                "position": position,
                "execution_arn": item["executionArn"],
            })  # fmt: skip
    status.executions.sort(key=lambda e: (e["ledger_state"] != QUEUED, e["position"] or 0, e["started_at"]))


def _clusters(deployment: Deployment, status: Status) -> None:
    emr = deployment.client("emr")
    names = tuple(f"autopilot {pipeline} " for pipeline in deployment.pipelines)  # prepare names a run's cluster so
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_CLUSTER_STATES):
        for summary in page.get("Clusters", []):
            if not str(summary.get("Name", "")).startswith(names):
                continue
            cluster = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
            tags = {t["Key"]: t["Value"] for t in cluster.get("Tags", [])}
            if tags.get(TAG_DEPLOYMENT) != deployment.stack_name:
                continue
            status.clusters.append({
                "cluster_id": summary["Id"],
                "state": summary["Status"]["State"],
                "pipeline": tags.get(TAG_PIPELINE),
                "run_id": tags.get(TAG_RUN_ID),
                "name": summary.get("Name"),
            })  # fmt: skip


def _job_runs(deployment: Deployment, status: Status) -> None:
    wanted = {f"{deployment.stack_name}-{name}" for name in (*deployment.pipelines, *deployment.applications)}
    serverless = deployment.client("emr-serverless")
    applications = serverless.get_paginator("list_applications").paginate()
    status.job_runs.extend(
        _active_runs(serverless, "emr-serverless", applications, "applications", "applicationId", wanted)
    )
    containers = deployment.client("emr-containers")
    virtual_clusters = containers.get_paginator("list_virtual_clusters").paginate(states=["RUNNING"])
    status.job_runs.extend(
        _active_runs(containers, "emr-eks", virtual_clusters, "virtualClusters", "virtualClusterId", wanted)
    )


def _active_runs(
    client: Any, runtime: str, pages: Any, listed: str, id_param: str, wanted: set[str]
) -> Iterator[dict[str, Any]]:
    """Active job runs of the listed applications or virtual clusters named in `wanted`."""
    states = ACTIVE_SERVERLESS_STATES if runtime == "emr-serverless" else ACTIVE_EKS_STATES
    for page in pages:
        for where in page.get(listed, []):
            if where.get("name") not in wanted:
                continue
            runs = client.get_paginator("list_job_runs").paginate(**{id_param: where["id"]}, states=states)
            for run_page in runs:
                for run in run_page.get("jobRuns", []):
                    yield {"job_run_id": run["id"], "state": run["state"], "runtime": runtime,
                           "where": where["name"], "name": run.get("name")}  # fmt: skip
