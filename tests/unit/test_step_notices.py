"""Event-driven step notices (autopilot_common.step_notices): RunStep's token is stored on submit, answered once by
the step's end event or by the sweeper's fallback, and a token whose task ended is let go. Also the idle windows the
finalize function derives from the steps (finalization.idle_windows)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from autopilot_common.step_notices import (
    NoticeStore,
    StepNoticeError,
    StepSubmission,
    notice_step_event,
    submit_step,
    sweep_step_notices,
)
from finalization import idle_windows
from tests.conftest import load_event
from tests.unit.conftest import create_table

TABLE = "autopilot-dev-idempotency"
STEP = {"Name": "etl", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["x"]}}


class FakeEmr:
    """Steps of one cluster, by id: AddJobFlowSteps, ListSteps (newest first), DescribeStep."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}
        self.added = 0
        self.pages_read = 0

    def add_job_flow_steps(self, JobFlowId: str, Steps: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.added += 1
        step_id = f"s-{len(self.steps) + 1}"
        status = {"State": "PENDING", "Timeline": {"CreationDateTime": datetime.now(UTC)}}
        self.steps[step_id] = {"Id": step_id, "Name": Steps[0]["Name"], "Status": status}
        return {"StepIds": [step_id]}

    def get_paginator(self, operation: str) -> Any:
        assert operation == "list_steps"
        steps = self

        class Pages:
            def paginate(self, ClusterId: str) -> Iterator[dict[str, Any]]:  # noqa: N803
                newest_first = list(reversed(steps.steps.values()))  # as ListSteps answers, 50 a page
                for start in range(0, len(newest_first), 50):
                    steps.pages_read += 1
                    yield {"Steps": newest_first[start : start + 50]}

        return Pages()

    def describe_step(self, ClusterId: str, StepId: str) -> dict[str, Any]:  # noqa: N803
        if StepId not in self.steps:
            raise ClientError({"Error": {"Code": "InvalidRequestException", "Message": "no step"}}, "DescribeStep")
        return {"Step": self.steps[StepId]}

    def end(self, step_id: str, state: str, reason: str = "") -> None:
        self.steps[step_id]["Status"] = {"State": state, "FailureDetails": {"Reason": reason}}


class FakeSfn:
    """Answers to task tokens; tokens in `ended` answer TaskTimedOut, as a token of a task that ended does."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str, dict[str, Any]]] = []
        self.ended: set[str] = set()

    def _answer(self, kind: str, token: str, **fields: Any) -> dict[str, Any]:
        if token in self.ended:
            raise ClientError({"Error": {"Code": "TaskTimedOut", "Message": "gone"}}, kind)
        self.answers.append((kind, token, fields))
        return {}

    def send_task_success(self, taskToken: str, output: str) -> dict[str, Any]:  # noqa: N803
        return self._answer("success", taskToken, output=json.loads(output))

    def send_task_failure(self, taskToken: str, error: str, cause: str) -> dict[str, Any]:  # noqa: N803
        return self._answer("failure", taskToken, error=error, cause=json.loads(cause))


@pytest.fixture
def store(moto: str) -> NoticeStore:
    dynamodb = boto3.client("dynamodb", region_name=moto)
    create_table(dynamodb, TABLE, "id")
    return NoticeStore(dynamodb, TABLE)


def _submit(emr: FakeEmr, sfn: FakeSfn, store: NoticeStore, token: str = "t-1", name: str = "run-1: etl") -> str:
    """RunStep's submission (step names carry the run id: two runs never share one)."""
    event = {"token": token, "cluster_id": "j-1", "step": {**STEP, "Name": name}, "timeout_seconds": 600}
    return str(submit_step(StepSubmission.from_event(event), emr, sfn, store)["step_id"])  # type: ignore[arg-type]


def _event(step_id: str, state: str) -> dict[str, Any]:
    return {"clusterId": "j-1", "stepId": step_id, "state": state, "name": "etl"}


def test_a_completed_step_answers_its_token_once_and_no_one_waits_any_more(store: NoticeStore) -> None:
    # Given a step submitted by RunStep
    emr, sfn = FakeEmr(), FakeSfn()
    step_id = _submit(emr, sfn, store)
    assert store.pending() == [("j-1", step_id)] and sfn.answers == []
    # When its COMPLETED event arrives, twice (EventBridge delivers at least once)
    emr.end(step_id, "COMPLETED")
    first = notice_step_event(_event(step_id, "COMPLETED"), emr, sfn, store)  # type: ignore[arg-type]
    second = notice_step_event(_event(step_id, "COMPLETED"), emr, sfn, store)  # type: ignore[arg-type]
    # Then the token was answered with success exactly once, and nothing is pending
    assert (first, second) == ("answered", "no token")
    assert sfn.answers == [("success", "t-1", {"output": {"StepId": step_id, "State": "COMPLETED"}})]
    assert store.pending() == []


def test_a_failed_step_fails_the_task_with_the_step_as_its_cause(store: NoticeStore) -> None:
    emr, sfn = FakeEmr(), FakeSfn()
    step_id = _submit(emr, sfn, store)
    emr.end(step_id, "FAILED", "boom")
    assert notice_step_event(_event(step_id, "FAILED"), emr, sfn, store) == "answered"  # type: ignore[arg-type]
    ((kind, _, fields),) = sfn.answers
    assert kind == "failure" and fields["error"] == "EMR.StepFailed"
    assert fields["cause"]["Step"]["Status"]["FailureDetails"]["Reason"] == "boom"


def test_a_real_step_status_change_event_answers_the_token_of_its_step(store: NoticeStore) -> None:
    # Given a token stored for the step the sample event (EMR's own shape) reports COMPLETED
    detail = load_event("emr_step_status_change.json")["detail"]
    store.put(detail["clusterId"], detail["stepId"], "t-sample", 600)
    sfn = FakeSfn()
    # When the event arrives
    noticed = notice_step_event(detail, FakeEmr(), sfn, store)  # type: ignore[arg-type]
    # Then the token is answered with the step's id and state
    assert noticed == "answered"
    assert sfn.answers == [("success", "t-sample", {"output": {"StepId": detail["stepId"], "State": "COMPLETED"}})]


def test_events_of_other_steps_and_unended_states_are_ignored(store: NoticeStore) -> None:
    emr, sfn = FakeEmr(), FakeSfn()
    step_id = _submit(emr, sfn, store)
    assert notice_step_event(_event(step_id, "RUNNING"), emr, sfn, store) == "ignored"  # type: ignore[arg-type]
    assert notice_step_event(_event("s-other", "COMPLETED"), emr, sfn, store) == "no token"  # type: ignore[arg-type]
    assert sfn.answers == [] and store.pending() == [("j-1", step_id)]


def test_a_lost_event_is_recovered_by_the_sweep_and_a_running_step_is_left_waiting(store: NoticeStore) -> None:
    # Given two steps of two runs: one ended (its event lost), one still running
    emr, sfn = FakeEmr(), FakeSfn()
    ended = _submit(emr, sfn, store, "t-ended")
    emr.end(ended, "COMPLETED")
    running = _submit(emr, sfn, store, "t-running", name="run-2: etl")
    # When the sweeper ticks
    recovered = sweep_step_notices(emr, sfn, store)  # type: ignore[arg-type]
    # Then only the ended step's token is answered
    assert recovered == [f"j-1#{ended}"] and [a[1] for a in sfn.answers] == ["t-ended"]
    assert store.pending() == [("j-1", running)]
    # And a step whose token expired (TTL) is dropped from the index once it ended, answering nothing
    store.dynamodb.delete_item(TableName=TABLE, Key={"id": {"S": f"step-notice#j-1#{running}"}})
    emr.end(running, "COMPLETED")
    assert sweep_step_notices(emr, sfn, store) == [] and store.pending() == []  # type: ignore[arg-type]
    assert len(sfn.answers) == 1


def test_a_token_whose_task_ended_is_let_go(store: NoticeStore) -> None:
    emr, sfn = FakeEmr(), FakeSfn()
    step_id = _submit(emr, sfn, store, "t-timed-out")
    sfn.ended.add("t-timed-out")  # the task timed out (TimeoutSecondsPath) or the run was aborted
    emr.end(step_id, "CANCELLED")
    assert notice_step_event(_event(step_id, "CANCELLED"), emr, sfn, store) == "task ended"  # type: ignore[arg-type]
    assert store.pending() == [] and store.token("j-1", step_id) is None


def test_a_retried_submission_waits_on_the_step_already_added_and_a_step_already_ended_is_answered_at_once(
    store: NoticeStore,
) -> None:
    emr, sfn = FakeEmr(), FakeSfn()
    first = _submit(emr, sfn, store, "t-1")
    again = _submit(emr, sfn, store, "t-2")  # Lambda retried the invocation after it had added the step
    assert again == first and emr.added == 1 and store.token("j-1", first) == "t-2"
    emr.end(first, "FAILED")  # a new attempt (runtime.retry) adds the step again
    retried = _submit(emr, sfn, store, "t-3")
    assert retried != first and emr.added == 2

    emr.end(retried, "CANCELLED")  # a new attempt whose step ends before its token is stored
    emr.add_job_flow_steps = _adds_ended_step(emr)  # type: ignore[method-assign]
    quick = _submit(emr, sfn, store, "t-4")
    assert ("success", "t-4") in [(k, t) for k, t, _ in sfn.answers] and store.token("j-1", quick) is None
    assert _submit(emr, sfn, store, "t-5") == quick  # retried once more: its step COMPLETED, answered at once
    assert ("success", "t-5") in [(k, t) for k, t, _ in sfn.answers] and emr.added == 3


def _adds_ended_step(emr: FakeEmr) -> Any:
    add = emr.add_job_flow_steps

    def add_and_end(JobFlowId: str, Steps: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        added = add(JobFlowId=JobFlowId, Steps=Steps)
        emr.end(added["StepIds"][0], "COMPLETED")
        return added

    return add_and_end


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("token", "", "token: got ''"),
        ("step", {"Name": "etl"}, "step: got"),
        ("timeout_seconds", 0, "timeout_seconds: got 0"),
    ],
)
def test_a_submission_without_its_fields_is_refused_by_name(field: str, value: Any, message: str) -> None:
    event = {"token": "t", "cluster_id": "j-1", "step": STEP, "timeout_seconds": 60, field: value}
    with pytest.raises(StepNoticeError, match=message):
        StepSubmission.from_event(event)


def _attempt(cluster: str, started: str, ended: str) -> dict[str, Any]:
    return {"cluster_id": cluster, "started_at": f"2024-06-01T10:{started}Z", "ended_at": f"2024-06-01T10:{ended}Z"}


def test_idle_windows_are_the_gaps_between_steps_and_the_wait_for_termination() -> None:
    # Given three steps on one cluster, the second retried once, and the terminate request 2 s after the last end
    steps = [
        {"attempts": [_attempt("j-1", "00:00", "10:00")]},
        {"attempts": [_attempt("j-1", "10:01", "20:00"), _attempt("j-1", "20:03", "30:00")]},
        {"attempts": [_attempt("j-1", "30:00.500", "40:00")]},
    ]
    windows, between, after = idle_windows(steps, "j-1", "2024-06-01T10:40:02Z")
    assert between == pytest.approx(1 + 3 + 0.5) and after == pytest.approx(2)
    assert len(windows["j-1"]) == 4
    # A long-running cluster (no termination): only the gaps count
    assert idle_windows(steps, "j-1", None)[2] is None


def test_a_submission_on_a_busy_shared_cluster_reads_one_page_of_its_steps(store: NoticeStore) -> None:
    # Given a long-running cluster with 1,000 steps of earlier runs (EMR keeps that many), all older than this run
    emr, sfn = FakeEmr(), FakeSfn()
    for n in range(1000):
        emr.add_job_flow_steps("j-1", [{"Name": f"old-{n}: etl"}])
    for step in emr.steps.values():
        step["Status"]["Timeline"]["CreationDateTime"] -= timedelta(hours=2)
    started = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    event = {"token": "t-1", "cluster_id": "j-1", "step": {**STEP, "Name": "run-9: etl"}, "timeout_seconds": 600}
    # When this run submits its step (knowing when it started)
    submit_step(StepSubmission.from_event({**event, "run_started_at": started}), emr, sfn, store)  # type: ignore[arg-type]
    # Then one page told that no step of this run exists yet (the walk stopped at the first older step)
    assert (emr.added, emr.pages_read) == (1001, 1)
    # and without the start time the walk would have read every page
    emr.pages_read = 0
    submit_step(StepSubmission.from_event({**event, "step": {**STEP, "Name": "run-10: etl"}}), emr, sfn, store)  # type: ignore[arg-type]
    assert emr.pages_read == 21


@pytest.mark.parametrize("value", ["yesterday", "2026-12-07T10:00:00"])
def test_a_malformed_run_start_is_named(value: str) -> None:
    event = {"token": "t", "cluster_id": "j-1", "step": STEP, "timeout_seconds": 60, "run_started_at": value}
    with pytest.raises(StepNoticeError, match="run_started_at"):
        StepSubmission.from_event(event)
