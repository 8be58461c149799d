"""The `emr-autopilot` CLI against the session's twin (via --endpoint; credentials and region from the environment)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from autopilot_cli.app import main
from tests.deployment import Deployed


@pytest.fixture(autouse=True)
def operator_environment(env: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's AWS chain: any key signs as the twin's operator; the twin's region."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator")
    monkeypatch.setenv("AWS_DEFAULT_REGION", env.twin.region)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_drop_start_and_runs(env: Deployed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = ["--endpoint", env.twin.endpoint]
    data = tmp_path / "x.csv"
    data.write_bytes(b"order_id\n1\n")
    folder = f"cli-{uuid.uuid4().hex[:8]}"
    assert main([*endpoint, "local", "drop", str(data), f"s3://{env.landing}/sales/{folder}/"]) == 0
    env.twin.wait_idle()
    name = f"cli-{uuid.uuid4().hex[:8]}"
    body = json.dumps({"pipeline": "sales-daily", "inputs": [f"s3://{env.landing}/sales/{folder}/x.csv"]})
    assert main([*endpoint, "start", "sales-daily", "--input", body, "--name", name]) == 0
    arn = capsys.readouterr().out.strip().splitlines()[-1]
    assert env.finished(arn)["status"] == "SUCCEEDED"
    capsys.readouterr()  # drop the handlers' log lines
    assert main([*endpoint, "runs", "--bucket", env.outputs, "--pipeline", "sales-daily", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in runs if r["run_id"] == name] == ["SUCCEEDED"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", "no-such-pipeline"], "pipeline 'no-such-pipeline' not found"),
        (["start", "sales-daily", "--input", "{nope"], "--input is not valid JSON"),
        (["local", "drop", "/no/such/file", "s3://b/k"], "/no/such/file: no such file"),
    ],
)
def test_bad_input_is_one_clear_line(
    env: Deployed, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--endpoint", env.twin.endpoint, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
