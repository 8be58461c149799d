"""Admission control: concurrency and budget caps per pipeline and per deployment, with a FIFO queue.

A run asks for a slot in its workflow's `AcquireRunSlot` state (`lambda:invoke.waitForTaskToken`) and
gives it back in `ReleaseRunSlot` (or the cleanup Lambda does, for aborted and timed-out executions).
A run over a cap waits, in order of arrival, and is admitted when capacity frees; none is dropped.
Everything is race-free under any number of concurrent invocations: every change is one conditional
DynamoDB transaction, never list-then-act.

The table (`<prefix>-admission`, keys `pk`/`sk`, strings) holds three kinds of items::

    pk "LINE"  sk "CAP#deployment" | "CAP#pipeline#<name>"  runs, clusters, vcpus held by admitted runs
    pk "LINE"  sk "COUNT#<pipeline>"                       queued: how many of the pipeline's runs wait; only while
                                                           some do (deleted at 0: absent means none)
    pk "COUNTED" sk "<pipeline>"                           changes: how many times that count changed (a recount's
                                                           fence; never deleted, so it never comes back equal)
    pk "LINE"  sk "QUEUE#<arrival>\\x1f<key>\\x1f<run_id>" a waiting run: token, pipeline, reservation, queued_at
    pk "RUN"   sk "<run_id>"                               state QUEUED (queue_sk) or ADMITTED (the holder:
                                                           reservation and the counters it charged)
    pk "HELD"  sk "<run_id>"                               an admitted run's slot (execution_arn): what the
                                                           sweeper checks, never the queue
    pk "UPGRADED" sk "LINE"                                the sweeper brought a table an older version wrote
                                                           up to these items (counts, HELD; `runs_to_sweep`)
    pk "SPEND" sk "<run_id>"                               a budgeted run's reservation of the day's spend, from
                                                           admission until the run ends (`record_spend`)
    pk "ESTIMATE" sk "<pipeline>"                          the pipeline's recent recorded costs (the estimate)

Budgets (`max_daily_usd`): a CAP item also holds the spend of each UTC day in an attribute `usd@<yyyy-mm-dd>`:
the recorded costs of runs that ended that day plus the reservations (estimates) of runs admitted that day
and not yet ended. Admission adds the run's estimate, conditioned on the day's spend staying within the
budget (or on nothing having been spent that day, so a run whose estimate alone exceeds the budget runs
once a day rather than never); the run's end (`record_spend`) takes the estimate back and adds the recorded
cost on the day the run ended, or keeps the estimate as spend when the cost is unknown.

Counters and queue share a partition. A dispatcher reads the counts (one Query of the COUNT items: those of the
pipelines with waiting runs), then the CAP items of the deployment and of those pipelines (one BatchGetItem), then
the queue from its head in arrival order, in pages of 1, 2, 4.. items, and stops as soon as every pipeline that
still has waiting runs is blocked by a full cap (known from the counters, often before reading any queue item). So a
decision reads what the pipelines with waiting runs need, whatever the queue's length and however many pipelines are
idle (`make bench` prints items read per admitted run). It attempts only the admissions that fit, and the conditions
decide. An arrival frees nothing: when its pipeline's or the deployment's run slots are all held, its decision reads
those two CAP items and its pipeline's count only (`_decide_arrival`). The COUNT items (and their COUNTED fences)
change in the same transactions as the queue items (enqueue, admission, refusal, release of a queued run, an undone
admission), so they never drift; a count at 0 is deleted conditionally (`_drop_count_if_zero`: by the dispatch that
took the pipeline's last waiting run, else by the next decision that reads it). A table written before counts were
kept is recounted (`recount_waiting`): by a dispatch that finds runs in line while no count says any waits, and by
the sweeper's first tick on it. A table written by the version that kept every count (at 0 too, with its changes on
the COUNT item) needs nothing: the first decision reads those counts once and deletes the ones at 0. A run that
queues reads at most 4 queue items behind it (then the line's head) to tell its place in line.

A CAP item's `usd@<day>` attributes older than `SPEND_TTL` are removed when a dispatch reads them, so CAP items stay
small: every run admitted under a cap passes through the queue, so its scopes' CAP items are read at its admission.

Admission of a queued run is one transaction: add its reservation to every counter whose cap applies,
each conditioned on staying within the cap; turn its RUN item from QUEUED to ADMITTED; delete its queue
item (which must still exist). Then SendTaskSuccess(token). Release is one transaction too: delete the
ADMITTED RUN item and subtract what it charged (so releasing twice frees once), then dispatch.

The deployment's caps arrive as JSON in the environment (`ADMISSION_CAPS`, see `Caps.from_env`); each pipeline's
in the `caps` section of its SSM parameter (`autopilot_common.pipeline_settings`), looked up when a decision needs
them, so the environment stays the same size whatever the number of pipelines::

    ADMISSION_CAPS                      {"deployment": {"runs": 10, "clusters": null, "vcpus": 512, "usd": 100.0}}
    /<deployment>/pipelines/sales-burst {"caps": {"runs": 2, "clusters": null, "vcpus": null, "usd": 5.0,
                                                  "over_budget": "fail"}, ...}

A pipeline without a parameter, or without a `caps` section, is uncapped (as a pipeline left out of the caps was).

A run no cap applies to (none of its scopes caps a dimension it reserves, and no budget) is admitted at once
without touching the table: it holds nothing, so releasing it is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from autopilot_common.dynamo import (
    TransactionCancelled,
    dump_item,
    dump_value,
    error_code,
    get_items,
    load_item,
    transact,
)
from autopilot_common.ledger import iso, write_entry
from autopilot_common.pipeline_settings import CAPS, PipelineSection, PipelineSettingsStore
from autopilot_common.settings import Environment

if TYPE_CHECKING:
    from autopilot_common.clients import DynamoDBClient, S3Client, SFNClient, SNSClient

CAPS_ENV = "ADMISSION_CAPS"
TABLE_ENV = "ADMISSION_TABLE"
LEDGER_BUCKET_ENV = "LEDGER_BUCKET"
TOPIC_ENV = "TOPIC_ARN"
DIMENSIONS = ("runs", "clusters", "vcpus")
DEPLOYMENT = "deployment"
QUEUED, ADMITTED = "QUEUED", "ADMITTED"
# SendTaskSuccess/SendTaskFailure errors meaning the waiting task is gone (timed out, aborted, finished).
TOKEN_GONE = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}
RESERVATION_EXCEEDS_CAP = "ReservationExceedsCap"
BUDGET_EXCEEDED = "BudgetExceeded"
LINE, CAP_PREFIX, COUNT_PREFIX, QUEUE_PREFIX = "LINE", "CAP#", "COUNT#", "QUEUE#"  # CAP# < COUNT# < QUEUE#
QUEUED_COUNT = "queued"  # the COUNT item's attribute: the pipeline's waiting runs (the item exists while some wait)
COUNTED, COUNT_CHANGES = "COUNTED", "changes"  # pk of a pipeline's fence item (sk <pipeline>): its count's changes
HELD = "HELD"  # pk of an admitted run's slot-holder item (sk run_id, execution_arn): what the sweeper checks
UPGRADED = "UPGRADED"  # pk of the item saying the table has this version's counts and HELD items (`runs_to_sweep`)
_FIRST_PAGE, _LAST_PAGE = 1, 100  # queue items read per Query: doubling from the head while runs may start
_LOOKAHEAD = 4  # queue items a newly queued run reads behind it to tell its place in line
SPEND, ESTIMATE = "SPEND", "ESTIMATE"
USD = "usd"  # the budget dimension (dollars of the day's spend), beside DIMENSIONS
WAIT, FAIL = "wait", "fail"  # `limits.over_budget`
RECENT_COSTS = 10  # recorded costs kept per pipeline: the estimate is the largest of them
SPEND_TTL = timedelta(days=35)  # a run that never reports its end (aborted) keeps its estimate as spend
EXPIRES_AT = "expires_at"  # the table's TTL attribute (epoch seconds): only SPEND items carry it
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
    usd: float | None = None  # max_daily_usd: the budget of one UTC day
    over_budget: str = WAIT  # what a run of this pipeline does when a budget is spent: wait or fail

    def cap(self, dimension: str) -> int | None:
        value: int | None = getattr(self, dimension)
        return value

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Limit:
        raw = raw or {}
        over_budget = str(raw.get("over_budget") or WAIT)
        if over_budget not in (WAIT, FAIL):
            raise ValueError(f"over_budget: got {over_budget!r}; expected {WAIT!r} or {FAIL!r}")
        return cls(
            **{d: None if raw.get(d) is None else int(raw[d]) for d in DIMENSIONS},
            usd=None if raw.get(USD) is None else float(raw[USD]),
            over_budget=over_budget,
        )


@dataclass(frozen=True)
class Reservation:
    """What one run holds while admitted: 1 run, 1 cluster when it creates one, its vCPUs."""

    runs: int = 1
    clusters: int = 0
    vcpus: int = 0
    usd: float = 0.0  # the estimated cost charged to the day's spend under a budget

    def amount(self, dimension: str) -> int:
        value: int = getattr(self, dimension)
        return value

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Reservation:
        raw = raw or {}
        return cls(**{d: int(raw.get(d, 1 if d == "runs" else 0)) for d in DIMENSIONS}, usd=dollars(raw.get(USD) or 0))

    def as_dict(self) -> dict[str, int | float]:
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
    def from_env(cls, env: Mapping[str, str], store: PipelineSettingsStore | None = None) -> Caps:
        """From `ADMISSION_CAPS` (JSON, see the module docstring); missing means no caps at all. With `store`, the
        pipelines' caps are looked up in their parameters (`caps` sections), each when first needed."""
        try:
            caps = cls.from_json(env.get(CAPS_ENV, "{}"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise RuntimeError(f"{CAPS_ENV} is not valid caps JSON: {exc}") from exc
        if store is None:
            return caps
        if caps.pipelines:
            raise RuntimeError(f"{CAPS_ENV} lists pipelines; expected the deployment's caps only (theirs are in SSM)")
        return replace(caps, pipelines=PipelineSection(store, CAPS, lambda _name, raw: Limit.from_json(raw)))

    def listed(self) -> Caps:
        """These caps with every pipeline's read now (one listing of the parameters when they are looked up)."""
        return replace(self, pipelines=dict(self.pipelines))

    def to_json(self) -> str:
        body = {DEPLOYMENT: asdict(self.deployment), "pipelines": {n: asdict(v) for n, v in self.pipelines.items()}}
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    def scopes(self, pipeline: str, reservation: Reservation) -> list[Scope]:
        """The counters a run of `pipeline` is charged to: those capping a dimension the run reserves, and
        those with a budget (every run's cost counts, whatever its estimate)."""
        candidates = [Scope(DEPLOYMENT, self.deployment), Scope(pipeline_scope(pipeline), self.pipeline(pipeline))]
        return [
            s
            for s in candidates
            if s.limit.usd is not None
            or any(s.limit.cap(d) is not None and reservation.amount(d) > 0 for d in DIMENSIONS)
        ]

    @property
    def any_budget(self) -> bool:
        """True when any scope has a budget (then runs may wait for a new day: the sweeper's tick dispatches). Caps
        that look pipelines up one by one cannot know without listing them all: True (`listed()` knows)."""
        if self.deployment.usd is not None or isinstance(self.pipelines, PipelineSection):
            return True
        return any(v.usd is not None for v in self.pipelines.values())

    def budgeted(self, pipeline: str) -> bool:
        """True when a budget (the pipeline's or the deployment's) applies to the pipeline's runs."""
        return self.deployment.usd is not None or self.pipeline(pipeline).usd is not None

    def pipeline(self, name: str) -> Limit:
        return self.pipelines.get(name) or Limit()


@dataclass(frozen=True)
class AdmissionSettings:
    """The admission function's environment: `ADMISSION_TABLE`, `ADMISSION_CAPS` (the deployment's caps JSON),
    `DEPLOYMENT` (whose pipelines' parameters hold their caps), optional `PIPELINE_SETTINGS_MAX_AGE_SECONDS` (see
    autopilot_common.pipeline_settings), `LEDGER_BUCKET` (where QUEUED ledger entries go) and `TOPIC_ARN` (where
    budget holds are notified)."""

    table: str
    caps: Caps
    ledger_bucket: str | None
    topic_arn: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], ssm: Callable[[], Any] | None = None) -> AdmissionSettings:
        """`ssm` gives the SSM client on first use (default: a `Clients()` of its own)."""
        read = Environment(env)
        return cls(
            table=read.required(TABLE_ENV, "the DynamoDB table that holds run slots and the queue"),
            caps=Caps.from_env(env, PipelineSettingsStore.from_env(env, ssm)),
            ledger_bucket=read.optional(LEDGER_BUCKET_ENV),
            topic_arn=read.optional(TOPIC_ENV),
        )


def pipeline_scope(pipeline: str) -> str:
    return f"pipeline#{pipeline}"


def dollars(value: Any) -> float:
    """A dollar amount as the tally keeps it: rounded to a millionth (DynamoDB numbers are exact decimals)."""
    return round(float(value), 6)


def spend_attribute(day: date) -> str:
    """The CAP item's attribute holding a scope's spend on `day` (UTC)."""
    return f"{USD}@{day.isoformat()}"


@dataclass(frozen=True)
class OverBudget:
    """Why a run may not start today: `scope`'s spend plus the run's estimate exceeds the scope's budget."""

    scope: str
    budget: float
    spent: float
    estimate: float
    day: str

    def describe(self) -> str:
        return (
            f"{self.scope} has spent ${self.spent:.6f} of its max_daily_usd ${self.budget:.6f} on {self.day} (UTC) "
            f"and this run's estimate is ${self.estimate:.6f}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "max_daily_usd": self.budget,
            "spent_usd": self.spent,
            "estimate_usd": self.estimate,
            "day": self.day,
        }


def over_budget(scope: Scope, spent: float, estimate: float, day: date) -> OverBudget | None:
    """The verdict for one scope: None when the estimate fits (or nothing was spent that day yet)."""
    budget = scope.limit.usd
    if budget is None or spent <= 0 or dollars(spent + estimate) <= budget:
        return None
    return OverBudget(scope.key, budget, dollars(spent), estimate, day.isoformat())


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
    over_budget: OverBudget | None = None  # QUEUED or REJECTED for a budget rather than a slot


@dataclass(frozen=True)
class _QueueEntry:
    """A waiting run as its queue item holds it."""

    sk: str
    run_id: str
    pipeline: str
    token: str
    reservation: Reservation
    queued_at: str
    execution_arn: str = ""

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> _QueueEntry:
        return cls(
            sk=item["sk"],
            run_id=item["run_id"],
            pipeline=item["pipeline"],
            token=item["token"],
            reservation=Reservation.from_json(item.get("reservation")),
            queued_at=item.get("queued_at", ""),
            execution_arn=str(item.get("execution_arn", "")),
        )


@dataclass
class _Dispatched:
    """What one dispatch did: the runs it admitted, each still-waiting run's place in its pipeline's line,
    the waiting runs a budget holds (not a slot) and the runs it refused for a budget (`over_budget: fail`)."""

    admitted: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    over_budget: dict[str, OverBudget] = field(default_factory=dict)
    refused: dict[str, OverBudget] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # each pipeline's count of waiting runs, as read


# A budget hold, for a notification: {run_id, pipeline, execution_arn, action, over_budget, message}.
Notify = Callable[[Mapping[str, Any]], None]


def budget_notifier(sns: SNSClient, topic_arn: str | None) -> Notify | None:
    """Publish a budget hold to the notifications topic (attributes `pipeline`, `state` QUEUED, like the run
    notifications); None without a topic."""
    if not topic_arn:
        return None

    def publish(note: Mapping[str, Any]) -> None:
        pipeline = str(note.get("pipeline", ""))
        sns.publish(
            TopicArn=topic_arn,
            Subject=f"EMR Autopilot run waits for its budget: {pipeline}"[:100],
            Message=json.dumps(dict(note), indent=2, default=str),
            MessageAttributes={
                "pipeline": {"DataType": "String", "StringValue": pipeline or "unknown"},
                "state": {"DataType": "String", "StringValue": QUEUED},
            },
        )

    return publish


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
    notify: Notify | None = None,
) -> AcquireOutcome:
    """Admit the run now (SendTaskSuccess) or queue it (QUEUED ledger entry); the workflow waits on the token.

    Under a budget the run reserves its estimate (`estimate_usd`); a run over a budget waits (QUEUED, the
    ledger says it waits for the budget) or, with `over_budget: fail`, fails with `BudgetExceeded`.

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
    if caps.budgeted(request.pipeline):
        estimate = estimate_usd(ddb, table, request.pipeline, request.reservation.usd)
        request = replace(request, reservation=replace(request.reservation, usd=estimate))
    if enqueue(ddb, table, request, now) == ADMITTED:
        held = _get(ddb, table, "RUN", request.run_id) or {}
        queued_at = _parse_time(str(held.get("queued_at", ""))) or now
        _answer(sfn, request.token, queued_at=queued_at, admitted_at=now, waited=False, budget=held.get("budget"))
        return AcquireOutcome(ADMITTED)
    done = _decide_arrival(ddb, sfn, table, caps, request, clock=clock, notify=notify)
    if request.run_id in done.admitted:
        return AcquireOutcome(ADMITTED, admitted=tuple(done.admitted))
    if request.run_id in done.refused:
        return AcquireOutcome("REJECTED", admitted=tuple(done.admitted), over_budget=done.refused[request.run_id])
    position = done.positions.get(request.run_id)
    if position is None:  # beyond what the dispatch read
        sk = _queue_sk(request.arrival, request.run_id)
        position = _place_in_line(ddb, table, request.pipeline, sk, done.waiting.get(request.pipeline, 1))
    verdict = done.over_budget.get(request.run_id)
    if ledger_bucket and request.ledger_key and request.ledger is not None:
        write_queued_ledger(s3, ledger_bucket, request.ledger_key, request.ledger, now, position, verdict)
    return AcquireOutcome(QUEUED, position=position, admitted=tuple(done.admitted), over_budget=verdict)


def _decide_arrival(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    table: str,
    caps: Caps,
    request: AcquireRequest,
    *,
    clock: Clock,
    notify: Notify | None,
) -> _Dispatched:
    """The decision after the run joined the line. An arrival frees nothing, so when a full run cap (its pipeline's
    or the deployment's: every run reserves a run slot) keeps the run waiting, no other run can start either: the
    decision reads those two CAP items and the pipeline's count only (the release that frees the slot dispatches).
    Else it is a dispatch, which reads no CAP item twice."""
    held: dict[str, dict[str, float]] = {}
    _read_charges(ddb, table, held, [DEPLOYMENT, pipeline_scope(request.pipeline)], clock().date())
    blocked_pipelines: set[str] = set()
    blocked_dimensions: set[str] = set()
    _block_if_full(caps, request.pipeline, held, blocked_pipelines, blocked_dimensions)
    if blocked_pipelines or "runs" in blocked_dimensions:
        return _Dispatched(waiting={request.pipeline: _queued(_get(ddb, table, LINE, COUNT_PREFIX + request.pipeline))})
    return _dispatch(ddb, sfn, table, caps, clock=clock, acquiring=request.run_id, notify=notify, held=held)


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
    put_run: dict[str, Any] = {"TableName": table, "Item": dump_item(run_item)}
    put_queue = {"Put": {"TableName": table, "Item": dump_item(queue_item)}}
    try:  # a new run: it joins the line and its pipeline's count
        new = {**put_run, "ConditionExpression": "attribute_not_exists(pk)"}
        transact(ddb, [{"Put": new}, put_queue, *_count(table, request.pipeline, 1)])
        return QUEUED
    except TransactionCancelled:
        pass
    try:  # a retried acquire of a queued run: a fresh token, the same place and count
        again = {**put_run, "ConditionExpression": "#state = :queued", "ExpressionAttributeNames": {"#state": "state"},
                 "ExpressionAttributeValues": dump_item({":queued": QUEUED})}  # fmt: skip
        transact(ddb, [{"Put": again}, put_queue])
    except TransactionCancelled:
        return ADMITTED
    return QUEUED


def _count(table: str, pipeline: str, delta: int) -> list[dict[str, Any]]:
    """Transaction items adding `delta` to the pipeline's count of waiting runs, and 1 to the changes of its COUNTED
    item: what a recount's condition checks (see `recount_waiting`). The changes live apart from the count because
    a count at 0 is deleted (`_drop_count_if_zero`), and a fence that is deleted could come back equal."""
    return [
        {
            "Update": {
                "TableName": table,
                "Key": dump_item({"pk": LINE, "sk": COUNT_PREFIX + pipeline}),
                "UpdateExpression": "ADD #queued :delta",
                "ExpressionAttributeNames": {"#queued": QUEUED_COUNT},
                "ExpressionAttributeValues": dump_item({":delta": delta}),
            }
        },
        {
            "Update": {
                "TableName": table,
                "Key": dump_item({"pk": COUNTED, "sk": pipeline}),
                "UpdateExpression": "ADD #changes :one",
                "ExpressionAttributeNames": {"#changes": COUNT_CHANGES},
                "ExpressionAttributeValues": dump_item({":one": 1}),
            }
        },
    ]


def _drop_count_if_zero(ddb: DynamoDBClient, table: str, pipeline: str) -> None:
    """Delete the pipeline's COUNT item if no run of it waits (absent means 0), so a decision reads the counts of
    pipelines with waiting runs only. Conditional: a run that joined the line meanwhile keeps it."""
    try:
        ddb.delete_item(
            TableName=table,
            Key=dump_item({"pk": LINE, "sk": COUNT_PREFIX + pipeline}),
            ConditionExpression="#queued = :zero",
            ExpressionAttributeNames={"#queued": QUEUED_COUNT},
            ExpressionAttributeValues=dump_item({":zero": 0}),
        )
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise


def recount_waiting(ddb: DynamoDBClient, table: str) -> tuple[int, bool]:
    """Set each pipeline's count of waiting runs (COUNT item) to its runs in the queue: how many counts it
    corrected, and whether every count is now right.

    What a table written by a version that kept no counts needs: its queued runs are in no count, and a dispatch
    only reads the queue for pipelines whose count says runs wait. Reads the COUNTED items (how many times each
    count changed), then the counts, then the queue (paginated, the `pipeline` attribute only), then sets each wrong
    count on the condition that neither it nor its changes moved meanwhile (every enqueue and dequeue changes both
    in the same transaction as the queue item); a count that moved is left to the next recount. Idempotent.
    """
    fences = {
        str(item["sk"]): int(item.get(COUNT_CHANGES, 0))
        for page in _partition_pages(ddb, table, COUNTED)
        for item in map(load_item, page.get("Items", []))
    }
    counts = {
        str(item["sk"]).removeprefix(COUNT_PREFIX): item
        for page in _line_pages(ddb, table, "begins_with(sk, :count)", {":count": COUNT_PREFIX})
        for item in map(load_item, page.get("Items", []))
    }
    queued = dict.fromkeys(counts, 0)
    pages = _line_pages(
        ddb, table, "begins_with(sk, :queue)", {":queue": QUEUE_PREFIX}, ProjectionExpression="pipeline"
    )
    for page in pages:
        for item in map(load_item, page.get("Items", [])):
            queued[str(item["pipeline"])] = queued.get(str(item["pipeline"]), 0) + 1
    wrong = {p: n for p, n in queued.items() if _queued(counts.get(p)) != n}
    corrected = sum(
        _set_count(ddb, table, pipeline, actual, fences.get(pipeline), counts.get(pipeline))
        for pipeline, actual in wrong.items()
    )
    return corrected, corrected == len(wrong)


def _queued(count: Mapping[str, Any] | None) -> int:
    """The waiting runs a COUNT item says (absent: none)."""
    return int((count or {}).get(QUEUED_COUNT, 0))


def runs_to_sweep(ddb: DynamoDBClient, table: str) -> tuple[list[dict[str, Any]], int]:
    """What the sweeper's tick checks against executions: the runs holding slots (HELD items: at most as many as
    the caps admit, whatever the queue's length), and how many waiting counts it corrected (0).

    On a table an older version wrote (no UPGRADED item), once: every RUN item (queued ones too), a HELD item
    for each admitted run without one, and the waiting counts recounted (`recount_waiting`); the table is marked
    UPGRADED when that is complete, so later ticks read the HELD items only."""
    if _get(ddb, table, UPGRADED, LINE) is not None:
        holders: list[dict[str, Any]] = []
        for page in _partition_pages(ddb, table, HELD):
            holders += map(load_item, page.get("Items", []))
        return holders, 0
    every_run = runs(ddb, table)
    for item in every_run:
        if item["state"] == ADMITTED:
            _hold_slot(ddb, table, item)
    corrected, complete = recount_waiting(ddb, table)
    if complete:
        ddb.put_item(TableName=table, Item=dump_item({"pk": UPGRADED, "sk": LINE, "at": iso(utcnow())}))
    return every_run, corrected


def _hold_slot(ddb: DynamoDBClient, table: str, run: Mapping[str, Any]) -> None:
    """Give an admitted run (admitted by an older version) its HELD item, if it still holds its slot."""
    still_admitted = {
        "Update": {
            "TableName": table,
            "Key": dump_item({"pk": "RUN", "sk": run["sk"]}),
            "UpdateExpression": "SET held_since = :now",
            "ConditionExpression": "#state = :admitted",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": dump_item({":admitted": ADMITTED, ":now": iso(utcnow())}),
        }
    }
    try:
        transact(ddb, [still_admitted, _held(table, str(run["sk"]), str(run.get("execution_arn") or ""))])
    except TransactionCancelled:
        pass  # released meanwhile


def _held(table: str, run_id: str, execution_arn: str) -> dict[str, Any]:
    """A transaction item: the run holds a slot (written with its admission, deleted with its release)."""
    item = {"pk": HELD, "sk": run_id, "run_id": run_id, "execution_arn": execution_arn}
    return {"Put": {"TableName": table, "Item": dump_item(item)}}


def _unheld(table: str, run_id: str) -> dict[str, Any]:
    return {"Delete": {"TableName": table, "Key": dump_item({"pk": HELD, "sk": run_id})}}


def _set_count(
    ddb: DynamoDBClient,
    table: str,
    pipeline: str,
    actual: int,
    fence: int | None,
    count: Mapping[str, Any] | None,
) -> bool:
    """Set the pipeline's count to `actual` (delete it at 0) if its changes are still `fence` and its COUNT item still
    as read (False: a run joined or left that line since). The COUNT item's own `changes`, which a version that kept
    the fence there wrote, must not have moved either."""
    fenced = "attribute_not_exists(pk)" if fence is None else "#changes = :fence"
    bump_fence = {
        "TableName": table,
        "Key": dump_item({"pk": COUNTED, "sk": pipeline}),
        "UpdateExpression": "ADD #changes :one",
        "ConditionExpression": fenced,
        "ExpressionAttributeNames": {"#changes": COUNT_CHANGES},
        "ExpressionAttributeValues": dump_item({":one": 1} | ({} if fence is None else {":fence": fence})),
    }
    if count is None:
        as_read: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
    else:
        changes = count.get(COUNT_CHANGES)
        as_read = {
            "ConditionExpression": "#queued = :counted AND "
            + ("attribute_not_exists(#changes)" if changes is None else "#changes = :changes"),
            "ExpressionAttributeNames": {"#queued": QUEUED_COUNT, "#changes": COUNT_CHANGES},
            "ExpressionAttributeValues": dump_item(
                {":counted": _queued(count)} | ({} if changes is None else {":changes": int(changes)})
            ),
        }
    key = {"pk": LINE, "sk": COUNT_PREFIX + pipeline}
    if actual:
        write = {"Put": {"TableName": table, "Item": dump_item({**key, QUEUED_COUNT: actual}), **as_read}}
    else:
        write = {"Delete": {"TableName": table, "Key": dump_item(key), **as_read}}
    try:
        transact(ddb, [{"Update": bump_fence}, write])
    except TransactionCancelled:
        return False
    return True


def dispatch(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    table: str,
    caps: Caps,
    *,
    clock: Clock = utcnow,
    acquiring: str | None = None,
    notify: Notify | None = None,
) -> list[str]:
    """Admit queued runs in arrival order while caps and budgets allow; returns the run ids admitted.

    Strict FIFO per pipeline (a pipeline's head over its cap or budget holds back the rest of that pipeline)
    and, for the deployment's caps, FIFO per dimension (a head waiting for deployment vCPUs holds back every
    later run that needs vCPUs; one waiting for a run slot or the deployment's budget holds back everything
    under it). Also what wakes runs waiting for a new day's budget (the sweeper's tick calls it).
    """
    return _dispatch(ddb, sfn, table, caps, clock=clock, acquiring=acquiring, notify=notify).admitted


def _dispatch(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    table: str,
    caps: Caps,
    *,
    clock: Clock,
    acquiring: str | None,
    notify: Notify | None = None,
    held: dict[str, dict[str, float]] | None = None,
) -> _Dispatched:
    """`dispatch`, also returning the place in line of each run it saw still waiting (per pipeline, 1-based),
    and the runs a budget holds or refused. `held`: CAP items the caller read since the change it decides on.

    Reads the counters (`_counters`), then the queue from its head, consistently, and attempts only the admissions
    that fit what it read; the transaction's conditions still decide (a stale read costs a failed attempt, or leaves
    the admission to a later dispatch, never a cap). Every release dispatches after its own commit, so freed capacity
    is never overlooked.
    """
    done = _Dispatched()
    today = clock().date()
    waiting: dict[str, int] = {}
    held, done.waiting = _counters(ddb, table, today, {} if held is None else held)
    left = {pipeline: count for pipeline, count in done.waiting.items() if count > 0}  # waiting runs not yet read
    blocked_pipelines: set[str] = set()
    blocked_dimensions: set[str] = set()
    for pipeline in left:
        _block_if_full(caps, pipeline, held, blocked_pipelines, blocked_dimensions)
    if not left or _all_blocked(caps, left, blocked_pipelines, blocked_dimensions):
        return done
    queue = _line_pages(ddb, table, "begins_with(sk, :queue)", {":queue": QUEUE_PREFIX}, growing=True)
    counted = dict(left)  # waiting runs per pipeline, less those this dispatch took out of line
    for page in queue:  # each page is read only when asked for: the loop's break saves the next Query
        for raw in page.get("Items", []):
            entry = _QueueEntry.from_item(load_item(raw))
            if entry.pipeline in left:
                left[entry.pipeline] -= 1
            _read_charges(ddb, table, held, [pipeline_scope(entry.pipeline)], today)  # a pipeline counted late
            result = _must_wait(entry, caps, held, blocked_pipelines, blocked_dimensions, today)
            if result is None:
                result = _admit(ddb, sfn, table, caps, entry, clock, acquiring)
            result = _over_budget(ddb, sfn, table, caps, entry, result, done, notify)
            _left_line(ddb, table, counted, entry.pipeline, result)
            if result == ADMITTED:
                done.admitted.append(entry.run_id)
                _hold(held, caps.scopes(entry.pipeline, entry.reservation), entry.reservation)
                _block_if_full(caps, entry.pipeline, held, blocked_pipelines, blocked_dimensions)
            elif result != "GONE":
                waiting[entry.pipeline] = done.positions[entry.run_id] = waiting.get(entry.pipeline, 0) + 1
                if result == "PIPELINE_FULL":
                    blocked_pipelines.add(entry.pipeline)
                elif isinstance(result, frozenset):
                    blocked_dimensions |= result
        if _all_blocked(caps, left, blocked_pipelines, blocked_dimensions):
            break
    return done


def _left_line(ddb: DynamoDBClient, table: str, counted: dict[str, int], pipeline: str, result: object) -> None:
    """When a run of `pipeline` left the line (`result` ADMITTED or GONE) and was the last of those its count said
    waited (as far as this dispatch knows), delete the count at 0 now rather than have the next decision read it."""
    if result in (ADMITTED, "GONE") and pipeline in counted:
        counted[pipeline] -= 1
        if counted[pipeline] == 0:
            _drop_count_if_zero(ddb, table, pipeline)


def _line_pages(
    ddb: DynamoDBClient, table: str, condition: str, values: dict[str, Any], *, growing: bool = False, **extra: Any
) -> Iterator[dict[str, Any]]:
    """Consistent Query pages of the LINE partition where `condition` holds on `sk`, each read when asked for;
    `growing`: pages of 1, 2, 4.. up to 100 items (a dispatch mostly needs the head only)."""
    start: dict[str, Any] | None = None
    limit = _FIRST_PAGE
    while True:
        kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
        if growing:
            kwargs["Limit"], limit = limit, min(_LAST_PAGE, limit * 2)
        page: dict[str, Any] = ddb.query(  # type: ignore[assignment]
            TableName=table,
            KeyConditionExpression=f"pk = :line AND {condition}",
            ExpressionAttributeValues=dump_item({":line": LINE, **values}),
            ConsistentRead=True,
            **extra,
            **kwargs,
        )
        yield page
        start = page.get("LastEvaluatedKey")
        if not start:
            return


def _counters(
    ddb: DynamoDBClient, table: str, today: date, held: dict[str, dict[str, float]]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """What admitted runs hold per scope (CAP items) and how many runs wait per pipeline (COUNT items): one Query
    of the counts, which exist only for pipelines with waiting runs, then one BatchGetItem of the deployment's CAP
    item and theirs, so a decision reads what the pipelines with waiting runs need whatever the number of pipelines.
    Prunes the CAP items' spend of days older than `SPEND_TTL`.

    When no count says a run waits, also reads the queue's head (no item when it is empty): a run there joined
    the line since the counts were read (read again: now it is counted) or before counts were kept (an upgrade:
    the counts are recounted, then read again). `held`: CAP items already read (consistently, since the change that
    called for this decision)."""
    waiting = _waiting(ddb, table)
    if not any(count > 0 for count in waiting.values()) and _queue_head(ddb, table) is not None:
        waiting = _waiting(ddb, table)
        if not any(count > 0 for count in waiting.values()) and recount_waiting(ddb, table)[0]:
            waiting = _waiting(ddb, table)
    busy = [pipeline_scope(pipeline) for pipeline, count in waiting.items() if count > 0]
    _read_charges(ddb, table, held, [DEPLOYMENT, *busy], today)
    return held, waiting


def _waiting(ddb: DynamoDBClient, table: str) -> dict[str, int]:
    """How many runs wait per pipeline (COUNT items); deletes a count found at 0 (its last run just left the line)."""
    waiting: dict[str, int] = {}
    for page in _line_pages(ddb, table, "begins_with(sk, :count)", {":count": COUNT_PREFIX}):
        for item in map(load_item, page.get("Items", [])):
            pipeline = str(item["sk"]).removeprefix(COUNT_PREFIX)
            waiting[pipeline] = _queued(item)
            if waiting[pipeline] == 0:
                _drop_count_if_zero(ddb, table, pipeline)
    return waiting


def _read_charges(
    ddb: DynamoDBClient, table: str, held: dict[str, dict[str, float]], scope_keys: Sequence[str], today: date
) -> None:
    """Add to `held` what admitted runs hold in each scope of `scope_keys` not in it yet (CAP items, one BatchGetItem;
    a scope without an item holds nothing), pruning their spend of days older than `SPEND_TTL`."""
    unread = [key for key in dict.fromkeys(scope_keys) if key not in held]
    if not unread:
        return
    keys = [dump_item({"pk": LINE, "sk": CAP_PREFIX + key}) for key in unread]
    for item in map(load_item, get_items(ddb, table, keys)):
        held[str(item["sk"]).removeprefix(CAP_PREFIX)] = _held_of(item, today)
        _prune_spend(ddb, table, item, today)
    for key in unread:
        held.setdefault(key, _held_of({}, today))


def _queue_head(ddb: DynamoDBClient, table: str) -> str | None:
    """The sort key of the first run in line, or None when the queue is empty (then the Query reads no item)."""
    page = next(_line_pages(ddb, table, "begins_with(sk, :queue)", {":queue": QUEUE_PREFIX}, Limit=1,
                            ProjectionExpression="sk"))  # fmt: skip
    items = page.get("Items", [])
    return str(load_item(items[0])["sk"]) if items else None


def _prune_spend(ddb: DynamoDBClient, table: str, item: Mapping[str, Any], today: date) -> None:
    """Remove a CAP item's `usd@<day>` attributes older than `SPEND_TTL` (no run settles that far back)."""
    oldest = spend_attribute(today - SPEND_TTL)
    stale = sorted(k for k in item if k.startswith(USD + "@") and k < oldest)
    if stale:
        ddb.update_item(
            TableName=table,
            Key=dump_item({"pk": LINE, "sk": item["sk"]}),
            UpdateExpression="REMOVE " + ", ".join(f"#s{i}" for i in range(len(stale))),
            ExpressionAttributeNames={f"#s{i}": name for i, name in enumerate(stale)},
        )


def _block_if_full(
    caps: Caps,
    pipeline: str,
    held: Mapping[str, Mapping[str, float]],
    blocked_pipelines: set[str],
    blocked_dimensions: set[str],
) -> None:
    """Mark what no further run can pass: every run reserves one run slot, so a scope whose run slots are all
    held blocks its pipeline (or, the deployment's, every pipeline) without reading the queue."""
    for scope in caps.scopes(pipeline, Reservation()):
        cap = scope.limit.cap("runs")
        if cap is not None and held.get(scope.key, {}).get("runs", 0) >= cap:
            if scope.key == DEPLOYMENT:
                blocked_dimensions.add("runs")
            else:
                blocked_pipelines.add(pipeline)


def _all_blocked(
    caps: Caps, left: Mapping[str, int], blocked_pipelines: set[str], blocked_dimensions: set[str]
) -> bool:
    """True when no waiting run not yet read can start: each pipeline with some is blocked (or none is left)."""
    if "runs" in blocked_dimensions or (caps.deployment.usd is not None and USD in blocked_dimensions):
        return True
    return all(p in blocked_pipelines for p, count in left.items() if count > 0)


def _over_budget(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    table: str,
    caps: Caps,
    entry: _QueueEntry,
    verdict: str | frozenset[str] | OverBudget,
    done: _Dispatched,
    notify: Notify | None,
) -> str | frozenset[str]:
    """A run the budget does not allow now: refused (`over_budget: fail`, GONE) or held (noted and notified once;
    it blocks its pipeline, or, for the deployment's budget, every run under it). Any other verdict, unchanged."""
    if not isinstance(verdict, OverBudget):
        return verdict
    if caps.pipeline(entry.pipeline).over_budget == FAIL:
        if _forget_queued(ddb, table, entry):  # the workflow's failure path writes the ledger and notifies
            _fail_task(sfn, entry.token, BUDGET_EXCEEDED, budget_cause(entry.run_id, entry.pipeline, verdict))
            done.refused[entry.run_id] = verdict
        return "GONE"
    done.over_budget[entry.run_id] = verdict
    _note_over_budget(ddb, table, entry, verdict, notify)
    return frozenset({USD}) if verdict.scope == DEPLOYMENT else "PIPELINE_FULL"


def _held_of(item: Mapping[str, Any], today: date) -> dict[str, float]:
    """A CAP item's counters, with today's spend as `usd`."""
    return {d: int(item.get(d, 0)) for d in DIMENSIONS} | {USD: float(item.get(spend_attribute(today), 0))}


def _must_wait(
    entry: _QueueEntry,
    caps: Caps,
    held: Mapping[str, Mapping[str, float]],
    blocked_pipelines: set[str],
    blocked_dimensions: set[str],
    today: date,
) -> str | frozenset[str] | OverBudget | None:
    """Why `entry` keeps waiting, judged from what the dispatch read and did (None: it fits, try it).

    A budget is judged only once the run has a slot: a run waiting for a slot is not (yet) over budget.
    """
    if entry.pipeline in blocked_pipelines:
        return "WAITING"
    needs = frozenset(d for d in DIMENSIONS if entry.reservation.amount(d) > 0)
    if caps.deployment.usd is not None:
        needs |= {USD}
    if needs & blocked_dimensions:
        return "WAITING"
    scopes = caps.scopes(entry.pipeline, entry.reservation)
    if oversized(scopes, entry.reservation):
        return None  # caps shrank under it: `_admit` fails its task rather than let it block the line
    for scope in scopes:
        counts = held.get(scope.key, {})
        over = frozenset(
            d
            for d in needs - {USD}
            if (cap := scope.limit.cap(d)) is not None and counts.get(d, 0) + entry.reservation.amount(d) > cap
        )
        if over:
            return over if scope.key == DEPLOYMENT else "PIPELINE_FULL"
    for scope in scopes:
        verdict = over_budget(scope, held.get(scope.key, {}).get(USD, 0.0), entry.reservation.usd, today)
        if verdict is not None:
            return verdict
    return None


def _hold(held: dict[str, dict[str, float]], scopes: Sequence[Scope], reservation: Reservation) -> None:
    for scope in scopes:
        counts = held.setdefault(scope.key, dict.fromkeys((*DIMENSIONS, USD), 0.0))
        for d in DIMENSIONS:
            counts[d] += reservation.amount(d)
        counts[USD] = counts.get(USD, 0.0) + reservation.usd


def budget_cause(run_id: str, pipeline: str, verdict: OverBudget) -> str:
    """The `BudgetExceeded` cause: which scope, its budget, the day's spend and the run's estimate."""
    return (
        f"run {run_id} of pipeline {pipeline!r} was not started: {verdict.describe()}, which would take the day "
        f"over the budget (limits.over_budget: fail). Nothing was launched; the budget frees at 00:00 UTC or when "
        "running runs record costs below their estimates"
    )


def _note_over_budget(
    ddb: DynamoDBClient, table: str, entry: _QueueEntry, verdict: OverBudget, notify: Notify | None
) -> None:
    """Mark the waiting run as held by a budget, and notify: once per run (a conditional update decides)."""
    try:
        ddb.update_item(
            TableName=table,
            Key=dump_item({"pk": "RUN", "sk": entry.run_id}),
            UpdateExpression="SET over_budget = :verdict",
            ConditionExpression="#state = :queued AND attribute_not_exists(over_budget)",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues=dump_item({":queued": QUEUED, ":verdict": verdict.as_dict()}),
        )
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":  # noted before, or no longer waiting
            return
        raise
    if notify is not None:
        notify(
            {
                "run_id": entry.run_id,
                "pipeline": entry.pipeline,
                "execution_arn": entry.execution_arn,
                "action": "held",
                "over_budget": verdict.as_dict(),
                "message": f"run {entry.run_id} waits (QUEUED) for the budget: {verdict.describe()}",
            }
        )


def release(
    ddb_client: DynamoDBClient,
    sfn_client: SFNClient,
    table: str,
    run_id: str,
    caps: Caps,
    *,
    pipeline: str | None = None,
    reservation: Reservation | None = None,
    clock: Clock = utcnow,
    notify: Notify | None = None,
) -> bool:
    """Give back what `run_id` holds (or take it out of the queue), then admit whoever can start now.

    Returns True when it freed a slot or removed a queued run, False when the run held nothing (never
    admitted under a cap, or already released): safe to call any number of times, from the workflow's
    `ReleaseRunSlot` or from cleanup after an abort or timeout. `pipeline` and `reservation` (the
    workflow knows them) save a read when the run was admitted under the current caps. A budgeted run's
    spend stays reserved until `record_spend`.
    """
    hint = None
    if pipeline is not None and reservation is not None:
        hint = _charge_key(caps.scopes(pipeline, reservation), reservation), reservation
    freed = _release_run(ddb_client, table, run_id, hint)
    dispatch(ddb_client, sfn_client, table, caps, clock=clock, notify=notify)
    return freed


def record_spend(
    ddb: DynamoDBClient,
    sfn: SFNClient,
    table: str,
    caps: Caps,
    run_id: str,
    cost_usd: float | None,
    *,
    clock: Clock = utcnow,
    notify: Notify | None = None,
) -> dict[str, Any] | None:
    """The run ended: its recorded cost replaces its reservation in the day's spend (the day it ended), or,
    with no cost (`None`: unknown), its estimate stays its spend. Then admit whoever the budget now allows.

    Returns what was recorded (`reserved_usd`, `spent_usd`, `day`, `spend_day`, `cost_known`), or None when the
    run reserved nothing (no budget applied, it never was admitted, or its spend was already recorded):
    idempotent.
    """
    settled = _settle(ddb, table, run_id, None if cost_usd is None else dollars(cost_usd), clock().date())
    if settled is None:
        return None
    if cost_usd is not None:
        remember_cost(ddb, table, str(settled["pipeline"]), dollars(cost_usd))
    _dispatch(ddb, sfn, table, caps, clock=clock, acquiring=None, notify=notify)
    return settled


def estimate_usd(ddb: DynamoDBClient, table: str, pipeline: str, fallback: float) -> float:
    """What a run of `pipeline` reserves under a budget: the largest of its last `RECENT_COSTS` recorded
    costs, else `fallback` (the bound fixed at synth: `limits.run_estimate_usd` or config/capacity.py)."""
    recent = (_get(ddb, table, ESTIMATE, pipeline) or {}).get("recent") or []
    return dollars(max(recent)) if recent else dollars(fallback)


def remember_cost(ddb: DynamoDBClient, table: str, pipeline: str, cost: float) -> None:
    """Keep `cost` among the pipeline's last `RECENT_COSTS` recorded costs (optimistic, versioned write)."""
    for _ in range(_TRANSACTION_ATTEMPTS):
        item = _get(ddb, table, ESTIMATE, pipeline) or {}
        version = int(item.get("version", 0))
        recent = [*(item.get("recent") or []), cost][-RECENT_COSTS:]
        try:
            ddb.put_item(
                TableName=table,
                Item=dump_item({"pk": ESTIMATE, "sk": pipeline, "recent": recent, "version": version + 1}),
                ConditionExpression="attribute_not_exists(pk) OR version = :version",
                ExpressionAttributeValues=dump_item({":version": version}),
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            continue  # another run's cost came in meanwhile: read again
        return
    raise RuntimeError(f"could not record a cost of pipeline {pipeline}: its estimate item kept changing")


def _place_in_line(ddb: DynamoDBClient, table: str, pipeline: str, sk: str, waiting: int) -> int:
    """The run's place among the pipeline's `waiting` runs (1-based), reading at most `_LOOKAHEAD` queue items
    behind it (queue items sort last in the partition) and, when more are behind, the line's head (1 item): at most
    5 items, whatever the queue's length. Runs mostly queue in arrival order (none or few behind: the place is
    exact); a run that arrived before every waiting run is first. A run with more than that many behind it and not at
    the head gets an upper bound (the pipeline's waiting runs less those seen behind it).

    Reading further to be exact cost the runs of a burst (whose executions reach the line in any order within a
    router batch) 4 items per admitted run on average, half of a decision's reads."""

    def of_pipeline(page: Mapping[str, Any]) -> int:
        return sum(1 for raw in page.get("Items", []) if load_item(raw).get("pipeline") == pipeline)

    behind = next(_line_pages(ddb, table, "sk > :mine", {":mine": sk}, Limit=_LOOKAHEAD,
                              ProjectionExpression="sk, pipeline"))  # fmt: skip
    if behind.get("LastEvaluatedKey") and _queue_head(ddb, table) == sk:
        return 1
    return max(1, waiting - of_pipeline(behind))


def write_queued_ledger(
    s3: S3Client,
    bucket: str,
    key: str,
    ledger: Mapping[str, Any],
    queued_at: datetime,
    position: int | None,
    verdict: OverBudget | None = None,
) -> bool:
    """The QUEUED ledger entry, saying what the run waits for (a slot, or the budget: which one, spent, estimate);
    never overwrites one the workflow already wrote (S3 `If-None-Match: *`)."""
    admission: dict[str, Any] = {"queued_at": iso(queued_at), "position": position, "waiting_for": "slot"}
    if verdict is not None:
        admission |= {"waiting_for": "budget", "over_budget": verdict.as_dict()}
    body = {**ledger, "state": QUEUED, "admission": admission}
    # False: the run was admitted meanwhile, and its STARTED entry stays.
    return write_entry(s3, bucket, key, body, only_if_absent=True)


def counters(ddb: DynamoDBClient, table: str) -> dict[str, dict[str, int]]:
    """What admitted runs hold, per scope (`deployment`, `pipeline#<name>`): every CAP item, page by page."""
    out: dict[str, dict[str, int]] = {}
    for page in _line_pages(ddb, table, "begins_with(sk, :cap)", {":cap": CAP_PREFIX}):
        for item in map(load_item, page.get("Items", [])):
            out[item["sk"].removeprefix(CAP_PREFIX)] = {d: int(item.get(d, 0)) for d in DIMENSIONS}
    return out


def runs(ddb: DynamoDBClient, table: str, state: str | None = None) -> list[dict[str, Any]]:
    """The RUN items (queued and admitted runs)."""
    items = (load_item(raw) for page in _partition_pages(ddb, table, "RUN") for raw in page.get("Items", []))
    return [item for item in items if state in (None, item["state"])]


def _partition_pages(ddb: DynamoDBClient, table: str, pk: str) -> Iterator[dict[str, Any]]:
    start = None
    while True:
        kwargs: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
        page: dict[str, Any] = ddb.query(  # type: ignore[assignment]
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues=dump_item({":pk": pk}),
            ConsistentRead=True,
            **kwargs,
        )
        yield page
        start = page.get("LastEvaluatedKey")
        if not start:
            return


# --------------------------------------------------------------------------- internals


def _admit(
    ddb: DynamoDBClient, sfn: SFNClient, table: str, caps: Caps, entry: _QueueEntry, clock: Clock, acquiring: str | None
) -> str | frozenset[str] | OverBudget:
    """Try to admit one queued run: ADMITTED, GONE (handled elsewhere), PIPELINE_FULL, the blocked
    deployment dimensions, or the budget it would exceed (a concurrent admission spent it first)."""
    scopes = caps.scopes(entry.pipeline, entry.reservation)
    too_big = oversized(scopes, entry.reservation)
    if too_big:  # caps changed under a waiting run: it could never start
        if _forget_queued(ddb, table, entry):
            _fail_task(sfn, entry.token, RESERVATION_EXCEEDS_CAP, f"one run exceeds {', '.join(too_big)}")
        return "GONE"
    now = clock()
    today = now.date()
    items = [_charge(table, scope, entry.reservation, today) for scope in scopes]
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
    items.extend(_count(table, entry.pipeline, -1))  # after the RUN update and queue delete (see `_why_not`)
    items.append(_held(table, entry.run_id, entry.execution_arn))
    budget = _budget_record(scopes, entry.reservation, today)
    if budget is not None:  # what the run's end (`record_spend`) settles
        spend = {"pk": SPEND, "sk": entry.run_id, "pipeline": entry.pipeline, **budget}
        spend[EXPIRES_AT] = int((now + SPEND_TTL).timestamp())
        items.append({"Put": {"TableName": table, "Item": dump_item(spend)}})
        run_update = items[len(scopes)]["Update"]
        run_update["UpdateExpression"] = run_update["UpdateExpression"].replace(
            "charge = :charge", "charge = :charge, budget = :budget"
        )
        items[len(scopes)]["Update"]["ExpressionAttributeValues"][":budget"] = dump_value(budget)
    try:
        transact(ddb, items)
    except TransactionCancelled as cancelled:
        return _why_not(cancelled, scopes, entry.reservation, today)
    queued_at = _parse_time(entry.queued_at) or now
    try:
        delivered = _answer(
            sfn, entry.token, queued_at=queued_at, admitted_at=now, waited=entry.run_id != acquiring, budget=budget
        )
    except ClientError:
        _unadmit(ddb, table, entry, scopes, today)  # back in line; the next dispatch tries again
        raise
    if not delivered:  # the execution stopped waiting (aborted, timed out): give the slot and the spend back
        _release_run(ddb, table, entry.run_id)
        _settle(ddb, table, entry.run_id, 0.0, today)
        return "GONE"
    return ADMITTED


def _budget_record(scopes: Sequence[Scope], reservation: Reservation, day: date) -> dict[str, Any] | None:
    """The run's reservation of the day's spend, as the ledger (`admission.budget`) and the SPEND item keep it."""
    budgeted = [s.key for s in scopes if s.limit.usd is not None]
    if not budgeted:
        return None
    return {
        "day": day.isoformat(),
        "reserved_usd": reservation.usd,
        "scopes": budgeted,
        "rule": (
            "reserved_usd counts in the day's spend until the run ends; then cost.usd replaces it (on the day the "
            "run ended), or, when cost.usd is null (unknown), reserved_usd stays the run's spend"
        ),
    }


def _why_not(
    cancelled: TransactionCancelled, scopes: Sequence[Scope], reservation: Reservation, today: date
) -> str | frozenset[str] | OverBudget:
    own = len(scopes)  # items after the counters: the RUN update and the queue delete
    if cancelled.failed & {own, own + 1}:
        return "GONE"
    for index in sorted(cancelled.failed):
        scope = scopes[index]
        held = cancelled.old_item(index) or {}
        dims = frozenset(
            d
            for d in DIMENSIONS
            if (cap := scope.limit.cap(d)) is not None
            and reservation.amount(d) > 0
            and int(held.get(d, 0)) + reservation.amount(d) > cap
        )
        if not dims:  # no slot dimension is full: the budget is what failed
            verdict = over_budget(scope, float(held.get(spend_attribute(today), 0)), reservation.usd, today)
            if verdict is not None:
                return verdict
        if scope.key == DEPLOYMENT:
            return dims or frozenset(d for d in DIMENSIONS if reservation.amount(d) > 0)
    return "PIPELINE_FULL"


def _charge_key(scopes: Sequence[Scope], reservation: Reservation) -> str:
    """`deployment,pipeline#p|1,0,64`: what an admitted run holds, comparable in a condition."""
    return ",".join(s.key for s in scopes) + "|" + ",".join(str(reservation.amount(d)) for d in DIMENSIONS)


def _charge(table: str, scope: Scope, reservation: Reservation, day: date) -> dict[str, Any]:
    """Add the reservation to a scope's counter, conditioned on every capped dimension staying within its cap
    and, under a budget, on the day's spend staying within it (or nothing spent that day yet)."""
    names = {f"#{d}": d for d in DIMENSIONS}
    values: dict[str, Any] = {f":{d}": reservation.amount(d) for d in DIMENSIONS}
    adds = [f"#{d} :{d}" for d in DIMENSIONS]
    conditions = []
    for d in DIMENSIONS:
        cap = scope.limit.cap(d)
        if cap is not None and reservation.amount(d) > 0:
            values[f":room_{d}"] = cap - reservation.amount(d)
            conditions.append(f"(attribute_not_exists(#{d}) OR #{d} <= :room_{d})")
    if scope.limit.usd is not None:
        names["#usd"] = spend_attribute(day)
        values |= {":usd": reservation.usd, ":room_usd": dollars(scope.limit.usd - reservation.usd), ":nothing": 0}
        adds.append("#usd :usd")
        conditions.append("(attribute_not_exists(#usd) OR #usd <= :room_usd OR #usd <= :nothing)")
    update: dict[str, Any] = {
        "TableName": table,
        "Key": dump_item({"pk": LINE, "sk": CAP_PREFIX + scope.key}),
        "UpdateExpression": "ADD " + ", ".join(adds),
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
            transact(ddb, [admitted_as_hinted, *undo, _unheld(table, run_id)])
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
            undo = [*(_uncharge(table, key, reservation) for key in item.get("charged", [])), _unheld(table, run_id)]
        else:
            undo = [
                {"Delete": {"TableName": table, "Key": dump_item({"pk": LINE, "sk": item["queue_sk"]})}},
                *_count(table, str(item["pipeline"]), -1),
            ]
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
                *_count(table, entry.pipeline, -1),
            ],
        )
    except TransactionCancelled:
        return False
    return True


def _unadmit(ddb: DynamoDBClient, table: str, entry: _QueueEntry, scopes: Sequence[Scope], day: date) -> None:
    """Undo an admission whose SendTaskSuccess failed for another reason than a gone task: back in the queue."""
    queue_item = {
        "pk": LINE,
        "sk": entry.sk,
        "run_id": entry.run_id,
        "pipeline": entry.pipeline,
        "token": entry.token,
        "reservation": entry.reservation.as_dict(),
        "queued_at": entry.queued_at,
        "execution_arn": entry.execution_arn,  # what its HELD item names when admitted again (the sweeper checks it)
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
    items.extend(_count(table, entry.pipeline, 1))
    items.append(_unheld(table, entry.run_id))
    try:
        transact(ddb, items)
    except TransactionCancelled:
        return  # released meanwhile: nothing to undo
    _settle(ddb, table, entry.run_id, 0.0, day)  # and its reservation of the day's spend


def _settle(ddb: DynamoDBClient, table: str, run_id: str, cost: float | None, end_day: date) -> dict[str, Any] | None:
    """Replace the run's reserved spend by `cost` (on `end_day`); None keeps the estimate. One transaction that
    also deletes the SPEND item, so a run's spend is settled once. None when there was nothing to settle."""
    item = _get(ddb, table, SPEND, run_id)
    if item is None:
        return None
    estimate, day = dollars(item["reserved_usd"]), date.fromisoformat(str(item["day"]))
    changes: dict[str, float] = {}
    if cost is not None:
        changes[spend_attribute(day)] = -estimate
        changes[spend_attribute(end_day)] = dollars(changes.get(spend_attribute(end_day), 0.0) + cost)
    changes = {k: v for k, v in changes.items() if v != 0}
    items: list[dict[str, Any]] = [
        {
            "Delete": {
                "TableName": table,
                "Key": dump_item({"pk": SPEND, "sk": run_id}),
                "ConditionExpression": "attribute_exists(pk)",
            }
        }
    ]
    if changes:
        names = {f"#d{i}": attribute for i, attribute in enumerate(changes)}
        values = {f":d{i}": amount for i, amount in enumerate(changes.values())}
        for scope_key in item.get("scopes") or []:
            update = {
                "TableName": table,
                "Key": dump_item({"pk": LINE, "sk": CAP_PREFIX + scope_key}),
                "UpdateExpression": "ADD " + ", ".join(f"#d{i} :d{i}" for i in range(len(changes))),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": dump_item(values),
            }
            items.append({"Update": update})
    try:
        transact(ddb, items)
    except TransactionCancelled:
        return None  # settled meanwhile (a retried call)
    return {
        "pipeline": item.get("pipeline"),
        "day": day.isoformat(),
        "reserved_usd": estimate,
        "cost_known": cost is not None,
        "spent_usd": estimate if cost is None else cost,
        "spend_day": (day if cost is None else end_day).isoformat(),
        "scopes": item.get("scopes") or [],
    }


def _answer(
    sfn: SFNClient,
    token: str,
    *,
    queued_at: datetime,
    admitted_at: datetime,
    waited: bool,
    budget: Mapping[str, Any] | None = None,
) -> bool:
    """SendTaskSuccess with the admission record (the ledger's `admission`); False when the waiting task is gone."""
    output: dict[str, Any] = {
        "queued_at": iso(queued_at),
        "admitted_at": iso(admitted_at),
        "queued_seconds": round(max(0.0, (admitted_at - queued_at).total_seconds()), 3),
        "waited": waited,
    }
    if budget is not None:
        output["budget"] = dict(budget)
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
