"""A 10,000-object S3 burst through the router's Lambda handler against moto.

SQS delivers the burst to the router in batches of the pipeline's `max_objects` (the event source
mapping's batch size), so the burst starts ceil(10,000 / max_objects) window runs (or one run per object in
per_object mode). Prints, per mode: events/s end to end against moto; the AWS calls per event; and events/s of the
router's own code, i.e. with the time spent inside AWS SDK calls (botocore and moto) left out, which is the part
of an invocation that does not wait on AWS.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

os.environ.update(
    AWS_DEFAULT_REGION="us-east-1",
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    POWERTOOLS_TRACE_DISABLED="true",
    POWERTOOLS_METRICS_NAMESPACE="EmrAutopilot",
    POWERTOOLS_LOG_LEVEL="WARNING",
    MANIFEST_BUCKET="bench-artifacts",
    IDEMPOTENCY_TABLE="bench-idempotency",
    LEDGER_BUCKET="bench-artifacts",
    TOPIC_ARN="arn:aws:sns:us-east-1:123456789012:bench-topic",
)

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from config.loader import load_config  # noqa: E402
from local import moto_dynamodb  # noqa: E402
from tests.conftest import load_event, load_handler  # noqa: E402
from tests.unit.fakes import lambda_context  # noqa: E402

BURST = int(os.environ.get("BENCH_BURST", "10000"))


def main(mode: str) -> None:
    trigger = load_config("dev").pipelines["sales-daily"].trigger
    assert trigger is not None
    batch_size = getattr(trigger.batching, "max_objects", 10)
    moto_dynamodb.install()  # as the twin runs DynamoDB transactions
    with mock_aws():
        boto3.client("sns").create_topic(Name="bench-topic")
        s3 = boto3.client("s3")
        for bucket in ("bench-artifacts", "bench-landing"):
            s3.create_bucket(Bucket=bucket)
        boto3.client("dynamodb").create_table(
            TableName="bench-idempotency",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        sfn = boto3.client("stepfunctions")
        arn = sfn.create_state_machine(
            name="bench",
            definition=json.dumps({"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/bench",
        )["stateMachineArn"]
        handler = load_handler("router")
        template = load_event("sqs_router_batch.json")["Records"][0]
        base_event = load_event("s3_object_created_eventbridge.json")
        routing = {"mode": mode, "prefix": trigger.prefix, "suffixes": trigger.suffixes, "marker_name": None,
                   "ignore_zero_byte": True}  # fmt: skip
        records = []
        for i in range(BURST):
            event = copy.deepcopy(base_event)
            key = f"{trigger.prefix}burst/part-{i:05d}.csv"
            digest = hashlib.md5(key.encode()).hexdigest()
            event["detail"]["bucket"]["name"] = "bench-landing"
            event["detail"]["object"].update(key=key, size=1000 + i, etag=digest, sequencer=digest[:18])
            body = json.dumps({"pipeline": "sales-daily", "state_machine_arn": arn, "trigger": routing, "event": event})
            record = copy.deepcopy(template)
            record.update(messageId=f"m-{i:05d}", body=body)
            records.append(record)
        failures = 0
        calls = SdkCalls()
        started = time.perf_counter()
        with calls.timed():
            for start in range(0, BURST, batch_size):
                batch = {"Records": records[start : start + batch_size]}
                with contextlib.redirect_stdout(io.StringIO()):  # EMF metric lines
                    response = handler.lambda_handler(batch, lambda_context("autopilot-bench-router"))
                failures += len(response["batchItemFailures"])
        elapsed = time.perf_counter() - started
        pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=arn)
        runs = sum(len(page["executions"]) for page in pages)
        own = elapsed - calls.seconds
        print(f"  {mode:<10} {BURST} objects in batches of {batch_size}: {elapsed:.1f} s, "
              f"{BURST / elapsed:,.0f} events/s against moto; {calls.count / BURST:.2f} AWS calls per event "
              f"({calls.summary()}); router code alone {BURST / own:,.0f} events/s ({own:.1f} s outside SDK calls); "
              f"{runs} executions started, {failures} failed records")  # fmt: skip


class SdkCalls:
    """Counts the AWS calls made through botocore (per operation) and the time spent inside them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0
        self.operations: Counter[str] = Counter()

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        counter = self

        def make_api_call(client: Any, operation_name: str, api_params: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(client, operation_name, api_params)
            finally:
                counter.seconds += time.perf_counter() - began
                counter.count += 1
                counter.operations[operation_name] += 1

        BaseClient._make_api_call = make_api_call  # type: ignore[method-assign]
        try:
            yield
        finally:
            BaseClient._make_api_call = original  # type: ignore[method-assign]

    def summary(self) -> str:
        return ", ".join(f"{name} {count}" for name, count in self.operations.most_common())


if __name__ == "__main__":
    for routing_mode in sys.argv[1:] or ["window", "per_object"]:
        main(routing_mode)
