"""`emr-autopilot logs --function NAME` on the moto account: the function's log group as Lambda fills it."""

from __future__ import annotations

import io
import json
import time
import zipfile
from typing import Any

import boto3
import pytest

from autopilot_cli import function_logs
from tests.unit.test_operator_cli import REGION, STACK, account, cli

__all__ = ["account"]  # a fixture, used here

GROUP = "/custom/autopilot-dev-router-logs"
REQUEST = "8f5d1b3a-1111-2222-3333-444455556666"


@pytest.fixture(autouse=True)
def lambda_logging_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto keeps no LoggingConfig: answer it from the CreateFunction request, as Lambda does."""
    from moto.awslambda.models import LambdaFunction

    original = LambdaFunction.get_configuration

    def get_configuration(self: Any, on_create: bool = False) -> dict[str, Any]:
        configuration: dict[str, Any] = original(self, on_create)
        if self.run_time and self.function_name in LOGGING:
            configuration["LoggingConfig"] = LOGGING[self.function_name]
        return configuration

    monkeypatch.setattr(LambdaFunction, "get_configuration", get_configuration)
    LOGGING.clear()


LOGGING: dict[str, dict[str, str]] = {}


def _deploy_router(log_group: str | None = GROUP) -> None:
    role = boto3.client("iam", region_name=REGION).create_role(
        RoleName="router-role", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def lambda_handler(event, context):\n    return None\n")
    request: dict[str, Any] = {
        "FunctionName": f"{STACK}-router",
        "Runtime": "python3.12",
        "Role": role,
        "Handler": "handler.lambda_handler",
        "Code": {"ZipFile": code.getvalue()},
    }
    if log_group:
        request["LoggingConfig"] = LOGGING[request["FunctionName"]] = {"LogFormat": "JSON", "LogGroup": log_group}
    boto3.client("lambda", region_name=REGION).create_function(**request)


def _put(group: str, messages: list[str], *, at: int | None = None) -> None:
    logs = boto3.client("logs", region_name=REGION)
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)
    stream = f"2024/06/01/[$LATEST]{time.time_ns():032x}"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    start = at if at is not None else int(time.time() * 1000)
    events = [{"timestamp": start + i, "message": m} for i, m in enumerate(messages)]
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


ROUTED = json.dumps(
    {
        "level": "INFO",
        "location": "lambda_handler:53",
        "message": "batch routed",
        "timestamp": "2024-06-01 12:00:00,000+0000",
        "service": "autopilot-router",
        "function_request_id": REQUEST,
        "records": 3,
        "pipeline": "sales-daily",
        "run_id": "sales-daily-0123",
    }
)
START = json.dumps({"time": "2024-06-01T12:00:00.000Z", "type": "platform.start", "record": {"requestId": REQUEST}})
METRIC = json.dumps(
    {
        "_aws": {"CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [["service"]], "Metrics": [{"Name": "X"}]}]},
        "service": "autopilot-router",
        "X": [3.0],
    }
)


def test_logs_function_reads_the_functions_log_group_readably(account: dict[str, Any]) -> None:
    _deploy_router()
    _put(GROUP, [START, ROUTED, METRIC, "a plain print"])
    result = cli("logs", "--function", "router")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4, lines
    assert lines[0].endswith(f"START RequestId: {REQUEST}")
    assert lines[1].endswith("INFO batch routed run_id=sales-daily-0123 pipeline=sales-daily records=3")
    assert lines[2].endswith("METRIC X=3") and lines[3].endswith(" a plain print")
    assert result.stderr.strip() == f"==> {GROUP} <=="
    raw = cli("logs", "--function", "router", "--raw", "-n", "1")
    assert raw.stdout == "a plain print\n"
    as_json = [json.loads(line) for line in cli("logs", "--function", "router", "--json").stdout.splitlines()]
    assert [e["message"] for e in as_json] == [START, ROUTED, METRIC, "a plain print"]


def test_logs_function_since_lines_and_filter(account: dict[str, Any]) -> None:
    _deploy_router()
    day_ago = int(time.time() * 1000) - 86_400_000
    _put(GROUP, ["old line"], at=day_ago)
    _put(GROUP, [f"new line {i}" for i in range(5)])
    assert "old line" in cli("logs", "--function", "router").stdout
    recent = cli("logs", "--function", "router", "--since", "1h", "--raw").stdout.splitlines()
    assert recent == [f"new line {i}" for i in range(5)]
    assert cli("logs", "--function", "router", "--raw", "--lines", "2").stdout.splitlines() == [
        "new line 3",
        "new line 4",
    ]
    assert cli("logs", "--function", "router", "--raw", "--filter", "old").stdout.splitlines() == ["old line"]


def test_logs_function_without_a_logging_config_reads_aws_lambda_group(account: dict[str, Any]) -> None:
    _deploy_router(log_group=None)
    _put(f"/aws/lambda/{STACK}-router", ["default group"])
    assert cli("logs", "--function", "router", "--raw").stdout == "default group\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["logs"], "exactly one of RUN"),
        (["logs", "old-ok", "--function", "router"], "exactly one of RUN"),
        (["logs", "--function", "routr"], "'routr' is not one of the app's functions: router, prepare"),
        (["logs", "--function", "router", "--stderr"], "--stderr: only with RUN"),
        (["logs", "old-ok", "--since", "1h"], "--since: only with --function"),
        (["logs", "--function", "router", "--json", "--raw"], "--json and --raw"),
    ],
)
def test_logs_function_bad_usage_exits_2(account: dict[str, Any], args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_logs_function_not_deployed_or_never_run_exits_1(account: dict[str, Any]) -> None:
    missing = cli("logs", "--function", "scaler")
    assert missing.exit_code == 1 and f"function {STACK}-scaler (scaler) is not deployed" in missing.stderr
    _deploy_router()
    never = cli("logs", "--function", "router")
    assert never.exit_code == 1 and f"log group {GROUP} does not exist" in never.stderr


def test_logs_function_follow_prints_new_events_once(account: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _deploy_router()
    _put(GROUP, ["first"])
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            _put(GROUP, ["second", "third"])
        elif len(polls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(function_logs, "_sleep", sleep)
    result = cli("logs", "--function", "router", "--follow", "--raw")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["first", "second", "third"]
