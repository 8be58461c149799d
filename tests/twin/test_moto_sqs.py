"""Twin: moto's SQS at SQS's cost (local/patches.py): a receive or GetQueueAttributes does not grow with the square
of the queue's length, and answers as before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.sqs.models import Queue

from local.twin import Twin


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    started = Twin(workdir=Path(tmp_path_factory.mktemp("sqs")), spark=False).start()
    yield started
    started.stop()


def test_a_receive_from_a_long_queue_builds_its_attributes_a_bounded_number_of_times(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = twin.client("sqs")
    url = sqs.create_queue(QueueName="long", Attributes={"MessageRetentionPeriod": "600"})["QueueUrl"]
    for start in range(0, 300, 10):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"} for i in range(10)]
        )
    built: list[int] = []
    attributes: Any = Queue.__dict__["attributes"]

    def counted(queue: Queue) -> Any:
        built.append(1)
        return attributes.fget(queue)

    monkeypatch.setattr(Queue, "attributes", property(counted))
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    counts = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert len(received) == 10
    assert counts == {"ApproximateNumberOfMessages": "290", "ApproximateNumberOfMessagesNotVisible": "10"}
    assert len(built) <= 3, f"the queue's attributes were built {len(built)} times"  # moto: 3 per message looked at
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["MessageRetentionPeriod"] == "600"
    )
    with pytest.raises(ClientError) as refused:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["NoSuchAttribute"])
    assert refused.value.response["Error"]["Code"] in (
        "InvalidAttributeName",
        "AWS.SimpleQueueService.InvalidAttributeName",
    )
