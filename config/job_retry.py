"""`runtime.retry` of the job-run runtimes (EMR Serverless, EMR on EKS): the service's own retry policy.

The service re-runs a failed job run itself (a new attempt of the same job run): the workflow waits on the job run
through every attempt, so a retried run keeps its run slot, and its recorded cost covers every attempt.

Limits (AWS documentation; botocore's models give only a minimum):
- EMR Serverless `retryPolicy.maxAttempts`: botocore emr-serverless `AttemptNumber` min 1; "Acceptable values are
  1 to 10 inclusive", batch jobs only, releases 7.1.0 and higher (EMR Serverless User Guide, "Job resiliency").
- EMR on EKS `retryPolicyConfiguration.maxAttempts`: botocore emr-containers `JavaInteger` with no range; releases
  6.9.0 and later (EMR on EKS Development Guide, "Using job retry policies"), which documents no maximum: the app
  accepts the same conservative 1 to 10 as EMR Serverless.
"""

from __future__ import annotations

import re
from typing import Protocol

from pydantic import Field

from config.base import StrictModel

MAX_ATTEMPTS_LIMIT = 10
SERVERLESS_RETRY_RELEASE = (7, 1, 0)  # EMR Serverless job resiliency: releases 7.1.0 and higher
EKS_RETRY_RELEASE = (6, 9, 0)  # EMR on EKS job retry policies: releases 6.9.0 and later


class JobRunRetry(StrictModel):
    """The service retries a failed job run (a new attempt of the same job run, from the beginning)."""

    max_attempts: int = Field(
        default=1,
        ge=1,
        le=MAX_ATTEMPTS_LIMIT,
        description="Attempts in all, the first included: 1 (the default) never retries. EMR Serverless accepts "
        "1-10 (releases 7.1.0+); EMR on EKS (releases 6.9.0+) documents no maximum, the app allows 1-10. Every "
        "attempt is billed and recorded in the ledger; the run keeps its run slot across attempts.",
    )

    @property
    def retries(self) -> bool:
        """Whether a retry policy is sent at all (1 attempt is the services' default: nothing is sent)."""
        return self.max_attempts > 1

    def timeout_fields(self, execution_timeout_minutes: int) -> str:
        """The config fields behind a job-run runtime's longest job time (every attempt), for errors."""
        fields = f"runtime.execution_timeout_minutes ({execution_timeout_minutes})"
        if not self.retries:
            return fields
        total = execution_timeout_minutes * self.max_attempts
        return f"{fields} x runtime.retry.max_attempts ({self.max_attempts}) = {total}"


class _RetriedJobRun(Protocol):
    execution_timeout_minutes: int
    retry: JobRunRetry


class RetriedJobRunTimeouts:
    """For the job-run runtimes (EMR Serverless, EMR on EKS): the config fields behind `execution_timeout_minutes`
    with every attempt `retry` allows, for errors that must name fields the runtime has. (No annotations here: the
    runtimes declare the fields, in their own order and with their own descriptions.)"""

    def execution_timeout_fields(self: _RetriedJobRun) -> str:
        return self.retry.timeout_fields(self.execution_timeout_minutes)


def release_version(label: str) -> tuple[int, int, int]:
    """(major, minor, patch) of `emr-x.y.z` or `emr-x.y.z-latest|YYYYMMDD`."""
    match = re.match(r"^emr-(\d+)\.(\d+)\.(\d+)", label)
    if match is None:
        raise ValueError(f"release label {label!r} is not emr-x.y.z")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def retry_release_problem(retry: JobRunRetry, release_label: str, minimum: tuple[int, int, int], service: str) -> str:
    """Why `retry` cannot run on `release_label` ('' when it can)."""
    if not retry.retries or release_version(release_label) >= minimum:
        return ""
    needed = ".".join(str(part) for part in minimum)
    return (
        f"retry.max_attempts ({retry.max_attempts}) needs {service} release {needed} or later; "
        f"got {release_label}: raise the release label or set max_attempts to 1"
    )
