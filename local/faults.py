"""Faults on demand: "the next N calls of X fail with error E", "the next job run fails / hangs".

Used by the e2e tests and the reliability suite. API faults apply wherever the twin serves the
call: moto's HTTP dispatch (calls from Lambda code, the CLI, boto3) and the twin's own Step
Functions integrations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# HTTP status AWS uses for each error code the tests inject.
STATUS = {
    "ThrottlingException": 400,
    "Throttling": 400,
    "TooManyRequestsException": 429,
    "ValidationException": 400,
    "InternalServerException": 500,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "AccessDeniedException": 403,
}


class TwinClientError(Exception):
    """An AWS-shaped service error raised by the twin's own models and integrations."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = STATUS.get(code, 400)


@dataclass
class ApiFault:
    service: str  # e.g. "emr-serverless", "states", "s3"
    operation: str  # e.g. "StartJobRun"
    remaining: int
    code: str
    message: str


@dataclass
class JobFault:
    kind: str  # "fail" | "hang"
    message: str


class FaultInjector:
    """Thread-safe fault registry; every injected fault is consumed exactly once per call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: list[ApiFault] = []
        self._jobs: list[JobFault] = []
        self.fired: list[tuple[str, str, str]] = []

    def fail_next(self, service: str, operation: str, *, times: int = 1, code: str = "ThrottlingException",
                  message: str = "Rate exceeded") -> None:  # fmt: skip
        """The next `times` calls of `service:operation` fail with `code`."""
        with self._lock:
            self._api.append(ApiFault(service, operation, times, code, message))

    def fail_next_job(self, message: str = "Job failed: injected fault") -> None:
        with self._lock:
            self._jobs.append(JobFault("fail", message))

    def hang_next_job(self) -> None:
        with self._lock:
            self._jobs.append(JobFault("hang", "injected hang"))

    def clear(self) -> None:
        with self._lock:
            self._api.clear()
            self._jobs.clear()

    def check(self, service: str, operation: str) -> None:
        """Raise the injected error if one is pending for this call."""
        with self._lock:
            for fault in self._api:
                if fault.service == service and fault.operation == operation and fault.remaining > 0:
                    fault.remaining -= 1
                    self.fired.append((service, operation, fault.code))
                    if fault.remaining == 0:
                        self._api.remove(fault)
                    raise TwinClientError(fault.code, fault.message)

    def pending(self, service: str, operation: str) -> bool:
        with self._lock:
            return any(f.service == service and f.operation == operation for f in self._api)

    def next_job_fault(self) -> JobFault | None:
        with self._lock:
            return self._jobs.pop(0) if self._jobs else None
