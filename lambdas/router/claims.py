"""Object claims: which run each object version belongs to, so that no redelivery or regrouping of messages can put
one object version into two runs.

A claim is one DynamoDB item per (pipeline, object version), key `autopilot-router.object-claim#<sha256>`, holding
the id of the run it belongs to and an `expiration` (the table's TTL attribute). A run claims every object of its
manifest (written first) before it is started, so a started run always owns all of its objects; a later message
about one of them finds the claim and rejoins that run (starting it, by the same name, if it never started)
instead of forming a new one.

Claims are conditional writes: `attribute_not_exists(id) OR run_id = :mine OR expiration < :now` (an expired claim
may still be in the table until TTL removes it). When two routers race for one object, exactly one run owns it; the
other releases what it claimed (conditional deletes of its own claims, 100 a transaction) and lets SQS bring its
messages back.
A run's claims go in TransactWriteItems of up to 100 (DynamoDB's limit per transaction:
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html), one call per 100
objects instead of one PutItem each, and small runs of one batch share transactions (`claim_runs`: a batch of 1,000
per-object runs claims in 10 calls); IAM authorizes each Put of a transaction as dynamodb:PutItem
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html).
Items written by the router's earlier claim format (powertools idempotency records, no `run_id`) count as owned by
an unknown earlier run: the object is a duplicate.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from autopilot_common.dynamo import TransactionCancelled, get_items, transact

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient

# Stable DynamoDB key prefix, so refactoring this module never invalidates existing claims.
CLAIM_KEY_PREFIX = "autopilot-router.object-claim"
EARLIER_RUN = "an earlier run"  # owner of a claim in the router's previous (powertools) format
TRANSACT_LIMIT = 100  # actions per TransactWriteItems (DynamoDB quota)
_CLAIMED = "attribute_not_exists(id) OR run_id = :run OR expiration < :now"
_OWNED = "run_id = :run"  # what a release deletes: `run_id`'s own claim, never another run's


def claim_id(claim_key: str) -> str:
    """The DynamoDB key of an object's claim: the prefix and the sha256 of the claim key."""
    return f"{CLAIM_KEY_PREFIX}#{hashlib.sha256(claim_key.encode('utf-8')).hexdigest()}"


def date_claim_key(pipeline: str, logical_date: str) -> str:
    """The claim that some run started for a pipeline's logical date (an arrival run whose objects lie in a
    `partition_template` partition): what an arrival deadline reads (one item, not a scan of the ledger). `@` keeps it
    apart from object claims, whose identity starts with a bucket name (which cannot hold `@`)."""
    return f"{pipeline}\x00@logical-date\x00{logical_date}"


@dataclass(frozen=True)
class Claim:
    """What a claim item says: the run that owns the object, and for humans which object it is."""

    run_id: str
    label: str = ""


class ClaimStore:
    """Object claims in the router's DynamoDB table (see the module docstring)."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        *,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.sleep = sleep

    def owners(self, claim_keys: Iterable[str]) -> dict[str, str]:
        """The run owning each claim key that is claimed (and not expired); unclaimed keys are absent.

        BatchGetItem, 100 keys a call, strongly consistent; unprocessed keys are asked again with a backoff.
        """
        by_id = {claim_id(k): k for k in dict.fromkeys(claim_keys)}
        found: dict[str, str] = {}
        now = self.clock()
        for item in get_items(self.dynamodb, self.table, [{"id": {"S": i}} for i in by_id], sleep=self.sleep):
            owner = _owner(item, now)
            if owner is not None:
                found[by_id[item["id"]["S"]]] = owner
        return found

    def claim(self, claim_key: str, run_id: str, *, label: str) -> str:
        """Claim the object for `run_id`; returns the owner: `run_id`, or the run that already owns it."""
        now = int(self.clock())
        try:
            self.dynamodb.put_item(
                TableName=self.table,
                Item=self._item(claim_key, run_id, label, now),
                ConditionExpression=_CLAIMED,
                ExpressionAttributeValues={":run": {"S": run_id}, ":now": {"N": str(now)}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            owner = _owner(exc.response.get("Item") or {}, now)
            return owner or EARLIER_RUN
        return run_id

    def claim_all(self, labelled: Sequence[tuple[str, str]], run_id: str) -> dict[str, str]:
        """Claim every `(claim key, label)` for `run_id`, 100 a transaction. Returns `{claim key: owner}` of the
        objects another run owns (empty: `run_id` owns them all). A transaction is all or nothing, so on the first
        one that loses, the claims of the earlier ones are released and the later ones are not tried: the lost map
        names that transaction's losses only (enough to report a conflict; the run does not start)."""
        now = int(self.clock())
        pending = list(dict.fromkeys(key for key, _ in labelled))  # one action per item in a transaction
        labels = dict(labelled)
        won: list[str] = []
        for start in range(0, len(pending), TRANSACT_LIMIT):
            chunk = pending[start : start + TRANSACT_LIMIT]
            puts = [self._conditional_put(key, run_id, labels[key], now) for key in chunk]
            try:
                transact(self.dynamodb, puts)
            except TransactionCancelled as cancelled:
                lost = {chunk[i]: _owner(cancelled.reasons[i].get("Item") or {}, now) or EARLIER_RUN
                        for i in sorted(cancelled.failed)}  # fmt: skip
                self.release_all(won, run_id)
                return lost
            won.extend(chunk)
        return {}

    def claim_runs(self, runs: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, dict[str, str]]:
        """Claim the objects of several runs (`{run id: [(claim key, label), ...]}`, no key in two runs): runs of up to
        100 objects share transactions (up to 100 actions each), so a batch of per-object runs takes one
        TransactWriteItems per 100 objects instead of one per run; a larger run claims alone (`claim_all`). Returns
        `{run id: {claim key: owner}}` for the runs that lost an object to another run (they hold none of their
        objects); every other run owns all of its objects.

        A cancelled transaction wrote nothing: its losing runs are dropped and it is sent again without them."""
        lost: dict[str, dict[str, str]] = {}
        shared: list[tuple[str, list[str]]] = []
        labels: dict[str, str] = {}
        for run_id, labelled in runs.items():
            keys = list(dict.fromkeys(key for key, _ in labelled))
            if len(keys) > TRANSACT_LIMIT:
                if owners := self.claim_all(labelled, run_id):
                    lost[run_id] = owners
                continue
            labels.update(labelled)
            shared.append((run_id, keys))
        group: list[tuple[str, list[str]]] = []
        size = 0
        for run in shared:
            if size + len(run[1]) > TRANSACT_LIMIT:
                lost.update(self._claim_group(group, labels))
                group, size = [], 0
            group.append(run)
            size += len(run[1])
        if group:
            lost.update(self._claim_group(group, labels))
        return lost

    def _claim_group(self, group: list[tuple[str, list[str]]], labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """One transaction over the claims of a few runs (together at most 100); a run that loses one is dropped and
        the transaction sent again without it."""
        lost: dict[str, dict[str, str]] = {}
        now = int(self.clock())
        while group:
            actions = [(run_id, key) for run_id, keys in group for key in keys]
            puts = [self._conditional_put(key, run_id, labels[key], now) for run_id, key in actions]
            try:
                transact(self.dynamodb, puts)
            except TransactionCancelled as cancelled:
                for i in sorted(cancelled.failed):
                    run_id, key = actions[i]
                    owner = _owner(cancelled.reasons[i].get("Item") or {}, now) or EARLIER_RUN
                    lost.setdefault(run_id, {})[key] = owner
                group = [run for run in group if run[0] not in lost]
                continue
            return lost
        return lost

    def _conditional_put(self, claim_key: str, run_id: str, label: str, now: int) -> dict[str, Any]:
        """A transaction's Put of one claim: only if the object is unclaimed, claimed by `run_id`, or expired."""
        return {
            "Put": {
                "TableName": self.table,
                "Item": self._item(claim_key, run_id, label, now),
                "ConditionExpression": _CLAIMED,
                "ExpressionAttributeValues": {":run": {"S": run_id}, ":now": {"N": str(now)}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _item(self, claim_key: str, run_id: str, label: str, now: int) -> dict[str, Any]:
        return {
            "id": {"S": claim_id(claim_key)},
            "run_id": {"S": run_id},
            "object": {"S": label[:1024]},
            "claimed_at": {"N": str(now)},
            "expiration": {"N": str(now + self.ttl_seconds)},
        }

    def release_all(self, claim_keys: Iterable[str], run_id: str) -> None:
        """Give up `run_id`'s claims of `claim_keys` (only its own: a claim another run holds, or none, is left
        alone): conditional Deletes, 100 a TransactWriteItems (a window run of 4,000 objects gives up its claims in
        40 calls, not 4,000 DeleteItem). A transaction is all or nothing: when some of its Deletes find the claim
        another run's, it deleted nothing, and it is sent again without them (IAM authorizes each Delete of a
        transaction as dynamodb:DeleteItem: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/
        transaction-apis-iam.html)."""
        keys = list(dict.fromkeys(claim_keys))  # one action per item in a transaction
        for start in range(0, len(keys), TRANSACT_LIMIT):
            chunk = keys[start : start + TRANSACT_LIMIT]
            while len(chunk) > 1:
                try:
                    transact(self.dynamodb, [self._conditional_delete(key, run_id) for key in chunk])
                except TransactionCancelled as cancelled:
                    chunk = [key for i, key in enumerate(chunk) if i not in cancelled.failed]
                    continue
                chunk = []
            for key in chunk:  # one left: a DeleteItem, half a transaction's write capacity
                self.release(key, run_id)

    def _conditional_delete(self, claim_key: str, run_id: str) -> dict[str, Any]:
        """A transaction's Delete of one claim, only if `run_id` holds it."""
        return {
            "Delete": {
                "TableName": self.table,
                "Key": {"id": {"S": claim_id(claim_key)}},
                "ConditionExpression": _OWNED,
                "ExpressionAttributeValues": {":run": {"S": run_id}},
            }
        }

    def release(self, claim_key: str, run_id: str) -> None:
        """Give up `run_id`'s claim (only its own: a claim another run holds is left alone)."""
        try:
            self.dynamodb.delete_item(
                TableName=self.table,
                Key={"id": {"S": claim_id(claim_key)}},
                ConditionExpression=_OWNED,
                ExpressionAttributeValues={":run": {"S": run_id}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise


def _owner(item: Mapping[str, Any], now: float) -> str | None:
    """The run an item names as owner; None when the item is absent or expired."""
    if not item:
        return None
    expiration = item.get("expiration", {}).get("N")
    if expiration is not None and float(expiration) < now:
        return None
    run = item.get("run_id", {}).get("S")
    return str(run) if run else EARLIER_RUN
