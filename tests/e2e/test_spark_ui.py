"""`emr-autopilot ui RUN` on the twin: a fresh Spark UI link for a running and for a finished run of each runtime,
and the link answers when fetched (the twin's page about that job run or cluster)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import datetime

import pytest

from autopilot_common.ledger import ledger_key
from tests.deployment import Deployed
from tests.e2e.test_operator_cli import cli, operator

__all__ = ["operator"]  # the fixture, shared with the operator CLI's scenarios

PIPELINES = {"sales-daily": ("emr-serverless", "sales/"), "sales-cluster": ("emr-ec2", "sales-cluster/"),
             "sales-eks": ("emr-eks", "sales-eks/")}  # fmt: skip


def _start(env: Deployed, pipeline: str, *, hang: bool) -> str:
    prefix = PIPELINES[pipeline][1]
    key = f"{prefix}ui-{uuid.uuid4().hex[:8]}/x.txt"
    env.s3.put_object(Bucket=env.landing, Key=key, Body=b"order_id,order_date\n1,2024-06-01\n")
    if hang:
        env.twin.faults.hang_next_job()
    run_id = f"ui-{uuid.uuid4().hex[:8]}"
    started = cli(env, "start", pipeline, "--inputs", f"s3://{env.landing}/{key}", "--name", run_id)
    assert started.exit_code == 0, started.output
    if not hang:
        env.finished(started.stdout.strip().splitlines()[-1], timeout=120)
    return run_id


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the twin's own http:// page)
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def _ui(env: Deployed, run_id: str) -> dict[str, str]:
    result = cli(env, "ui", run_id, "--json")
    assert result.exit_code == 0, result.output
    link: dict[str, str] = json.loads(result.stdout)
    return link


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_ui_links_a_finished_and_a_running_run_to_a_page_about_it(operator: Deployed, pipeline: str) -> None:
    env = operator
    runtime = PIPELINES[pipeline][0]
    done = _start(env, pipeline, hang=False)
    entry = env.ledger(done)
    assert entry["state"] == "SUCCEEDED", entry
    link = _ui(env, done)
    assert link["runtime"] == runtime and link["url"].startswith("http://127.0.0.1:")
    page = _fetch(link["url"])
    mark = entry["cluster_id"] if runtime == "emr-ec2" else entry["job_run_id"]
    assert mark in page and ("SUCCESS" in page or "COMPLETED" in page or "TERMINATED" in page), page
    # A running run: its STARTED entry names no job run or cluster yet; `ui` finds the live one
    running = _start(env, pipeline, hang=True)
    try:
        env.wait_for(lambda: _state(env, running) == "STARTED", 60, "the STARTED entry")
        env.wait_for(lambda: cli(env, "ui", running).exit_code == 0, 60, "the job run or cluster to start")
        page = _fetch(_ui(env, running)["url"])
        assert "RUNNING" in page, page
    finally:
        cancelled = cli(env, "cancel", running, "--reason", "ui test done", "--timeout", "120")
    assert cancelled.exit_code == 0, cancelled.output


def _state(env: Deployed, run_id: str) -> str | None:
    try:
        return str(env.ledger(run_id).get("state"))
    except ValueError:  # no entry yet
        return None


def test_ui_of_a_queued_run_exits_1_and_a_dashboard_link_expires_after_an_hour(operator: Deployed) -> None:
    env = operator
    done = _start(env, "sales-daily", hang=False)
    url = _ui(env, done)["url"]
    assert "valid for one hour" in cli(env, "ui", done).stderr
    links = env.twin.app_uis.server._links
    token = url.rstrip("/").rsplit("/", 1)[-1]
    links[token].expires_at -= 3600 * env.twin.time_scale  # an hour later on the twin's clock
    with pytest.raises(urllib.error.HTTPError) as expired:
        _fetch(url)
    assert expired.value.code == 403
    assert _fetch(_ui(env, done)["url"])  # a new link answers again
    entry = env.ledger(done) | {"run_id": "ui-queued", "state": "QUEUED", "job_run_id": None}
    key = ledger_key("sales-daily", datetime.fromisoformat(entry["started_at"].replace("Z", "+00:00")), "ui-queued")
    env.s3.put_object(Bucket=env.report.outputs["OutputsBucket"], Key=key, Body=json.dumps(entry).encode())
    queued = cli(env, "ui", "ui-queued")
    assert queued.exit_code == 1
    assert "run ui-queued is QUEUED: it has no job run or cluster yet (it is waiting for a run slot)" in queued.stderr
