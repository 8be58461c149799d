"""Schedules and arrival deadlines end to end on the twin: EventBridge Scheduler schedules fired for a given instant
(tests move time, they do not wait for it) reach the router through the pipeline's queue, as the role the stack gave
them.

`sales-nightly` runs at 02:00 Europe/Berlin over the day before (`sales-nightly/dt={ds}/`, on_empty: skip);
`sales-daily` expects each day's files by 06:00 Europe/Berlin the next morning (config/dev.yaml). Each test uses its
own dates: the deployment is shared.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from autopilot_cli.app import main
from autopilot_common.manifest import InputManifest
from autopilot_common.names import backfill_run_id
from local.cli import STATE_FILE, serve_fire_requests
from local.scheduler import Firing
from tests.deployment import Deployed, Notifications

NIGHTLY = "sales-nightly"
BODY = b"order_id,order_date,amount\n1,2024-06-02,9.5\n"


def _fire(env: Deployed, schedule: str, at: datetime) -> Firing:
    firing = env.twin.scheduler.fire(schedule, at=at)
    assert firing is not None and firing.delivered, firing
    env.twin.wait_idle(timeout=120)
    return firing


def _entries(env: Deployed, pipeline: str, day: str) -> list[dict[str, Any]]:
    return [r.raw for r in env.runs() if r.raw["pipeline"] == pipeline and r.raw.get("logical_date") == day]


def _finished_run(env: Deployed, pipeline: str, run_id: str) -> dict[str, Any]:
    arn = env.state_machine_of(pipeline).replace(":stateMachine:", ":execution:") + f":{run_id}"
    env.wait_for(lambda: run_id in {e["name"] for e in env.executions(pipeline)}, what=f"run {run_id}")
    return env.finished(arn, timeout=120)


def test_a_firing_runs_its_logical_dates_partition_only_and_twice_fired_is_one_run(env: Deployed) -> None:
    # Given three days of data under sales-nightly/ (and a file of another suffix on the day that runs)
    for key in ("dt=2024-06-01/a.csv", "dt=2024-06-02/a.csv", "dt=2024-06-02/b.csv", "dt=2024-06-02/notes.txt",
                "dt=2024-06-03/a.csv"):  # fmt: skip
        env.s3.put_object(Bucket=env.landing, Key=f"{NIGHTLY}/{key}", Body=BODY)
    # When the schedule fires at 02:00 Berlin time on 06-03 (00:00 UTC), twice (a redelivery)
    at = datetime(2024, 6, 3, 0, 0, tzinfo=UTC)
    firing = _fire(env, f"{NIGHTLY}-schedule", at)
    assert json.loads(firing.input)["scheduled_time"] == "2024-06-03T00:00:00Z"
    run_id = backfill_run_id(NIGHTLY, f"{NIGHTLY}/dt=2024-06-02/", "2024-06-02")
    described = _finished_run(env, NIGHTLY, run_id)
    _fire(env, f"{NIGHTLY}-schedule", at)
    # Then one run, over 06-02's CSVs only, succeeded with its logical date in the ledger
    assert described["status"] == "SUCCEEDED", described.get("cause")
    assert [e["name"] for e in env.executions(NIGHTLY) if "20240602" in e["name"]] == [run_id]
    manifest_uri = json.loads(described["input"])["manifest"]
    bucket, _, key = manifest_uri.removeprefix("s3://").partition("/")
    manifest = InputManifest.from_json(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert [o.key for o in manifest.objects] == [f"{NIGHTLY}/dt=2024-06-02/a.csv", f"{NIGHTLY}/dt=2024-06-02/b.csv"]
    (entry,) = _entries(env, NIGHTLY, "2024-06-02")
    assert entry["state"] == "SUCCEEDED" and entry["run_id"] == run_id
    assert entry["trigger"]["type"] == "schedule" and entry["trigger"]["timezone"] == "Europe/Berlin"


@pytest.fixture
def on_empty_fail(env: Deployed) -> Iterator[None]:
    """The nightly schedule as if its config said `on_empty: fail` (its target input), restored afterwards."""
    client = env.twin.client("scheduler")
    schedule = env.twin.scheduler.schedule(f"{NIGHTLY}-schedule")
    keep = {k: schedule[k] for k in ("Name", "GroupName", "ScheduleExpression", "FlexibleTimeWindow", "Target")}
    changed = json.loads(json.dumps(keep["Target"]))
    changed["Input"] = changed["Input"].replace('"on_empty":"skip"', '"on_empty":"fail"')
    assert changed["Input"] != keep["Target"]["Input"]
    client.update_schedule(**{**keep, "Target": changed})
    yield
    client.update_schedule(**keep)


def test_an_empty_day_is_skipped_with_a_ledger_entry(env: Deployed) -> None:
    # 02:00 Berlin on 2031-01-16 (01:00 UTC in winter): nothing landed for 2031-01-15
    _fire(env, f"{NIGHTLY}-schedule", datetime(2031, 1, 16, 1, 0, tzinfo=UTC))
    (entry,) = _entries(env, NIGHTLY, "2031-01-15")
    assert entry["state"] == "SKIPPED"
    assert f"no object under s3://{env.landing}/{NIGHTLY}/dt=2031-01-15/ matches the trigger" in entry["reason"]
    assert not [e for e in env.executions(NIGHTLY) if "20310115" in e["name"]]


def test_an_empty_day_fails_and_notifies_with_on_empty_fail(env: Deployed, on_empty_fail: None) -> None:
    notifications = Notifications(env)
    _fire(env, f"{NIGHTLY}-schedule", datetime(2031, 1, 17, 1, 0, tzinfo=UTC))
    (entry,) = _entries(env, NIGHTLY, "2031-01-16")
    assert entry["state"] == "FAILED" and entry["error"] == "NotStarted"
    subject = f"EMR Autopilot: {NIGHTLY} 2031-01-16 FAILED"
    (notice,) = env.wait_for(lambda: [n for n in notifications.received() if n.get("Subject") == subject])
    assert f"{NIGHTLY}/dt=2031-01-16/" in json.loads(notice["Message"])["reason"]


def test_a_missed_deadline_is_recorded_and_notified_and_a_later_arrival_still_runs(env: Deployed) -> None:
    notifications = Notifications(env)
    # When the 06:00 Berlin deadline of 2031-03-04 (05:00 UTC) passes with nothing under sales/dt=2031-03-03/
    _fire(env, "sales-daily-deadline", datetime(2031, 3, 4, 5, 0, tzinfo=UTC))
    # Then a MISSED entry and a notification name the pipeline, the date and the prefix that stayed empty
    (missed,) = _entries(env, "sales-daily", "2031-03-03")
    assert missed["state"] == "MISSED"
    assert missed["reason"] == (
        f"no run started for 2031-03-03 by 06:00 Europe/Berlin: s3://{env.landing}/sales/dt=2031-03-03/ stayed empty"
    )
    subject = "EMR Autopilot: sales-daily 2031-03-03 MISSED"
    env.wait_for(lambda: [n for n in notifications.received() if n.get("Subject") == subject], what="the notice")
    # And the day's file arriving late still runs (and records its logical date)
    before = {e["executionArn"] for e in env.executions()}
    env.s3.put_object(Bucket=env.landing, Key="sales/dt=2031-03-03/late.csv", Body=BODY)
    env.wait_for(lambda: [e for e in env.executions() if e["executionArn"] not in before], what="the late run")
    (late,) = [e for e in env.executions() if e["executionArn"] not in before]
    assert env.finished(late["executionArn"], timeout=120)["status"] == "SUCCEEDED"
    assert env.ledger(late["name"])["logical_date"] == "2031-03-03"
    # So the next check of that date finds its run: no second MISSED
    _fire(env, "sales-daily-deadline", datetime(2031, 3, 4, 5, 0, tzinfo=UTC))
    assert sorted(e["state"] for e in _entries(env, "sales-daily", "2031-03-03")) == ["MISSED", "SUCCEEDED"]


def test_local_fire_asks_the_running_twin_to_fire_a_schedule(
    env: Deployed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a running twin (`local up`'s state file, and its loop serving fire requests)
    monkeypatch.chdir(tmp_path)
    STATE_FILE.parent.mkdir()
    STATE_FILE.write_text(json.dumps({"endpoint": env.twin.endpoint, "region": env.twin.region}))
    stop = threading.Event()

    def serve() -> None:  # what `local up` does between its waits
        while not stop.wait(0.1):
            serve_fire_requests(env.twin)

    server = threading.Thread(target=serve)
    server.start()
    try:
        # When the operator fires the nightly schedule for 02:00 Berlin on 2031-02-03
        code = main(["local", "fire", "sales-nightly-schedule", "--at", "2031-02-03T01:00:00Z"])
        bad = main(["local", "fire", "sales-nightly-schedule", "--at", "2031-02-03T01:00"])
    finally:
        stop.set()
        server.join()
    out, err = capsys.readouterr()
    # Then the firing reached the router (an empty day: SKIPPED), and a time without a zone is refused
    assert code == 0, err
    assert "autopilot-dev-sales-nightly-schedule fired for 2031-02-03T01:00:00Z" in out
    env.twin.wait_idle()
    env.wait_for(lambda: _entries(env, NIGHTLY, "2031-02-02"), what="the SKIPPED entry")
    assert bad == 2 and "--at: got '2031-02-03T01:00'; expected a time with a zone" in err
