"""EMR-on-EC2 step retry (runtime.retry): the config, the failure classes, the workflow's question to the finalize
function, and every attempt in the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from step_retry import RelaunchQuestion, RetryQuestion, classify_failed_cluster, classify_failed_step

from autopilot_common.pricing import shipped_prices
from autopilot_common.step_failures import classify, cluster_failure_of
from config.loader import ConfigError
from finalization import ClusterPricing, FinalizeRequest, finalize_run
from stacks.emr_ec2_spec import launch_settings, step_templates
from tests.unit.conftest import SPARK, ec2_runtime
from tests.unit.test_runtimes import FakeEmr, _cluster

T0 = datetime(2024, 6, 2, 1, tzinfo=UTC)
SPOT_REASON = {"Code": "INSTANCE_FAILURE", "Message": "Server.SpotInstanceTermination: reclaimed"}


def _step(sid: str, state: str, start: float = 0, seconds: float = 90, **failure: str) -> dict[str, Any]:
    begin = T0 + timedelta(seconds=start)
    status: dict[str, Any] = {
        "State": state,
        "Timeline": {
            "CreationDateTime": begin,
            "StartDateTime": begin,
            "EndDateTime": begin + timedelta(seconds=seconds),
        },
    }
    if failure:
        status["FailureDetails"] = failure
    return {"Id": sid, "Name": "run-9: etl", "Status": status}


def _instance(iid: str, market: str, ended_after: float | None, reason: dict[str, str] | None = None) -> dict[str, Any]:
    timeline: dict[str, Any] = {"CreationDateTime": T0 - timedelta(minutes=10)}
    if ended_after is not None:
        timeline["EndDateTime"] = T0 + timedelta(seconds=ended_after)
    status = {"State": "TERMINATED" if ended_after is not None else "RUNNING", "Timeline": timeline,
              "StateChangeReason": reason or {}}  # fmt: skip
    return {"Id": iid, "Ec2InstanceId": f"i-{iid}", "Market": market, "InstanceType": "m5.xlarge", "Status": status}


# ------------------------------------------------------------------------------------------ config


def test_retry_defaults_to_one_attempt_and_counts_every_attempt_in_the_execution_timeout() -> None:
    plain = ec2_runtime(startup_timeout_minutes=20, steps=[{**SPARK, "timeout_minutes": 30}])
    assert (plain.retry.max_attempts, plain.retry.when, plain.execution_timeout_minutes) == (1, [], 50)
    retried = ec2_runtime(
        startup_timeout_minutes=20,
        steps=[{**SPARK, "timeout_minutes": 30}, {**SPARK, "name": "b", "timeout_minutes": 10}],
        retry={"max_attempts": 3, "when": ["spot_interruption"]},
    )
    assert retried.execution_timeout_minutes == 20 + 3 * (30 + 10)
    assert (
        "runtime.retry.max_attempts (3) x (runtime.steps[0].timeout_minutes (30)" in retried.execution_timeout_fields()
    )
    (first, second) = step_templates(retried, "artifacts")
    assert (first["max_attempts"], first["retry_when"]) == (3, ["spot_interruption"]) == (
        second["max_attempts"], second["retry_when"])  # fmt: skip


@pytest.mark.parametrize(
    ("retry", "message"),
    [
        ({"max_attempts": 2}, "when: empty with max_attempts > 1"),
        ({"max_attempts": 1, "when": ["step_failure"]}, "max_attempts: 1 never retries"),
        ({"max_attempts": 6, "when": ["step_failure"]}, "max_attempts: got 6; expected a number <= 5"),
        (
            {"max_attempts": 2, "when": ["oom"]},
            "'spot_interruption', 'step_failure', 'bootstrap_failure' or 'capacity'",
        ),
        ({"max_attempts": 2, "when": ["step_failure", "step_failure"]}, "names a class twice"),
        ({"max_attempts": 2, True: ["step_failure"]}, "YAML reads a bare `on` as true"),
    ],
)
def test_retry_config_errors_name_the_field(retry: dict[Any, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="retry") as error:
        ec2_runtime(retry=retry)
    assert message in str(error.value)


def test_retrying_spot_interruptions_needs_spot_capacity() -> None:
    on_demand = {"mode": "fleets", "task": {"on_demand_units": 2, "spot_units": 0}}
    with pytest.raises(ConfigError, match="retry.when: spot_interruption, but the cluster runs no spot instances"):
        ec2_runtime(instances=on_demand, retry={"max_attempts": 2, "when": ["spot_interruption"]})
    assert ec2_runtime(instances=on_demand, retry={"max_attempts": 2, "when": ["step_failure"]}).retry.max_attempts == 2
    # a shared cluster's instances are not the app's to know: allowed
    existing = ec2_runtime(
        existing_cluster={"cluster_id": "j-ABCDEFGHIJKL"}, retry={"max_attempts": 2, "when": ["spot_interruption"]}
    )
    assert existing.execution_timeout_minutes == 2 * 60


# ------------------------------------------------------------------------------------ classification


def test_a_spot_instance_lost_while_the_step_ran_is_a_spot_interruption() -> None:
    step = _step("s-1", "FAILED", Reason="Unknown Error.", Message="executor lost")
    lost = _instance("a", "SPOT", 60, SPOT_REASON)
    failure = classify(step, "RUNNING", [lost, _instance("b", "ON_DEMAND", None)])
    assert failure.failure_class == "spot_interruption" and "i-a" in failure.reason and "reclaimed" in failure.reason
    assert failure.retryable(["spot_interruption"]) and failure.retryable(["step_failure"])


@pytest.mark.parametrize(
    ("instance", "why"),
    [
        (_instance("a", "ON_DEMAND", 60, {"Code": "INSTANCE_FAILURE"}), "on-demand"),
        (_instance("a", "SPOT", -120, SPOT_REASON), "ended before the step started"),
        (_instance("a", "SPOT", 90 + 301, SPOT_REASON), "ended well after the step"),
        (_instance("a", "SPOT", 60, {"Code": "CLUSTER_TERMINATED"}), "ended with its cluster"),
        (_instance("a", "SPOT", None), "still running"),
    ],
)
def test_other_failed_steps_are_step_failures(instance: dict[str, Any], why: str) -> None:
    step = _step("s-1", "FAILED", Reason="Unknown Error.", Message="bad input")
    failure = classify(step, "RUNNING", [instance])
    assert (failure.failure_class, failure.reason) == ("step_failure", "step FAILED: bad input"), why
    assert not failure.retryable(["spot_interruption"]) and failure.retryable(["step_failure"])


def test_cancelled_steps_and_ended_clusters_are_never_retried() -> None:
    lost = _instance("a", "SPOT", 60, SPOT_REASON)
    cancelled = classify(_step("s-1", "CANCELLED"), "WAITING", [lost])
    gone = classify(_step("s-1", "FAILED"), "TERMINATED_WITH_ERRORS", [lost])
    assert (cancelled.failure_class, gone.failure_class) == ("not_failed", "cluster_failure")
    for failure in (cancelled, gone):
        assert not failure.retryable(["spot_interruption", "step_failure"])


# ------------------------------------------------------------------------ the workflow's question


def _question(attempt: int, when: list[str], max_attempts: int = 2) -> RetryQuestion:
    return RetryQuestion.from_event(
        {
            "action": "classify_step_failure",
            "cluster_id": "j-A",
            "step_name": "run-9: etl",
            "attempt": attempt,
            "max_attempts": max_attempts,
            "retry_when": when,
        }  # fmt: skip
    )


def test_the_newest_submission_is_classified_and_retried_only_with_attempts_left() -> None:
    cluster = _cluster("j-A", "RUNNING", {})
    cluster["_instances"] = [_instance("a", "SPOT", 400, SPOT_REASON)]
    steps = [_step("s-1", "FAILED", 0), _step("s-2", "FAILED", 300)]  # only s-2 ran while the instance was lost
    emr = FakeEmr([cluster], steps)
    answer = classify_failed_step(_question(2, ["spot_interruption"], max_attempts=3), emr)
    assert answer == {"retry": True, "failure_class": "spot_interruption", "reason": answer["reason"],
                      "step_id": "s-2", "attempt": 2}  # fmt: skip
    assert classify_failed_step(_question(3, ["spot_interruption"], max_attempts=3), emr)["retry"] is False
    assert classify_failed_step(_question(2, ["step_failure"], max_attempts=3), emr)["retry"] is True
    emr.steps = [_step("s-1", "FAILED", 300, Message="bad input")]
    emr.clusters["j-A"]["_instances"] = []
    answer = classify_failed_step(_question(1, ["spot_interruption"]), emr)
    assert (answer["retry"], answer["failure_class"], answer["reason"]) == (
        False,
        "step_failure",
        "step FAILED: bad input",
    )


def test_a_question_without_its_fields_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="step_name: missing"):
        RetryQuestion.from_event({"cluster_id": "j-A", "attempt": 1, "max_attempts": 2})


# ---------------------------------------------------------------------------------------- ledger


def test_the_ledger_lists_every_submission_of_a_step_with_its_failure_class() -> None:
    cluster = _cluster("j-A", "TERMINATED", {})
    cluster["_instances"] = [_instance("a", "SPOT", 60, SPOT_REASON), _instance("b", "SPOT", 400)]
    steps = [
        _step("s-1", "FAILED", 0, Reason="Unknown Error.", Message="executor lost"),
        _step("s-2", "COMPLETED", 200),
        {**_step("s-3", "COMPLETED", 300), "Name": "run-9: load"},
    ]
    request = FinalizeRequest.from_event(
        {
            "outcome": "SUCCEEDED",
            "transient": "true",
            "run_id": "run-9",
            "pipeline": "p",
            "cluster_id": "j-A",
            "step_names": ["run-9: etl", "run-9: load"],
        }  # fmt: skip
    )
    update = finalize_run(request, FakeEmr([cluster], steps))
    etl, load = update["steps"]
    assert (etl["id"], etl["state"], load["id"]) == ("s-2", "COMPLETED", "s-3")
    assert [(a["attempt"], a["step_id"], a["state"], a["failure_class"]) for a in etl["attempts"]] == [
        (1, "s-1", "FAILED", "spot_interruption"),
        (2, "s-2", "COMPLETED", None),
    ]
    assert "i-a" in etl["attempts"][0]["reason"] and etl["attempts"][0]["ended_at"] == "2024-06-02T01:01:30Z"
    assert [a["step_id"] for a in load["attempts"]] == ["s-3"]


def test_a_failed_run_names_the_last_submission() -> None:
    cluster = _cluster("j-A", "TERMINATED", {})
    steps = [_step("s-1", "FAILED", 0, Message="first"), _step("s-2", "FAILED", 200, Message="second")]
    request = FinalizeRequest.from_event(
        {
            "outcome": "FAILED",
            "transient": "true",
            "run_id": "run-9",
            "pipeline": "p",
            "cluster_id": "j-A",
            "step_names": ["run-9: etl"],
            "error": {"Error": "States.TaskFailed", "Cause": "x"},
        }  # fmt: skip
    )
    update = finalize_run(request, FakeEmr([cluster], steps))
    assert update["failed_step"]["id"] == "s-2" and "second" in update["cause"]
    assert [a["failure_class"] for a in update["steps"][0]["attempts"]] == ["step_failure", "step_failure"]


# ------------------------------------------------------------------------------ a new cluster (relaunch)

BOOTSTRAP = {"Code": "BOOTSTRAP_FAILURE", "Message": "On the master instance (i-1), bootstrap action 1 returned 1"}


def test_cluster_classes_relaunch_and_count_every_cluster_in_the_timeout() -> None:
    runtime = ec2_runtime(
        startup_timeout_minutes=20,
        steps=[{**SPARK, "timeout_minutes": 30}],
        retry={"max_attempts": 2, "when": ["bootstrap_failure", "capacity"]},
    )
    assert runtime.retry.cluster_attempts == 2
    assert runtime.execution_timeout_minutes == 2 * (20 + 2 * 30)  # each cluster: start-up and every step attempt
    assert "runtime.retry.max_attempts (2) clusters x (" in runtime.execution_timeout_fields()
    launch = launch_settings(runtime)
    assert (launch["max_attempts"], launch["retry_when"], launch["startup_seconds"]) == (
        2, ["bootstrap_failure", "capacity"], 1200)  # fmt: skip
    steps_only = ec2_runtime(retry={"max_attempts": 3, "when": ["step_failure"]})
    assert (steps_only.retry.cluster_attempts, launch_settings(steps_only)["max_attempts"]) == (1, 1)
    with pytest.raises(ConfigError, match=r"retry.when: \['capacity'\] launch a new cluster"):
        ec2_runtime(existing_cluster={"cluster_id": "j-ABCDEFGHIJKL"}, retry={"max_attempts": 2, "when": ["capacity"]})


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"State": "TERMINATED_WITH_ERRORS", "StateChangeReason": BOOTSTRAP}, "bootstrap_failure"),
        (
            {"State": "TERMINATED_WITH_ERRORS", "StateChangeReason": {"Code": "VALIDATION_ERROR", "Message": "x"},
             "ErrorDetails": [{"ErrorCode": "BOOTSTRAP_FAILURE_PRIMARY_WITH_NON_ZERO_CODE"}]},
            "bootstrap_failure",
        ),
        ({"State": "TERMINATING", "StateChangeReason": {"Code": "INSTANCE_FLEET_TIMEOUT", "Message": "no spot"}},
         "capacity"),
        (
            {"State": "TERMINATED_WITH_ERRORS", "StateChangeReason": {"Code": "INTERNAL_ERROR", "Message": "x"},
             "ErrorDetails": [{"ErrorCode": "INTERNAL_ERROR_EC2_INSUFFICIENT_CAPACITY_AZ"}]},
            "capacity",
        ),
        (
            {"State": "TERMINATED_WITH_ERRORS", "StateChangeReason": {
                "Code": "INSTANCE_FAILURE", "Message": "Amazon EC2 has insufficient Spot capacity"}},
            "capacity",
        ),
        ({"State": "TERMINATED_WITH_ERRORS", "StateChangeReason": {"Code": "INTERNAL_ERROR", "Message": "x"}},
         "cluster_failure"),
        ({"State": "WAITING", "StateChangeReason": BOOTSTRAP}, "cluster_failure"),  # not ended: nothing to relaunch
    ],
)  # fmt: skip
def test_why_a_cluster_ended_is_classed_from_its_status(status: dict[str, Any], expected: str) -> None:
    failure = cluster_failure_of(status)
    assert failure.failure_class == expected
    assert failure.relaunchable(["bootstrap_failure", "capacity"]) is (expected != "cluster_failure")
    assert not failure.relaunchable(["spot_interruption", "step_failure"])


def _launch(attempt: int = 1, resume_from: int = 0, max_attempts: int = 3) -> dict[str, Any]:
    return {"attempt": attempt, "max_attempts": max_attempts, "resume_from": resume_from, "startup_seconds": 600,
            "retry_when": ["bootstrap_failure"], "earlier": []}  # fmt: skip


def _relaunch_question(launch: dict[str, Any]) -> RelaunchQuestion:
    names = ["run-9: a", "run-9: b", "run-9: c"]
    return RelaunchQuestion.from_event({"cluster_id": "j-A", "step_names": names, "launch": launch})


def test_a_failed_cluster_is_relaunched_resuming_at_the_first_step_it_did_not_complete() -> None:
    cluster = _cluster("j-A", "TERMINATED_WITH_ERRORS", {}, StateChangeReason=BOOTSTRAP)
    cluster["_steps"] = [{**_step("s-1", "COMPLETED"), "Name": "run-9: a"}, {**_step("s-2", "CANCELLED"),
                         "Name": "run-9: b"}]  # fmt: skip
    emr = FakeEmr([cluster])
    answer = classify_failed_cluster(_relaunch_question(_launch()), emr)
    assert (answer["relaunch"], answer["failure_class"]) == (True, "bootstrap_failure")
    assert answer["launch"] == {
        **_launch(),
        "attempt": 2,
        "resume_from": 1,
        "earlier": [{"cluster_id": "j-A", "failure_class": "bootstrap_failure", "reason": answer["reason"]}],
    }
    assert "BOOTSTRAP_FAILURE" in answer["reason"]
    # the last launch allowed, or a class not named: no relaunch, the launch unchanged
    last = classify_failed_cluster(_relaunch_question(_launch(attempt=3)), emr)
    assert (last["relaunch"], last["launch"]) == (False, _launch(attempt=3))
    cluster["Status"]["StateChangeReason"] = {"Code": "INSTANCE_FLEET_TIMEOUT", "Message": "no capacity"}
    assert classify_failed_cluster(_relaunch_question(_launch()), emr)["relaunch"] is False  # capacity not named
    with pytest.raises(ValueError, match="missing \\['earlier'\\]"):
        RelaunchQuestion.from_event(
            {"cluster_id": "j-A", "step_names": [], "launch": {k: v for k, v in _launch().items() if k != "earlier"}}
        )


def test_a_relaunched_run_lists_every_cluster_and_prices_them_all() -> None:
    first = _cluster("j-A", "TERMINATED_WITH_ERRORS", {}, StateChangeReason=BOOTSTRAP)
    first["_instances"] = [_od_instance("a", minutes=6)]
    first["_steps"] = [_step("s-1", "CANCELLED")]
    second = _cluster("j-B", "TERMINATED", {}, StateChangeReason={"Code": "USER_REQUEST", "Message": "done"})
    second["_instances"] = [_od_instance("b", minutes=30), _od_instance("c", minutes=30)]
    second["_steps"] = [_step("s-9", "COMPLETED", 600)]
    reason = "cluster TERMINATED_WITH_ERRORS: BOOTSTRAP_FAILURE: bootstrap action 1 returned 1"
    request = FinalizeRequest.from_event(
        {
            "outcome": "SUCCEEDED",
            "transient": "true",
            "run_id": "run-9",
            "pipeline": "p",
            "cluster_id": "j-B",
            "step_names": ["run-9: etl"],
            "launch": {
                **_launch(attempt=2),
                "earlier": [{"cluster_id": "j-A", "failure_class": "bootstrap_failure", "reason": reason}],
            },
        }  # fmt: skip
    )
    pricing = ClusterPricing(shipped_prices(), "us-east-1")
    update = finalize_run(request, FakeEmr([first, second]), T0 + timedelta(hours=1), pricing=pricing)
    assert [(c["attempt"], c["cluster_id"], c["failure_class"]) for c in update["cluster_attempts"]] == [
        (1, "j-A", "bootstrap_failure"),
        (2, "j-B", None),
    ]
    assert update["cluster_id"] == "j-B" and update["cluster"]["id"] == "j-B"
    (etl,) = update["steps"]
    assert [(a["cluster_id"], a["step_id"], a["state"]) for a in etl["attempts"]] == [
        ("j-A", "s-1", "CANCELLED"),
        ("j-B", "s-9", "COMPLETED"),
    ]
    # every instance of both clusters is billed: 6 + 30 + 30 minutes of m5.xlarge, EC2 and the EMR uplift
    rates = shipped_prices().instance("us-east-1", "m5.xlarge")
    hours = (6 + 30 + 30) / 60
    assert update["cost"]["usd"] == pytest.approx(hours * (rates["ec2_hour"] + rates["emr_hour"]), abs=1e-4)
    assert any("2 clusters" in note for note in update["cost"]["notes"])
    assert update["instance_hours_estimate"]["instances"] == 3


def _od_instance(iid: str, minutes: float) -> dict[str, Any]:
    timeline = {"CreationDateTime": T0, "EndDateTime": T0 + timedelta(minutes=minutes)}
    return {"Id": iid, "Ec2InstanceId": f"i-{iid}", "Market": "ON_DEMAND", "InstanceType": "m5.xlarge",
            "Status": {"State": "TERMINATED", "Timeline": timeline}}  # fmt: skip


class PagingEmr(FakeEmr):
    """ListSteps as EMR answers it: 50 steps a page, newest first; counts the pages read."""

    def __init__(self, clusters: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
        super().__init__(clusters, steps)
        self.step_pages = 0
        self.newest_first = sorted(steps, key=lambda s: s["Status"]["Timeline"]["CreationDateTime"], reverse=True)

    def get_paginator(self, operation: str) -> Any:
        if operation != "list_steps":
            return super().get_paginator(operation)
        emr = self

        class Pages:
            def paginate(self, **kwargs: Any) -> Any:
                assert set(kwargs) == {"ClusterId"}, kwargs  # newest first only without a filter
                for start in range(0, len(emr.newest_first), 50):
                    emr.step_pages += 1
                    yield {"Steps": emr.newest_first[start : start + 50]}

        return Pages()


def test_a_run_on_a_busy_shared_cluster_reads_its_steps_down_to_its_start_only() -> None:
    # Given a shared cluster that ran 300 steps of other runs before this run started 2 hours after them, then this
    # run's 2 steps
    cluster = _cluster("j-S", "WAITING", {})
    others = [{**_step(f"s-old-{i}", "COMPLETED", i), "Name": f"other-{i}: etl"} for i in range(300)]
    started = T0 + timedelta(hours=2)
    mine = [_step("s-1", "COMPLETED", 7300), {**_step("s-2", "COMPLETED", 7400), "Name": "run-9: load"}]
    emr = PagingEmr([cluster], others + mine)
    event = {"outcome": "SUCCEEDED", "transient": "false", "run_id": "run-9", "pipeline": "p", "cluster_id": "j-S",
             "step_names": ["run-9: etl", "run-9: load"], "ledger": {"started_at": started.isoformat()}}  # fmt: skip
    # When it is finalized
    update = finalize_run(FinalizeRequest.from_event(event), emr, started + timedelta(hours=1))
    # Then its steps are recorded, from the first page of ListSteps (not the 7 the cluster's steps take)
    assert [(s["id"], s["state"]) for s in update["steps"]] == [("s-1", "COMPLETED"), ("s-2", "COMPLETED")]
    assert emr.step_pages == 1
    # And without the run's start (an entry from an older version) every page is read, with the same record
    del event["ledger"]
    emr = PagingEmr([cluster], others + mine)
    assert (
        finalize_run(FinalizeRequest.from_event(event), emr, started + timedelta(hours=1))["steps"] == update["steps"]
    )
    assert emr.step_pages == 7
