"""Admission control: concurrency and budget caps per pipeline and per deployment, with a FIFO queue.

A run asks for a slot in its workflow's `AcquireRunSlot` state (`lambda:invoke.waitForTaskToken`) and
gives it back in `ReleaseRunSlot` (or the cleanup Lambda does, for aborted and timed-out executions).
A run over a cap waits, in order of arrival, and is admitted when capacity frees; none is dropped.
Everything is race-free under any number of concurrent invocations: every change is one conditional
DynamoDB transaction, never list-then-act.

The table (`<prefix>-admission`, keys `pk`/`sk`, strings) holds three kinds of items::

    pk "LINE"  sk "CAP#deployment" | "CAP#pipeline#<name>"  runs, clusters, vcpus held by admitted runs
    pk "LINE"  sk "QUEUE#<arrival>\\x1f<key>\\x1f<run_id>" a waiting run: token, pipeline, reservation, queued_at
    pk "RUN"   sk "<run_id>"                               state QUEUED (queue_sk) or ADMITTED (the holder:
                                                           reservation and the counters it charged)

Counters and queue share a partition, so one consistent Query shows a dispatcher both what is held and
who waits, in arrival order: it attempts only the admissions that fit, and the conditions decide.

Admission of a queued run is one transaction: add its reservation to every counter whose cap applies,
each conditioned on staying within the cap; turn its RUN item from QUEUED to ADMITTED; delete its queue
item (which must still exist). Then SendTaskSuccess(token). Release is one transaction too: delete the
ADMITTED RUN item and subtract what it charged (so releasing twice frees once), then dispatch.

Caps arrive as JSON in the environment (`ADMISSION_CAPS`, see `Caps.from_env`)::

    {"deployment": {"runs": 10, "clusters": null, "vcpus": 512},
     "pipelines": {"sales-burst": {"runs": 2, "clusters": null, "vcpus": null}}}

A run no cap applies to (none of its scopes caps a dimension it reserves) is admitted at once without
touching the table: it holds nothing, so releasing it is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from autopilot_common.dynamo import TransactionCancelled, dump_item, error_code, load_item, transact
from autopilot_common.ledger import iso, write_entry
from autopilot_common.settings import Environment

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient, S3Client, SFNClient

CAPS_ENV = "ADMISSION_CAPS"
TABLE_ENV = "ADMISSION_TABLE"
LEDGER_BUCKET_ENV = "LEDGER_BUCKET"
DIMENSIONS = ("runs", "clusters", "vcpus")
DEPLOYMENT = "deployment"
QUEUED, ADMITTED = "QUEUED", "ADMITTED"
# SendTaskSuccess/SendTaskFailure errors meaning the waiting task is gone (timed out, aborted, finished).
TOKEN_GONE = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}
RESERVATION_EXCEEDS_CAP = "ReservationExceedsCap"
LINE, CAP_PREFIX, QUEUE_PREFIX = "LINE", "CAP#", "QUEUE#"
_SEP = "\x1f"  # sorts below every printable character: `a` before `a/b` in the queue
_MAX_KEY_BYTES = 512  # DynamoDB sort keys are at most 1024 bytes
_TRANSACTION_ATTEMPTS = 12

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- caps and reservations


@dataclass(frozen=True)
class Limit:
    """Caps of one scope (the deployment or one pipeline); None means unlimited."""

    runs: int | None = None
    clusters: int | None = None
    vcpus: int | None = None

    def cap(self, dimension: str) -> int | None:
        value: int | None = getattr(self, dimension)
        return value

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Limit:
        raw = raw or {}
        return cls(**{d: None if raw.get(d) is None else int(raw[d]) for d in DIMENSIONS})


@dataclass(frozen=True)
class Reservation:
    """What one run holds while admitted: 1 run, 1 cluster when it creates one, its vCPUs."""

    runs: int = 1
    clusters: int = 0
    vcpus: int = 0

    def amount(self, dimension: str) -> int:
        value: int = getattr(self, dimension)
        return value

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Reservation:
        raw = raw or {}
        return cls(**{d: int(raw.get(d, 1 if d == "runs" else 0)) for d in DIMENSIONS})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Scope:
    """A counter a run is charged to: `deployment` or `pipeline#<name>`, with its caps."""

    key: str
    limit: Limit


@dataclass(frozen=True)
class Caps:
    """The caps of a deployment and of its pipelines (pipelines not listed are uncapped)."""

    deployment: Limit = field(default_factory=Limit)
    pipelines: Mapping[str, Limit] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> Caps:
        raw = json.loads(text or "{}")
        return cls(
            deployment=Limit.from_json(raw.get(DEPLOYMENT)),
            pipelines={name: Limit.from_json(v) for name, v in (raw.get("pipelines") or {}).items()},
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Caps:
        """From `ADMISSION_CAPS` (JSON, see the module docstring); missing means no caps at all."""
        try:
            return cls.from_json(env.get(CAPS_ENV, "{}"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise RuntimeError(f"{CAPS_ENV} is not valid caps JSON: {exc}") from exc

    def to_json(self) -> str:
        body = {DEPLOYMENT: asdict(self.deployment), "pipelines": {n: asdict(v) for n, v in self.pipelines.items()}}
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    def scopes(self, pipeline: str, reservation: Reservation) -> list[Scope]:
        """The counters a run of `pipeline` is charged to: those capping a dimension the run reserves."""
        candidates = [Scope(DEPLOYMENT, self.deployment), Scope(pipeline_scope(pipeline), self.pipeline(pipeline))]
        return [
            s for s in candidates if any(s.limit.cap(d) is not None and reservation.amount(d) > 0 for d in DIMENSIONS)
        ]

    def pipeline(self, name: str) -> Limit:
        return self.pipelines.get(name) or Limit()


@dataclass(frozen=True)
class AdmissionSettings:
    """The admission function's environment: `ADMISSION_TABLE`, `ADMISSION_CAPS` (caps JSON) and optional
    `LEDGER_BUCKET` (where QUEUED ledger entries go)."""

    table: str
    caps: Caps
    ledger_bucket: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdmissionSettings:
        read = Environment(env)
        return cls(
            table=read.required(TABLE_ENV, "the DynamoDB table that holds run slots and the queue"),
            caps=Caps.from_env(env),
            ledger_bucket=read.optional(LEDGER_BUCKET_ENV),
        )


def pipeline_scope(pipeline: str) -> str:
    return f"pipeline#{pipeline}"


def oversized(scopes: Sequence[Scope], reservation: Reservation) -> list[str]:
    """`<scope>.<dimension> (<need> > <cap>)` for each cap a single run exceeds on its own (it could never start)."""
    out = []
    for scope in scopes:
        for d in DIMENSIONS:
            cap = scope.limit.cap(d)
            if cap is not None and reservation.amount(d) > cap:
                out.append(f"{scope.key}.{d} ({reservation.amount(d)} > {cap})")
    return out


# --------------------------------------------------------------------------- arrival order


def arrival_of(trigger: Mapping[str, Any] | None, execution_start: str) -> dict[str, str]:
    """A run's place in line: S3 runs by the first object's event time and key, console runs by their start.

    Returns `{"at": <ISO UTC, microseconds>, "key": <object key or "">}`; the run id breaks remaining ties.
    """
    trigger = trigger or {}
    event_time, key = trigger.get("event_time"), trigger.get("first_key")
    moment = _parse_time(event_time) if isinstance(event_time, str) else None
    if moment is None:
        moment, key = _parse_time(execution_start) or utcnow(), ""
    return {"at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "key": key if isinstance(key, str) else ""}


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def queue_sort_key(arrival: Mapping[str, Any], run_id: str) -> str:
    """The queue item's sort key: arrival time, then object key (truncated to fit), then run id."""
    key = str(arrival.get("key", "")).encode("utf-8")[:_MAX_KEY_BYTES].decode("utf-8", errors="ignore")
    return f"{arrival.get('at', '')}{_SEP}{key}{_SEP}{run_id}"


def _queue_sk(arrival: Mapping[str, Any], run_id: str) -> str:
    return QUEUE_PREFIX + queue_sort_key(arrival, run_id)


# --------------------------------------------------------------------------- requests and outcomes


@dataclass(frozen=True)
class AcquireRequest:
    """The `AcquireRunSlot` payload."""

    token: str
    run_id: str
    pipeline: str
    arrival: Mapping[str, Any]
    reservation: Reservation
    execution_arn: str = ""
    ledger_key: str | None = None
    ledger: Mapping[str, Any] | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> AcquireRequest:
        try:
            return cls(
                token=str(event["token"]),
                run_id=str(event["run_id"]),
                pipeline=str(event["pipeline"]),
                arrival=dict(event.get("arrival") or {}),
                reservation=Reservation.from_json(event.get("reservation")),
                execution_arn=str(event.get("execution_arn", "")),
                ledger_key=event.get("ledger_key"),
                ledger=event.get("ledger"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"acquire request is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class AcquireOutcome:
    """What `acquire` did: ADMITTED (now or already), QUEUED (with its position) or REJECTED."""

    state: str
    position: int | None = None
    admitted: tuple[str, ...] = ()  # every run this call's dispatch admitted


@dataclass(frozen=True)
class _QueueEntry:
    sk: str
    run_id: str
    pipeline: str
    token: str
    reservation: Reservation
    queued_at: str

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> _QueueEntry:
        return cls(
            sk=item["sk"],
            run_id=item["run_id"],
            pipeline=item["pipeline"],
            token=item["token"],
            reservation=Reservation.from_json(item.get("reservation")),
            queued_at=item.get("queued_at", ""),
        )


# --------------------------------------------------------------------------- public API


def acquire(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    s3: S3Client,
    table: str,
    caps: Caps,
    request: AcquireRequest,
    *,
    ledger_bucket: str | None = None,
    clock: Clock = utcnow,
) -> AcquireOutcome:
    """Admit the run now (SendTaskSuccess) or queue it (QUEUED ledger entry); the workflow waits on the token.

    Idempotent: a retried acquire of a run that is already queued refreshes its token; of a run already
    admitted, answers the new token at once.
    """
    now = clock()
    scopes = caps.scopes(request.pipeline, request.reservation)
    if not scopes:
        _answer(sfn, request.token, queued_at=now, admitted_at=now, waited=False)
        return AcquireOutcome(ADMITTED)
    too_big = oversized(scopes, request.reservation)
    if too_big:
        _fail_task(sfn, request.token, RESERVATION_EXCEEDS_CAP, f"one run exceeds {', '.join(too_big)}")
        return AcquireOutcome("REJECTED")
    if enqueue(ddb, table, request, now) == ADMITTED:
        held = _get(ddb, table, "RUN", request.run_id) or {}
        queued_at = _parse_time(str(held.get("queued_at", ""))) or now
        _answer(sfn, request.token, queued_at=queued_at, admitted_at=now, waited=False)
        return AcquireOutcome(ADMITTED)
    admitted, positions = _dispatch(ddb, sfn, table, caps, clock=clock, acquiring=request.run_id)
    if request.run_id in admitted:
        return AcquireOutcome(ADMITTED, admitted=tuple(admitted))
    position = positions.get(request.run_id)
    if position is None:  # beyond what the dispatch read, or admitted meanwhile by a concurrent dispatch
        position = queue_position(ddb, table, request.pipeline, _queue_sk(request.arrival, request.run_id))
        if position is None:
            return AcquireOutcome(ADMITTED, admitted=tuple(admitted))
    if ledger_bucket and request.ledger_key and request.ledger is not None:
        write_queued_ledger(s3, ledger_bucket, request.ledger_key, request.ledger, now, position)
    return AcquireOutcome(QUEUED, position=position, admitted=tuple(admitted))


def enqueue(ddb: DynamoDBClient, table: str, request: AcquireRequest, now: datetime) -> str:
    """Put the run in the queue (QUEUED); returns ADMITTED instead when the run already holds a slot."""
    sk = _queue_sk(request.arrival, request.run_id)
    common = {
        "run_id": request.run_id,
        "pipeline": request.pipeline,
        "reservation": request.reservation.as_dict(),
        "queued_at": iso(now),
        "execution_arn": request.execution_arn,
    }
    run_item = {"pk": "RUN", "sk": request.run_id, "state": QUEUED, "queue_sk": sk, **common}
    queue_item = {"pk": LINE, "sk": sk, "token": request.token, **common}
    try:
        transact(
            ddb,
            [
                {
                    "Put": {
                        "TableName": table,
                        "Item": dump_item(run_item),
                        "ConditionExpression": "attribute_not_exists(pk) OR #state = :queued",
                        "ExpressionAttributeNames": {"#state": "state"},
                        "ExpressionAttributeValues": dump_item({":queued": QUEUED}),
                    }
                },
                {"Put": {"TableName": table, "Item": dump_item(queue_item)}},
            ],
        )
    except TransactionCancelled:
        return ADMITTED
    return QUEUED


def dispatch(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    table: str,
    caps: Caps,
    *,
    clock: Clock = utcnow,
    acquiring: str | None = None,
) -> list[str]:
    """Admit queued runs in arrival order while caps allow; returns the run ids admitted.

    Strict FIFO per pipeline (a pipeline's head over its cap holds back the rest of that pipeline) and, for
    the deployment's caps, FIFO per dimension (a head waiting for deployment vCPUs holds back every later
    run that needs vCPUs; one waiting for a run slot holds back everything).
    """
    return _dispatch(ddb, sfn, table, caps, clock=clock, acquiring=acquiring)[0]


def _dispatch(
    ddb: DynamoDBClient, sfn: SFNClient, table: str, caps: Caps, *, clock: Clock, acquiring: str | None
) -> tuple[list[str], dict[str, int]]:
    """`dispatch`, also returning the place in line of each run it saw still waiting (per pipeline, 1-based).

    Reads counters and queue in one consistent Query and attempts only the admissions that fit what it read;
    the transaction's conditions still decide (a stale read costs a failed attempt, or leaves the admission
    to a later dispatch, never a cap). Every release dispatches after its own commit, so freed capacity is
    never overlooked.
    """
    admitted: list[str] = []
    positions: dict[str, int] = {}
    waiting: dict[str, int] = {}
    held: dict[str, dict[str, int]] = {}
    blocked_pipelines: set[str] = set()
    blocked_dimensions: set[str] = set()
    start: dict[str, Any] | None = None
    while True:
        kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
        page = ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :line",
            ExpressionAttributeValues=dump_item({":line": LINE}),
            ConsistentRead=True,
            Limit=100,
            **kwargs,
        )
        for raw in page.get("Items", []):
            item = load_item(raw)
            if item["sk"].startswith(CAP_PREFIX):
                held[item["sk"].removeprefix(CAP_PREFIX)] = {d: int(item.get(d, 0)) for d in DIMENSIONS}
                continue
            entry = _QueueEntry.from_item(item)
            result = _must_wait(entry, caps, held, blocked_pipelines, blocked_dimensions)
            if result is None:
                result = _admit(ddb, sfn, table, caps, entry, clock, acquiring)
            if result == ADMITTED:
                admitted.append(entry.run_id)
                _hold(held, caps.scopes(entry.pipeline, entry.reservation), entry.reservation)
            elif result != "GONE":
                waiting[entry.pipeline] = positions[entry.run_id] = waiting.get(entry.pipeline, 0) + 1
                if result == "PIPELINE_FULL":
                    blocked_pipelines.add(entry.pipeline)
                elif isinstance(result, frozenset):
                    blocked_dimensions |= result
        start = page.get("LastEvaluatedKey")
        if not start or "runs" in blocked_dimensions:  # every run needs a run slot: nothing more can start
            return admitted, positions


def _must_wait(
    entry: _QueueEntry,
    caps: Caps,
    held: Mapping[str, Mapping[str, int]],
    blocked_pipelines: set[str],
    blocked_dimensions: set[str],
) -> str | frozenset[str] | None:
    """Why `entry` keeps waiting, judged from what the dispatch read and did (None: it fits, try it)."""
    if entry.pipeline in blocked_pipelines:
        return "WAITING"
    needs = frozenset(d for d in DIMENSIONS if entry.reservation.amount(d) > 0)
    if needs & blocked_dimensions:
        return "WAITING"
    scopes = caps.scopes(entry.pipeline, entry.reservation)
    if oversized(scopes, entry.reservation):
        return None  # caps shrank under it: `_admit` fails its task rather than let it block the line
    for scope in scopes:
        counts = held.get(scope.key, {})
        over = frozenset(
            d
            for d in needs
            if (cap := scope.limit.cap(d)) is not None and counts.get(d, 0) + entry.reservation.amount(d) > cap
        )
        if over:
            return over if scope.key == DEPLOYMENT else "PIPELINE_FULL"
    return None


def _hold(held: dict[str, dict[str, int]], scopes: Sequence[Scope], reservation: Reservation) -> None:
    for scope in scopes:
        counts = held.setdefault(scope.key, dict.fromkeys(DIMENSIONS, 0))
        for d in DIMENSIONS:
            counts[d] += reservation.amount(d)


def release(
    ddb_client: DynamoDBClient,
    sfn_client: SFNClient,
    table: str,
    run_id: str,
    caps: Caps,
    *,
    pipeline: str | None = None,
    reservation: Reservation | None = None,
) -> bool:
    """Give back what `run_id` holds (or take it out of the queue), then admit whoever can start now.

    Returns True when it freed a slot or removed a queued run, False when the run held nothing (never
    admitted under a cap, or already released): safe to call any number of times, from the workflow's
    `ReleaseRunSlot` or from cleanup after an abort or timeout. `pipeline` and `reservation` (the
    workflow knows them) save a read when the run was admitted under the current caps.
    """
    hint = None
    if pipeline is not None and reservation is not None:
        hint = _charge_key(caps.scopes(pipeline, reservation), reservation), reservation
    freed = _release_run(ddb_client, table, run_id, hint)
    dispatch(ddb_client, sfn_client, table, caps)
    return freed


def queue_position(ddb: DynamoDBClient, table: str, pipeline: str, sk: str) -> int | None:
    """1-based place of the queue item `sk` among its pipeline's waiting runs; None when it is not queued."""
    count, last, start = 0, None, None
    while True:
        kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
        page = ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :line AND sk BETWEEN :first AND :mine",
            FilterExpression="pipeline = :pipeline",
            ProjectionExpression="sk",
            ExpressionAttributeValues=dump_item(
                {":line": LINE, ":first": QUEUE_PREFIX, ":mine": sk, ":pipeline": pipeline}
            ),
            ConsistentRead=True,
            **kwargs,
        )
        keys = [item["sk"]["S"] for item in page.get("Items", [])]
        count, last = count + len(keys), keys[-1] if keys else last
        start = page.get("LastEvaluatedKey")
        if not start:
            return count if last == sk else None


def write_queued_ledger(
    s3: S3Client, bucket: str, key: str, ledger: Mapping[str, Any], queued_at: datetime, position: int | None
) -> bool:
    """The QUEUED ledger entry; never overwrites one the workflow already wrote (S3 `If-None-Match: *`)."""
    body = {**ledger, "state": QUEUED, "admission": {"queued_at": iso(queued_at), "position": position}}
    # False: the run was admitted meanwhile, and its STARTED entry stays.
    return write_entry(s3, bucket, key, body, only_if_absent=True)


def counters(ddb: DynamoDBClient, table: str) -> dict[str, dict[str, int]]:
    """What admitted runs hold, per scope (`deployment`, `pipeline#<name>`)."""
    page = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :line AND begins_with(sk, :cap)",
        ExpressionAttributeValues=dump_item({":line": LINE, ":cap": CAP_PREFIX}),
        ConsistentRead=True,
    )
    out: dict[str, dict[str, int]] = {}
    for raw in page.get("Items", []):
        item = load_item(raw)
        out[item["sk"].removeprefix(CAP_PREFIX)] = {d: int(item.get(d, 0)) for d in DIMENSIONS}
    return out


def runs(ddb: DynamoDBClient, table: str, state: str | None = None) -> list[dict[str, Any]]:
    """The RUN items (queued and admitted runs), e.g. for a sweeper reconciling against executions."""
    items: list[dict[str, Any]] = []
    start = None
    while True:
        kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
        page = ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :run",
            ExpressionAttributeValues=dump_item({":run": "RUN"}),
            ConsistentRead=True,
            **kwargs,
        )
        items += [item for item in (load_item(raw) for raw in page.get("Items", [])) if state in (None, item["state"])]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


# --------------------------------------------------------------------------- internals


def _admit(
    ddb: DynamoDBClient, sfn: SFNClient, table: str, caps: Caps, entry: _QueueEntry, clock: Clock, acquiring: str | None
) -> str | frozenset[str]:
    """Try to admit one queued run: ADMITTED, GONE (handled elsewhere), PIPELINE_FULL, or the blocked
    deployment dimensions."""
    scopes = caps.scopes(entry.pipeline, entry.reservation)
    too_big = oversized(scopes, entry.reservation)
    if too_big:  # caps changed under a waiting run: it could never start
        if _forget_queued(ddb, table, entry):
            _fail_task(sfn, entry.token, RESERVATION_EXCEEDS_CAP, f"one run exceeds {', '.join(too_big)}")
        return "GONE"
    now = clock()
    items = [_charge(table, scope, entry.reservation) for scope in scopes]
    items.append(
        {
            "Update": {
                "TableName": table,
                "Key": dump_item({"pk": "RUN", "sk": entry.run_id}),
                "UpdateExpression": (
                    "SET #state = :admitted, admitted_at = :now, charged = :charged, charge = :charge REMOVE queue_sk"
                ),
                "ConditionExpression": "#state = :queued",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": dump_item(
                    {
                        ":admitted": ADMITTED,
                        ":queued": QUEUED,
                        ":now": iso(now),
                        ":charged": [s.key for s in scopes],
                        ":charge": _charge_key(scopes, entry.reservation),
                    }
                ),
            }
        }
    )
    items.append(
        {
            "Delete": {
                "TableName": table,
                "Key": dump_item({"pk": LINE, "sk": entry.sk}),
                "ConditionExpression": "attribute_exists(pk)",
            }
        }
    )
    try:
        transact(ddb, items)
    except TransactionCancelled as cancelled:
        return _why_not(cancelled, scopes, entry.reservation)
    queued_at = _parse_time(entry.queued_at) or now
    try:
        delivered = _answer(sfn, entry.token, queued_at=queued_at, admitted_at=now, waited=entry.run_id != acquiring)
    except ClientError:
        _unadmit(ddb, table, entry, scopes)  # back in line; the next dispatch tries again
        raise
    if not delivered:  # the execution stopped waiting (aborted, timed out): give the slot back
        _release_run(ddb, table, entry.run_id)
        return "GONE"
    return ADMITTED


def _why_not(
    cancelled: TransactionCancelled, scopes: Sequence[Scope], reservation: Reservation
) -> str | frozenset[str]:
    own = len(scopes)  # items after the counters: the RUN update and the queue delete
    if cancelled.failed & {own, own + 1}:
        return "GONE"
    for index in sorted(cancelled.failed):
        if scopes[index].key == DEPLOYMENT:
            held = cancelled.old_item(index) or {}
            dims = frozenset(
                d
                for d in DIMENSIONS
                if (cap := scopes[index].limit.cap(d)) is not None
                and reservation.amount(d) > 0
                and int(held.get(d, 0)) + reservation.amount(d) > cap
            )
            return dims or frozenset(d for d in DIMENSIONS if reservation.amount(d) > 0)
    return "PIPELINE_FULL"


def _charge_key(scopes: Sequence[Scope], reservation: Reservation) -> str:
    """`deployment,pipeline#p|1,0,64`: what an admitted run holds, comparable in a condition."""
    return ",".join(s.key for s in scopes) + "|" + ",".join(str(reservation.amount(d)) for d in DIMENSIONS)


def _charge(table: str, scope: Scope, reservation: Reservation) -> dict[str, Any]:
    """Add the reservation to a scope's counter, conditioned on every capped dimension staying within its cap."""
    names = {f"#{d}": d for d in DIMENSIONS}
    values: dict[str, Any] = {f":{d}": reservation.amount(d) for d in DIMENSIONS}
    conditions = []
    for d in DIMENSIONS:
        cap = scope.limit.cap(d)
        if cap is not None and reservation.amount(d) > 0:
            values[f":room_{d}"] = cap - reservation.amount(d)
            conditions.append(f"(attribute_not_exists(#{d}) OR #{d} <= :room_{d})")
    update: dict[str, Any] = {
        "TableName": table,
        "Key": dump_item({"pk": LINE, "sk": CAP_PREFIX + scope.key}),
        "UpdateExpression": "ADD " + ", ".join(f"#{d} :{d}" for d in DIMENSIONS),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": dump_item(values),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    if conditions:
        update["ConditionExpression"] = " AND ".join(conditions)
    return {"Update": update}


def _uncharge(table: str, scope_key: str, reservation: Reservation) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table,
            "Key": dump_item({"pk": LINE, "sk": CAP_PREFIX + scope_key}),
            "UpdateExpression": "ADD " + ", ".join(f"#{d} :{d}" for d in DIMENSIONS),
            "ExpressionAttributeNames": {f"#{d}": d for d in DIMENSIONS},
            "ExpressionAttributeValues": dump_item({f":{d}": -reservation.amount(d) for d in DIMENSIONS}),
        }
    }


def _release_run(ddb: DynamoDBClient, table: str, run_id: str, hint: tuple[str, Reservation] | None = None) -> bool:
    """Delete the run's RUN item and undo what it holds (counters, or its queue item); False when absent.

    With a hint (the charge an admitted run would hold under the current caps), first try the release
    without reading; any other state falls back to read-then-conditionally-delete.
    """
    if hint is not None and hint[0].partition("|")[0]:
        charge, reservation = hint
        admitted_as_hinted = _delete_run_if(
            table, run_id, "#state = :admitted AND charge = :charge", {":admitted": ADMITTED, ":charge": charge}
        )
        undo = [_uncharge(table, key, reservation) for key in charge.partition("|")[0].split(",")]
        try:
            transact(ddb, [admitted_as_hinted, *undo])
        except TransactionCancelled:
            pass  # queued, absent, or charged under other caps: read what it holds
        else:
            return True
    for _ in range(_TRANSACTION_ATTEMPTS):
        item = _get(ddb, table, "RUN", run_id)
        if item is None:
            return False
        state = item.get("state")
        delete_run = _delete_run_if(table, run_id, "#state = :state", {":state": state})
        if state == ADMITTED:
            reservation = Reservation.from_json(item.get("reservation"))
            undo = [_uncharge(table, key, reservation) for key in item.get("charged", [])]
        else:
            undo = [{"Delete": {"TableName": table, "Key": dump_item({"pk": LINE, "sk": item["queue_sk"]})}}]
        try:
            transact(ddb, [delete_run, *undo])
        except TransactionCancelled:
            continue  # admitted or released meanwhile: look again
        return True
    raise RuntimeError(f"could not release run {run_id}: its admission state kept changing")


def _delete_run_if(table: str, run_id: str, condition: str, values: dict[str, Any]) -> dict[str, Any]:
    """A transaction item deleting the run's RUN item on `condition` (`#state` names its state attribute)."""
    return {
        "Delete": {
            "TableName": table,
            "Key": dump_item({"pk": "RUN", "sk": run_id}),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": dump_item(values),
        }
    }


def _forget_queued(ddb: DynamoDBClient, table: str, entry: _QueueEntry) -> bool:
    try:
        transact(
            ddb,
            [
                {
                    "Delete": {
                        "TableName": table,
                        "Key": dump_item({"pk": LINE, "sk": entry.sk}),
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
                {"Delete": {"TableName": table, "Key": dump_item({"pk": "RUN", "sk": entry.run_id})}},
            ],
        )
    except TransactionCancelled:
        return False
    return True


def _unadmit(ddb: DynamoDBClient, table: str, entry: _QueueEntry, scopes: Sequence[Scope]) -> None:
    """Undo an admission whose SendTaskSuccess failed for another reason than a gone task: back in the queue."""
    queue_item = {
        "pk": LINE,
        "sk": entry.sk,
        "run_id": entry.run_id,
        "pipeline": entry.pipeline,
        "token": entry.token,
        "reservation": entry.reservation.as_dict(),
        "queued_at": entry.queued_at,
    }
    items = [_uncharge(table, scope.key, entry.reservation) for scope in scopes]
    items.append(
        {
            "Update": {
                "TableName": table,
                "Key": dump_item({"pk": "RUN", "sk": entry.run_id}),
                "UpdateExpression": "SET #state = :queued, queue_sk = :sk REMOVE admitted_at, charged, charge",
                "ConditionExpression": "#state = :admitted",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": dump_item({":queued": QUEUED, ":admitted": ADMITTED, ":sk": entry.sk}),
            }
        }
    )
    items.append({"Put": {"TableName": table, "Item": dump_item(queue_item)}})
    try:
        transact(ddb, items)
    except TransactionCancelled:
        pass  # released meanwhile: nothing to undo


def _answer(sfn: SFNClient, token: str, *, queued_at: datetime, admitted_at: datetime, waited: bool) -> bool:
    """SendTaskSuccess with the admission record; False when the waiting task is gone."""
    output = {
        "queued_at": iso(queued_at),
        "admitted_at": iso(admitted_at),
        "queued_seconds": round(max(0.0, (admitted_at - queued_at).total_seconds()), 3),
        "waited": waited,
    }
    try:
        sfn.send_task_success(taskToken=token, output=json.dumps(output))
    except ClientError as exc:
        if error_code(exc) in TOKEN_GONE:
            return False
        raise
    return True


def _fail_task(sfn: SFNClient, token: str, error: str, cause: str) -> None:
    try:
        sfn.send_task_failure(taskToken=token, error=error, cause=cause[:32768])
    except ClientError as exc:
        if error_code(exc) not in TOKEN_GONE:
            raise


def _get(ddb: DynamoDBClient, table: str, pk: str, sk: str) -> dict[str, Any] | None:
    raw = ddb.get_item(TableName=table, Key=dump_item({"pk": pk, "sk": sk}), ConsistentRead=True).get("Item")
    return load_item(raw) if raw else None
