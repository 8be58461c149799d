"""DynamoDB items in and out, and conditional transactions: one set of rules for every table the app keeps.

- Numbers go in as `Decimal` (never float: boto3 refuses floats) and come back as `int` when whole, else `float`.
- `transact` runs TransactWriteItems, retries transaction conflicts with jittered backoff, and raises
  `TransactionCancelled` (with each item's cancellation reason and the old item where DynamoDB returned one)
  when a condition failed: the caller decides what a failed condition means.
- `get_items` reads items by key, strongly consistent, with BatchGetItem (100 keys a call, unprocessed keys again).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient
else:
    DynamoDBClient = Any

TRANSACTION_CANCELED = "TransactionCanceledException"
BATCH_GET_LIMIT = 100  # keys per BatchGetItem (DynamoDB quota)
_UNPROCESSED_ATTEMPTS = 8
CONDITION_FAILED = "ConditionalCheckFailed"
_SERIALIZER, _DESERIALIZER = TypeSerializer(), TypeDeserializer()


class TransactionCancelled(Exception):
    """A condition of a transaction failed: `reasons[i]` is item i's cancellation reason (`Code`, maybe `Item`)."""

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        self.reasons = reasons
        super().__init__(f"transaction cancelled: {[r.get('Code', 'None') for r in reasons]}")

    @property
    def failed(self) -> set[int]:
        """Indexes of the items whose condition failed."""
        return {i for i, r in enumerate(self.reasons) if r.get("Code") == CONDITION_FAILED}

    def failed_at(self, index: int) -> bool:
        return index in self.failed

    def old_item(self, index: int) -> dict[str, Any] | None:
        """The item as it was, when the transaction asked for it (ReturnValuesOnConditionCheckFailure ALL_OLD)."""
        raw = self.reasons[index].get("Item") if index < len(self.reasons) else None
        return load_item(raw) if raw else None


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def transact(dynamodb: DynamoDBClient, items: list[dict[str, Any]], *, attempts: int = 12) -> None:
    """TransactWriteItems. Raises TransactionCancelled when a condition failed; retries conflicts with
    another transaction (no failed condition) up to `attempts` times, then raises the ClientError."""
    for attempt in range(attempts):
        try:
            dynamodb.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
            return
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELED:
                raise
            reasons: list[dict[str, Any]] = list(exc.response.get("CancellationReasons") or [])
            if any(r.get("Code") == CONDITION_FAILED for r in reasons):
                raise TransactionCancelled(reasons) from None
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 5)))  # a conflicting transaction: back off
    raise AssertionError("unreachable")


def get_items(
    dynamodb: DynamoDBClient,
    table: str,
    keys: Sequence[Mapping[str, Any]],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """The items of `table` at `keys` (distinct, as attribute values) that exist, as attribute values, strongly
    consistent: BatchGetItem, 100 keys a call; keys DynamoDB leaves unprocessed are asked again with a backoff
    (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html)."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), BATCH_GET_LIMIT):
        request: dict[str, Any] = {table: {"Keys": list(keys[start : start + BATCH_GET_LIMIT]), "ConsistentRead": True}}
        for attempt in range(_UNPROCESSED_ATTEMPTS):
            response = dynamodb.batch_get_item(RequestItems=request)
            found += response.get("Responses", {}).get(table, [])
            request = dict(response.get("UnprocessedKeys") or {})
            if not request:
                break
            sleep(min(2.0, 0.05 * 2**attempt))
        else:
            raise RuntimeError(f"DynamoDB left {len(request[table]['Keys'])} reads of table {table} unprocessed")
    return found


def dump_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain mapping as DynamoDB attribute values (floats as Decimal)."""
    return {k: dump_value(v) for k, v in item.items()}


def dump_value(value: Any) -> Any:
    """One plain value as a DynamoDB attribute value."""
    return _SERIALIZER.serialize(_decimals(value))


def load_item(raw: Mapping[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values back to plain Python (numbers: int when whole, else float)."""
    return {k: plain(_DESERIALIZER.deserialize(v)) for k, v in raw.items()}


def load_value(raw: Mapping[str, Any]) -> Any:
    """One DynamoDB attribute value back to plain Python."""
    return plain(_DESERIALIZER.deserialize(dict(raw)))


def plain(value: Any) -> Any:
    """Decimals to int (whole) or float; maps, lists and sets recursively (sets become lists)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [plain(v) for v in value]
    return value


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(v) for v in value]
    return value
