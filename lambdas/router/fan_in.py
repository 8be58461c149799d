"""Fan-in state of pipelines run `after` others: which upstream runs a downstream run is waiting for, kept in the
router's DynamoDB table (the object claims' table) so that concurrent and redelivered upstream events start each
downstream run exactly once.

The rule (docs/operations/dependencies.md). A downstream pipeline with `after: [A1, ..., An]` collects SUCCEEDED
upstream runs in *groups*:

- an upstream run that carries a logical date joins the group of that date; the date's run starts once every
  upstream has a SUCCEEDED run of that date, and only once (later runs of that date start nothing);
- an upstream run without one joins the *open group*, which holds the newest SUCCEEDED run (by start time) of each
  upstream not consumed yet; when every upstream has one, the downstream run starts over exactly those runs and the
  open group starts empty again.

The downstream run's id is derived from the upstream run set (`names.run_id_for`), so its StartExecution is
idempotent. Items (key `id`, TTL attribute `expiration`):

- `autopilot-router.fan-in#<downstream>#<group>`: the group (`open`, or `ds=<logical date>`): `runs` by upstream
  pipeline, a `version` every write checks and bumps (optimistic locking), and for a date group the run it `started`;
- `autopilot-router.fan-in-run#<sha256 of downstream, upstream and run id>`: that an upstream run's event was
  handled, and when it completed its group, the downstream run it started (`start`), so a redelivered event resumes a
  start its invocation never finished instead of recording the run again.

A group write and the run's marker are one transaction (TransactWriteItems): either both land or neither, and a
writer that lost a race reads the group again and retries.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from autopilot_common.dynamo import TransactionCancelled, dump_item, load_item, transact
from autopilot_common.names import run_id_for
from autopilot_common.run_events import UpstreamRun

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient

# Stable DynamoDB key prefixes, as the object claims' (claims.CLAIM_KEY_PREFIX): refactoring never orphans state.
GROUP_KEY_PREFIX = "autopilot-router.fan-in"
MARKER_KEY_PREFIX = "autopilot-router.fan-in-run"
OPEN_GROUP = "open"
_ATTEMPTS = 10


@dataclass(frozen=True)
class UpstreamRunEnd:
    """A SUCCEEDED upstream run, as its run event tells it."""

    pipeline: str
    run_id: str
    ledger_uri: str
    outputs: str  # the run's output folder, s3://<outputs>/<prefix>/run_id=<run id>/
    started_at: str
    logical_date: str | None = None

    def lineage(self) -> UpstreamRun:
        return UpstreamRun(pipeline=self.pipeline, run_id=self.run_id, ledger_uri=self.ledger_uri)


@dataclass(frozen=True)
class DownstreamStart:
    """A downstream run to start: its id (from the upstream run set), the runs (in `after` order), its logical date."""

    run_id: str
    runs: list[UpstreamRunEnd]
    logical_date: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DownstreamStart:
        body = json.loads(text)
        return cls(body["run_id"], [UpstreamRunEnd(**r) for r in body["runs"]], body.get("logical_date"))


@dataclass(frozen=True)
class GroupState:
    """A group as written: its upstream runs by pipeline, and for a date group the downstream run it started."""

    runs: dict[str, UpstreamRunEnd]
    started: str | None = None


Outcome = Literal["started", "resumed", "waiting", "duplicate", "superseded", "late"]


@dataclass
class Recorded:
    """What recording an upstream run did: `started` (it completed its group: start `start`), `resumed` (a
    redelivery of the event that completed its group: start `start` again, idempotently), `waiting` (recorded; other
    upstreams missing: `missing`), `duplicate` (the event was handled before), `superseded` (a newer run of that
    upstream is in the open group already) or `late` (its date's run started already: `start_run_id`)."""

    outcome: Outcome
    group: str
    start: DownstreamStart | None = None
    missing: list[str] = field(default_factory=list)
    start_run_id: str | None = None

    @property
    def start_run(self) -> str:
        """The id of the downstream run this outcome starts (`started`, `resumed`)."""
        if self.start is None:
            raise ValueError(f"a {self.outcome!r} outcome starts no run")
        return self.start.run_id


def group_of(logical_date: str | None) -> str:
    """The group of an upstream run: `ds=<logical date>`, or the open group."""
    return f"ds={logical_date}" if logical_date else OPEN_GROUP


def downstream_run_id(downstream: str, runs: Sequence[UpstreamRunEnd]) -> str:
    """The downstream run's id: `<downstream>-<24 hex>` of the upstream run set (same set, same run)."""
    return run_id_for(downstream, [f"upstream\x00{r.pipeline}\x00{r.run_id}" for r in runs])


@dataclass
class FanInStore:
    """Fan-in groups and run markers in the router's `table` (see the module docstring); markers and date groups
    expire after `ttl_seconds` (the claims' TTL)."""

    dynamodb: DynamoDBClient
    table: str
    ttl_seconds: int
    clock: Callable[[], float] = time.time

    def record_success(self, downstream: str, after: Sequence[str], run: UpstreamRunEnd) -> Recorded:
        """Record a SUCCEEDED upstream run for `downstream` (which runs after `after`); see `Recorded`."""
        group = group_of(run.logical_date)
        for _ in range(_ATTEMPTS):
            marker = self._get(self._marker_id(downstream, run.pipeline, run.run_id))
            if marker is not None:
                if "start" in marker:
                    return Recorded("resumed", group, start=DownstreamStart.from_json(str(marker["start"])))
                return Recorded("duplicate", group)
            current = self._get(self._group_id(downstream, group))
            version = int(current["version"]) if current else 0
            runs = {p: UpstreamRunEnd(**r) for p, r in (current or {}).get("runs", {}).items()}
            if current is not None and current.get("started"):
                outcome: Recorded = Recorded("late", group, start_run_id=str(current["started"]))
                new_group = None
            elif run.pipeline in runs and runs[run.pipeline].started_at > run.started_at:
                outcome, new_group = Recorded("superseded", group), None
            else:
                runs[run.pipeline] = run
                missing = [p for p in after if p not in runs]
                if missing:
                    outcome = Recorded("waiting", group, missing=missing)
                    new_group = GroupState(runs)
                else:
                    ordered = [runs[p] for p in after]
                    start = DownstreamStart(downstream_run_id(downstream, ordered), ordered, run.logical_date)
                    outcome = Recorded("started", group, start=start)
                    # The open group starts again empty; a date group keeps its runs and the run it started.
                    new_group = GroupState({}) if group == OPEN_GROUP else GroupState(runs, start.run_id)
            try:
                self._write(downstream, group, version, new_group, run, outcome.start)
            except TransactionCancelled:
                continue  # another writer changed the group (or handled this event) first: read it again
            return outcome
        raise RuntimeError(f"fan-in group {group!r} of {downstream!r} kept changing; the event returns to the queue")

    def waiting_runs(self, downstream: str, logical_date: str | None) -> tuple[list[UpstreamRunEnd], str | None]:
        """(the SUCCEEDED upstream runs the group of `logical_date` holds, the run it started or None)."""
        current = self._get(self._group_id(downstream, group_of(logical_date))) or {}
        runs = [UpstreamRunEnd(**r) for r in current.get("runs", {}).values()]
        started = current.get("started")
        return sorted(runs, key=lambda r: r.pipeline), str(started) if started else None

    def _write(
        self,
        downstream: str,
        group: str,
        version: int,
        new_group: GroupState | None,
        run: UpstreamRunEnd,
        start: DownstreamStart | None,
    ) -> None:
        """The run's marker (only if absent) and, unless None, the group's new state (only if still at `version`)."""
        now = int(self.clock())
        marker: dict[str, Any] = {
            "id": self._marker_id(downstream, run.pipeline, run.run_id),
            "downstream": downstream,
            "upstream": run.pipeline,
            "run_id": run.run_id,
            "group": group,
            "expiration": now + self.ttl_seconds,
        }
        if start is not None:
            marker["start"] = start.to_json()
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": dump_item(marker),
                    "ConditionExpression": "attribute_not_exists(id)",
                }
            }
        ]
        if new_group is not None:
            body: dict[str, Any] = {
                "id": self._group_id(downstream, group),
                "version": version + 1,
                "runs": {p: asdict(r) for p, r in new_group.runs.items()},
            }
            if new_group.started:
                body["started"] = new_group.started
            if group != OPEN_GROUP:  # a date's group is done with once its run started; the open group lives on
                body["expiration"] = now + self.ttl_seconds
            condition = "attribute_not_exists(id)" if version == 0 else "version = :version"
            put: dict[str, Any] = {"TableName": self.table, "Item": dump_item(body), "ConditionExpression": condition}
            if version:
                put["ExpressionAttributeValues"] = {":version": {"N": str(version)}}
            items.append({"Put": put})
        transact(self.dynamodb, items)

    def _get(self, item_id: str) -> dict[str, Any] | None:
        response = self.dynamodb.get_item(TableName=self.table, Key={"id": {"S": item_id}}, ConsistentRead=True)
        item = response.get("Item")
        return load_item(item) if item else None

    @staticmethod
    def _group_id(downstream: str, group: str) -> str:
        return f"{GROUP_KEY_PREFIX}#{downstream}#{group}"

    @staticmethod
    def _marker_id(downstream: str, upstream: str, run_id: str) -> str:
        digest = hashlib.sha256(f"{downstream}\x00{upstream}\x00{run_id}".encode()).hexdigest()
        return f"{MARKER_KEY_PREFIX}#{digest}"
