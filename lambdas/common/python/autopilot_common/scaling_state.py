"""Durable state of alarm-driven task-fleet scaling, in the app's claims table (key `id` (S), TTL `expiration`).

Two kinds of items::

    autopilot-scaler.transition#<alarm name>@<state timestamp>   one alarm transition acted on (TTL 7 days)
    autopilot-scaler.cluster#<cluster id>                        last_action_at (epoch seconds, N) and the
                                                                 list `actions` of the cluster (TTL 30 days)

`claim_action` writes both in one TransactWriteItems, so an alarm transition delivered twice acts once and
two concurrent alarms on one cluster cannot both act within its cooldown: whichever transaction commits
first wins, the other learns which condition stopped it (`duplicate` or `cooldown`, with the seconds left).
The scaler claims BEFORE it calls EMR and amends the stored action afterwards (`record_outcome`); an action
still `claimed` when its transition is delivered again belongs to an invocation that died in between, and the
redelivery completes it (`pending_action`). The workflow's finalize step copies `actions` into the run's ledger
entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from autopilot_common.dynamo import TransactionCancelled, dump_value, load_value, transact

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient

TRANSITION_PREFIX = "autopilot-scaler.transition#"
CLUSTER_PREFIX = "autopilot-scaler.cluster#"
TRANSITION_TTL = timedelta(days=7)
CLUSTER_TTL = timedelta(days=30)
CLAIMED, APPLIED, FAILED = "claimed", "applied", "failed"
_ATTEMPTS = 6  # TransactionConflict: another transaction touched the cluster item at the same moment


@dataclass(frozen=True)
class ClaimResult:
    """What `claim_action` decided: `claimed` (act now), `duplicate` (this transition was already acted on)
    or `cooldown` (the cluster's last action is `seconds_left` seconds too recent)."""

    outcome: Literal["claimed", "duplicate", "cooldown"]
    seconds_left: int | None = None

    @property
    def claimed(self) -> bool:
        return self.outcome == "claimed"


def transition_id(alarm_name: str, state_timestamp: str) -> str:
    """One alarm transition: its name and the timestamp of the state it entered."""
    return f"{alarm_name}@{state_timestamp}"


def claim_action(
    dynamodb: DynamoDBClient,
    table: str,
    *,
    cluster_id: str,
    transition_id: str,
    cooldown_seconds: int,
    now: datetime,
    action: Mapping[str, Any],
) -> ClaimResult:
    """Record `action` as the cluster's latest, unless the transition was seen or the cooldown has not passed.

    `action` is stored as given plus `transition_id`, `outcome: claimed` and `claimed_at` (epoch seconds);
    values must be JSON-like (str, int, float, bool, None, lists and maps of them).
    """
    stamp = round(now.timestamp(), 3)
    stored = {**action, "transition_id": transition_id, "outcome": CLAIMED, "claimed_at": stamp}
    items = [
        {
            "Put": {
                "TableName": table,
                "Item": {
                    "id": {"S": TRANSITION_PREFIX + transition_id},
                    "cluster_id": {"S": cluster_id},
                    "at": {"N": _seconds(stamp)},
                    "expiration": {"N": str(int((now + TRANSITION_TTL).timestamp()))},
                },
                "ConditionExpression": "attribute_not_exists(id)",
            }
        },
        {
            "Update": {
                "TableName": table,
                "Key": {"id": {"S": CLUSTER_PREFIX + cluster_id}},
                "UpdateExpression": "SET last_action_at = :now, expiration = :expiration, "
                "actions = list_append(if_not_exists(actions, :none), :action)",
                "ConditionExpression": "attribute_not_exists(last_action_at) OR last_action_at <= :cutoff",
                "ExpressionAttributeValues": {
                    ":now": {"N": _seconds(stamp)},
                    ":cutoff": {"N": _seconds(stamp - cooldown_seconds)},
                    ":expiration": {"N": str(int((now + CLUSTER_TTL).timestamp()))},
                    ":none": {"L": []},
                    ":action": {"L": [dump_value(stored)]},
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
    ]
    try:
        transact(dynamodb, items, attempts=_ATTEMPTS)
    except TransactionCancelled as cancelled:
        if cancelled.failed_at(0):
            return ClaimResult("duplicate")  # even if the cooldown failed too: this transition already acted
        old = cancelled.reasons[1].get("Item") or _get(dynamodb, table, CLUSTER_PREFIX + cluster_id) or {}
        last = _number(old.get("last_action_at"))
        left = math.ceil(last + cooldown_seconds - stamp) if last is not None else cooldown_seconds
        return ClaimResult("cooldown", max(1, left))
    return ClaimResult("claimed")


def record_outcome(
    dynamodb: DynamoDBClient, table: str, *, cluster_id: str, transition_id: str, outcome: str, error: str | None = None
) -> bool:
    """Amend the stored action of `transition_id` after the EMR call (`applied` or `failed`, with the error).

    False when the action is not stored (nothing claimed). Appends never move earlier actions, and the
    update is conditioned on the index still holding this transition, so concurrent claims are safe.
    """
    item = _get(dynamodb, table, CLUSTER_PREFIX + cluster_id) or {}
    stored = [load_value(raw) for raw in item.get("actions", {}).get("L", [])]
    index = _claimed_index(stored, transition_id)
    if index is None:
        return False
    names = {"#actions": "actions", "#outcome": "outcome", "#transition": "transition_id", "#error": "error"}
    values = {":outcome": {"S": outcome}, ":transition": {"S": transition_id}}
    update = f"SET #actions[{index}].#outcome = :outcome"
    if error is not None:
        update += f", #actions[{index}].#error = :error"
        values[":error"] = {"S": error[:1000]}
    else:
        del names["#error"]
    dynamodb.update_item(
        TableName=table,
        Key={"id": {"S": CLUSTER_PREFIX + cluster_id}},
        UpdateExpression=update,
        ConditionExpression=f"#actions[{index}].#transition = :transition",
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )
    return True


def release_claim(
    dynamodb: DynamoDBClient, table: str, *, cluster_id: str, transition_id: str, error: str, forget_transition: bool
) -> bool:
    """Undo a claim whose EMR call did not happen: mark the action `failed` with `error`, give the cooldown
    back (a failed attempt is not an action) and, with `forget_transition`, delete the transition marker so
    a redelivery of the same event (the retry after an unexpected error) may act. False when not stored."""
    item = _get(dynamodb, table, CLUSTER_PREFIX + cluster_id) or {}
    stored = [load_value(raw) for raw in item.get("actions", {}).get("L", [])]
    index = _claimed_index(stored, transition_id)
    if index is None:
        return False
    claimed_at = stored[index].get("claimed_at")
    try:
        dynamodb.update_item(
            TableName=table,
            Key={"id": {"S": CLUSTER_PREFIX + cluster_id}},
            UpdateExpression=f"SET #actions[{index}].#outcome = :failed, #actions[{index}].#error = :error "
            "REMOVE last_action_at",
            ConditionExpression=f"#actions[{index}].#transition = :transition AND last_action_at = :claimed",
            ExpressionAttributeNames={
                "#actions": "actions",
                "#outcome": "outcome",
                "#error": "error",
                "#transition": "transition_id",
            },
            ExpressionAttributeValues={
                ":failed": {"S": FAILED},
                ":error": {"S": error[:1000]},
                ":transition": {"S": transition_id},
                ":claimed": {"N": _seconds(float(claimed_at or 0))},
            },
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        # A later action owns the cooldown now: only mark this one failed.
        record_outcome(dynamodb, table, cluster_id=cluster_id, transition_id=transition_id, outcome=FAILED, error=error)
    if forget_transition:
        dynamodb.delete_item(TableName=table, Key={"id": {"S": TRANSITION_PREFIX + transition_id}})
    return True


def _claimed_index(stored: list[dict[str, Any]], transition_id: str) -> int | None:
    """The latest action of `transition_id` (a retried transition has an earlier, failed one)."""
    matching = [i for i, a in enumerate(stored) if a.get("transition_id") == transition_id]
    pending = [i for i in matching if stored[i].get("outcome") == CLAIMED]
    latest = pending or matching
    return latest[-1] if latest else None


def actions(dynamodb: DynamoDBClient, table: str, cluster_id: str) -> list[dict[str, Any]]:
    """Every action stored for the cluster, oldest first (consistent read; [] when none)."""
    item = _get(dynamodb, table, CLUSTER_PREFIX + cluster_id) or {}
    return [load_value(raw) for raw in item.get("actions", {}).get("L", [])]


def last_action_at(dynamodb: DynamoDBClient, table: str, cluster_id: str) -> datetime | None:
    """When the cluster's latest action was claimed (consistent read), or None."""
    item = _get(dynamodb, table, CLUSTER_PREFIX + cluster_id) or {}
    last = _number(item.get("last_action_at"))
    return datetime.fromtimestamp(last, UTC) if last is not None else None


def pending_action(dynamodb: DynamoDBClient, table: str, cluster_id: str, transition_id: str) -> dict[str, Any] | None:
    """The stored action of `transition_id` if it is still `claimed`: its invocation claimed it and died before it
    recorded the EMR call's outcome (the call may or may not have happened). None otherwise."""
    stored = actions(dynamodb, table, cluster_id)
    index = _claimed_index(stored, transition_id)
    return stored[index] if index is not None and stored[index].get("outcome") == CLAIMED else None


def transition_seen(dynamodb: DynamoDBClient, table: str, transition_id: str) -> bool:
    """True when `transition_id` was already claimed (consistent read)."""
    return _get(dynamodb, table, TRANSITION_PREFIX + transition_id) is not None


def _get(dynamodb: DynamoDBClient, table: str, key: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = dynamodb.get_item(TableName=table, Key={"id": {"S": key}}, ConsistentRead=True).get(
        "Item"
    )
    return item


def _seconds(stamp: float) -> str:
    return f"{stamp:.3f}"


def _number(raw: Any) -> float | None:
    if isinstance(raw, Mapping) and "N" in raw:
        return float(raw["N"])
    return None
