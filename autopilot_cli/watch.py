"""Following one run to an end: its execution's status (DescribeExecution) and its ledger entry (one GetObject at
the key the execution's name and start date give), polled at a bounded rate; each change is printed as a line, the
current state shown on a Rich status line.

Used by `start --wait` (until the run ended) and `cancel` (until the guardrail has cleaned up after it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console

from autopilot_cli.errors import OperationFailed
from autopilot_cli.ledger import RunRecord, failure_reason, run_at
from autopilot_common.ledger import FINAL_STATES, ledger_key

RUNNING = "RUNNING"
POLL_SECONDS = 2.0
LEDGER_GRACE_SECONDS = 60.0  # after the execution ended, how long its ledger entry may take to reach a final state
_sleep = time.sleep  # the tests step the world forward here
OK_STATES = frozenset({"SUCCEEDED", "SKIPPED"})  # a SKIPPED run started nothing: not a failure


@dataclass(frozen=True)
class Progress:
    """One look at the run: the execution's description and its ledger entry (None before prepare wrote it)."""

    execution: dict[str, Any]
    record: RunRecord | None

    @property
    def status(self) -> str:
        return str(self.execution.get("status", "UNKNOWN"))

    @property
    def state(self) -> str:
        """The run's outcome: the ledger's state (FAILED, CANCELLED, TIMED_OUT ... say more than the execution's
        status), else the execution's status."""
        return self.record.state if self.record is not None else self.status

    @property
    def ok(self) -> bool:
        return self.state in OK_STATES

    @property
    def reason(self) -> str | None:
        """The failure as one line: the ledger's error and cause, else the execution's."""
        if self.record is not None and (self.record.error or self.record.cause):
            return failure_reason(self.record.error, self.record.cause)
        return failure_reason(self.execution.get("error"), self.execution.get("cause"))

    def line(self) -> str:
        ledger = self.record.state if self.record is not None else "no entry yet"
        return f"execution {self.status} · ledger {ledger}"


def look(sfn: Any, s3: Any, outputs_bucket: str, pipeline: str, execution_arn: str) -> Progress:
    execution = sfn.describe_execution(executionArn=execution_arn)
    started: datetime = execution["startDate"]
    record = run_at(s3, outputs_bucket, ledger_key(pipeline, started, execution["name"]))
    return Progress(execution, record)


def ended(progress: Progress, since_end: float) -> bool:
    """The run ended: its execution did, and its ledger entry is final (or had its grace to get there)."""
    if progress.status == RUNNING:
        return False
    final = progress.record is not None and progress.record.state in FINAL_STATES
    return final or since_end >= LEDGER_GRACE_SECONDS


def cleaned_up(progress: Progress, since_end: float) -> bool:
    """After a StopExecution: the execution ended and the guardrail wrote its `cleanup` into a final entry (a run
    that succeeded in the race has no cleanup to wait for)."""
    record = progress.record
    if progress.status == RUNNING or record is None or record.state not in FINAL_STATES:
        return False
    return "cleanup" in record.raw or record.state == "SUCCEEDED"


def follow(
    console: Console,
    peek: Callable[[], Progress],
    done: Callable[[Progress, float], bool],
    timeout: float | None,
    waiting_for: str,
) -> Progress:
    """Poll `peek` every POLL_SECONDS until `done(progress, seconds since the execution ended)`; prints each new
    state as a line. OperationFailed after `timeout` seconds (None: no limit) naming what it waited for."""
    started = time.monotonic()
    ended_at: float | None = None
    shown = ""
    with console.status(f"waiting for {waiting_for}") as status:
        while True:
            progress = peek()
            now = time.monotonic()
            if progress.status != RUNNING and ended_at is None:
                ended_at = now
            if (line := progress.line()) != shown:
                console.print(f"{time.strftime('%H:%M:%S')}  {line}", highlight=False)
                shown = line
                status.update(f"{line} — waiting for {waiting_for}")
            if done(progress, 0.0 if ended_at is None else now - ended_at):
                return progress
            if timeout is not None and now - started >= timeout:
                raise OperationFailed(f"gave up after {timeout:g}s waiting for {waiting_for} ({line})")
            _sleep(POLL_SECONDS)
