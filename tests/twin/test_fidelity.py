"""The twin refuses what AWS refuses, on a small hand-made stack: IAM for functions, state machines and EventBridge,
AWS's errors inside workflows, request validation, Step Functions and EventBridge quotas, EMR's poll schedule."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local import patches
from local.emr_ec2.sfn import emr_poll_offsets
from local.twin import EventSourceMapping, Twin
from local.validation import SYNC_PAYLOAD_BYTES, execution_name_problem, put_events_size, validation_errors
from tests.twin.twin_helpers import deployed_twin, run_machine, wait_for, write_assembly

ACCOUNT, REGION = "123456789012", "us-east-1"
QUEUE, OPEN_QUEUE = "fidelity-closed", "fidelity-open"
ALLOWED_ROLE, EMPTY_ROLE = "fidelity-sfn", "fidelity-sfn-empty"


def _role(name: str, *statements: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {"RoleName": name, "AssumeRolePolicyDocument": {"Version": "2012-10-17"}}
    if statements:
        document = {"Version": "2012-10-17", "Statement": list(statements)}
        props["Policies"] = [{"PolicyName": "p", "PolicyDocument": document}]
    return {"Type": "AWS::IAM::Role", "Properties": props}


def _rule(name: str, source: str, queue: str) -> dict[str, Any]:
    return {
        "Type": "AWS::Events::Rule",
        "Properties": {
            "Name": name,
            "EventPattern": {"source": [source]},
            "Targets": [{"Id": "q", "Arn": {"Fn::GetAtt": [queue, "Arn"]}}],
        },
    }


TEMPLATE: dict[str, Any] = {
    "Resources": {
        "Closed": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": QUEUE}},
        "Open": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": OPEN_QUEUE}},
        "OpenPolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": "Open"}],
                "PolicyDocument": {
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": {"Fn::GetAtt": ["Open", "Arn"]},
                            "Condition": {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ToOpen", "Arn"]}}},
                        }
                    ]
                },
            },
        },
        "ToClosed": _rule("fidelity-to-closed", "fidelity.closed", "Closed"),
        "ToOpen": _rule("fidelity-to-open", "fidelity.open", "Open"),
        "Allowed": _role(
            ALLOWED_ROLE,
            {
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{OPEN_QUEUE}",
            },
            {
                "Effect": "Allow",
                "Action": "events:PutEvents",
                "Resource": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default",
            },
        ),
        "Empty": _role(EMPTY_ROLE),
    }
}


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    with deployed_twin(Path(tmp_path_factory.mktemp("fidelity")), "fidelity", TEMPLATE) as (started, _):
        yield started


def _queue_url(twin: Twin, name: str) -> str:
    return str(twin.client("sqs").get_queue_url(QueueName=name)["QueueUrl"])


def _role_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


_names = itertools.count()


def _machine(twin: Twin, role: str, states: dict[str, Any], start: str) -> dict[str, Any]:
    definition = {"StartAt": start, "States": states}
    return run_machine(twin.client("stepfunctions"), f"fidelity-{next(_names)}", definition, _role_arn(role))


# ---------------------------------------------------------------------------------------------- EventBridge + IAM


def test_eventbridge_delivers_only_where_the_queue_policy_allows_the_rule(twin: Twin) -> None:
    events = twin.client("events")
    denials = len(twin.iam.stats.denials)
    events.put_events(Entries=[{"Source": "fidelity.closed", "DetailType": "t", "Detail": "{}"}])
    events.put_events(Entries=[{"Source": "fidelity.open", "DetailType": "t", "Detail": "{}"}])
    sqs = twin.client("sqs")
    wait_for(lambda: sqs.receive_message(QueueUrl=_queue_url(twin, OPEN_QUEUE)).get("Messages"), what="delivery")
    twin.wait_idle(timeout=10)
    refused = [d for d in twin.iam.stats.denials[denials:] if d.resource.endswith(QUEUE)]
    assert refused and refused[0].caller == "events.amazonaws.com"
    assert "because no resource-based policy allows the sqs:SendMessage action" in refused[0].message
    failed = [d for d in twin.deliveries if d.target_arn.endswith(QUEUE) and d.error]
    assert failed and "not authorized" in str(failed[-1].error)
    assert not sqs.receive_message(QueueUrl=_queue_url(twin, QUEUE)).get("Messages")


def _async_stack(function: str, dead_letters: str, role: str) -> dict[str, Any]:
    function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
    queue_arn = {"Fn::GetAtt": ["DeadLetters", "Arn"]}
    return {
        "Resources": {
            "DeadLetters": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": dead_letters}},
            "Role": _role(role, {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": queue_arn}),
            "Config": {
                "Type": "AWS::Lambda::EventInvokeConfig",
                "Properties": {
                    "FunctionName": function,
                    "Qualifier": "$LATEST",
                    "MaximumRetryAttempts": 2,
                    "DestinationConfig": {"OnFailure": {"Destination": queue_arn}},
                },
            },
            "Rule": {
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "Name": f"{function}-rule",
                    "EventPattern": {"source": [f"{function}.source"]},
                    "Targets": [{"Id": "fn", "Arn": function_arn}],
                },
            },
            "Permission": {
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "FunctionName": function_arn,
                    "Action": "lambda:InvokeFunction",
                    "Principal": "events.amazonaws.com",
                    "SourceArn": {"Fn::GetAtt": ["Rule", "Arn"]},
                },
            },
        }
    }


@pytest.mark.parametrize("may_send", [True, False], ids=["role-may-send", "role-may-not-send"])
def test_a_failing_async_event_is_retried_twice_then_recorded_in_the_on_failure_queue(
    twin: Twin, tmp_path: Path, may_send: bool
) -> None:
    """Lambda retries a failed asynchronous event twice, then sends its record (condition, request, error) to the
    on-failure destination as the function's role; a role that may not send there loses the record."""
    from local.lambda_runtime import LocalFunction

    function, dead_letters = f"fidelity-failing-{may_send}".lower(), f"fidelity-async-dlq-{may_send}".lower()
    role = f"{function}-role"
    (tmp_path / "index.py").write_text(
        "def handler(event, context):\n    raise RuntimeError('boom ' + event['detail']['n'])\n"
    )
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
    twin.runtime.register(
        LocalFunction(
            function, arn, "index.handler", tmp_path, [], {}, role_arn=_role_arn(role if may_send else EMPTY_ROLE)
        )
    )
    stack = f"fidelity-async-{may_send}".lower()
    twin.deploy(write_assembly(tmp_path / "cdk.out", stack, _async_stack(function, dead_letters, role)))
    before = len(twin.runtime.invocations)
    twin.client("events").put_events(
        Entries=[{"Source": f"{function}.source", "DetailType": "t", "Detail": '{"n": "7"}'}]
    )
    failure = wait_for(lambda: [f for f in twin.async_failures if f.function_name == function], what="async failure")[0]
    assert (failure.condition, failure.attempts, failure.error_type) == ("RetriesExhausted", 3, "RuntimeError")
    attempts = [i for i in twin.runtime.invocations[before:] if i.function_name == function]
    assert len(attempts) == 3
    # about 1 then 2 minutes between attempts, on the twin's clock (0.002: 0.12 s then 0.24 s)
    gaps = [b.started - a.started for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 60 * twin.time_scale and gaps[1] >= 120 * twin.time_scale
    received = twin.client("sqs").receive_message(QueueUrl=_queue_url(twin, dead_letters)).get("Messages", [])
    if not may_send:
        assert not received
        refused = [d for d in twin.iam.stats.denials if d.resource.endswith(dead_letters)]
        assert refused and refused[-1].action == "sqs:SendMessage"
        return
    record = json.loads(received[0]["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["functionArn"] == f"{arn}:$LATEST"
    assert record["requestPayload"]["detail"] == {"n": "7"}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "boom 7"


# ------------------------------------------------------------------------------------------------ SQS -> Lambda


@dataclass(frozen=True)
class Polling:
    """How a test's event source mapping reads its queue (the mapping's BatchSize, MaximumBatchingWindowInSeconds,
    ScalingConfig.MaximumConcurrency) and the queue's redrive to a dead-letter queue (`<queue>-dlq`) after
    `max_receive_count` receives (None: no redrive)."""

    batch_size: int = 10
    window_seconds: int = 0
    maximum_concurrency: int | None = None
    max_receive_count: int | None = None


def _polled_stack(function: str, queue: str, role: str, polling: Polling) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "EventSourceArn": {"Fn::GetAtt": ["Queue", "Arn"]},
        "FunctionName": function,
        "BatchSize": polling.batch_size,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    if polling.window_seconds:
        mapping["MaximumBatchingWindowInSeconds"] = polling.window_seconds
    if polling.maximum_concurrency is not None:
        mapping["ScalingConfig"] = {"MaximumConcurrency": polling.maximum_concurrency}
    reads = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]
    resources: dict[str, Any] = {
        "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": queue}},
        "Role": _role(role, {"Effect": "Allow", "Action": reads, "Resource": {"Fn::GetAtt": ["Queue", "Arn"]}}),
        "Mapping": {"Type": "AWS::Lambda::EventSourceMapping", "Properties": mapping},
    }
    if polling.max_receive_count is not None:
        resources["DeadLetters"] = {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{queue}-dlq"}}
        resources["Queue"]["Properties"]["RedrivePolicy"] = {
            "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetters", "Arn"]},
            "maxReceiveCount": polling.max_receive_count,
        }
    return {"Resources": resources}


def _polled_function(
    twin: Twin, tmp_path: Path, name: str, handler: str, *, reserved: int | None, polling: Polling = Polling()
) -> EventSourceMapping:
    """A function (`handler`: the body of its `handler(event, context)`, which may write to the file in `OUT`, at
    `tmp_path / "out.jsonl"`) polling its own queue (named like it) through an event source mapping."""
    from local.lambda_runtime import LocalFunction

    (tmp_path / "index.py").write_text("import json, os, threading\ndef handler(event, context):\n" + handler)
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    function = LocalFunction(name, arn, "index.handler", tmp_path, [], {"OUT": str(tmp_path / "out.jsonl")},
                             role_arn=_role_arn(f"{name}-role"), reserved=reserved)  # fmt: skip
    twin.runtime.register(function)
    stack = _polled_stack(name, name, f"{name}-role", polling)
    twin.deploy(write_assembly(tmp_path / "cdk.out", name, stack))
    [mapping] = [m for m in twin.mappings if m.function_name == name]
    return mapping


def _written(out: Path) -> list[Any]:
    """What a polled function wrote to its `OUT` file, a JSON value a line."""
    return [json.loads(line) for line in (out.read_text().splitlines() if out.exists() else [])]


@pytest.mark.parametrize(("maximum_concurrency", "reserved", "pollers"), [(None, None, 5), (2, None, 2), (None, 1, 1)])
def test_a_backlog_is_read_by_concurrent_pollers_each_message_invoked_once(
    twin: Twin, tmp_path: Path, maximum_concurrency: int | None, reserved: int | None, pollers: int
) -> None:
    """Lambda reads an SQS backlog five batches at a time, never more than the mapping's MaximumConcurrency or the
    function's reserved concurrency; every message reaches the function once."""
    name = f"fidelity-polled-{maximum_concurrency}-{reserved}"
    out = tmp_path / "out.jsonl"
    handler = (
        "    batch = {'poller': threading.current_thread().name, 'bodies': [r['body'] for r in event['Records']]}\n"
        "    with open(os.environ['OUT'], 'a') as out:\n"
        "        out.write(json.dumps(batch) + '\\n')\n"
        "    return {'batchItemFailures': []}\n"
    )
    polling = Polling(maximum_concurrency=maximum_concurrency)
    mapping = _polled_function(twin, tmp_path, name, handler, reserved=reserved, polling=polling)
    assert twin._pollers(mapping) == pollers

    sqs, url = twin.client("sqs"), _queue_url(twin, name)
    sent = [f"m-{i:03d}" for i in range(150)]
    for start in range(0, len(sent), 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body}
                                                      for i, body in enumerate(sent[start : start + 10])])  # fmt: skip

    def delivered() -> list[dict[str, Any]]:
        batches = _written(out)
        return batches if sum(len(b["bodies"]) for b in batches) >= len(sent) else []

    batches = wait_for(delivered, timeout=60, what="the backlog delivered")
    assert sorted(body for batch in batches for body in batch["bodies"]) == sent  # each message once
    readers = {batch["poller"] for batch in batches}
    assert (len(readers) > 1 if pollers > 1 else len(readers) == 1) and len(readers) <= pollers
    wait_for(lambda: not twin._visible(sqs, mapping), what="the queue drained")


@pytest.mark.parametrize(
    ("case", "failures"),
    [
        ("unknown-id", "[{'itemIdentifier': 'not-a-message-of-this-batch'}]"),
        ("bad-key", "[{'messageId': event['Records'][0]['messageId']}]"),
        ("empty-id", "[{'itemIdentifier': ''}]"),
    ],
)
def test_an_invalid_partial_batch_response_fails_the_whole_batch(
    twin: Twin, tmp_path: Path, case: str, failures: str
) -> None:
    """Lambda reads a partial batch response naming no message of the batch, or an item without a (non-empty)
    itemIdentifier, as a complete failure: every message returns (Lambda developer guide, "Handling errors for an
    SQS event source in Lambda"), none is deleted as if it had succeeded, and the queue keeps being polled."""
    out = tmp_path / "out.jsonl"
    handler = (
        "    first = not os.path.exists(os.environ['OUT'])\n"
        "    with open(os.environ['OUT'], 'a') as out:\n"
        "        out.write(json.dumps([r['body'] for r in event['Records']]) + '\\n')\n"
        f"    return {{'batchItemFailures': {failures} if first else []}}\n"
    )
    name = f"fidelity-partial-{case}"
    mapping = _polled_function(twin, tmp_path, name, handler, reserved=1)
    sqs, url = twin.client("sqs"), _queue_url(twin, name)
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m-{i}"} for i in range(3)])

    def delivered() -> list[list[str]]:
        batches = _written(out)
        return batches if sorted(body for batch in batches[1:] for body in batch) == ["m-0", "m-1", "m-2"] else []

    batches = wait_for(delivered, timeout=30, what="the whole first batch delivered again")
    assert sorted(batches[0]) == ["m-0", "m-1", "m-2"]
    wait_for(lambda: not twin._visible(sqs, mapping), what="the queue drained")


def test_a_batch_in_hand_is_invoked_when_the_backlog_cannot_be_read(
    twin: Twin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poller that took a batch invokes it even when reading the queue's backlog fails (the batch would otherwise
    wait out its visibility timeout, 30 s here, 30 minutes on the app's queues)."""
    name, out = "fidelity-backlog-unread", tmp_path / "out.jsonl"
    handler = (
        "    with open(os.environ['OUT'], 'a') as out:\n"
        "        out.write(json.dumps([r['body'] for r in event['Records']]) + '\\n')\n"
    )
    _polled_function(twin, tmp_path, name, handler, reserved=1)

    def unreadable(_sqs: Any, _mapping: Any) -> bool:
        raise RuntimeError("GetQueueAttributes failed")

    monkeypatch.setattr(Twin, "_visible", staticmethod(unreadable))
    sqs = twin.client("sqs")
    sqs.send_message_batch(QueueUrl=_queue_url(twin, name), Entries=[{"Id": str(i), "MessageBody": f"m-{i}"}
                                                                     for i in range(3)])  # fmt: skip

    def delivered() -> list[str]:
        bodies = [body for batch in _written(out) for body in batch]
        return bodies if len(bodies) >= 3 else []

    assert sorted(wait_for(delivered, timeout=10, what="the batch invoked")) == ["m-0", "m-1", "m-2"]


def test_a_batch_that_would_exceed_6_mb_is_cut_and_the_rest_is_the_next_batch(
    twin: Twin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lambda invokes with fewer messages than the batch size when "the payload size reaches 6 MB" (Lambda developer
    guide, "Lambda event source mappings", batching behavior): ten 700 KB messages that arrive within one window
    make a batch of 8 (a ninth would take the event over 6 MB) and one of the other 2, each message once."""
    name, out = "fidelity-six-mb", tmp_path / "out.jsonl"
    handler = (
        "    size = len(json.dumps(event).encode('utf-8'))\n"
        "    with open(os.environ['OUT'], 'a') as out:\n"
        "        out.write(json.dumps({'bytes': size, 'ids': [r['body'][:4] for r in event['Records']]}) + '\\n')\n"
    )
    monkeypatch.setattr(twin, "time_scale", 1.0)  # a 10 s window: all ten are in hand before it closes
    _polled_function(twin, tmp_path, name, handler, reserved=1, polling=Polling(batch_size=10, window_seconds=10))
    sqs, url = twin.client("sqs"), _queue_url(twin, name)
    sent = [f"{i:03d}-" for i in range(10)]
    for prefix in sent:  # one a call: SendMessageBatch carries at most 1 MB in all
        sqs.send_message(QueueUrl=url, MessageBody=prefix.ljust(700_000, "x"))

    def delivered() -> list[dict[str, Any]]:
        batches = _written(out)
        return batches if sum(len(b["ids"]) for b in batches) >= len(sent) else []

    batches = wait_for(delivered, timeout=60, what="the ten messages invoked")
    assert sorted(i for batch in batches for i in batch["ids"]) == [p[:4] for p in sent]  # each message once
    assert all(batch["bytes"] <= SYNC_PAYLOAD_BYTES for batch in batches)
    assert sorted(len(batch["ids"]) for batch in batches) == [2, 8]


def test_a_function_throttled_to_0_is_never_invoked_and_its_messages_go_to_the_dead_letter_queue(
    twin: Twin, tmp_path: Path
) -> None:
    """Reserved concurrency 0 throttles every invocation: Lambda never runs the function, and a throttled batch's
    messages become visible again (Lambda developer guide, "Using Lambda with Amazon SQS"), each receive counting
    towards the queue's maxReceiveCount, after which SQS moves them to the dead-letter queue."""
    name, out = "fidelity-throttled", tmp_path / "out.jsonl"
    handler = "    open(os.environ['OUT'], 'a').write('invoked\\n')\n"
    _polled_function(twin, tmp_path, name, handler, reserved=0, polling=Polling(max_receive_count=2))
    sqs = twin.client("sqs")
    sqs.send_message_batch(QueueUrl=_queue_url(twin, name), Entries=[{"Id": str(i), "MessageBody": f"m-{i}"}
                                                                     for i in range(3)])  # fmt: skip
    dead_letters = _queue_url(twin, f"{name}-dlq")

    def moved() -> list[str]:
        attributes = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["ApproximateNumberOfMessages"])
        return ["all"] if int(attributes["Attributes"]["ApproximateNumberOfMessages"]) == 3 else []

    wait_for(moved, timeout=30, what="the three messages in the dead-letter queue")
    assert not out.exists()  # never invoked


# --------------------------------------------------------------------------------------------- Step Functions + IAM


def test_a_state_machine_role_is_evaluated_with_the_services_error_inside_the_workflow(twin: Twin) -> None:
    send = {
        "Type": "Task",
        "Resource": "arn:aws:states:::aws-sdk:sqs:sendMessage",
        "Parameters": {"QueueUrl": _queue_url(twin, OPEN_QUEUE), "MessageBody": "hi"},
        "End": True,
    }
    assert _machine(twin, ALLOWED_ROLE, {"Send": send}, "Send")["status"] == "SUCCEEDED"
    refused = _machine(twin, EMPTY_ROLE, {"Send": send}, "Send")
    # (aws-sdk integrations name errors as moto's interpreter does: `sqs.sqsException` here)
    assert refused["status"] == "FAILED" and refused["error"].lower().startswith("sqs.")
    assert "is not authorized to perform: sqs:SendMessage" in refused["cause"]


def test_an_optimized_integration_refusal_is_named_as_the_sdk_names_it(twin: Twin) -> None:
    invoke = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:anything", "Payload": {}},
        "End": True,
    }
    refused = _machine(twin, EMPTY_ROLE, {"Invoke": invoke}, "Invoke")
    assert refused["status"] == "FAILED" and refused["error"] == "Lambda.AWSLambdaException"
    assert "not authorized to perform: lambda:InvokeFunction" in refused["cause"]
    assert "Error Code: AccessDeniedException" in refused["cause"]


# ------------------------------------------------------------------------------------------------------- quotas


def test_execution_names_as_step_functions_accepts_them() -> None:
    assert execution_name_problem("run-2024-06-01_a") is None
    assert execution_name_problem("r" * 80) is None
    for bad in ("", "r" * 81, "my run", "a/b", "x:y", "{x}", "q?", "tab\there", "ctl\x7f"):
        assert execution_name_problem(bad) is not None, bad


def test_start_execution_refuses_bad_names_and_inputs_over_256_kib(twin: Twin) -> None:
    sfn = twin.client("stepfunctions")
    definition = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}})
    machine = sfn.create_state_machine(name="fidelity-quota", definition=definition, roleArn=_role_arn(EMPTY_ROLE))
    arn = machine["stateMachineArn"]
    for name in ("has space", "r" * 81):
        with pytest.raises(ClientError) as bad_name:
            sfn.start_execution(stateMachineArn=arn, name=name, input="{}")
        assert bad_name.value.response["Error"]["Code"] == "InvalidName"
    with pytest.raises(ClientError) as too_big:
        sfn.start_execution(stateMachineArn=arn, name="big", input=json.dumps({"x": "y" * 262_144}))
    assert too_big.value.response["Error"]["Code"] == "ValidationException"
    fits = json.dumps({"x": "y" * (262_144 - 20)})
    assert sfn.start_execution(stateMachineArn=arn, name="fits", input=fits)["executionArn"]


def test_the_history_quota_ends_an_endless_loop_with_states_runtime(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patches, "history_limit", 60)  # AWS's is 25,000: the same cut, sooner
    loop = {
        "Spin": {"Type": "Pass", "Next": "Again"},
        "Again": {
            "Type": "Choice",
            "Choices": [{"Variable": "$", "IsPresent": True, "Next": "Spin"}],
            "Default": "Spin",
        },
    }
    described = _machine(twin, EMPTY_ROLE, loop, "Spin")
    assert described["status"] == "FAILED" and described["error"] == "States.Runtime"
    assert described["cause"] == "The execution reached the maximum number of history events (60)."
    events = twin.client("stepfunctions").get_execution_history(executionArn=described["executionArn"], maxResults=1000)
    last = events["events"][-1]
    assert (last["id"], last["type"]) == (60, "ExecutionFailed")


def test_put_events_refuses_a_source_of_aws_services_entry_by_entry(twin: Twin) -> None:
    response = twin.client("events").put_events(
        Entries=[
            {"Source": "aws.s3", "DetailType": "Object Created", "Detail": "{}"},
            {"Source": "fidelity.nowhere", "DetailType": "t", "Detail": "{}"},
        ]
    )
    assert response["FailedEntryCount"] == 1
    refused, accepted = response["Entries"]
    assert refused == {"ErrorCode": "NotAuthorizedForSourceException", "ErrorMessage": "Not authorized for the source."}
    assert "EventId" in accepted


def test_the_put_events_integration_is_authorized_as_the_role_and_its_custom_event_reaches_rules(twin: Twin) -> None:
    publish = {
        "Type": "Task",
        "Resource": "arn:aws:states:::events:putEvents",
        "Parameters": {"Entries": [{"Source": "fidelity.open", "DetailType": "Run", "Detail": {"run_id": "r-1"}}]},
        "End": True,
    }
    sqs = twin.client("sqs")
    sqs.purge_queue(QueueUrl=_queue_url(twin, OPEN_QUEUE))  # earlier tests of the module deliver there too
    assert _machine(twin, ALLOWED_ROLE, {"Publish": publish}, "Publish")["status"] == "SUCCEEDED"
    messages = wait_for(
        lambda: sqs.receive_message(QueueUrl=_queue_url(twin, OPEN_QUEUE), MaxNumberOfMessages=10).get("Messages"),
        what="the run event at the rule's queue",
    )
    delivered = [json.loads(m["Body"]) for m in messages]
    assert any(e["detail-type"] == "Run" and e["detail"] == {"run_id": "r-1"} for e in delivered), delivered
    refused = _machine(twin, EMPTY_ROLE, {"Publish": publish}, "Publish")
    assert refused["status"] == "FAILED"
    assert "not authorized to perform: events:PutEvents" in refused["cause"], refused["cause"]


def test_put_events_over_1_mb_is_refused_as_eventbridge_refuses_it(twin: Twin) -> None:
    entry = {"Source": "fidelity.open", "DetailType": "t", "Detail": json.dumps({"x": "y" * 1_049_000})}
    assert put_events_size([entry]) > 1_048_576
    with pytest.raises(ClientError) as too_big:
        twin.client("events").put_events(Entries=[entry])
    assert too_big.value.response["Error"]["Code"] == "ValidationException"
    assert "Total size of the entries in the request is over the limit" in too_big.value.response["Error"]["Message"]


def test_requests_are_validated_against_the_model_as_aws_validates_them() -> None:
    ok = {"applicationId": "00fabc123456789", "clientToken": "t", "executionRoleArn": _role_arn("job")}
    assert validation_errors("emr-serverless", "StartJobRun", ok) == []
    errors = validation_errors("emr-serverless", "StartJobRun", {**ok, "applicationId": "", "name": "n" * 300})
    assert any(
        "at 'applicationId' failed to satisfy constraint: Member must have length greater than" in e for e in errors
    )
    assert any(
        "at 'name' failed to satisfy constraint: Member must have length less than or equal to 256" in e for e in errors
    )
    missing = validation_errors("emr", "AddJobFlowSteps", {"Steps": []})
    assert missing == ["Value null at 'jobFlowId' failed to satisfy constraint: Member must not be null"]
    assert validation_errors("emr-containers", "CreateVirtualCluster", {"name": "vc", "containerProvider": {
        "type": "EKS", "id": "eks"}}) == []  # clientToken is an idempotency token: the SDK fills it in  # fmt: skip


# -------------------------------------------------------------------------------------------------- EMR timing


def test_step_functions_polls_emr_every_60_s_for_ten_minutes_then_every_300_s() -> None:
    offsets = list(itertools.islice(emr_poll_offsets(), 13))
    assert offsets == [60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 900, 1200, 1500]


def test_an_add_step_sync_task_notices_a_step_only_at_a_poll(twin: Twin) -> None:
    # Given the clock at 50x (a 60 s poll interval takes 1.2 s: scheduling jitter on a loaded machine stays far below
    # a poll interval) and a cluster whose step runs 150 twin seconds
    scale = 0.02
    previous = (twin.time_scale, twin.emr_ec2.phase_seconds)
    twin.set_time_scale(scale)
    twin.emr_ec2.phase_seconds = 0.005
    emr = twin.client("emr")
    iam = twin.client("iam")
    iam.create_role(RoleName="fidelity-emr", AssumeRolePolicyDocument="{}")
    allow = {"Effect": "Allow", "Action": ["elasticmapreduce:*", "events:*"], "Resource": "*"}
    iam.put_role_policy(
        RoleName="fidelity-emr",
        PolicyName="emr",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [allow]}),
    )
    iam.create_instance_profile(InstanceProfileName="fidelity-emr")
    iam.add_role_to_instance_profile(InstanceProfileName="fidelity-emr", RoleName="fidelity-emr")
    cluster = emr.run_job_flow(
        Name="fidelity",
        ReleaseLabel="emr-7.5.0",
        ServiceRole="fidelity-emr",
        JobFlowRole="fidelity-emr",
        Instances={
            "KeepJobFlowAliveWhenNoSteps": True,
            "InstanceGroups": [
                {"Name": "m", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1}
            ],
        },
    )["JobFlowId"]
    twin.faults.run_next_job_for(150)
    step = {
        "Name": "s",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]},
    }
    add = {
        "Type": "Task",
        "Resource": "arn:aws:states:::elasticmapreduce:addStep.sync",
        "Parameters": {"ClusterId": cluster, "Step": step},
        "Next": "Noticed",
    }
    noticed = {"Type": "Pass", "Parameters": {"at.$": "$$.State.EnteredTime"}, "End": True}
    try:
        described = _machine(twin, "fidelity-emr", {"Add": add, "Noticed": noticed}, "Add")
    finally:
        emr.terminate_job_flows(JobFlowIds=[cluster])
        twin.set_time_scale(previous[0])
        twin.emr_ec2.phase_seconds = previous[1]
    assert described["status"] == "SUCCEEDED", described.get("cause")
    # Then the step (ended at ~150 s) is noticed at the 180 s poll: not at once, and not a poll later (240 s)
    waited = (described["stopDate"] - described["startDate"]).total_seconds() / scale
    assert 175 <= waited < 235, f"noticed after {waited:.0f} twin seconds"


def test_execution_events_leave_out_input_and_output_over_248_kib_as_aws_does() -> None:
    from local.patches import EVENT_DATA_LIMIT_BYTES, _event_data

    # Given / When / Then: small data is carried and marked included; oversized data is left out, marked so
    assert _event_data('{"a": 1}') == ('{"a": 1}', {"included": True})
    assert _event_data("x" * EVENT_DATA_LIMIT_BYTES) == ("x" * EVENT_DATA_LIMIT_BYTES, {"included": True})
    assert _event_data("x" * (EVENT_DATA_LIMIT_BYTES + 1)) == (None, {"included": False})
    assert _event_data(None) == (None, None)


def test_list_job_runs_of_an_application_without_runs_is_empty_as_aws_answers(twin: Twin) -> None:
    serverless = twin.client("emr-serverless")
    app = serverless.create_application(name=f"fidelity-{next(_names)}", releaseLabel="emr-7.5.0", type="SPARK")
    assert serverless.list_job_runs(applicationId=app["applicationId"])["jobRuns"] == []  # moto: ResourceNotFound
    with pytest.raises(ClientError) as missing:
        serverless.list_job_runs(applicationId="00notanapp00")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
