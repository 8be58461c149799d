"""Twin: `.waitForTaskToken` tasks that time out. In AWS each attempt gets its own token, and a token whose
task timed out answers TaskTimedOut; moto 5.2.5 silently accepted it while the execution went on (so an
admission answer to a run whose wait had timed out looked delivered) and reused the token on a retry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.twin import Twin
from tests.twin.twin_helpers import wait_for


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    started = Twin(workdir=Path(tmp_path_factory.mktemp("tokens")), spark=False).start()
    yield started
    started.stop()


def _waiting_machine(twin: Twin, name: str, retries: int) -> tuple[Any, str, str]:
    """A task that sends its token to a queue and waits 1 s for it; a timeout is caught into a 3 s Wait."""
    sfn, sqs = twin.client("stepfunctions"), twin.client("sqs")
    iam = twin.client("iam")
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = f"arn:aws:sqs:{twin.region}:{twin.account}:{name}"
    send = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": queue_arn}],
    }
    iam.put_role_policy(RoleName=name, PolicyName="send", PolicyDocument=json.dumps(send))  # the twin's IAM asks
    wait = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {"QueueUrl": url, "MessageBody": {"token.$": "$$.Task.Token"}},
        "TimeoutSeconds": 1,
        "Catch": [{"ErrorEquals": ["States.Timeout"], "Next": "Later"}],
        "End": True,
    }
    if retries:
        wait["Retry"] = [{"ErrorEquals": ["States.Timeout"], "MaxAttempts": retries, "IntervalSeconds": 1}]
    definition = {"StartAt": "Wait", "States": {"Wait": wait, "Later": {"Type": "Wait", "Seconds": 3, "End": True}}}
    machine = sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]
    return sqs, url, execution


def _next_token(sqs: Any, url: str) -> str:
    messages = wait_for(lambda: sqs.receive_message(QueueUrl=url).get("Messages"), 10, "a task token")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=messages[0]["ReceiptHandle"])
    token: str = json.loads(messages[0]["Body"])["token"]
    return token


def _code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return str(raised.value.response["Error"]["Code"])


def test_a_timed_out_token_answers_task_timed_out_while_the_execution_goes_on(twin: Twin) -> None:
    sfn = twin.client("stepfunctions")
    sqs, url, execution = _waiting_machine(twin, "timed-out", retries=0)
    token = _next_token(sqs, url)
    wait_for(lambda: _timed_out(sfn, execution), 10, "the task to time out")
    assert sfn.describe_execution(executionArn=execution)["status"] == "RUNNING"  # in the Catch's Wait
    assert _code(sfn.send_task_success, taskToken=token, output="{}") == "TaskTimedOut"
    assert _code(sfn.send_task_failure, taskToken=token, error="E") == "TaskTimedOut"
    assert _code(sfn.send_task_success, taskToken="no-such-token", output="{}") == "InvalidToken"


def test_a_retry_waits_on_a_new_token_and_succeeds_when_answered(twin: Twin) -> None:
    sfn = twin.client("stepfunctions")
    sqs, url, execution = _waiting_machine(twin, "retried", retries=1)
    first = _next_token(sqs, url)
    second = _next_token(sqs, url)  # sent by the retry, after the first attempt timed out
    assert second != first
    assert _code(sfn.send_task_success, taskToken=first, output="{}") == "TaskTimedOut"
    sfn.send_task_success(taskToken=second, output='{"ok": true}')
    wait_for(lambda: sfn.describe_execution(executionArn=execution)["status"] != "RUNNING", 10, "the execution")
    described = sfn.describe_execution(executionArn=execution)
    assert described["status"] == "SUCCEEDED" and json.loads(described["output"]) == {"ok": True}


def _timed_out(sfn: Any, execution: str) -> bool:
    events = sfn.get_execution_history(executionArn=execution)["events"]
    return any(e["type"] == "TaskTimedOut" for e in events)


def test_a_task_failure_carries_its_error_and_cause_to_the_execution(twin: Twin) -> None:
    # SendTaskFailure's cause is what the task fails with (AWS API reference: "cause: a more detailed explanation of
    # the cause of the failure"); moto 5.2.5 dropped it, so a BudgetExceeded run failed with a null cause.
    sfn = twin.client("stepfunctions")
    sqs, url, execution = _waiting_machine(twin, "failed-with-cause", retries=0)
    sfn.send_task_failure(taskToken=_next_token(sqs, url), error="BudgetExceeded", cause="pipeline#p is over budget")
    wait_for(lambda: sfn.describe_execution(executionArn=execution)["status"] != "RUNNING", 10, "the execution")
    described = sfn.describe_execution(executionArn=execution)
    assert (described["status"], described["error"], described["cause"]) == (
        "FAILED",
        "BudgetExceeded",
        "pipeline#p is over budget",
    )


def test_the_context_objects_start_time_is_an_iso_string_as_on_aws(twin: Twin) -> None:
    """`$$.Execution.StartTime` is "2019-03-26T20:14:13.192Z" on AWS (moto 5.2.5 leaves a datetime, which no payload
    can carry: the execution failed to describe)."""
    sfn = twin.client("stepfunctions")
    role = twin.client("iam").create_role(RoleName="context", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    parameters = {"started.$": "$$.Execution.StartTime"}
    states = {"Read": {"Type": "Pass", "Parameters": parameters, "End": True}}
    definition = {"StartAt": "Read", "States": states}
    machine = sfn.create_state_machine(name="context", definition=json.dumps(definition), roleArn=role)
    execution = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], input="{}")["executionArn"]
    ended = wait_for(lambda: _ended(sfn, execution), 10, "the execution to end")
    output = json.loads(ended["output"])
    started = ended["startDate"].astimezone(UTC)
    assert output["started"] == started.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ended(sfn: Any, execution: str) -> dict[str, Any] | None:
    described: dict[str, Any] = sfn.describe_execution(executionArn=execution)
    return described if described["status"] != "RUNNING" else None
