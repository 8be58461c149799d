"""Failure causes as the ledger and notifications carry them: never empty, never longer than about 1 KB.

A cause names what failed and why. Some arrive huge (a `.sync` task's cause is the whole job description; a
rejected console input echoes the value it rejects) and some arrive empty (Step Functions gives a task that
timed out `States.Timeout` with no cause). The ledger and the SNS message keep the first `MAX_CAUSE_CHARS`
characters, say that they are truncated and how long the full text is; the full text stays in the execution
(its history and its failure, which the workflows end with unchanged).
"""

from __future__ import annotations

import json
from typing import Any

MAX_CAUSE_CHARS = 1024
MAX_SHOWN_CHARS = 200
TRUNCATED = " [truncated: {length} characters; the full text is in {where}]"
IN_HISTORY = "the execution's history"

_BARE_ERRORS = {
    "States.Timeout": "a task or the run did not finish within its timeout (Step Functions gave no cause)",
    "States.TaskFailed": "a task failed (Step Functions gave no cause)",
    "States.Runtime": "the workflow hit a runtime error (Step Functions gave no cause)",
}


def cap_cause(cause: str, limit: int = MAX_CAUSE_CHARS, where: str = IN_HISTORY) -> str:
    """`cause` itself when short enough, else its head and a marker saying it was truncated and that the full
    text is in `where` (at most `limit` characters in all)."""
    if len(cause) <= limit:
        return cause
    marker = TRUNCATED.format(length=len(cause), where=where)
    return cause[: limit - len(marker)] + marker


def compact(cause: str) -> str:
    """A JSON cause (a `.sync` task's job description) re-serialized without indentation, else unchanged."""
    try:
        parsed = json.loads(cause)
    except ValueError:
        return cause
    return json.dumps(parsed, default=str, separators=(",", ":")) if isinstance(parsed, dict | list) else cause


def job_run_summary(cause: str) -> str | None:
    """`job run <id> <state> (<failure reason>): <state details>` when `cause` is a job run's description (the
    cause of a failed EMR Serverless or EMR on EKS `.sync` task: the details come last in the JSON, so capping
    the JSON would cut exactly them), else None."""
    try:
        parsed = json.loads(cause)
    except ValueError:
        return None
    run = parsed.get("jobRun", parsed) if isinstance(parsed, dict) else None
    if not isinstance(run, dict):
        return None
    details = run.get("StateDetails") or run.get("stateDetails")
    if not details:
        return None
    ident = run.get("Id") or run.get("id") or run.get("jobRunId") or "?"
    state = run.get("State") or run.get("state") or "FAILED"
    reason = run.get("FailureReason") or run.get("failureReason")
    return f"job run {ident} {state}" + (f" ({reason})" if reason else "") + f": {details}"


def ledger_cause(error: str | None, cause: str | None) -> str:
    """The cause the ledger records for `error`: a job run's own failure details when the cause describes one,
    else the cause compacted; capped, and never empty."""
    raw = str(cause or "").strip()
    text = job_run_summary(raw) or compact(raw)
    if not text:
        text = _BARE_ERRORS.get(str(error or ""), f"{error or 'an unnamed error'} (no cause was given)")
        text += "; see the execution's history"
    return cap_cause(text)


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with the full length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text)} characters)"


# Where AWS puts the job's own message in a failure cause (EMR Serverless job run, EMR step, Lambda, EMR on EKS).
_MESSAGE_KEYS = ("StateDetails", "stateDetails", "Message", "message", "errorMessage", "Reason", "reason")


def failure_reason(error: str | None, cause: str | None) -> str | None:
    """The failure as one readable line: `<error>: <the job's own message>`; the message is pulled out of a JSON
    cause (e.g. EMR Serverless' `JobRun.StateDetails`, an EMR step's `FailureDetails.Message`) when there is one."""
    if not error and not cause:
        return None
    message = _message_of(cause) if cause else None
    line = ": ".join(part for part in (error, message) if part)
    return " ".join(line.split())


def _message_of(cause: str) -> str:
    try:
        parsed = json.loads(cause)
    except ValueError:
        return cause
    found = _find_message(parsed)
    return found if found else cause


def _find_message(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in _MESSAGE_KEYS:
            if isinstance(value.get(key), str) and value[key].strip():
                return str(value[key])
        for child in value.values():
            if (found := _find_message(child)) is not None:
                return found
    if isinstance(value, list):
        for child in value:
            if (found := _find_message(child)) is not None:
                return found
    return None
