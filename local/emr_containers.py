"""EMR on EKS (`emr-containers`) virtual clusters and job runs that behave like the real service, on top of moto's
emrcontainers backend (docs/twin/emr-on-eks.md).

Retry policies (`retryPolicyConfiguration.maxAttempts`, EMR on EKS Development Guide, "Using job retry policies"):
a failed driver with attempts left is restarted (a new attempt of the same job run, which stays RUNNING: the
driver pod is restarted under it); DescribeJobRun's `retryPolicyExecution.currentAttemptCount` counts the attempts.
EMR on EKS waits 10 s, 20 s, 40 s ... (at most 6 min) between attempts; the twin restarts at once.
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
from typing import Any, Unpack

from moto.emrcontainers.models import JobRun, VirtualCluster, emrcontainers_backends

from local.emr_service import EmrServiceModel, EmrServiceSettings
from local.faults import TwinClientError
from local.spark_runner import SparkJob, SparkResult

LOG = logging.getLogger("twin.emr-containers")
SERVICE = "emr-containers"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
JOB_STATES = frozenset({"PENDING", "SUBMITTED", "RUNNING", "CANCEL_PENDING", *TERMINAL})
DETAIL_TYPE = "EMR Job Run State Change"
CANCELLED_DETAILS = "Job run was cancelled"
_ALPHABET = string.ascii_lowercase + string.digits
_OPAQUE = {"tags", "properties"}  # children are user keys: never re-cased


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


def _namespace(container_provider: dict[str, Any]) -> str:
    return str(((container_provider.get("info") or {}).get("eksInfo") or {}).get("namespace") or "default")


def _virtual_cluster_shape(cluster: VirtualCluster) -> dict[str, Any]:
    """The DescribeVirtualCluster `virtualCluster` shape of moto's record."""
    return {
        "id": cluster.id,
        "name": cluster.name,
        "arn": cluster.arn,
        "state": cluster.state,
        "containerProvider": cluster.container_provider,
        "createdAt": cluster.created_at,
        "tags": cluster.tags,
    }


@dataclass
class ContainersJobRun:
    """The twin's view of one job run: moto's record plus what moto lacks."""

    moto_run: Any  # moto's JobRun (typed Any: moto annotates jobDriver as str and failureReason as None)
    # moto's JobRun has no retry policy field: the twin keeps it (stored and returned only)
    retry_policy_configuration: dict[str, Any] | None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: SparkResult | None = None
    attempts: int = 0  # driver attempts started (retryPolicyExecution.currentAttemptCount)

    @property
    def max_attempts(self) -> int:
        return int((self.retry_policy_configuration or {}).get("maxAttempts") or 1)

    @property
    def id(self) -> str:
        return str(self.moto_run.id)

    @property
    def virtual_cluster_id(self) -> str:
        return str(self.moto_run.virtual_cluster_id)

    @property
    def state(self) -> str:
        return str(self.moto_run.state)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.moto_run.tags or {})

    def describe(self) -> dict[str, Any]:
        """The DescribeJobRun `jobRun` shape (absent values left out, as AWS does)."""
        run = self.moto_run
        shape: dict[str, Any] = {
            "id": run.id,
            "name": run.name,
            "virtualClusterId": run.virtual_cluster_id,
            "arn": run.arn,
            "state": run.state,
            "clientToken": run.client_token,
            "executionRoleArn": run.execution_role_arn,
            "releaseLabel": run.release_label,
            "configurationOverrides": run.configuration_overrides,
            "jobDriver": run.job_driver,
            "createdAt": run.created_at,
            "createdBy": run.execution_role_arn,
            "finishedAt": run.finished_at,
            "stateDetails": run.state_details or None,
            "failureReason": run.failure_reason,
            "tags": run.tags,
            "retryPolicyConfiguration": self.retry_policy_configuration,
            "retryPolicyExecution": {"currentAttemptCount": self.attempts} if self.retry_policy_configuration else None,
        }
        return {k: v for k, v in shape.items() if v is not None}


class EmrContainersTwin(EmrServiceModel):
    """Virtual clusters and job runs of EMR on EKS in the twin, stored in moto's emrcontainers backend."""

    def __init__(self, **settings: Unpack[EmrServiceSettings]) -> None:
        super().__init__(**settings)
        self.backend.reset()  # a new model is a new service: no virtual clusters or job runs of an earlier one
        self.runs: dict[str, ContainersJobRun] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()

    @property
    def backend(self) -> Any:
        return emrcontainers_backends[self.account][self.region]

    @property
    def clusters(self) -> dict[str, Any]:
        """moto's VirtualCluster records by id (typed Any as moto's own: their tags are always a dict here)."""
        clusters: dict[str, Any] = self.backend.virtual_clusters
        return clusters

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
        return _virtual_cluster_shape(self._cluster(virtual_cluster_id))

    def list_virtual_clusters(self, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = camel(params or {})
        states = set(params.get("states") or [])
        provider = params.get("containerProviderId")
        with self._lock:
            clusters = sorted(self.clusters.values(), key=lambda c: c.created_at, reverse=True)
        return [
            _virtual_cluster_shape(c) for c in clusters
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
        namespace = _namespace(provider)
        with self._lock:
            for other in self.clusters.values():
                if (
                    other.state == "RUNNING"
                    and other.container_provider.get("id") == provider["id"]
                    and _namespace(other.container_provider) == namespace
                ):
                    raise TwinClientError(
                        "ValidationException",
                        f"A virtual cluster already exists in the given namespace {namespace} "
                        f"of EKS cluster {provider['id']}",
                    )
            cluster = self._new_virtual_cluster(name, provider, namespace, dict(params.get("tags") or {}))
        LOG.info("virtual cluster %s (%s) RUNNING on %s/%s", cluster.id, name, provider["id"], namespace)
        return {"id": cluster.id, "name": cluster.name, "arn": cluster.arn}

    def _new_virtual_cluster(
        self, name: str, provider: dict[str, Any], namespace: str, tags: dict[str, str]
    ) -> VirtualCluster:
        """A RUNNING virtual cluster in moto's backend. Not through its create_virtual_cluster: that refuses a
        namespace any virtual cluster ever used (TERMINATED ones included, of any EKS cluster) and needs
        containerProvider.info, where EMR on EKS refuses only a RUNNING one on the same EKS cluster and
        namespace and the namespace defaults to "default"."""
        eks_info = {**provider, "info": {"eksInfo": {"namespace": namespace}}}
        partition, cluster_id = self.backend.partition, _random_id(25)
        cluster = VirtualCluster(name, eks_info, "", self.account, self.region, partition, tags, cluster_id)
        cluster.container_provider = provider  # as requested: describe returns what was asked for
        cluster.created_at = datetime.now(UTC)  # moto's is the day's midnight: no order among a day's clusters
        self.backend.virtual_clusters[cluster.id] = cluster
        self.backend.virtual_cluster_count += 1
        return cluster

    def _delete_virtual_cluster(self, virtual_cluster_id: str) -> dict[str, Any]:
        cluster = self._cluster(virtual_cluster_id)
        with self._lock:
            cluster.state = "TERMINATED"
            orphans = [r for r in self.runs.values() if r.virtual_cluster_id == cluster.id and r.state not in TERMINAL]
        for run in orphans:
            run.moto_run.failure_reason = "CLUSTER_UNAVAILABLE"
            run.cancel.set()
        return {"id": cluster.id}

    def _cluster(self, virtual_cluster_id: str) -> VirtualCluster:
        try:
            cluster: VirtualCluster = self.clusters[virtual_cluster_id]
        except KeyError:
            raise TwinClientError(
                "ResourceNotFoundException", f"Virtual cluster {virtual_cluster_id} doesn't exist."
            ) from None
        return cluster

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
        runs.sort(key=lambda r: r.moto_run.created_at, reverse=True)
        return [
            r.describe() for r in runs
            if (not states or r.state in states) and (not name or r.moto_run.name == name)
            and (after is None or r.moto_run.created_at >= _as_datetime(after))
            and (before is None or r.moto_run.created_at <= _as_datetime(before))
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
        if not (params["jobDriver"].get("sparkSubmitJobDriver") or {}).get("entryPoint"):
            raise TwinClientError("ValidationException", "jobDriver.sparkSubmitJobDriver.entryPoint is required")
        token = str(params.get("clientToken") or "")
        with self._lock:
            cluster = self._cluster(vc_id)
            existing = self._tokens.get((vc_id, token)) if token else None
            if existing:
                return self._started(self.runs[existing])
            if cluster.state != "RUNNING":
                raise TwinClientError(
                    "ValidationException", f"Virtual cluster {vc_id} is {cluster.state}: job runs need a RUNNING one"
                )
            run = ContainersJobRun(self._new_job_run(vc_id, token, params), params.get("retryPolicyConfiguration"))
            self.runs[run.id] = run
            if token:
                self._tokens[(vc_id, token)] = run.id
        self._set_state(run, "PENDING", "")
        threading.Thread(target=self._drive, args=(run,), name=f"eks-job-{run.id}", daemon=True).start()
        return self._started(run)

    def _new_job_run(self, vc_id: str, token: str, params: dict[str, Any]) -> JobRun:
        """A PENDING job run in moto's backend. Not through its start_job_run: that also refuses release labels
        the twin accepts (it knows emr-x.y.0-latest|YYYYMMDD only) and starts the run RUNNING."""
        moto_run = JobRun(
            str(params.get("name") or ""),
            vc_id,
            token,
            params["executionRoleArn"],
            params["releaseLabel"],
            params["jobDriver"],
            params.get("configurationOverrides") or {},
            self.account,
            self.region,
            self.backend.partition,
            dict(params.get("tags") or {}),
        )
        moto_run.name = moto_run.name or moto_run.id
        moto_run.state = "PENDING"
        moto_run.created_at = datetime.now(UTC)  # moto's is the day's midnight: no order among a day's runs
        self.backend.job_runs[moto_run.id] = moto_run
        self.backend.job_count += 1
        return moto_run

    @staticmethod
    def _started(run: ContainersJobRun) -> dict[str, Any]:
        """The StartJobRun response."""
        moto_run = run.moto_run
        return {"id": run.id, "name": moto_run.name, "arn": moto_run.arn, "virtualClusterId": run.virtual_cluster_id}

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
        for state in ("SUBMITTED", "RUNNING"):
            if run.cancel.is_set():
                break
            self._set_state(run, state, "")
        while True:
            run.attempts += 1
            final, details, reason = self._attempt(run)
            if final != "FAILED" or run.cancel.is_set() or run.attempts >= run.max_attempts:
                break
            LOG.info("job run %s: driver attempt %d failed (%s); restarting it", run.id, run.attempts, details)
        run.moto_run.failure_reason = reason
        run.moto_run.finished_at = datetime.now(UTC)
        self._set_state(run, final, details)
        run.done.set()

    def _attempt(self, run: ContainersJobRun) -> tuple[str, str, str | None]:
        """One driver attempt: its outcome (state, details, failure reason)."""
        try:
            fault = self.faults.next_job_fault()
            if run.cancel.is_set():
                final, details, reason = self._cancelled(run)
            elif fault is not None and fault.kind == "hang":
                run.cancel.wait()  # runs until cancelled (or the workflow's timeout cancels it)
                final, details, reason = self._cancelled(run)
            elif fault is not None and fault.kind == "run":  # a job that takes `seconds` (real time), then succeeds
                cancelled = run.cancel.wait(fault.seconds)
                final, details, reason = self._cancelled(run) if cancelled else ("COMPLETED", "", None)
            elif fault is not None:
                final, details, reason = "FAILED", fault.message, "USER_ERROR"
            else:
                final, details, reason = self._execute(run)
        except Exception as exc:  # a twin defect must still end the job run
            LOG.exception("job run %s crashed in the twin", run.id)
            final, details, reason = "FAILED", f"twin error: {exc}", "INTERNAL_ERROR"
        return final, details, reason

    @staticmethod
    def _cancelled(run: ContainersJobRun) -> tuple[str, str, str | None]:
        if run.moto_run.failure_reason == "CLUSTER_UNAVAILABLE":
            return "FAILED", f"Virtual cluster {run.virtual_cluster_id} was terminated", "CLUSTER_UNAVAILABLE"
        return "CANCELLED", CANCELLED_DETAILS, None

    def _execute(self, run: ContainersJobRun) -> tuple[str, str, str | None]:
        if self.runner is None:
            return "COMPLETED", "", None
        spark = run.moto_run.job_driver.get("sparkSubmitJobDriver") or {}
        monitoring = run.moto_run.configuration_overrides.get("monitoringConfiguration") or {}
        s3_monitoring = monitoring.get("s3MonitoringConfiguration") or {}
        job = SparkJob(
            job_run_id=run.id,
            entry_point=str(spark.get("entryPoint") or ""),
            arguments=[str(a) for a in spark.get("entryPointArguments") or []],
            spark_submit_parameters=str(spark.get("sparkSubmitParameters") or ""),
            log_uri=s3_monitoring.get("logUri"),
            log_layout="emr-eks",
            application_id=run.virtual_cluster_id,
            role_arn=run.moto_run.execution_role_arn,
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

    def _set_state(self, tracked: ContainersJobRun, state: str, details: str) -> None:
        run = tracked.moto_run
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
