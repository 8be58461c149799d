"""`emr-autopilot backfill` against the twin with the app deployed: backfilled runs go through admission, prepare and
the job to SUCCEEDED, and a second backfill of the same range starts nothing (Step Functions' execution names)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from autopilot_common.names import backfill_run_id
from tests.deployment import Deployed
from tests.e2e.test_operator_cli import cli, operator

__all__ = ["operator"]  # the fixture, shared


def _rows(stdout: str) -> list[dict[str, Any]]:
    """The --json list: the in-process twin's function logs print on stdout around it."""
    rows, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("[\n") :])
    assert isinstance(rows, list)
    return rows


def test_backfilled_runs_succeed_and_a_second_backfill_starts_nothing(operator: Deployed) -> None:
    env = operator
    folder = f"sales/bf-{uuid.uuid4().hex[:8]}"
    template = folder + "/dt={ds}/"
    for day, rows in (("2024-06-01", 2), ("2024-06-03", 1)):
        body = "order_id,order_date,amount\n" + "".join(f"{i},{day},{i}.5\n" for i in range(rows))
        env.s3.put_object(Bucket=env.landing, Key=f"{folder}/dt={day}/part-0.csv", Body=body.encode())
    env.s3.put_object(Bucket=env.landing, Key=f"{folder}/dt=2024-06-03/_SUCCESS", Body=b"")
    args = ("backfill", "sales-daily", "--from", "2024-06-01", "--to", "2024-06-03", "--template", template)

    dry = cli(env, *args, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    planned = _rows(dry.stdout)
    assert [(p["partition"], p["objects"], p["action"]) for p in planned] == [
        ("2024-06-01", 1, "start"),
        ("2024-06-02", 0, "empty: not started"),
        ("2024-06-03", 1, "start"),
    ]

    ran = cli(env, *args, "--rate", "600", "--wait", "--timeout", "180", "--json")
    assert ran.exit_code == 0, ran.output
    started = [p for p in _rows(ran.stdout) if p["action"] == "started"]
    run_ids = [backfill_run_id("sales-daily", f"{folder}/dt={day}/", day) for day in ("2024-06-01", "2024-06-03")]
    assert [p["run_id"] for p in started] == run_ids
    for run_id, day in zip(run_ids, ("2024-06-01", "2024-06-03"), strict=True):
        entry = env.ledger(run_id)
        assert entry["state"] == "SUCCEEDED" and entry["trigger"] == {"type": "console", "logical_date": day}, entry
        assert entry["object_count"] == 1 and entry["logical_date"] == day
    assert f"2024-06-03: {run_ids[1]} SUCCEEDED" in " ".join(ran.stderr.split())

    again = cli(env, *args, "--json")
    assert again.exit_code == 0, again.output
    actions = [p["action"] for p in _rows(again.stdout)]
    assert actions == ["already started (SUCCEEDED)", "empty: not started", "already started (SUCCEEDED)"]
    # The twin is as strict as Step Functions: a closed execution's name cannot be started again (the
    # StartExecution API reference: "If the execution is closed or if the input is different, it returns a 400
    # ExecutionAlreadyExists error").
    with pytest.raises(env.sfn.exceptions.ExecutionAlreadyExists):
        env.sfn.start_execution(
            stateMachineArn=env.state_machine,
            name=run_ids[0],
            input=json.dumps({"pipeline": "sales-daily", "inputs": [f"s3://{env.landing}/{folder}/dt=2024-06-01/"]}),
        )
