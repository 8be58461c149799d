"""Twin: moto's Step Functions interpreter with parses kept and one waiting thread fewer (local/moto_stepfunctions.py)
still runs every execution on its own: its own input and output, a machine's `TimeoutSeconds` still enforced."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local import moto_stepfunctions, sfn_integrations
from local.twin import Twin
from tests.twin.twin_helpers import wait_for


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    started = Twin(workdir=Path(tmp_path_factory.mktemp("sfn")), spark=False).start()
    yield started
    started.stop()


def _machine(twin: Twin, name: str, definition: dict[str, Any], policy: dict[str, Any] | None = None) -> str:
    sfn, iam = twin.client("stepfunctions"), twin.client("iam")
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    if policy:
        iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    return str(sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role)["stateMachineArn"])


def _token_machine(twin: Twin, name: str) -> tuple[str, str]:
    """A machine whose one task sends its token to a queue of its own and waits for it: (machine ARN, queue URL)."""
    url = str(twin.client("sqs").create_queue(QueueName=name)["QueueUrl"])
    queue_arn = f"arn:aws:sqs:{twin.region}:{twin.account}:{name}"
    definition = {
        "StartAt": "Wait",
        "States": {
            "Wait": {"Type": "Task", "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                     "Parameters": {"QueueUrl": url, "MessageBody": {"token.$": "$$.Task.Token"}}, "End": True},
        },
    }  # fmt: skip
    send = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage",
                                                    "Resource": queue_arn}]}  # fmt: skip
    return _machine(twin, name, definition, send), url


def _ended(sfn: Any, execution: str) -> dict[str, Any] | None:
    described: dict[str, Any] = sfn.describe_execution(executionArn=execution)
    return None if described["status"] == "RUNNING" else described


def test_executions_of_one_definition_each_get_their_own_input_and_output(twin: Twin) -> None:
    sfn = twin.client("stepfunctions")
    definition = {
        "StartAt": "Shape",
        "States": {
            "Shape": {
                "Type": "Pass",
                "Parameters": {"n.$": "$.n", "twice.$": "States.MathAdd($.n, $.n)"},
                "ResultPath": "$.shaped",
                "Next": "Pick",
            },  # fmt: skip
            "Pick": {"Type": "Pass", "InputPath": "$.shaped", "End": True},
        },
    }
    machine = _machine(twin, "kept-parse", definition)
    parsed_before, paths_before = moto_stepfunctions._tree.cache_info(), moto_stepfunctions._json_path.cache_info()
    executions = [sfn.start_execution(stateMachineArn=machine, input=json.dumps({"n": n}))["executionArn"]
                  for n in range(8)]  # fmt: skip
    outputs = [wait_for(functools.partial(_ended, sfn, e), 20, "the execution to end") for e in executions]
    assert [o["status"] for o in outputs] == ["SUCCEEDED"] * 8
    assert [json.loads(o["output"]) for o in outputs] == [{"n": n, "twice": 2 * n} for n in range(8)]
    parsed_after = moto_stepfunctions._tree.cache_info()
    assert parsed_after.hits - parsed_before.hits >= 8  # each start used the kept tree...
    assert parsed_after.misses - parsed_before.misses <= 1  # ...parsed at most once (CreateStateMachine validates)
    paths_after = moto_stepfunctions._json_path.cache_info()
    assert paths_after.misses - paths_before.misses <= 3  # $.n, $.shaped (and $): each parsed once, not per execution
    assert paths_after.hits - paths_before.hits >= 8


def test_a_machine_timeout_still_times_the_execution_out(twin: Twin) -> None:
    sfn = twin.client("stepfunctions")
    definition = {"TimeoutSeconds": 1, "StartAt": "Long", "States": {"Long": {"Type": "Wait", "Seconds": 60,
                                                                               "End": True}}}  # fmt: skip
    machine = _machine(twin, "machine-timeout", definition)
    execution = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]
    ended = wait_for(lambda: _ended(sfn, execution), 20, "the machine's timeout")
    assert ended["status"] == "TIMED_OUT"
    history = sfn.get_execution_history(executionArn=execution)["events"]
    assert [e["type"] for e in history] == ["ExecutionStarted", "WaitStateEntered", "ExecutionTimedOut"]


def test_a_waiting_execution_holds_one_thread(twin: Twin, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's execution worker, running the program and the waiting task; moto had two more, each only joined."""
    sfn, sqs = twin.client("stepfunctions"), twin.client("sqs")
    machine, url = _token_machine(twin, "waiting")
    made: list[str] = []
    new_client = sfn_integrations._new_client

    def counted(region: str, service: str, endpoint: str | None) -> Any:
        made.append(service)
        return new_client(region, service, endpoint)

    monkeypatch.setattr(sfn_integrations, "_CLIENTS", {})
    monkeypatch.setattr(sfn_integrations, "_new_client", counted)
    before = threading.active_count()
    count = 10
    executions = [sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"] for _ in range(count)]
    tokens: list[str] = []

    def all_sent() -> bool:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            tokens.append(json.loads(message["Body"])["token"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return len(tokens) == count

    wait_for(all_sent, 20, "every execution to wait on its token")
    held = threading.active_count() - before
    # and the 10 executions' SendMessage calls shared one client, made once (each request signed as its execution)
    assert made == ["sqs"]
    assert held <= count + 3, f"{held} threads for {count} waiting executions"
    for token in tokens:
        sfn.send_task_success(taskToken=token, output='{"ok": true}')
    for execution in executions:
        assert wait_for(functools.partial(_ended, sfn, execution), 20, "the execution to end")["status"] == "SUCCEEDED"


def test_a_stopped_execution_waiting_on_its_token_frees_its_thread(twin: Twin) -> None:
    """moto left the thread waiting on the token for the state's TimeoutSeconds (a year by default)."""
    sfn, sqs = twin.client("stepfunctions"), twin.client("sqs")
    machine, url = _token_machine(twin, "stopped")
    executions = [sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"] for _ in range(5)]

    def waiting() -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    wait_for(lambda: waiting() == 5, 20, "every execution to wait on its token")
    assert _execution_threads(executions) == 5
    for execution in executions:
        sfn.stop_execution(executionArn=execution, error="Stopped", cause="by the test")
    wait_for(lambda: _execution_threads(executions) == 0, 20, "the stopped executions' threads to end")
    for execution in executions:
        assert sfn.describe_execution(executionArn=execution)["status"] == "ABORTED"
        history = [e["type"] for e in sfn.get_execution_history(executionArn=execution)["events"]]
        assert history[-1] == "ExecutionAborted", history


def _execution_threads(executions: list[str]) -> int:
    """Live threads running one of `executions` (each runs on its own, named after it)."""
    names = {f"sfn-execution {arn.rsplit(':', 1)[-1]}" for arn in executions}
    return sum(1 for thread in threading.enumerate() if thread.name in names)
