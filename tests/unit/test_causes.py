"""Failure causes as the ledger records them (autopilot_common.causes): never empty, at most about 1 KB."""

from __future__ import annotations

import json

import pytest

from autopilot_common.causes import MAX_CAUSE_CHARS, cap_cause, ledger_cause, shown


def test_a_short_cause_is_kept_as_is() -> None:
    assert ledger_cause("StepFailed", "step 'load' FAILED: boom") == "step 'load' FAILED: boom"


def test_a_long_cause_is_cut_to_1_kb_and_says_how_long_it_was() -> None:
    capped = cap_cause("y" * 100_077)
    assert len(capped) == MAX_CAUSE_CHARS
    assert capped.startswith("y" * 900)
    assert capped.endswith(" [truncated: 100077 characters; the full text is in the execution's history]")


def test_a_json_cause_is_compacted_before_it_is_capped() -> None:
    described = {"cluster": {"state": "TERMINATED_WITH_ERRORS", "reason": "bootstrap failed"}}
    assert ledger_cause("States.TaskFailed", json.dumps(described, indent=4)) == json.dumps(
        described, separators=(",", ":")
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("States.Timeout", "a task or the run did not finish within its timeout (Step Functions gave no cause)"),
        ("Custom.Error", "Custom.Error (no cause was given)"),
        (None, "an unnamed error (no cause was given)"),
    ],
)
def test_an_empty_cause_is_never_recorded(error: str | None, expected: str) -> None:
    assert ledger_cause(error, "") == f"{expected}; see the execution's history"
    assert ledger_cause(error, None) == ledger_cause(error, "   ")


def test_a_shown_value_is_cut_with_its_length() -> None:
    assert shown("abc") == "'abc'"
    long = shown("z" * 10_000)
    assert len(long) <= 200 and long.endswith("... (10002 characters)")


def test_a_job_run_description_is_summarized_to_its_failure_details() -> None:
    """The .sync cause of a failed job run is its whole description, the details last: 1,566 characters on the
    twin's EMR on EKS, so a plain cap cut exactly the part that says why."""
    eks = {"Id": "dej", "State": "FAILED", "Arn": "a" * 2000, "StateDetails": "driver pod OOMKilled",
           "FailureReason": "USER_ERROR"}  # fmt: skip
    assert ledger_cause("States.TaskFailed", json.dumps(eks)) == "job run dej FAILED (USER_ERROR): driver pod OOMKilled"
    serverless = {"jobRun": {"jobRunId": "00f", "state": "FAILED", "stateDetails": "Job failed: " + "x" * 5000}}
    summary = ledger_cause("States.TaskFailed", json.dumps(serverless))
    assert summary.startswith("job run 00f FAILED: Job failed: xxx") and len(summary) == MAX_CAUSE_CHARS
