"""EMR on EKS (`emr-containers`) virtual clusters and job runs that behave like the real service.

moto's emrcontainers backend stores virtual clusters and job runs, but a job run sits in RUNNING forever,
the ClientToken is ignored and finished jobs can be cancelled. The twin owns the state itself (moto's
backend is not used) and adds:

- virtual clusters RUNNING -> TERMINATED (ids of 25 lowercase alphanumerics, ARN
  `arn:aws:emr-containers:<region>:<account>:/virtualclusters/<id>`); one active virtual cluster per EKS
  namespace, as AWS enforces;
- StartJobRun idempotent by (virtual cluster, ClientToken); rejected on a missing virtual cluster
  (ResourceNotFoundException) or a TERMINATED one (ValidationException);
- the state progression PENDING -> SUBMITTED -> RUNNING -> COMPLETED | FAILED (with `stateDetails` and a
  `failureReason` of USER_ERROR / INTERNAL_ERROR / CLUSTER_UNAVAILABLE), or CANCEL_PENDING -> CANCELLED;
  CancelJobRun of a finished job run is a ValidationException, as in AWS;
- the job running on local Spark (`SparkJob(log_layout="emr-eks", application_id=<virtual cluster id>)`)
  or completing at once when `runner` is None (`instant` mode, for fast tests);
- job faults from `FaultInjector.next_job_fault()`: "fail" -> FAILED (USER_ERROR, the fault's message),
  "hang" -> RUNNING until cancelled. API faults use service "emr-containers" and the API operation
  (StartJobRun, CancelJobRun, ...): the public methods check them; `handle_api` does not (the HTTP
  dispatch hook in `local.patches` already did);
- deleting a virtual cluster ends its unfinished job runs FAILED with CLUSTER_UNAVAILABLE.

Events: EMR on EKS documents three detail-types under source `aws.emr-containers` ("EmrContainers Job Run
State Change", "EMR Job Run State Change", "EMR Job Run New Driver Attempt"; EventBridge events reference).
The twin emits one "EMR Job Run State Change" per state change (the type the EMR on EKS guide's examples
match on), detail {id, name, arn, virtualClusterId, state, previousState, releaseLabel, executionRoleArn,
failureReason, stateDetails, createdBy, severity}.

Parameters are accepted camelCase (HTTP API) or PascalCase (Step Functions); `describe_job_run` returns
the API's camelCase `jobRun`, `pascal()` turns it into the Step Functions shape. Timestamps are datetimes
in the model (serialized by moto for HTTP) and ISO-8601 strings in the Step Functions shape.
Not modelled: job templates, managed endpoints, security configurations, retry attempts
(retryPolicyConfiguration is stored and returned only), createdBy identities, pagination tokens.
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from local.faults import FaultInjector, TwinClientError
from local.spark_runner import SparkJob, SparkResult

LOG = logging.getLogger("twin.emr-containers")
SERVICE = "emr-containers"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
JOB_STATES = frozenset({"PENDING", "SUBMITTED", "RUNNING", "CANCEL_PENDING", *TERMINAL})
DETAIL_TYPE = "EMR Job Run State Change"
CANCELLED_DETAILS = "Job run was cancelled"
_ALPHABET = string.ascii_lowercase + string.digits
_OPAQUE = {"tags", "properties"}  # children are user keys: never re-cased


class JobRunner(Protocol):
    def run(self, job: SparkJob, cancel: threading.Event | None = None) -> SparkResult: ...


def _random_id(size: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(size))


def _recase(value: Any, first: Callable[[str], str], opaque: bool = False) -> Any:
    if isinstance(value, dict):
        if opaque:
            return dict(value)
        return {first(k[:1]) + k[1:]: _recase(v, first, k.lower() in _OPAQUE) for k, v in value.items()}
    if isinstance(value, list):
        return [_recase(v, first) for v in value]
    return value


def camel(value: Any) -> Any:
    """PascalCase request keys (Step Functions) -> the API's camelCase; tags and properties untouched."""
    return _recase(value, str.lower)


def pascal(value: Any) -> Any:
    """An API shape with PascalCase keys (Step Functions results); datetimes as ISO-8601 strings."""
    cased = _recase(value, str.upper)
    if isinstance(cased, dict):
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in cased.items()}
    return cased


@dataclass
class VirtualCluster:
    id: str
    name: str
    arn: str
    container_provider: dict[str, Any]
    tags: dict[str, str]
    state: str = "RUNNING"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def namespace(self) -> str:
        return str(((self.container_provider.get("info") or {}).get("eksInfo") or {}).get("namespace") or "default")

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "arn": self.arn,
            "state": self.state,
            "containerProvider": self.container_provider,
            "createdAt": self.created_at,
            "tags": self.tags,
        }


@dataclass
class ContainersJobRun:
    """One job run: its request, its state, and the events the driver thread waits on."""

    id: str
    name: str
    virtual_cluster_id: str
    arn: str
    client_token: str
    execution_role_arn: str
    release_label: str
    job_driver: dict[str, Any]
    configuration_overrides: dict[str, Any]
    tags: dict[str, str]
    retry_policy_configuration: dict[str, Any] | None
    state: str = "PENDING"
    state_details: str = ""
    failure_reason: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: SparkResult | None = None

    def describe(self) -> dict[str, Any]:
        """The DescribeJobRun `jobRun` shape (absent values left out, as AWS does)."""
        shape: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "virtualClusterId": self.virtual_cluster_id,
            "arn": self.arn,
            "state": self.state,
            "clientToken": self.client_token,
            "executionRoleArn": self.execution_role_arn,
            "releaseLabel": self.release_label,
            "configurationOverrides": self.configuration_overrides,
            "jobDriver": self.job_driver,
            "createdAt": self.created_at,
            "createdBy": self.execution_role_arn,
            "finishedAt": self.finished_at,
            "stateDetails": self.state_details or None,
            "failureReason": self.failure_reason,
            "tags": self.tags,
            "retryPolicyConfiguration": self.retry_policy_configuration,
        }
        return {k: v for k, v in shape.items() if v is not None}


class EmrContainersTwin:
    """Virtual clusters and job runs of EMR on EKS in the twin."""

    def __init__(
        self,
        *,
        account: str,
        region: str,
        runner: JobRunner | None,
        faults: FaultInjector,
        emit: Callable[[dict[str, Any]], None],
    ) -> None:
        self.account = account
        self.region = region
        self.runner = runner  # None -> `instant` mode: jobs complete without Spark
        self.faults = faults
        self.emit = emit
        self.clusters: dict[str, VirtualCluster] = {}
        self.runs: dict[str, ContainersJobRun] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ virtual clusters

    def create_virtual_cluster(self, params: dict[str, Any]) -> dict[str, Any]:
        """CreateVirtualCluster: {id, name, arn}."""
        self.faults.check(SERVICE, "CreateVirtualCluster")
        return self._create_virtual_cluster(camel(params))

    def delete_virtual_cluster(self, virtual_cluster_id: str) -> dict[str, Any]:
        """DeleteVirtualCluster: TERMINATED at once; its unfinished job runs fail with CLUSTER_UNAVAILABLE."""
        self.faults.check(SERVICE, "DeleteVirtualCluster")
        return self._delete_virtual_cluster(virtual_cluster_id)

    def describe_virtual_cluster(self, virtual_cluster_id: str) -> dict[str, Any]:
        return self._cluster(virtual_cluster_id).describe()

    def list_virtual_clusters(self, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = camel(params or {})
        states = set(params.get("states") or [])
        provider = params.get("containerProviderId")
        with self._lock:
            clusters = sorted(self.clusters.values(), key=lambda c: c.created_at, reverse=True)
        return [
            c.describe() for c in clusters
            if (not states or c.state in states) and (not provider or c.container_provider.get("id") == provider)
        ]  # fmt: skip

    def _create_virtual_cluster(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name") or ""
        provider = params.get("containerProvider") or {}
        if not name or not provider.get("id"):
            raise TwinClientError("ValidationException", "name and containerProvider.id are required")
        if str(provider.get("type", "EKS")).upper() != "EKS":
            raise TwinClientError("ValidationException", f"Container provider type {provider.get('type')} is not EKS")
        provider = {"type": "EKS", **provider}
        cluster = VirtualCluster("", name, "", provider, dict(params.get("tags") or {}))
        with self._lock:
            for other in self.clusters.values():
                if (
                    other.state == "RUNNING"
                    and other.container_provider.get("id") == provider["id"]
                    and other.namespace == cluster.namespace
                ):
                    raise TwinClientError(
                        "ValidationException",
                        f"A virtual cluster already exists in the given namespace {cluster.namespace} "
                        f"of EKS cluster {provider['id']}",
                    )
            cluster.id = _random_id(25)
            cluster.arn = f"arn:aws:emr-containers:{self.region}:{self.account}:/virtualclusters/{cluster.id}"
            self.clusters[cluster.id] = cluster
        LOG.info("virtual cluster %s (%s) RUNNING on %s/%s", cluster.id, name, provider["id"], cluster.namespace)
        return {"id": cluster.id, "name": cluster.name, "arn": cluster.arn}

    def _delete_virtual_cluster(self, virtual_cluster_id: str) -> dict[str, Any]:
        cluster = self._cluster(virtual_cluster_id)
        with self._lock:
            cluster.state = "TERMINATED"
            orphans = [r for r in self.runs.values() if r.virtual_cluster_id == cluster.id and r.state not in TERMINAL]
        for run in orphans:
            run.failure_reason = "CLUSTER_UNAVAILABLE"
            run.cancel.set()
        return {"id": cluster.id}

    def _cluster(self, virtual_cluster_id: str) -> VirtualCluster:
        try:
            return self.clusters[virtual_cluster_id]
        except KeyError:
            raise TwinClientError(
                "ResourceNotFoundException", f"Virtual cluster {virtual_cluster_id} doesn't exist."
            ) from None

    # ------------------------------------------------------------------ job runs

    def start_job_run(self, params: dict[str, Any]) -> dict[str, Any]:
        """StartJobRun (camelCase or PascalCase params): {id, name, arn, virtualClusterId}."""
        self.faults.check(SERVICE, "StartJobRun")
        return self._start_job_run(camel(params))

    def cancel_job_run(self, virtual_cluster_id: str, job_run_id: str) -> dict[str, Any]:
        """CancelJobRun: {id, virtualClusterId}; a finished job run is a ValidationException, as in AWS."""
        self.faults.check(SERVICE, "CancelJobRun")
        return self._cancel_job_run(virtual_cluster_id, job_run_id)

    def describe_job_run(self, virtual_cluster_id: str, job_run_id: str) -> dict[str, Any]:
        """The DescribeJobRun `jobRun` (camelCase; `pascal()` of it for Step Functions)."""
        return self._run(virtual_cluster_id, job_run_id).describe()

    def list_job_runs(self, virtual_cluster_id: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """ListJobRuns, newest first, filtered by states / name / createdAfter / createdBefore."""
        self._cluster(virtual_cluster_id)
        params = camel(params or {})
        states, name = set(params.get("states") or []), params.get("name")
        after, before = params.get("createdAfter"), params.get("createdBefore")
        with self._lock:
            runs = [r for r in self.runs.values() if r.virtual_cluster_id == virtual_cluster_id]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return [
            r.describe() for r in runs
            if (not states or r.state in states) and (not name or r.name == name)
            and (after is None or r.created_at >= _as_datetime(after))
            and (before is None or r.created_at <= _as_datetime(before))
        ]  # fmt: skip

    def wait(self, virtual_cluster_id: str, job_run_id: str, timeout: float | None = None) -> bool:
        return self._run(virtual_cluster_id, job_run_id).done.wait(timeout)

    def running(self) -> list[ContainersJobRun]:
        """Job runs not yet in a terminal state ("nothing left running" checks)."""
        with self._lock:
            return [r for r in self.runs.values() if r.state not in TERMINAL]

    def shutdown(self) -> None:
        for run in self.running():
            run.cancel.set()

    def _start_job_run(self, params: dict[str, Any]) -> dict[str, Any]:
        vc_id = str(params.get("virtualClusterId") or "")
        for required in ("executionRoleArn", "releaseLabel", "jobDriver"):
            if not params.get(required):
                raise TwinClientError("ValidationException", f"{required} is required")
        driver = params["jobDriver"]
        if not (driver.get("sparkSubmitJobDriver") or {}).get("entryPoint"):
            raise TwinClientError("ValidationException", "jobDriver.sparkSubmitJobDriver.entryPoint is required")
        token = str(params.get("clientToken") or "")
        with self._lock:
            cluster = self._cluster(vc_id)
            existing = self._tokens.get((vc_id, token)) if token else None
            if existing:
                run = self.runs[existing]
                return {"id": run.id, "name": run.name, "arn": run.arn, "virtualClusterId": vc_id}
            if cluster.state != "RUNNING":
                raise TwinClientError(
                    "ValidationException", f"Virtual cluster {vc_id} is {cluster.state}: job runs need a RUNNING one"
                )
            job_id = _random_id(19)
            run = ContainersJobRun(
                id=job_id,
                name=str(params.get("name") or job_id),
                virtual_cluster_id=vc_id,
                arn=f"{cluster.arn}/jobruns/{job_id}",
                client_token=token,
                execution_role_arn=params["executionRoleArn"],
                release_label=params["releaseLabel"],
                job_driver=driver,
                configuration_overrides=params.get("configurationOverrides") or {},
                tags=dict(params.get("tags") or {}),
                retry_policy_configuration=params.get("retryPolicyConfiguration"),
            )
            self.runs[job_id] = run
            if token:
                self._tokens[(vc_id, token)] = job_id
        self._set_state(run, "PENDING", "")
        threading.Thread(target=self._drive, args=(run,), name=f"eks-job-{job_id}", daemon=True).start()
        return {"id": run.id, "name": run.name, "arn": run.arn, "virtualClusterId": vc_id}

    def _cancel_job_run(self, virtual_cluster_id: str, job_run_id: str) -> dict[str, Any]:
        run = self._run(virtual_cluster_id, job_run_id)
        with self._lock:
            if run.state in TERMINAL:
                raise TwinClientError(
                    "ValidationException", f"Job run {job_run_id} is in {run.state} state and cannot be cancelled"
                )
            if run.state == "CANCEL_PENDING":
                return {"id": run.id, "virtualClusterId": virtual_cluster_id}
            run.cancel.set()
        self._set_state(run, "CANCEL_PENDING", "Job run cancellation requested")
        return {"id": run.id, "virtualClusterId": virtual_cluster_id}

    def _run(self, virtual_cluster_id: str, job_run_id: str) -> ContainersJobRun:
        run = self.runs.get(job_run_id)
        if run is None or run.virtual_cluster_id != virtual_cluster_id:
            raise TwinClientError(
                "ResourceNotFoundException",
                f"Job run {job_run_id} doesn't exist in virtual cluster {virtual_cluster_id}.",
            )
        return run

    # ------------------------------------------------------------------ HTTP API

    def handle_api(self, action: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """One emr-containers REST-JSON call (params parsed by moto, path ids included); None = not modelled."""
        vc_id = str(params.get("virtualClusterId") or params.get("id") or "")
        if action == "CreateVirtualCluster":
            return self._create_virtual_cluster(params)
        if action == "DeleteVirtualCluster":
            return self._delete_virtual_cluster(str(params.get("id") or ""))
        if action == "DescribeVirtualCluster":
            return {"virtualCluster": self.describe_virtual_cluster(str(params.get("id") or ""))}
        if action == "ListVirtualClusters":
            return {"virtualClusters": self.list_virtual_clusters(params)}
        if action == "StartJobRun":
            return self._start_job_run(params)
        if action == "DescribeJobRun":
            return {"jobRun": self.describe_job_run(vc_id, str(params.get("id") or ""))}
        if action == "CancelJobRun":
            return self._cancel_job_run(vc_id, str(params.get("id") or ""))
        if action == "ListJobRuns":
            return {"jobRuns": self.list_job_runs(vc_id, params)}
        return None

    # ------------------------------------------------------------------ progression

    def _drive(self, run: ContainersJobRun) -> None:
        try:
            for state in ("SUBMITTED", "RUNNING"):
                if run.cancel.is_set():
                    break
                self._set_state(run, state, "")
            fault = self.faults.next_job_fault()
            if run.cancel.is_set():
                final, details, reason = self._cancelled(run)
            elif fault is not None and fault.kind == "hang":
                run.cancel.wait()  # runs until cancelled (or the workflow's timeout cancels it)
                final, details, reason = self._cancelled(run)
            elif fault is not None:
                final, details, reason = "FAILED", fault.message, "USER_ERROR"
            else:
                final, details, reason = self._execute(run)
        except Exception as exc:  # a twin defect must still end the job run
            LOG.exception("job run %s crashed in the twin", run.id)
            final, details, reason = "FAILED", f"twin error: {exc}", "INTERNAL_ERROR"
        run.failure_reason = reason
        run.finished_at = datetime.now(UTC)
        self._set_state(run, final, details)
        run.done.set()

    @staticmethod
    def _cancelled(run: ContainersJobRun) -> tuple[str, str, str | None]:
        if run.failure_reason == "CLUSTER_UNAVAILABLE":
            return "FAILED", f"Virtual cluster {run.virtual_cluster_id} was terminated", "CLUSTER_UNAVAILABLE"
        return "CANCELLED", CANCELLED_DETAILS, None

    def _execute(self, run: ContainersJobRun) -> tuple[str, str, str | None]:
        if self.runner is None:
            return "COMPLETED", "", None
        spark = run.job_driver.get("sparkSubmitJobDriver") or {}
        monitoring = run.configuration_overrides.get("monitoringConfiguration") or {}
        s3_monitoring = monitoring.get("s3MonitoringConfiguration") or {}
        job = SparkJob(
            job_run_id=run.id,
            entry_point=str(spark.get("entryPoint") or ""),
            arguments=[str(a) for a in spark.get("entryPointArguments") or []],
            spark_submit_parameters=str(spark.get("sparkSubmitParameters") or ""),
            log_uri=s3_monitoring.get("logUri"),
            log_layout="emr-eks",
            application_id=run.virtual_cluster_id,
            role_arn=run.execution_role_arn,
        )
        started = time.monotonic()
        result = self.runner.run(job, run.cancel)
        run.result = result
        LOG.info("job run %s ran %.1f s on local Spark", run.id, time.monotonic() - started)
        if run.cancel.is_set():
            return self._cancelled(run)
        if result.succeeded:
            return "COMPLETED", "", None
        return "FAILED", f"Jobs failed with error: {result.error}", "USER_ERROR"

    def _set_state(self, run: ContainersJobRun, state: str, details: str) -> None:
        with self._lock:
            previous = run.state
            run.state = state
            run.state_details = details
        LOG.info("job run %s: %s -> %s %s", run.id, previous, state, details)
        self.emit(
            {
                "source": "aws.emr-containers",
                "detail-type": DETAIL_TYPE,
                "resources": [run.arn],
                "detail": {
                    "severity": "ERROR" if state == "FAILED" else "INFO",
                    "id": run.id,
                    "name": run.name,
                    "arn": run.arn,
                    "virtualClusterId": run.virtual_cluster_id,
                    "state": state,
                    "previousState": previous if previous != state else None,
                    "releaseLabel": run.release_label,
                    "executionRoleArn": run.execution_role_arn,
                    "failureReason": run.failure_reason if state == "FAILED" else None,
                    "stateDetails": details,
                    "createdBy": run.execution_role_arn,
                    "createdAt": run.created_at.isoformat(),
                },
            }
        )


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
