"""The twin delivers what functions write as Lambda does (their log groups, Lambda's own lines), never to the
console; `emr-autopilot logs --function` reads it back."""

from __future__ import annotations

import json
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from moto.logs.models import logs_backends

from autopilot_cli.app import main
from local.lambda_runtime import FunctionError, LocalFunction
from tests.deployment import Deployed


def _messages(env: Deployed, group: str) -> list[tuple[str, str]]:
    """(stream, message) of every event in the twin's CloudWatch Logs group, in order."""
    logs = env.twin.client("logs")
    pages = logs.get_paginator("filter_log_events").paginate(logGroupName=group)
    events = [event for page in pages for event in page["events"]]
    return [(e["logStreamName"], e["message"]) for e in sorted(events, key=lambda e: e["timestamp"])]


def test_a_runs_function_output_reaches_log_groups_not_the_console(
    env: Deployed, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = f"quiet-{uuid.uuid4().hex[:8]}"
    env.s3.put_object(Bucket=env.landing, Key=f"sales/{folder}/a.csv", Body=b"order_id,order_date\n1,2024-06-01\n")
    env.twin.wait_idle()
    env.wait_for(lambda: env.runs, what="a run")
    console = capfd.readouterr()
    for line in (console.out + console.err).splitlines():
        assert not line.startswith("{") and "Traceback" not in line and "Warning" not in line, line
    router = next(f for f in env.twin.runtime.functions.values() if f.name.endswith("-router"))
    assert router.log_group and not router.log_group.startswith("/aws/lambda/")  # the stack's LoggingConfig
    assert router.log_group in logs_backends[env.twin.account][env.twin.region].groups  # deployed by the stack
    events = _messages(env, router.log_group)
    records = [json.loads(m) for _, m in events if m.startswith("{")]
    starts = [r["record"]["requestId"] for r in records if r.get("type") == "platform.start"]
    reports = [r["record"] for r in records if r.get("type") == "platform.report"]
    assert starts and [r["requestId"] for r in reports] == starts
    assert all(r["metrics"]["billedDurationMs"] >= r["metrics"]["durationMs"] for r in reports)
    assert any(r.get("message") == "batch routed" for r in records)
    assert all(stream.split("/")[3].startswith("[$LATEST]") and len(stream) == 52 for stream, _ in events)
    assert (env.twin.logs_dir / f"{router.name}.log").read_text().count("batch routed") >= 1

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator")
    monkeypatch.setenv("AWS_DEFAULT_REGION", env.twin.region)
    assert main(["--endpoint", env.twin.endpoint, "logs", "--function", "router", "--lines", "1000"]) == 0
    shown = capfd.readouterr()
    assert any(" INFO batch routed " in line for line in shown.out.splitlines()), shown.out
    assert shown.err.strip() == f"==> {router.log_group} <=="


HANDLER = """
import logging, sys, warnings
logging.getLogger("quiet").addHandler(logging.StreamHandler(sys.stdout))  # bound at cold start, like Powertools
logging.getLogger("quiet").setLevel(logging.INFO)

def lambda_handler(event, context):
    print("printed")
    print("to stderr", file=sys.stderr)
    logging.getLogger("quiet").info("logged")
    warnings.warn("a warning from the function")
    if event.get("fail"):
        raise ValueError("it broke")
    return {"ok": True}
"""


def test_text_format_function_gets_start_end_report_and_its_errors(
    env: Deployed, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.py").write_text(HANDLER)
    name = f"quiet-{uuid.uuid4().hex[:8]}"
    function = LocalFunction(
        name=name, arn=f"arn:aws:lambda:{env.twin.region}:{env.twin.account}:function:{name}",
        handler="handler.lambda_handler", code_dir=code, layer_dirs=[], environment={},
    )  # fmt: skip
    env.twin.runtime.register(function)

    def show_warning(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:  # noqa: E501
        # Python's own (pytest records warnings instead of printing them)
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show_warning)
    try:
        assert env.twin.runtime.invoke(name, {}) == {"ok": True}
        with pytest.raises(FunctionError):
            env.twin.runtime.invoke(name, {"fail": True})
    finally:
        del env.twin.runtime.functions[name]
    console = capfd.readouterr()
    assert "printed" not in console.out + console.err and "warning" not in console.out + console.err
    events = _messages(env, f"/aws/lambda/{name}")  # no LoggingConfig: Lambda's default group
    assert len({stream for stream, _ in events}) == 1  # one environment: one stream
    messages = [m for _, m in events]
    starts = [m for m in messages if m.startswith("START RequestId: ")]
    assert len(starts) == 2 and all(m.endswith(" Version: $LATEST") for m in starts)
    assert len([m for m in messages if m.startswith("END RequestId: ")]) == 2
    reports = [m for m in messages if m.startswith("REPORT RequestId: ")]
    assert len(reports) == 2 and "Init Duration: " in reports[0] and "Init Duration" not in reports[1]
    assert all("\tBilled Duration: " in r and "\tMemory Size: 128 MB\tMax Memory Used: " in r for r in reports)
    for line in ("printed", "to stderr", "logged"):
        assert messages.count(line) == 2, messages
    assert any("UserWarning: a warning from the function" in m for m in messages)
    error: dict[str, Any] = next(json.loads(m) for m in messages if m.startswith('{"timestamp"'))
    assert error["errorType"] == "ValueError" and error["errorMessage"] == "it broke"
    assert any("raise ValueError" in frame for frame in error["stackTrace"])
    first_start = messages.index(starts[0])
    assert messages[first_start + 1] == "printed"  # the function's lines between START and END
