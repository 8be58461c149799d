"""EMR Serverless job runs that behave like EMR Serverless, on top of moto's emr-serverless backend.

moto stores applications and job runs but never moves a job run through its states, ignores the
ClientToken (a second StartJobRun with the same token starts a second job), and cancels jobs that
already finished. The twin adds: idempotent StartJobRun by ClientToken, the state progression
SUBMITTED -> SCHEDULED -> RUNNING -> SUCCESS / FAILED (or CANCELLING -> CANCELLED), the job
really running on local Spark (or completing at once in `instant` mode, for fast tests),
"EMR Serverless Job Run State Change" events, on-demand job faults (fail / hang), and the usage GetJobRun
reports at the end (moto reports zeros): `billedResourceUtilization`, `totalResourceUtilization` and
`totalExecutionDurationSeconds` from the run's real duration x the workers its spark-submit parameters ask for
(`autopilot_common.spark_resources.serverless_workers`, EMR Serverless' defaults), as EMR Serverless bills them
(API reference, JobRun.billedResourceUtilization: "a 1-minute minimum usage for workers, plus additional storage
over 20 GB per worker"), with `startedAt`/`endedAt`.

Retry policies (`retryPolicy.maxAttempts`, BATCH mode; EMR Serverless User Guide, "Job resiliency": releases 7.1.0+,
1 to 10 attempts): a failed attempt with attempts left starts the next one in the same job run, from the beginning.
AWS documents no job run state between attempts; the twin's choice: the failed attempt's FAILED is the attempt's
state only (GetJobRun(attempt=n), ListJobRunAttempts), and the job run goes PENDING -> SCHEDULED -> RUNNING again for
the next attempt (with its events), so it ends FAILED only after its last attempt. Each attempt has its own
`attempt`, `attemptCreatedAt`/`attemptUpdatedAt`, `startedAt`/`endedAt` and usage (each attempt is billed); GetJobRun
without `attempt` answers the latest attempt ("defaults to the attempt of the latest job", GetJobRunRequest.attempt).
"""

from __future__ import annotations

import copy
import gzip
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Unpack

from moto.emrserverless.models import emrserverless_backends

from autopilot_common.spark_resources import serverless_workers
from local.emr_containers import camel, pascal
from local.emr_service import EmrServiceModel, EmrServiceSettings
from local.faults import TwinClientError
from local.spark_runner import SparkJob, SparkResult, log_key

LOG = logging.getLogger("twin.emr-serverless")
TERMINAL = {"SUCCESS", "FAILED", "CANCELLED"}
MINIMUM_BILLED_SECONDS = 60  # per worker (API reference, JobRun.billedResourceUtilization)
FREE_STORAGE_GB = 20  # per worker: only storage beyond it is billed
MAX_ATTEMPTS_LIMIT = (
    10  # retryPolicy.maxAttempts: "Acceptable values are 1 to 10 inclusive" (User Guide, job resiliency)
)
RETRY_RELEASE = (7, 1, 0)  # job resiliency: "EMR Serverless releases 7.1.0 and higher"


@dataclass
class TrackedRun:
    """The twin's view of one job run: moto's object plus what moto lacks."""

    application_id: str
    job_run_id: str
    moto_run: Any
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: SparkResult | None = None
    max_attempts: int = 1
    # the job run as each ended attempt left it (moto's record copied): GetJobRun(attempt=n), ListJobRunAttempts
    ended_attempts: list[Any] = field(default_factory=list)

    def attempt_record(self, attempt: int | None) -> Any:
        """The job run as GetJobRun(attempt) shows it: the latest attempt when None."""
        latest = int(getattr(self.moto_run, "attempt", None) or 1)
        if attempt is None or int(attempt) == latest:
            return self.moto_run
        if 1 <= int(attempt) <= len(self.ended_attempts):
            return self.ended_attempts[int(attempt) - 1]
        raise TwinClientError("ResourceNotFoundException", f"Job run {self.job_run_id} has no attempt {attempt}")

    def attempts(self) -> list[Any]:
        """Every attempt so far, the first first (the last one is the job run's current record)."""
        return [*self.ended_attempts, self.moto_run]


class EmrServerlessTwin(EmrServiceModel):
    """Job runs of every EMR Serverless application in the twin."""

    def __init__(self, **settings: Unpack[EmrServiceSettings]) -> None:
        super().__init__(**settings)
        self.runs: dict[tuple[str, str], TrackedRun] = {}
        # S3 as a role (twin.py sets it): an injected job failure's driver log is written as the job's role
        self.s3_for_role: Callable[[str, str], Any] | None = None
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @property
    def backend(self) -> Any:
        return emrserverless_backends[self.account][self.region]

    # ------------------------------------------------------------------ API

    def start_job_run(self, params: dict[str, Any]) -> dict[str, Any]:
        """StartJobRun with AWS semantics; returns {ApplicationId, JobRunId, Arn}."""
        self.faults.check("emr-serverless", "StartJobRun")
        app_id = params["ApplicationId"]
        token = params.get("ClientToken") or ""
        with self._lock:
            existing = self._tokens.get((app_id, token)) if token else None
            if existing:
                run = self.runs[(app_id, existing)].moto_run
                return {"ApplicationId": app_id, "JobRunId": run.id, "Arn": run.arn}
            try:
                app = self.backend.get_application(app_id)
            except Exception:
                raise TwinClientError("ResourceNotFoundException", f"Application {app_id} does not exist") from None
            max_attempts = _max_attempts(params, app.release_label)
            if app.state in {"CREATED", "STOPPED"} and getattr(app, "auto_start_configuration", {}).get(
                "enabled", True
            ):
                app.state = "STARTED"  # auto-start on submit, as EMR Serverless does
            run = self.backend.start_job_run(
                application_id=app_id,
                client_token=token,
                execution_role_arn=params["ExecutionRoleArn"],
                # Stored as the API has them (camelCase: GetJobRun returns jobDriver.sparkSubmit.entryPoint, ...),
                # whichever casing the caller used (Step Functions' PascalCase parameters).
                job_driver=camel(params.get("JobDriver")),
                configuration_overrides=camel(params.get("ConfigurationOverrides")),
                tags=params.get("Tags"),
                execution_timeout_minutes=max(5, int(params.get("ExecutionTimeoutMinutes") or 720)),
                name=params.get("Name"),
            )
            run.created_at = datetime.now(UTC)  # moto's is the day's midnight; GetJobRun's createdAt is the submission
            run.mode = str(params.get("Mode") or "BATCH")
            if "RetryPolicy" in params or "retryPolicy" in params:
                run.retry_policy = camel(params.get("RetryPolicy") or params.get("retryPolicy"))
            tracked = TrackedRun(app_id, run.id, run, max_attempts=max_attempts)
            self.runs[(app_id, run.id)] = tracked
            if token:
                self._tokens[(app_id, token)] = run.id
        self._set_state(tracked, "SUBMITTED", "")
        threading.Thread(target=self._drive, args=(tracked,), name=f"job-{run.id}", daemon=True).start()
        return {"ApplicationId": app_id, "JobRunId": run.id, "Arn": run.arn}

    def cancel_job_run(self, application_id: str, job_run_id: str) -> dict[str, Any]:
        """CancelJobRun: a finished job run is rejected with ValidationException, as in AWS."""
        self.faults.check("emr-serverless", "CancelJobRun")
        tracked = self._tracked(application_id, job_run_id)
        state = tracked.moto_run.state
        if state in TERMINAL:
            raise TwinClientError(
                "ValidationException", f"Job run {job_run_id} is in terminal state {state} and cannot be cancelled"
            )
        tracked.cancel.set()
        self._set_state(tracked, "CANCELLING", "Job run cancellation requested")
        return {"ApplicationId": application_id, "JobRunId": job_run_id}

    def describe(self, application_id: str, job_run_id: str) -> dict[str, Any]:
        """The GetJobRun `jobRun` shape (PascalCase keys as Step Functions returns them)."""
        run = self._tracked(application_id, job_run_id).moto_run
        return {
            "ApplicationId": application_id,
            "JobRunId": run.id,
            "Arn": run.arn,
            "Name": run.name,
            "State": run.state,
            "StateDetails": run.state_details or "",
            "ReleaseLabel": run.release_label,
            "ExecutionRole": run.execution_role_arn,
            "JobDriver": pascal(run.job_driver),
            "Tags": run.tags or {},
            "Attempt": getattr(run, "attempt", None) or 1,
            "TotalExecutionDurationSeconds": run.total_execution_duration_seconds,
            "BilledResourceUtilization": run.billed_resource_utilization,
            "TotalResourceUtilization": getattr(run, "total_resource_utilization", None)
            or {"vCPUHour": 0.0, "memoryGBHour": 0.0, "storageGBHour": 0.0},
        }

    def wait(self, application_id: str, job_run_id: str, timeout: float | None = None) -> bool:
        return self._tracked(application_id, job_run_id).done.wait(timeout)

    def running(self) -> list[TrackedRun]:
        return [r for r in self.runs.values() if r.moto_run.state not in TERMINAL]

    # ------------------------------------------------------------------ progression

    def _tracked(self, application_id: str, job_run_id: str) -> TrackedRun:
        try:
            return self.runs[(application_id, job_run_id)]
        except KeyError:
            raise TwinClientError("ResourceNotFoundException", f"Job run {job_run_id} does not exist") from None

    def list_job_run_attempts(self, application_id: str, job_run_id: str) -> list[Any]:
        """ListJobRunAttempts: the job run's record of each attempt (JobRunAttemptSummary's fields), first first."""
        return self._tracked(application_id, job_run_id).attempts()

    def _drive(self, tracked: TrackedRun) -> None:
        run, attempt = tracked.moto_run, 1
        while True:
            run.attempt = attempt
            run.attempt_created_at = run.attempt_updated_at = datetime.now(UTC)
            final, details = self._attempt(tracked)
            if final != "FAILED" or tracked.cancel.is_set() or attempt >= tracked.max_attempts:
                break
            # attempts left: the next attempt of the same job run, from the beginning (the failed one is kept)
            LOG.info("job run %s: attempt %d failed (%s); attempt %d of %d", run.id, attempt, details, attempt + 1,
                     tracked.max_attempts)  # fmt: skip
            ended = copy.copy(run)  # the failed attempt as GetJobRun(attempt) shows it from now on
            ended.state, ended.state_details, ended.attempt_updated_at = final, details, datetime.now(UTC)
            tracked.ended_attempts.append(ended)
            run.ended_at = run.billed_resource_utilization = run.total_resource_utilization = None
            attempt += 1
            self._set_state(tracked, "PENDING", "")
        self._set_state(tracked, final, details)
        tracked.done.set()

    def _attempt(self, tracked: TrackedRun) -> tuple[str, str]:
        """One attempt: SCHEDULED -> RUNNING -> its outcome (the final state is left to the caller), usage recorded."""
        started = time.monotonic()
        tracked.moto_run.started_at = datetime.now(UTC)
        try:
            for state in ("SCHEDULED", "RUNNING"):
                if tracked.cancel.is_set():
                    break
                self._set_state(tracked, state, "")
            fault = self.faults.next_job_fault()
            if tracked.cancel.is_set():
                final, details = "CANCELLED", "Job run was cancelled"
            elif fault is not None and fault.kind == "hang":
                tracked.cancel.wait()  # runs until cancelled (or the workflow's timeout cancels it)
                final, details = "CANCELLED", "Job run was cancelled"
            elif fault is not None and fault.kind == "run":  # a job that takes `seconds` (real time), then succeeds
                cancelled = tracked.cancel.wait(fault.seconds)
                final, details = ("CANCELLED", "Job run was cancelled") if cancelled else ("SUCCESS", "")
            elif fault is not None:
                final, details = "FAILED", fault.message
                self._write_failure_logs(tracked, fault.message)
            else:
                final, details = self._execute(tracked)
        except Exception as exc:  # a twin defect must still end the job run
            LOG.exception("job run %s crashed in the twin", tracked.job_run_id)
            final, details = "FAILED", f"twin error: {exc}"
        self._record_usage(tracked, time.monotonic() - started)
        return final, details

    def _record_usage(self, tracked: TrackedRun, seconds: float) -> None:
        """What EMR Serverless reports at the end: the duration rounded up to the second, and each worker's vCPU,
        memory and storage over it (total), billed with the one-minute minimum and only storage beyond 20 GB."""
        run = tracked.moto_run
        run.ended_at = datetime.now(UTC)
        duration = math.ceil(seconds)
        run.total_execution_duration_seconds = duration
        spark = (run.job_driver or {}).get("sparkSubmit") or (run.job_driver or {}).get("SparkSubmit") or {}
        try:
            workers = serverless_workers(spark.get("sparkSubmitParameters") or spark.get("SparkSubmitParameters") or "")
        except ValueError as exc:  # EMR Serverless would have refused the job; nothing ran, nothing billed
            LOG.warning("job run %s: no usage: %s", run.id, exc)
            return
        billed = max(duration, MINIMUM_BILLED_SECONDS)

        def usage(seconds: float, free_storage: float) -> dict[str, float]:
            hours = seconds / 3600
            return {
                "vCPUHour": round(sum(w.count * w.vcpu for w in workers.workers) * hours, 6),
                "memoryGBHour": round(sum(w.count * w.memory_gb for w in workers.workers) * hours, 6),
                "storageGBHour": round(
                    sum(w.count * max(0.0, w.disk_gb - free_storage) for w in workers.workers) * hours, 6
                ),
            }

        run.total_resource_utilization = usage(duration, 0.0)
        run.billed_resource_utilization = usage(billed, FREE_STORAGE_GB)

    def _write_failure_logs(self, tracked: TrackedRun, message: str) -> None:
        """An injected job failure still leaves a driver log, as a failed EMR Serverless driver does: stderr.gz with
        the error (and an empty stdout.gz) in the EMR Serverless layout under the job's S3 log URI, written as the
        job's role (with s3_for_role; without it, or with no s3:// log URI, nothing is written)."""
        run = tracked.moto_run
        log_uri = _log_uri(run)
        if self.s3_for_role is None or not log_uri or not log_uri.startswith("s3://"):
            return
        stamp = datetime.now(UTC).strftime("%y/%m/%d %H:%M:%S")
        texts = {
            "stdout": "",
            "stderr": f"{stamp} INFO SparkContext: Running Spark job run {run.id}\n"
            f"{stamp} ERROR SparkContext: {message}\n"
            f'Exception in thread "main" org.apache.spark.SparkException: {message}\n',
        }
        bucket, _, prefix = log_uri[len("s3://") :].partition("/")
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        try:
            s3 = self.s3_for_role(run.execution_role_arn, run.id)
            for name, text in texts.items():
                key = prefix + log_key("emr-serverless", tracked.application_id, run.id, f"{name}.gz")
                s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode("utf-8")))
        except Exception:  # a log the role may not write is missing in AWS too
            LOG.exception("job run %s: cannot upload its driver logs", run.id)

    def _execute(self, tracked: TrackedRun) -> tuple[str, str]:
        if self.runner is None:
            return "SUCCESS", ""
        run = tracked.moto_run
        spark = (run.job_driver or {}).get("sparkSubmit") or (run.job_driver or {}).get("SparkSubmit") or {}
        job = SparkJob(
            job_run_id=run.id,
            entry_point=str(spark.get("entryPoint") or spark.get("EntryPoint") or ""),
            arguments=list(spark.get("entryPointArguments") or spark.get("EntryPointArguments") or []),
            spark_submit_parameters=spark.get("sparkSubmitParameters") or spark.get("SparkSubmitParameters") or "",
            log_uri=_log_uri(run),
            log_layout="emr-serverless",
            application_id=tracked.application_id,
            timeout_seconds=int(run.execution_timeout_minutes) * 60,
            role_arn=run.execution_role_arn,
        )
        result = self.runner.run(job, tracked.cancel)
        tracked.result = result
        if tracked.cancel.is_set():
            return "CANCELLED", "Job run was cancelled"
        if result.succeeded:
            return "SUCCESS", ""
        return "FAILED", f"Job failed, please check complete logs in configured logging destination. {result.error}"

    def _set_state(self, tracked: TrackedRun, state: str, details: str) -> None:
        run = tracked.moto_run
        previous = run.state
        run.state = state
        run.state_details = details
        run.updated_at = run.attempt_updated_at = datetime.now(UTC)
        LOG.info("job run %s: %s -> %s %s", run.id, previous, state, details)
        self.emit(
            {
                "source": "aws.emr-serverless",
                "detail-type": "EMR Serverless Job Run State Change",
                "resources": [run.arn],
                "detail": {
                    "jobRunId": run.id,
                    "jobRunName": run.name,
                    "applicationId": tracked.application_id,
                    "arn": run.arn,
                    "releaseLabel": run.release_label,
                    "state": state,
                    "previousState": previous if previous != state else None,
                    "stateDetails": details,
                    "createdBy": run.execution_role_arn,
                    "updatedAt": run.updated_at.isoformat(),
                    "createdAt": run.created_at.isoformat(),
                },
            }
        )


def _max_attempts(params: dict[str, Any], release_label: str) -> int:
    """The attempts a StartJobRun request allows, refused as EMR Serverless refuses them (botocore's model gives
    only `AttemptNumber` min 1; the rest is the User Guide's "Job resiliency")."""
    policy = camel(params.get("RetryPolicy") or params.get("retryPolicy") or {})
    mode = str(params.get("Mode") or params.get("mode") or "BATCH")
    if "maxAttempts" not in policy:
        return 1
    if mode != "BATCH":
        raise TwinClientError("ValidationException", "retryPolicy.maxAttempts is only applicable for BATCH mode")
    attempts = int(policy["maxAttempts"])
    if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
        raise TwinClientError(
            "ValidationException", f"retryPolicy.maxAttempts must be between 1 and {MAX_ATTEMPTS_LIMIT}; got {attempts}"
        )
    version = tuple(int(part) for part in release_label.removeprefix("emr-").split(".")[:3])
    if attempts > 1 and version < RETRY_RELEASE:
        raise TwinClientError(
            "ValidationException",
            f"Job retry policies need release emr-7.1.0 or later; the application has {release_label}",
        )
    return attempts


def _log_uri(run: Any) -> str | None:
    """The job run's `monitoringConfiguration.s3MonitoringConfiguration.logUri` (either casing), if any."""
    overrides = run.configuration_overrides or {}
    monitoring = overrides.get("monitoringConfiguration") or overrides.get("MonitoringConfiguration") or {}
    s3_monitoring = monitoring.get("s3MonitoringConfiguration") or monitoring.get("S3MonitoringConfiguration") or {}
    uri = s3_monitoring.get("logUri") or s3_monitoring.get("LogUri")
    return str(uri) if uri else None
