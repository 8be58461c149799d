"""moto's DynamoDB at DynamoDB's cost: transactions that back up only the items they touch, and condition
expressions parsed once.

moto backs a transaction up by deep-copying each touched table once per item of the transaction, so one
100-item transaction on a 10,000-item table copies a million items: the twin's router claims and admission line
slowed down with the table's size, a cost DynamoDB does not have. This keeps moto's own evaluation (conditions,
cancellation reasons, ALL_OLD items, validation errors) and replaces only the backup: the touched items are
copied before, and put back if the transaction is cancelled or refused.

moto's Query of a table lists and sorts every item of the table, then keeps the partition's: each Query cost grew
with the whole table (the admission line's RUN, HELD and queue items), whatever its `Limit`. A Query of the table
(not an index) reads only its partition here, and only the partition's items its sort key condition selects (moto
sized every item of the partition for the 1 MB page before testing the condition: reading the admission line's
counters cost as much as reading its 1,000 queued runs); moto still sorts, pages and filters them.

moto also parses a condition expression on every write (three times per transaction item: to validate the
request, to evaluate it, to write): about 1 ms each. The parsed form depends only on the expression, its names and
its values, so it is kept (bounded caches).
"""

from __future__ import annotations

import copy
import heapq
import json
import threading
from collections import OrderedDict
from typing import Any

import moto.dynamodb.models as dynamodb_models
import moto.dynamodb.models.table as table_models
import moto.dynamodb.responses as dynamodb_responses
from moto.dynamodb import comparisons
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table

_ORIGINAL = DynamoDBBackend.transact_write_items
_DEEPCOPY = copy.deepcopy
_PARSE = comparisons.get_filter_expression
_PARSED: OrderedDict[str, Any] = OrderedDict()
_PARSED_LIMIT = 4096


def _parsed_expression(
    expr: str | None, names: dict[str, str] | None = None, values: dict[str, Any] | None = None
) -> Any:
    """moto's `get_filter_expression`, remembered by (expression, names, values)."""
    key = json.dumps([expr, names, values], sort_keys=True, default=str)
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = _PARSED[key] = _PARSE(expr, names, values)
        if len(_PARSED) > _PARSED_LIMIT:
            _PARSED.popitem(last=False)
    return parsed


class _TablesNotCopied:
    """Stands for the `copy` module inside moto's DynamoDB backend: a Table is not copied (our own backup of the
    touched items replaces it), anything else (update_item copies the item it updates) is."""

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else _DEEPCOPY(value, memo)


class _ParsedCondition:
    """What moto's request validation needs of a parsed condition: `parse()` and the names and values it uses."""

    def __init__(self, found: tuple[list[str], list[str]]) -> None:
        self.expr_attr_names_found = list(found[0])  # copies: moto extends them
        self.expr_attr_values_found = list(found[1])

    def parse(self) -> None:
        return None


_VALIDATED: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()


def _validated_condition(
    expr: str | None, names: dict[str, str] | None = None, values: dict[str, Any] | None = None
) -> Any:
    """moto's `create_condition_expression_parser` for request validation, parsed once per (expression, names,
    values); a malformed expression still raises at `parse()` (it is never remembered)."""
    key = json.dumps([expr, names, values], sort_keys=True, default=str)
    if key not in _VALIDATED:
        parser = comparisons.create_condition_expression_parser(expr, names, values)
        try:
            parser.parse()
        except Exception:
            return parser  # moto's own parser raises again where moto expects it (at `parse()`)
        _VALIDATED[key] = (list(parser.expr_attr_names_found), list(parser.expr_attr_values_found))
        if len(_VALIDATED) > _PARSED_LIMIT:
            _VALIDATED.popitem(last=False)
    return _ParsedCondition(_VALIDATED[key])


def _touched(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[tuple[Table, Any, Any, Any]]:
    """(table, hash key, range key, a copy of the item or None) for each item the transaction names."""
    touched = []
    for entry in transact_items:
        for op in entry.values():
            table = backend.tables.get(op.get("TableName"))
            if table is None:
                continue
            key = op.get("Key") or {
                a: op.get("Item", {}).get(a) for a in (table.hash_key_attr, table.range_key_attr) if a
            }
            try:
                hash_key, range_key = backend.get_keys_value(table, key)
                current = table.get_item(hash_key, range_key)
            except Exception:  # a malformed key: moto refuses the transaction before writing anything
                continue
            touched.append((table, hash_key, range_key, _DEEPCOPY(current)))
    return touched


def _restore(touched: list[tuple[Table, Any, Any, Any]]) -> None:
    for table, hash_key, range_key, item in reversed(touched):
        if range_key is not None:
            if item is None:
                table.items.get(hash_key, {}).pop(range_key, None)
            else:
                table.items[hash_key][range_key] = item
        elif item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    touched = _touched(self, transact_items)
    try:
        _ORIGINAL(self, transact_items)
    except Exception:
        _restore(touched)
        raise


_ORIGINAL_QUERY = Table.query
_ORIGINAL_ALL_ITEMS = Table.all_items
_QUERYING = threading.local()  # (table, the partition's items) while this thread's Query of that table runs


def _all_items(self: Table) -> list[Any]:
    """moto's `all_items`, or only the partition a Query on this thread reads."""
    querying = getattr(_QUERYING, "partition", None)
    if querying is not None and querying[0] is self:
        return list(querying[1])
    return _ORIGINAL_ALL_ITEMS(self)


def query(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
    """moto's Table.query; of the table's own keys (no index), over the partition's items only."""
    index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
    if index_name or hash_key is None or not self.range_key_attr:
        return _ORIGINAL_QUERY(self, hash_key, *args, **kwargs)
    partition = self.items.get(hash_key)
    items = list(partition.values()) if partition else []
    range_comparison = args[0] if args else kwargs.get("range_comparison")
    range_objs = args[1] if len(args) > 1 else kwargs.get("range_objs")
    if range_comparison and items:
        # moto sizes every item of the partition (for the 1 MB page) before it tests the sort key condition: the
        # items the condition excludes are dropped first here, with the same test moto then applies again.
        items = [i for i in items if i.range_key is not None and i.range_key.compare(range_comparison, range_objs)]
        limit = args[2] if len(args) > 2 else kwargs.get("limit")
        start = args[3] if len(args) > 3 else kwargs.get("exclusive_start_key")
        forward = args[4] if len(args) > 4 else kwargs.get("scan_index_forward", True)
        if limit and not start and len(items) > limit + 1:
            # A first page of `limit` items (moto sorts them all, then reads `limit` and one more to know there are
            # more): the `limit` + 1 first in the Query's order, found without sorting the rest. A filter applies
            # after the limit, in DynamoDB as in moto, so it reads these same items.
            pick = heapq.nsmallest if forward is not False else heapq.nlargest
            items = pick(limit + 1, items, key=lambda item: item.range_key)
    _QUERYING.partition = (self, items)
    try:
        return _ORIGINAL_QUERY(self, hash_key, *args, **kwargs)
    finally:
        _QUERYING.partition = None


def install() -> None:
    """Patch moto's DynamoDB backend (idempotent; every backend instance, so call it before or after mock_aws)."""
    setattr(dynamodb_models, "copy", _TablesNotCopied)  # noqa: B010 - the name moto's module looks up
    setattr(dynamodb_models, "get_filter_expression", _parsed_expression)  # noqa: B010
    setattr(table_models, "get_filter_expression", _parsed_expression)  # noqa: B010
    setattr(dynamodb_responses, "create_condition_expression_parser", _validated_condition)  # noqa: B010
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    Table.query = query  # type: ignore[method-assign]
    Table.all_items = _all_items  # type: ignore[method-assign]
