"""Faults on demand: "the next N calls of X fail with error E", "the next job run fails / hangs", "function F
crashes right after its next call of X" (the call took effect; the invocation dies before it returns).

Used by the e2e tests and the reliability suite. API faults apply wherever the twin serves the
call: moto's HTTP dispatch (calls from Lambda code, the CLI, boto3) and the twin's own Step
Functions integrations. Job faults apply to EMR Serverless job runs and EMR on EC2 steps alike.
EMR on EC2 also has cluster faults: a Spot capacity shortage, a failing bootstrap action, spot instances
reclaimed by EC2 while a step runs (the step fails), and a lost EMR event (EventBridge delivers EMR's events on a
best-effort basis: the next matching one is never put on the bus).
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
BOOTSTRAP_FAILURE_MESSAGE = "On the master instance ({instance_id}), bootstrap action 1 returned a non-zero return code"
# A reclaimed spot instance as EMR's ListInstances shows it: Code INSTANCE_FAILURE (botocore emr model,
# InstanceStateChangeReasonCode), the message carrying EC2's reason code (EC2 API reference, StateReason).
SPOT_RECLAIM_REASON = {
    "Code": "INSTANCE_FAILURE",
    "Message": "Server.SpotInstanceTermination: the Spot Instance was interrupted by Amazon EC2 (capacity reclaimed)",
}


class FunctionCrash(BaseException):  # noqa: N818 - a crash, not an error the handler could catch
    """Raised inside a Lambda invocation right after an AWS call took effect: the process dies. A BaseException, so
    the handler's `except Exception` (and powertools' batch processing) cannot swallow it; the twin's runtime
    reports it as Lambda does a crashed invocation (`Runtime.ExitError`)."""


@dataclass
class CrashFault:
    function: str  # the function's name suffix, e.g. "router" matches "autopilot-dev-router"
    service: str  # botocore service name, e.g. "s3", "dynamodb", "stepfunctions"
    operation: str  # e.g. "PutObject"
    occurrence: int  # crash after the n-th such call from then on (1: the next one)


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
    kind: str  # "fail" | "hang" | "run"
    message: str
    seconds: float = 0.0  # "run": how long the job runs, in twin seconds (the model multiplies by its time_scale)


class FaultInjector:
    """Thread-safe fault registry; every injected fault is consumed exactly once per call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: list[ApiFault] = []
        self._jobs: list[JobFault] = []
        # Counted EMR-on-EC2 cluster faults: "spot_shortage" (next clusters get no spot), "spot_reclaim" (next steps).
        self._counted: dict[str, int] = {"spot_shortage": 0, "spot_reclaim": 0}
        self._bootstraps: list[str] = []
        self._dropped_events: list[tuple[str, str | None]] = []  # (detail-type, detail.state or None: any)
        self._crashes: list[CrashFault] = []
        self.fired: list[tuple[str, str, str]] = []
        # (function, service, operation) of every AWS call a function made while `recording` is on (crash matrix).
        self.recording = False
        self.calls: list[tuple[str, str, str]] = []

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

    def run_next_job_for(self, seconds: float) -> None:
        """The next job runs `seconds`, then succeeds: an EMR-on-EC2 step on the twin's clock, an EMR Serverless or
        EMR on EKS job run in real seconds (keep them short)."""
        with self._lock:
            self._jobs.append(JobFault("run", f"injected run of {seconds} s", seconds))

    def spot_shortage_next(self, times: int = 1) -> None:
        """The next `times` EMR clusters that request Spot capacity get none (their TimeoutAction decides)."""
        with self._lock:
            self._counted["spot_shortage"] += times

    def fail_next_bootstrap(self, message: str = BOOTSTRAP_FAILURE_MESSAGE) -> None:
        """The next EMR cluster to bootstrap fails (BOOTSTRAP_FAILURE); `{instance_id}` names its master."""
        with self._lock:
            self._bootstraps.append(message)

    def reclaim_spot_during_next_step(self, times: int = 1) -> None:
        """While each of the next `times` EMR-on-EC2 steps runs, EC2 reclaims its cluster's spot task instances
        (TERMINATED, INSTANCE_FAILURE) and the step FAILS; EMR then replaces the lost capacity to the fleet's or
        group's target."""
        with self._lock:
            self._counted["spot_reclaim"] += times

    def drop_next_emr_event(self, detail_type: str, state: str | None = None) -> None:
        """The next EMR event of `detail_type` (e.g. "EMR Step Status Change") whose detail.state is `state` (any
        when None) is lost: EMR changes state, but nothing reaches EventBridge."""
        with self._lock:
            self._dropped_events.append((detail_type, state))

    def take_dropped_event(self, detail_type: str, state: str | None) -> bool:
        """True (and the fault consumed) when this EMR event is to be lost."""
        with self._lock:
            for planned in self._dropped_events:
                if planned[0] == detail_type and planned[1] in (None, state):
                    self._dropped_events.remove(planned)
                    self.fired.append(("emr", "EventLost", f"{detail_type}:{state}"))
                    return True
            return False

    def take_spot_reclaim(self) -> bool:
        """Consume one pending spot reclaim (True) if there is one."""
        return self._take("spot_reclaim", ("emr", "SpotInterruption", "INSTANCE_FAILURE"))

    def _take(self, kind: str, fired: tuple[str, str, str]) -> bool:
        with self._lock:
            if self._counted[kind] <= 0:
                return False
            self._counted[kind] -= 1
            self.fired.append(fired)
            return True

    def crash_after(self, function: str, service: str, operation: str, *, occurrence: int = 1) -> None:
        """The `occurrence`-th next `service:operation` call of the function named `*function` takes effect, then its
        invocation crashes (the platform redelivers or retries it as it would on AWS)."""
        with self._lock:
            self._crashes.append(CrashFault(function, service, operation, occurrence))

    def after_call(self, function: str, service: str, operation: str) -> None:
        """Called by the Lambda runtime after each AWS call an invocation made: record it, crash if planned."""
        with self._lock:
            if self.recording:
                self.calls.append((function, service, operation))
            for fault in self._crashes:
                if function.endswith(fault.function) and (fault.service, fault.operation) == (service, operation):
                    fault.occurrence -= 1
                    if fault.occurrence == 0:
                        self._crashes.remove(fault)
                        self.fired.append((service, operation, f"crash:{function}"))
                        raise FunctionCrash(f"{function} crashed right after {service}:{operation} (injected)")
                    return

    def pending_crashes(self) -> int:
        with self._lock:
            return len(self._crashes)

    def clear(self) -> None:
        with self._lock:
            self._crashes.clear()
            self._api.clear()
            self._jobs.clear()
            self._counted = dict.fromkeys(self._counted, 0)
            self._bootstraps.clear()
            self._dropped_events.clear()

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

    def take_spot_shortage(self) -> bool:
        """Consume one pending Spot shortage (True) if there is one."""
        return self._take("spot_shortage", ("emr", "SpotCapacity", "InsufficientCapacity"))

    def next_bootstrap_fault(self) -> str | None:
        """Consume the next bootstrap failure message, if one is pending."""
        with self._lock:
            if not self._bootstraps:
                return None
            self.fired.append(("emr", "Bootstrap", "BOOTSTRAP_FAILURE"))
            return self._bootstraps.pop(0)
