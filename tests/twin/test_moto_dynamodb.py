"""The twin's DynamoDB at DynamoDB's cost (local/moto_dynamodb.py): a Query reads its partition, not the table."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto.dynamodb.models.dynamo_type import Item

from local import moto_dynamodb
from tests.unit.conftest import create_table

TABLE = "line"


def _keys(page: dict[str, Any]) -> list[str]:
    return [item["sk"]["S"] for item in page["Items"]]


def test_a_query_reads_only_its_partition_and_pages_as_dynamodb_does(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a table with a 30-item partition and a 500-item one
    ddb = boto3.client("dynamodb", region_name=moto)
    create_table(ddb, TABLE, "pk", "sk")
    for pk, count in (("LINE", 30), ("RUN", 500)):
        for i in range(count):
            ddb.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": f"{pk}#{i:03d}"}})
    listed: list[int] = []
    original = moto_dynamodb._ORIGINAL_ALL_ITEMS
    monkeypatch.setattr(moto_dynamodb, "_ORIGINAL_ALL_ITEMS", lambda table: listed.append(1) or original(table))
    line = {":pk": {"S": "LINE"}}
    # When the small partition is queried: in pages, backwards, within a key range
    first = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk", ExpressionAttributeValues=line, Limit=4)
    second = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk", ExpressionAttributeValues=line, Limit=4,
                       ExclusiveStartKey=first["LastEvaluatedKey"])  # fmt: skip
    before = {**line, ":before": {"S": "LINE#010"}}
    backwards = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND sk < :before", Limit=3,
                          ExpressionAttributeValues=before, ScanIndexForward=False)  # fmt: skip
    # Then the answers are DynamoDB's, and the other partition was never listed
    assert _keys(first) == [f"LINE#{i:03d}" for i in range(4)] and first["ScannedCount"] == 4
    assert _keys(second) == [f"LINE#{i:03d}" for i in range(4, 8)]
    assert _keys(backwards) == ["LINE#009", "LINE#008", "LINE#007"]
    assert listed == []
    # And a Scan still lists the whole table
    assert ddb.scan(TableName=TABLE)["Count"] == 530 and listed


def test_a_query_sizes_only_the_items_its_sort_key_condition_selects(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a partition of 5 counters and 400 queued items after them
    ddb = boto3.client("dynamodb", region_name=moto)
    create_table(ddb, TABLE, "pk", "sk")
    keys = [f"COUNT#{i}" for i in range(5)] + [f"QUEUE#{i:03d}" for i in range(400)]
    for key in keys:
        ddb.put_item(TableName=TABLE, Item={"pk": {"S": "LINE"}, "sk": {"S": key}, "n": {"N": "1"}})
    sized: list[int] = []
    original = Item.size

    def size(item: Item) -> int:
        sized.append(1)
        return original(item)

    monkeypatch.setattr(Item, "size", size)
    line = {":pk": {"S": "LINE"}, ":queue": {"S": "QUEUE#"}}
    # When the counters, then the queue's head, then a page of it are read
    counters = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND sk < :queue",
                         ExpressionAttributeValues=line, ConsistentRead=True)  # fmt: skip
    head = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND begins_with(sk, :queue)", Limit=1,
                     ExpressionAttributeValues=line)  # fmt: skip
    page = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND begins_with(sk, :queue)", Limit=3,
                     ExpressionAttributeValues=line, ExclusiveStartKey=head["LastEvaluatedKey"])  # fmt: skip
    last = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND begins_with(sk, :queue)", Limit=2,
                     ExpressionAttributeValues=line, ScanIndexForward=False)  # fmt: skip
    two = {**line, ":two": {"N": "2"}}
    filtered = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :pk AND begins_with(sk, :queue)", Limit=3,
                         FilterExpression="n = :two", ExpressionAttributeValues=two)  # fmt: skip
    # Then the answers are DynamoDB's (a filter applies after the limit)...
    assert _keys(last) == ["QUEUE#399", "QUEUE#398"] and "LastEvaluatedKey" in last
    assert filtered["Items"] == [] and filtered["ScannedCount"] == 3 and "LastEvaluatedKey" in filtered
    assert _keys(counters) == keys[:5] and counters["ScannedCount"] == 5 and "LastEvaluatedKey" not in counters
    assert _keys(head) == ["QUEUE#000"] and head["ScannedCount"] == 1
    assert _keys(page) == ["QUEUE#001", "QUEUE#002", "QUEUE#003"]
    # ...and reading the 5 counters did not size the 400 queued items (moto sized all 405 for each Query)
    assert len(sized) < 100


def _put(key: str) -> dict[str, Any]:
    return {"Put": {"TableName": TABLE, "Item": {"pk": {"S": key}, "sk": {"S": "claim"}},
                    "ConditionExpression": "attribute_not_exists(pk)"}}  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["a", "b", "a"], "multiple operations on one item"),
        ([f"k{i}" for i in range(101)], "length less than or equal to 100"),
    ],
)
def test_a_transaction_dynamodb_refuses_is_refused_and_writes_nothing(moto: str, keys: list[str], message: str) -> None:
    """DynamoDB refuses a TransactWriteItems naming one item twice, or with more than 100 actions, as a
    ValidationException (API reference, TransactWriteItems); the twin's cheaper backup keeps moto's refusal and
    writes none of it (the router's claims and the admission line rely on both)."""
    ddb = boto3.client("dynamodb", region_name=moto)
    create_table(ddb, TABLE, "pk", "sk")
    with pytest.raises(ddb.exceptions.ClientError) as refused:
        ddb.transact_write_items(TransactItems=[_put(key) for key in keys])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert message in refused.value.response["Error"]["Message"]
    assert ddb.scan(TableName=TABLE)["Count"] == 0
