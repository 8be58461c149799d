"""Zero-idle transient clusters end to end on the twin (issue 18): a 3-step pipeline (sales-chain) whose steps follow
each other as soon as EMR's "EMR Step Status Change" event reports the previous one's end, and whose cluster is
terminated as soon as the last one ends, instead of waiting for Step Functions' next `.sync` poll (60 s for a task's
first 10 minutes, then 300 s; modelled on the twin's clock). Also a failing middle step, an abort mid-step, and a lost
completion event recovered by the guardrail's sweeper."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.deployment import Deployed

CHAIN = "sales-chain"
STEPS = ["stage", "transform", "publish"]
# A clock on which EMR's first .sync poll (60 s) takes 12 s: a step noticed by polling would idle its cluster for
# seconds, one noticed from its event within a fraction of one.
TIME_SCALE = 0.2
TARGET_IDLE_SECONDS = 5.0  # issue 18: per run, between steps and after the last one


@pytest.fixture
def slow_clock(env: Deployed) -> Iterator[Deployed]:
    previous = env.twin.time_scale
    env.twin.set_time_scale(TIME_SCALE)
    yield env
    env.twin.set_time_scale(previous)


def _console_run(env: Deployed) -> tuple[str, str]:
    key = f"{CHAIN}/console-{uuid.uuid4().hex[:8]}/a.input"
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    name = f"{CHAIN}-{uuid.uuid4().hex[:8]}"
    return name, env.start_console_run(name, {"pipeline": CHAIN, "inputs": [f"s3://{env.landing}/{key}"]})


def _entered(env: Deployed, arn: str) -> list[str]:
    return [e["stateEnteredEventDetails"]["name"] for e in env.history(arn) if "stateEnteredEventDetails" in e]


def _step_names(run_id: str) -> list[str]:
    return [f"{run_id}: {s}" for s in STEPS]


def _cluster_state(env: Deployed, cluster_id: str) -> str:
    state: str = env.twin.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    return state


def _waiting_tokens(env: Deployed, cluster_id: str) -> list[str]:
    """Task tokens still stored for the cluster's steps (autopilot_common.step_notices)."""
    table = env.report.outputs.get("IdempotencyTable") or next(
        t for t in env.twin.client("dynamodb").list_tables()["TableNames"] if t.endswith("idempotency")
    )
    items = env.twin.client("dynamodb").scan(TableName=table)["Items"]
    return [i["id"]["S"] for i in items if i["id"]["S"].startswith(f"step-notice#{cluster_id}#")]


def _wait_for_step(env: Deployed, cluster_id: str, name: str, state: str) -> None:
    steps = env.twin.emr_ec2.clusters[cluster_id].steps
    env.wait_for(lambda: any(s.name == name and s.state == state for s in steps), 60, f"step {name} {state}")


def test_three_steps_follow_each_other_and_the_cluster_ends_within_seconds_of_the_last(slow_clock: Deployed) -> None:
    env = slow_clock
    # Given three steps of 20 s each on the twin's clock (4 s of wall time each)
    for _ in STEPS:
        env.twin.faults.run_next_job_for(20)
    # When an operator runs the pipeline
    run_id, arn = _console_run(env)
    described = env.finished(arn, timeout=120)
    # Then it succeeded, every step ran once, in order, on one cluster that is gone
    assert described["status"] == "SUCCEEDED", described.get("cause")
    ledger = env.ledger(run_id)
    steps = ledger["steps"]
    assert [s["name"] for s in steps] == _step_names(run_id) and {s["state"] for s in steps} == {"COMPLETED"}
    assert _cluster_state(env, ledger["cluster_id"]) == "TERMINATED"
    # And the cluster never waited for a poll: each end was noticed before Step Functions' first poll could have
    # (60 s on the twin's clock), and the run's idle time is within the target
    first_poll = 60 * TIME_SCALE
    for step in steps:
        assert 0 <= step["notice_delay_seconds"] < first_poll, step
    idle = ledger["idle"]
    assert ledger["idle_cluster_seconds"] <= TARGET_IDLE_SECONDS, idle
    assert idle["after_last_step_seconds"] is not None and idle["after_last_step_seconds"] <= TARGET_IDLE_SECONDS
    assert ledger["idle_cluster_seconds"] == pytest.approx(
        idle["between_steps_seconds"] + idle["after_last_step_seconds"], abs=0.01
    )
    # The idle windows are priced: 2 core instances and a primary were up during them
    assert idle["instance_seconds"] >= 2 * ledger["idle_cluster_seconds"] and idle["usd"] is not None
    assert idle["usd"] < ledger["cost"]["usd"]
    # And the run's states grow with the number of steps, never with their length: three StepPlan/RunStep/StepNoticed
    entered = _entered(env, arn)
    assert [entered.count(s) for s in ("StepPlan", "RunStep", "StepNoticed")] == [3, 3, 3]
    assert entered[entered.index("TerminateCluster") - 1] == "StepNoticed"  # terminated right after the last notice
    assert _waiting_tokens(env, ledger["cluster_id"]) == []
    print(f"\nidle per run: {ledger['idle_cluster_seconds']} s; notice delays: "
          f"{[s['notice_delay_seconds'] for s in steps]} s")  # fmt: skip


def test_a_failing_middle_step_stops_the_rest_terminates_the_cluster_and_names_the_step(slow_clock: Deployed) -> None:
    env = slow_clock
    # Given the first step succeeds and the second fails
    env.twin.faults.run_next_job_for(5)
    env.twin.faults.fail_next_job("Job failed: injected transform failure")
    # When the pipeline runs
    run_id, arn = _console_run(env)
    described = env.finished(arn, timeout=120)
    # Then the run failed naming the second step; the third was never submitted; the cluster is gone
    assert described["status"] == "FAILED" and described["error"] == "StepFailed"
    ledger = env.ledger(run_id)
    assert ledger["failed_step"]["name"] == f"{run_id}: transform" and ledger["failed_step"]["state"] == "FAILED"
    assert [(s["name"], s["state"]) for s in ledger["steps"]] == [
        (f"{run_id}: stage", "COMPLETED"),
        (f"{run_id}: transform", "FAILED"),
    ]
    cluster_id = ledger["cluster_id"]
    steps_on_cluster = env.twin.client("emr").list_steps(ClusterId=cluster_id)["Steps"]
    assert sorted(s["Name"] for s in steps_on_cluster) == [f"{run_id}: stage", f"{run_id}: transform"]
    assert _cluster_state(env, cluster_id) == "TERMINATED"
    entered = _entered(env, arn)
    assert entered.count("RunStep") == 2
    assert entered.index("TerminateAfterFailure") < entered.index("RecordFailed")
    assert _waiting_tokens(env, cluster_id) == []  # the FAILED event answered the token
    # And the cluster was asked to terminate within seconds of the failing step's end
    assert ledger["idle"]["after_last_step_seconds"] is not None
    assert ledger["idle_cluster_seconds"] <= TARGET_IDLE_SECONDS, ledger["idle"]


def test_an_abort_mid_step_terminates_the_cluster_and_lets_the_token_go(slow_clock: Deployed) -> None:
    env = slow_clock
    # Given the first step succeeds and the second hangs
    env.twin.faults.run_next_job_for(5)
    env.twin.faults.hang_next_job()
    run_id, arn = _console_run(env)
    cluster_id = env.running_cluster(run_id)
    _wait_for_step(env, cluster_id, f"{run_id}: transform", "RUNNING")
    assert len(_waiting_tokens(env, cluster_id)) == 1
    # When an operator aborts the execution mid-step
    env.sfn.stop_execution(executionArn=arn)
    entry = env.ledger_when(run_id, "ABORTED")
    # Then the guardrail terminated the cluster, the ledger says ABORTED, and the step's token was let go when the
    # step's end (cancelled, or interrupted by the termination) came in
    env.wait_for(lambda: _cluster_state(env, cluster_id).startswith("TERMINATED"), 60, "cluster terminated")
    assert entry["cleanup"]["clusters_terminated"] == [cluster_id]
    env.twin.wait_idle()
    env.wait_for(lambda: _waiting_tokens(env, cluster_id) == [], 30, "the token let go")
    assert env.sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"


def test_a_lost_completion_event_is_recovered_at_the_next_sweep(slow_clock: Deployed) -> None:
    env = slow_clock
    # Given the first step's COMPLETED event never reaches EventBridge (EMR events are best effort)
    env.twin.faults.drop_next_emr_event("EMR Step Status Change", "COMPLETED")
    for _ in STEPS:
        env.twin.faults.run_next_job_for(5)
    run_id, arn = _console_run(env)
    cluster_id = env.running_cluster(run_id)
    first = f"{run_id}: stage"
    _wait_for_step(env, cluster_id, first, "COMPLETED")
    # Then the run waits (no poll, no event): the second step is not added
    time.sleep(2)
    assert [s.name for s in env.twin.emr_ec2.clusters[cluster_id].steps] == [first]
    assert ("emr", "EventLost", "EMR Step Status Change:COMPLETED") in env.twin.faults.fired
    # When the guardrail's sweeper ticks
    swept = time.monotonic()
    env.twin.fire_schedule("Sweeper")
    described = env.finished(arn, timeout=120)
    # Then the first step's token was answered by the sweep and the run went on to succeed
    assert described["status"] == "SUCCEEDED", described.get("cause")
    ledger = env.ledger(run_id)
    assert [s["state"] for s in ledger["steps"]] == ["COMPLETED"] * 3
    assert ledger["steps"][0]["notice_delay_seconds"] >= 2  # noticed at the sweep, not before
    assert ledger["steps"][1]["notice_delay_seconds"] < 60 * TIME_SCALE  # the others from their events
    assert time.monotonic() - swept < 120 and _cluster_state(env, cluster_id) == "TERMINATED"
