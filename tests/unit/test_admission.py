"""Admission control: caps per pipeline and deployment, FIFO by arrival, idempotent release, races."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from autopilot_common import admission, dynamo
from autopilot_common.admission import (
    AcquireRequest,
    Caps,
    Limit,
    Reservation,
    acquire,
    arrival_of,
    counters,
    dispatch,
    queue_sort_key,
    release,
    runs,
)
from autopilot_common.clients import Clients
from autopilot_common.pipeline_settings import settings_parameter_name
from tests.conftest import load_handler
from tests.unit.conftest import create_table, put_pipeline_settings
from tests.unit.fakes import lambda_context

TABLE, LEDGER = "autopilot-test-admission", "outputs-bkt"
NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)


class AtomicCalls:
    """A DynamoDB client whose calls are each atomic, as DynamoDB's are (moto's transactions are not
    thread-safe: they snapshot and restore whole tables). Interleavings between calls stay real."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return call


@dataclass
class FakeStepFunctions:
    """SendTaskSuccess/SendTaskFailure: records answers; tokens in `gone` fail as a timed-out task would."""

    succeeded: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    on_success: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send_task_success(self, taskToken: str, output: str) -> dict[str, Any]:  # noqa: N803 - boto3 names
        self._check(taskToken, "SendTaskSuccess")
        with self.lock:
            self.succeeded.append((taskToken, json.loads(output)))
        if self.on_success:
            self.on_success(taskToken)
        return {}

    def send_task_failure(self, taskToken: str, error: str, cause: str) -> dict[str, Any]:  # noqa: N803
        self._check(taskToken, "SendTaskFailure")
        with self.lock:
            self.failed.append((taskToken, error, cause))
        return {}

    def _check(self, token: str, operation: str) -> None:
        if token in self.gone:
            error = {"Error": {"Code": "TaskTimedOut", "Message": "Task Timed Out"}}
            raise ClientError(error, operation)  # type: ignore[arg-type]

    @property
    def admitted(self) -> list[str]:
        return [token.removeprefix("token-") for token, _ in self.succeeded]


@pytest.fixture
def aws(moto: str) -> tuple[Any, Any]:
    ddb = boto3.client("dynamodb", region_name=moto)
    create_table(ddb, TABLE, "pk", "sk")
    s3 = boto3.client("s3", region_name=moto)
    s3.create_bucket(Bucket=LEDGER)
    return AtomicCalls(ddb), s3


@pytest.fixture
def sfn() -> FakeStepFunctions:
    return FakeStepFunctions()


def _request(run_id: str, pipeline: str = "p", second: int = 0, **reserve: int) -> AcquireRequest:
    return AcquireRequest(
        token=f"token-{run_id}",
        run_id=run_id,
        pipeline=pipeline,
        arrival={"at": f"2024-06-01T12:00:{second:02d}.000000Z", "key": f"in/{run_id}.csv"},
        reservation=Reservation(**reserve),
        execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:sm:{run_id}",
        ledger_key=f"_runs/{pipeline}/2024/06/01/{run_id}.json",
        ledger={"run_id": run_id, "pipeline": pipeline, "state": "STARTED"},
    )


def _acquire(aws: tuple[Any, Any], sfn: FakeStepFunctions, caps: Caps, request: AcquireRequest) -> str:
    ddb, s3 = aws
    return acquire(ddb, sfn, s3, TABLE, caps, request, ledger_bucket=LEDGER).state


def _table_is_empty(ddb: Any) -> bool:
    """No run queued or admitted, no slot held, every counter at 0."""
    holders = ddb.query(TableName=TABLE, KeyConditionExpression="pk = :held", ExpressionAttributeValues={
        ":held": {"S": admission.HELD}})["Items"]  # fmt: skip
    return (
        not runs(ddb, TABLE) and not holders and all(v == 0 for c in counters(ddb, TABLE).values() for v in c.values())
    )


# --------------------------------------------------------------------------- caps, arrival keys


def test_caps_round_trip_through_the_environment() -> None:
    caps = Caps(deployment=Limit(runs=10, vcpus=512), pipelines={"sales-burst": Limit(runs=2)})
    assert Caps.from_env({admission.CAPS_ENV: caps.to_json()}) == caps
    assert Caps.from_env({}) == Caps()
    with pytest.raises(RuntimeError, match="ADMISSION_CAPS is not valid caps JSON"):
        Caps.from_env({admission.CAPS_ENV: "{not json"})


def test_only_scopes_capping_what_a_run_reserves_apply() -> None:
    caps = Caps(deployment=Limit(clusters=3), pipelines={"p": Limit(vcpus=8)})
    serverless = Reservation(vcpus=4)
    cluster = Reservation(clusters=1, vcpus=0)
    assert [s.key for s in caps.scopes("p", serverless)] == ["pipeline#p"]
    assert [s.key for s in caps.scopes("p", cluster)] == ["deployment"]
    assert caps.scopes("q", serverless) == []


def test_arrival_of_s3_runs_is_event_time_and_key_console_runs_start_time() -> None:
    s3_run = arrival_of({"type": "s3", "event_time": "2024-06-01T10:00:00Z", "first_key": "a/b.csv"}, "x")
    assert s3_run == {"at": "2024-06-01T10:00:00.000000Z", "key": "a/b.csv"}
    console = arrival_of({"type": "console"}, "2024-06-01T10:00:01.250Z")
    assert console == {"at": "2024-06-01T10:00:01.250000Z", "key": ""}


def test_queue_order_is_time_then_key_then_run_id() -> None:
    same_second = "2024-06-01T10:00:00.000000Z"
    keys = [
        queue_sort_key({"at": same_second, "key": "a/b.csv"}, "r2"),
        queue_sort_key({"at": same_second, "key": "a"}, "r9"),
        queue_sort_key({"at": "2024-06-01T09:59:59.999999Z", "key": "z"}, "r1"),
        queue_sort_key({"at": same_second, "key": "a/b.csv"}, "r1"),
    ]
    assert sorted(keys) == [keys[2], keys[1], keys[3], keys[0]]
    assert len(queue_sort_key({"at": same_second, "key": "é" * 1000}, "r").encode()) < 1024


# --------------------------------------------------------------------------- admission


def test_uncapped_runs_are_admitted_at_once_without_touching_the_table(aws: Any, sfn: FakeStepFunctions) -> None:
    assert _acquire(aws, sfn, Caps(pipelines={"other": Limit(runs=1)}), _request("r1")) == "ADMITTED"
    (token, output) = sfn.succeeded[0]
    assert token == "token-r1" and output["queued_seconds"] == 0 and output["waited"] is False
    assert runs(aws[0], TABLE) == []
    assert release(aws[0], sfn, TABLE, "r1", Caps()) is False


def test_pipeline_cap_queues_in_arrival_order_and_admits_on_release(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb, s3 = aws
    caps = Caps(pipelines={"p": Limit(runs=2)})
    # Given two admitted runs, three more arrive out of order (r5 reaches admission before r3 and r4)
    assert [_acquire(aws, sfn, caps, _request(r, second=i)) for i, r in enumerate(["r1", "r2"])] == ["ADMITTED"] * 2
    assert _acquire(aws, sfn, caps, _request("r5", second=5)) == "QUEUED"
    assert _acquire(aws, sfn, caps, _request("r3", second=3)) == "QUEUED"
    assert _acquire(aws, sfn, caps, _request("r4", second=4)) == "QUEUED"
    assert counters(ddb, TABLE)["pipeline#p"] == {"runs": 2, "clusters": 0, "vcpus": 0}
    # Then each is QUEUED in the ledger with its place among the pipeline's waiting runs
    queued = json.loads(s3.get_object(Bucket=LEDGER, Key="_runs/p/2024/06/01/r4.json")["Body"].read())
    assert queued["state"] == "QUEUED" and queued["admission"]["position"] == 2
    # When slots free up, the waiting runs start by arrival, never more than two at once
    for released in ["r1", "r2", "r3", "r4", "r5"]:
        assert release(ddb, sfn, TABLE, released, caps) is True
        assert counters(ddb, TABLE)["pipeline#p"]["runs"] <= 2
    assert sfn.admitted == ["r1", "r2", "r3", "r4", "r5"]
    waited = {token: out["waited"] for token, out in sfn.succeeded}
    assert waited == {"token-r1": False, "token-r2": False, "token-r3": True, "token-r4": True, "token-r5": True}
    assert _table_is_empty(ddb)


def test_deployment_cap_admits_across_pipelines_in_global_arrival_order(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb = aws[0]
    caps = Caps(deployment=Limit(runs=1))
    for second, (run_id, pipeline) in enumerate([("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")]):
        _acquire(aws, sfn, caps, _request(run_id, pipeline, second))
    assert sfn.admitted == ["a1"]
    for run_id in ["a1", "b1", "a2"]:
        release(ddb, sfn, TABLE, run_id, caps)
    assert sfn.admitted == ["a1", "b1", "a2", "b2"]


def test_a_pipeline_at_its_cap_does_not_hold_back_other_pipelines(aws: Any, sfn: FakeStepFunctions) -> None:
    caps = Caps(deployment=Limit(runs=3), pipelines={"a": Limit(runs=1)})
    assert _acquire(aws, sfn, caps, _request("a1", "a", 0)) == "ADMITTED"
    assert _acquire(aws, sfn, caps, _request("a2", "a", 1)) == "QUEUED"
    assert _acquire(aws, sfn, caps, _request("b1", "b", 2)) == "ADMITTED"
    assert counters(aws[0], TABLE)["deployment"]["runs"] == 2


def test_vcpu_cap_is_fifo_and_ignores_runs_that_reserve_no_vcpus(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb = aws[0]
    caps = Caps(deployment=Limit(vcpus=100))
    states = [
        _acquire(aws, sfn, caps, _request("big", second=0, vcpus=60)),
        _acquire(aws, sfn, caps, _request("mid", second=1, vcpus=30)),
        _acquire(aws, sfn, caps, _request("next", second=2, vcpus=50)),  # 140 > 100: waits
        _acquire(aws, sfn, caps, _request("small", second=3, vcpus=10)),  # would fit, but waits behind "next"
        _acquire(aws, sfn, caps, _request("steps", second=4, vcpus=0)),  # reserves no vCPUs: no cap applies
    ]
    assert states == ["ADMITTED", "ADMITTED", "QUEUED", "QUEUED", "ADMITTED"]
    assert counters(ddb, TABLE)["deployment"]["vcpus"] == 90
    release(ddb, sfn, TABLE, "big", caps)
    assert sfn.admitted == ["big", "mid", "steps", "next", "small"]
    assert counters(ddb, TABLE)["deployment"]["vcpus"] == 90


class CountingReads:
    """A DynamoDB client that counts the items each read consumed (a Query's ScannedCount: what DynamoDB charges
    before a filter; a GetItem's one item; a BatchGetItem's items)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.items_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def query(self, **kwargs: Any) -> Any:
        page = self._client.query(**kwargs)
        self.items_read += int(page.get("ScannedCount", len(page.get("Items", []))))
        return page

    def get_item(self, **kwargs: Any) -> Any:
        response = self._client.get_item(**kwargs)
        self.items_read += 1 if "Item" in response else 0
        return response

    def batch_get_item(self, **kwargs: Any) -> Any:
        response = self._client.batch_get_item(**kwargs)
        self.items_read += sum(len(items) for items in response.get("Responses", {}).values())
        return response


@pytest.mark.parametrize("queued", [20, 150])
def test_each_admission_reads_a_bounded_number_of_items_whatever_the_queue_length(
    aws: Any, sfn: FakeStepFunctions, queued: int
) -> None:
    # Given a pipeline capped at 5 runs and a per-object burst arriving in order (plus an uncapped neighbour)
    ddb, s3 = CountingReads(aws[0]), aws[1]
    caps = Caps(pipelines={"p": Limit(runs=5)})
    burst = [f"r{i:04d}" for i in range(queued)]
    for i, run_id in enumerate(burst):
        request = replace(_request(run_id), arrival={"at": f"2024-06-01T12:00:00.{i:06d}Z", "key": f"in/{run_id}"})
        acquire(ddb, sfn, s3, TABLE, caps, request, ledger_bucket=LEDGER)
    # When every run ends in the order it was admitted
    released = 0
    while released < len(sfn.admitted):
        assert release(ddb, sfn, TABLE, sfn.admitted[released], caps) is True
        released += 1
    # Then all ran in arrival order, at most 5 at once, and each admission read at most 10 items
    assert sfn.admitted == burst
    assert ddb.items_read / queued <= 10, f"{ddb.items_read} items read for {queued} admissions"
    assert _table_is_empty(ddb)
    assert _count_item(ddb, "p") is None  # no run waits: no count to read


def _count_item(ddb: Any, pipeline: str) -> dict[str, Any] | None:
    """The pipeline's COUNT item (None: absent, no run of it waits)."""
    key = {"pk": {"S": "LINE"}, "sk": {"S": f"COUNT#{pipeline}"}}
    item: dict[str, Any] | None = ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True).get("Item")
    return item


def _arriving(run_id: str, order: int, pipeline: str = "p") -> AcquireRequest:
    """A run of a per-object burst: the `order`-th object's arrival (microseconds apart)."""
    at = f"2024-06-01T12:{order // 60_000_000 % 60:02d}:{order // 1_000_000 % 60:02d}.{order % 1_000_000:06d}Z"
    return replace(_request(run_id, pipeline), arrival={"at": at, "key": f"in/{run_id}"})


def _positions(outcomes: list[Any]) -> list[int | None]:
    return [outcome.position for outcome in outcomes]


@pytest.mark.parametrize("waiting", [10, 1000])
def test_decisions_read_at_most_10_items_per_admitted_run_with_10_or_1000_runs_waiting(
    aws: Any, sfn: FakeStepFunctions, waiting: int
) -> None:
    # Given a pipeline capped at 5 runs: 5 running and `waiting` runs in line
    ddb, s3 = aws
    caps = Caps(pipelines={"p": Limit(runs=5)})
    line = [f"r{i:04d}" for i in range(5 + waiting)]
    for order, run_id in enumerate(line):
        admission.enqueue(ddb, TABLE, _arriving(run_id, order + 1), NOW)
    assert dispatch(ddb, sfn, TABLE, caps) == line[:5]
    counting = CountingReads(ddb)
    # When a run arrives last, one arrives before every waiting run, and 10 runs end (each admitting the next)
    late = acquire(counting, sfn, s3, TABLE, caps, _arriving("zz-late", 10**6), ledger_bucket=LEDGER)
    early = acquire(counting, sfn, s3, TABLE, caps, _arriving("aa-early", 0), ledger_bucket=LEDGER)
    for run_id in line[:10]:
        assert release(counting, sfn, TABLE, run_id, caps) is True
    # Then the early run went first and the rest in arrival order; each knew its place in line
    assert sfn.admitted == [*line[:5], "aa-early", *line[5:14]]
    assert _positions([late, early]) == [waiting + 1, 1]
    # And the 10 admissions read at most 10 items each (whatever the line's length: the same at 10 and 1,000)
    assert counting.items_read <= 10 * 10, counting.items_read
    assert counting.items_read == EXPECTED_READS.setdefault("decisions", counting.items_read)


EXPECTED_READS: dict[str, int] = {}  # the first parametrization's reads: the second must read as many


def _reads_per_admitted_run(aws: Any, sfn: FakeStepFunctions, capped: int, busy: int) -> float:
    """Items read per admitted run by a burst of `busy` pipelines (10 runs each, 2 at a time, under a deployment cap of
    50 runs) in a deployment of `capped` capped pipelines that have each run once before (the rest idle)."""
    ddb, s3 = aws
    pipelines = [f"p{i:03d}" for i in range(capped)]
    caps = Caps(deployment=Limit(runs=50), pipelines=dict.fromkeys(pipelines, Limit(runs=2)))
    for order, pipeline in enumerate(pipelines):  # every pipeline ran once: it has its CAP item
        acquire(ddb, sfn, s3, TABLE, caps, _arriving(f"old-{pipeline}", order, pipeline), ledger_bucket=LEDGER)
        assert release(ddb, sfn, TABLE, f"old-{pipeline}", caps) is True
    burst = [(f"{pipeline}-r{i:02d}", pipeline) for i in range(10) for pipeline in pipelines[-busy:]]
    counting = CountingReads(ddb)
    before = len(sfn.admitted)
    for order, (run_id, pipeline) in enumerate(burst):
        acquire(counting, sfn, s3, TABLE, caps, _arriving(run_id, 10_000 + order, pipeline), ledger_bucket=LEDGER)
    released = before
    while released < len(sfn.admitted):
        assert release(counting, sfn, TABLE, sfn.admitted[released], caps) is True
        released += 1
    for busy_pipeline in pipelines[-busy:]:  # each pipeline's runs in arrival order
        line = [run_id for run_id, pipeline in burst if pipeline == busy_pipeline]
        assert [run_id for run_id in sfn.admitted[before:] if run_id in line] == line
    assert _table_is_empty(ddb) and not _count_items(ddb)
    return counting.items_read / len(burst)


def _count_items(ddb: Any) -> list[str]:
    """The pipelines with a COUNT item."""
    query = {"KeyConditionExpression": "pk = :line AND begins_with(sk, :count)", "ConsistentRead": True}
    values = {":line": {"S": "LINE"}, ":count": {"S": "COUNT#"}}
    items = ddb.query(TableName=TABLE, ExpressionAttributeValues=values, **query)["Items"]
    return [item["sk"]["S"].removeprefix("COUNT#") for item in items]


def test_a_decision_reads_as_many_items_with_1_or_300_capped_pipelines(aws: Any, sfn: FakeStepFunctions) -> None:
    # Given a deployment of 1 capped pipeline and one of 300 (299 idle), each with one busy pipeline
    one = _reads_per_admitted_run(aws, sfn, capped=1, busy=1)
    for item in aws[0].scan(TableName=TABLE)["Items"]:  # a fresh table for the second deployment
        aws[0].delete_item(TableName=TABLE, Key={"pk": item["pk"], "sk": item["sk"]})
    many = _reads_per_admitted_run(aws, sfn, capped=300, busy=1)
    # Then admission reads as many items per admitted run in both (at most 10): what the busy pipeline needs
    assert many == one <= 10, (one, many)


def test_an_arrival_at_a_full_cap_reads_its_own_counters_only_however_many_pipelines_wait(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    # Given 20 pipelines at their cap of 1 run, each with a run waiting
    ddb, s3 = aws
    pipelines = [f"p{i:02d}" for i in range(20)]
    caps = Caps(deployment=Limit(runs=50), pipelines=dict.fromkeys(pipelines, Limit(runs=1)))
    for order, pipeline in enumerate(pipelines * 2):
        _acquire(aws, sfn, caps, _arriving(f"{pipeline}-r{order}", order, pipeline))
    # When a third run of one of them arrives
    counting = CountingReads(ddb)
    late = acquire(counting, sfn, s3, TABLE, caps, _arriving("p07-late", 100, "p07"), ledger_bucket=LEDGER)
    # Then it waits second in its pipeline's line, having read its pipeline's and the deployment's counters and its
    # pipeline's count: 3 items, not the other pipelines' (an arrival frees nothing: no one else can start)
    assert (late.state, late.position, counting.items_read) == ("QUEUED", 2, 3)
    # And the line still drains in order when runs end
    assert release(ddb, sfn, TABLE, "p07-r7", caps) is True and sfn.admitted[-1] == "p07-r27"
    assert release(ddb, sfn, TABLE, "p07-r27", caps) is True and sfn.admitted[-1] == "p07-late"


def test_counts_the_previous_version_left_at_0_are_deleted_by_the_first_decision_that_reads_them(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    # Given a table the previous version wrote: a COUNT item at 0 (with its changes) for each of 300 pipelines that
    # ever queued, and a run of p waiting at p's cap
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    for order, run_id in enumerate(["r0", "r1"]):
        _acquire(aws, sfn, caps, _arriving(run_id, order))
    for i in range(300):
        item = {"pk": {"S": "LINE"}, "sk": {"S": f"COUNT#old{i:03d}"}, "queued": {"N": "0"}, "changes": {"N": "4"}}
        ddb.put_item(TableName=TABLE, Item=item)
    # When two decisions run
    counting = CountingReads(ddb)
    assert dispatch(counting, sfn, TABLE, caps) == []
    first = counting.items_read
    assert dispatch(counting, sfn, TABLE, caps) == []
    # Then the first read the 300 counts once and deleted them; the second reads p's count and counter only
    assert first == 302 and counting.items_read - first == 2 and _count_items(ddb) == ["p"]


def _as_an_older_version_left_it(ddb: Any, *pipelines: str) -> None:
    """The table as a version that kept no waiting counts and no HELD items left it: no COUNT items of `pipelines`
    (default: all), no HELD items, never upgraded."""
    for item in ddb.scan(TableName=TABLE)["Items"]:
        pk, sk = item["pk"]["S"], item["sk"]["S"]
        counted = sk.startswith("COUNT#") and sk.removeprefix("COUNT#") in (pipelines or [sk.removeprefix("COUNT#")])
        fence = pk == admission.COUNTED and sk in (pipelines or [sk])
        if counted or fence or pk in (admission.HELD, admission.UPGRADED):
            ddb.delete_item(TableName=TABLE, Key={"pk": item["pk"], "sk": item["sk"]})


def test_a_line_without_waiting_counts_is_recounted_and_drains_in_order(aws: Any, sfn: FakeStepFunctions) -> None:
    # Given a line written by a version that kept no counts: one run holds p's only slot, four wait
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    line = [f"r{i}" for i in range(5)]
    for order, run_id in enumerate(line):
        _acquire(aws, sfn, caps, _arriving(run_id, order))
    _as_an_older_version_left_it(ddb)
    # When the runs end one by one (no count says anyone waits: the first dispatch finds the line and recounts it)
    for run_id in line:
        assert release(ddb, sfn, TABLE, run_id, caps) is True
    # Then every run started, in arrival order, and the count ends at 0
    assert sfn.admitted == line
    assert _table_is_empty(ddb) and _count_item(ddb, "p") is None


def test_the_sweepers_recount_frees_runs_a_counted_pipeline_hid(aws: Any, sfn: FakeStepFunctions) -> None:
    # Given old runs of pipeline q waiting uncounted, q's slot freed, and a counted run of pipeline a waiting at
    # a's cap: a dispatch sees only a's count, a is full, so it reads no further
    ddb = aws[0]
    caps = Caps(pipelines={"a": Limit(runs=1), "q": Limit(runs=1)})
    for order, (run_id, pipeline) in enumerate([("q0", "q"), ("q1", "q"), ("q2", "q"), ("a0", "a"), ("a1", "a")]):
        _acquire(aws, sfn, caps, _arriving(run_id, order, pipeline))
    _as_an_older_version_left_it(ddb, "q")
    ddb.delete_item(TableName=TABLE, Key={"pk": {"S": "RUN"}, "sk": {"S": "q0"}})  # q0 ended under the old version
    ddb.put_item(TableName=TABLE, Item={"pk": {"S": "LINE"}, "sk": {"S": "CAP#pipeline#q"}, "runs": {"N": "0"}})
    assert dispatch(ddb, sfn, TABLE, caps) == [] and sfn.admitted == ["q0", "a0"]
    # When the sweeper's tick finds the table never upgraded: it sweeps every run once, gives admitted runs their
    # HELD item and recounts, then dispatches
    holders, corrected = admission.runs_to_sweep(ddb, TABLE)
    assert corrected == 1 and sorted(run["sk"] for run in holders) == ["a0", "a1", "q1", "q2"]
    assert dispatch(ddb, sfn, TABLE, caps) == ["q1"]
    # Then q's runs start again; later ticks read the marker and the runs holding slots only
    assert release(ddb, sfn, TABLE, "q1", caps) is True and sfn.admitted[-1] == "q2"
    counting = CountingReads(ddb)
    holders, corrected = admission.runs_to_sweep(counting, TABLE)
    assert corrected == 0 and sorted(run["sk"] for run in holders) == ["a0", "q2"] and counting.items_read == 3


def test_a_recount_never_overwrites_a_count_that_changed_while_it_read_the_line(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    # Given two uncounted waiting runs
    ddb, s3 = aws
    caps = Caps(pipelines={"p": Limit(runs=1)})
    for order, run_id in enumerate(["r0", "r1", "r2"]):
        _acquire(aws, sfn, caps, _arriving(run_id, order))
    _as_an_older_version_left_it(ddb)

    class RunJoinsDuringTheRecount:
        def __init__(self, client: Any) -> None:
            self._client, self.joined = client, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._client, name)

        def transact_write_items(self, **kwargs: Any) -> Any:
            if not self.joined:  # between the recount's read of the line and its write: a run joins it
                self.joined = True
                admission.enqueue(self._client, TABLE, _arriving("r3", 3), NOW)
            return self._client.transact_write_items(**kwargs)

    # When a recount reads the line (2 waiting) while a third run joins it
    assert admission.recount_waiting(RunJoinsDuringTheRecount(ddb), TABLE) == (0, False)
    # Then the count the join made stands (1, not 2 or 3) and the recount says it is not complete; the next one
    # sets it from the line
    count = ddb.get_item(TableName=TABLE, Key={"pk": {"S": "LINE"}, "sk": {"S": "COUNT#p"}})["Item"]
    assert count["queued"] == {"N": "1"}
    assert admission.recount_waiting(ddb, TABLE) == (1, True)
    count = ddb.get_item(TableName=TABLE, Key={"pk": {"S": "LINE"}, "sk": {"S": "COUNT#p"}})["Item"]
    assert count["queued"] == {"N": "3"}
    del s3


def test_a_recount_never_counts_a_run_that_joined_and_left_while_it_read_the_line(aws: Any) -> None:
    # Given a pipeline that ran before and has no run waiting: no COUNT item (deleted at 0), its COUNTED fence stays
    ddb = aws[0]
    admission.enqueue(ddb, TABLE, _arriving("r0", 0), NOW)
    assert admission._release_run(ddb, TABLE, "r0") is True
    admission._drop_count_if_zero(ddb, TABLE, "p")
    assert _count_item(ddb, "p") is None

    class RunJoinsAndLeavesAsTheLineIsRead:
        def __init__(self, client: Any) -> None:
            self._client, self.joined = client, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._client, name)

        def query(self, **kwargs: Any) -> Any:
            reads_the_line = kwargs.get("ProjectionExpression") == "pipeline"
            if reads_the_line and not self.joined:  # r1 joins before the recount reads the line, leaves after
                self.joined = True
                admission.enqueue(self._client, TABLE, _arriving("r1", 1), NOW)
                page = self._client.query(**kwargs)
                assert admission._release_run(self._client, TABLE, "r1") is True
                admission._drop_count_if_zero(self._client, TABLE, "p")
                return page
            return self._client.query(**kwargs)

    # When a recount reads no count for p, then r1 in the line, while r1 joins and leaves (its count created, deleted)
    assert admission.recount_waiting(RunJoinsAndLeavesAsTheLineIsRead(ddb), TABLE) == (0, False)
    # Then the fence saw the change: no count says a run of p waits, and the next recount finds every count right
    assert _count_item(ddb, "p") is None
    assert admission.recount_waiting(ddb, TABLE) == (0, True)


def test_a_dispatch_prunes_spend_of_days_older_than_the_spend_ttl(aws: Any, sfn: FakeStepFunctions) -> None:
    # Given a pipeline at its cap with spend of old days, and a run of it waiting
    ddb = aws[0]
    key = {"pk": {"S": "LINE"}, "sk": {"S": "CAP#pipeline#p"}}
    ddb.put_item(TableName=TABLE, Item={**key, "runs": {"N": "1"}, "usd@2024-01-01": {"N": "3"},
                                        "usd@2024-05-20": {"N": "2"}, "usd@2024-06-01": {"N": "1"}})  # fmt: skip
    admission.enqueue(ddb, TABLE, _arriving("r1", 1), NOW)
    # When a dispatch reads the pipeline's counter (a run of it waits)
    assert dispatch(ddb, sfn, TABLE, Caps(pipelines={"p": Limit(runs=1, usd=5.0)}), clock=lambda: NOW) == []
    # Then the spend of days older than 35 days is gone, the rest stays
    item = ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]
    assert sorted(k for k in item if k.startswith("usd@")) == ["usd@2024-05-20", "usd@2024-06-01"]


def test_cluster_cap_counts_only_runs_that_create_a_cluster(aws: Any, sfn: FakeStepFunctions) -> None:
    caps = Caps(deployment=Limit(clusters=1))
    assert _acquire(aws, sfn, caps, _request("c1", "ec2", 0, clusters=1, vcpus=26)) == "ADMITTED"
    assert _acquire(aws, sfn, caps, _request("c2", "ec2", 1, clusters=1, vcpus=26)) == "QUEUED"
    assert _acquire(aws, sfn, caps, _request("s1", "serverless", 2, vcpus=64)) == "ADMITTED"
    release(aws[0], sfn, TABLE, "c1", caps)
    assert sfn.admitted == ["c1", "s1", "c2"]


def test_a_run_bigger_than_a_cap_fails_at_once(aws: Any, sfn: FakeStepFunctions) -> None:
    caps = Caps(pipelines={"p": Limit(vcpus=16)})
    assert _acquire(aws, sfn, caps, _request("huge", vcpus=64)) == "REJECTED"
    (token, error, cause) = sfn.failed[0]
    assert (token, error) == ("token-huge", "ReservationExceedsCap") and "pipeline#p.vcpus (64 > 16)" in cause
    assert runs(aws[0], TABLE) == []


def test_a_waiting_run_that_no_longer_fits_a_shrunk_cap_fails_instead_of_blocking(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    # Given a run waiting when a deployment lowers the pipeline's vCPU cap below its reservation
    ddb = aws[0]
    before, after = Caps(pipelines={"p": Limit(runs=1)}), Caps(pipelines={"p": Limit(runs=1, vcpus=16)})
    _acquire(aws, sfn, before, _request("r1", second=0, vcpus=8))
    _acquire(aws, sfn, before, _request("r2", second=1, vcpus=64))
    _acquire(aws, sfn, before, _request("r3", second=2, vcpus=4))
    # When a slot frees under the new caps
    release(ddb, sfn, TABLE, "r1", after)
    # Then the oversized run fails at once and the next one starts
    assert [(token, error) for token, error, _ in sfn.failed] == [("token-r2", "ReservationExceedsCap")]
    assert sfn.admitted == ["r1", "r3"]
    assert [r["sk"] for r in runs(ddb, TABLE)] == ["r3"]


# --------------------------------------------------------------------------- release


def test_release_is_idempotent(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    _acquire(aws, sfn, caps, _request("r1", clusters=1, vcpus=8))
    assert release(ddb, sfn, TABLE, "r1", caps) is True
    assert release(ddb, sfn, TABLE, "r1", caps) is False
    assert release(ddb, sfn, TABLE, "never-seen", caps) is False
    assert counters(ddb, TABLE)["pipeline#p"] == {"runs": 0, "clusters": 0, "vcpus": 0}


def test_release_with_the_workflows_hints_needs_no_read_and_falls_back_when_caps_changed(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    for run_id in ("r1", "r2"):
        _acquire(aws, sfn, caps, _request(run_id, vcpus=4))
    hints = {"pipeline": "p", "reservation": Reservation(vcpus=4)}
    assert release(ddb, sfn, TABLE, "r1", caps, **hints) is True  # type: ignore[arg-type]
    assert counters(ddb, TABLE)["pipeline#p"] == {"runs": 1, "clusters": 0, "vcpus": 4}  # r2 took the slot
    # Caps changed since r2 was admitted (now also a deployment cap): the hint no longer matches its charge
    changed = Caps(deployment=Limit(runs=5), pipelines={"p": Limit(runs=1)})
    assert release(ddb, sfn, TABLE, "r2", changed, **hints) is True  # type: ignore[arg-type]
    assert release(ddb, sfn, TABLE, "r2", changed, **hints) is False  # type: ignore[arg-type]
    assert _table_is_empty(ddb)


def test_releasing_a_queued_run_takes_it_out_of_line(aws: Any, sfn: FakeStepFunctions) -> None:
    # An execution aborted or timed out while waiting: cleanup releases it before its turn.
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    for second, run_id in enumerate(["r1", "r2", "r3"]):
        _acquire(aws, sfn, caps, _request(run_id, second=second))
    assert release(ddb, sfn, TABLE, "r2", caps) is True
    release(ddb, sfn, TABLE, "r1", caps)
    assert sfn.admitted == ["r1", "r3"]
    assert [r["sk"] for r in runs(ddb, TABLE)] == ["r3"]


def test_a_run_whose_task_is_gone_gives_its_slot_to_the_next(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    for second, run_id in enumerate(["r1", "r2", "r3"]):
        _acquire(aws, sfn, caps, _request(run_id, second=second))
    sfn.gone.add("token-r2")  # r2's execution timed out while it waited
    release(ddb, sfn, TABLE, "r1", caps)
    assert sfn.admitted == ["r1", "r3"]
    assert counters(ddb, TABLE)["pipeline#p"]["runs"] == 1
    assert [(r["sk"], r["state"]) for r in runs(ddb, TABLE)] == [("r3", "ADMITTED")]


def test_an_admission_whose_answer_failed_waits_again_and_keeps_its_execution_for_the_sweeper(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    # Given r2 waiting behind r1 (on a table the sweeper has seen: it reads the HELD items), and Step Functions
    # throttling the first answer to r2
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    for second, run_id in enumerate(["r1", "r2"]):
        _acquire(aws, sfn, caps, _request(run_id, second=second))
    admission.runs_to_sweep(ddb, TABLE)
    throttled: list[str] = []

    def throttle_once(token: str) -> None:
        if token == "token-r2" and not throttled:
            throttled.append(token)
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "SendTaskSuccess")

    sfn.on_success = throttle_once
    # When r1 ends (r2's admission is undone: back in line) and a later dispatch admits r2
    with pytest.raises(ClientError):
        release(ddb, sfn, TABLE, "r1", caps)
    assert [(r["sk"], r["state"]) for r in runs(ddb, TABLE)] == [("r2", "QUEUED")]
    assert dispatch(ddb, sfn, TABLE, caps) == ["r2"]
    # Then the slot r2 holds names its execution, which the sweeper checks
    holders, _ = admission.runs_to_sweep(ddb, TABLE)
    assert [(h["sk"], h["execution_arn"]) for h in holders] == [("r2", _request("r2").execution_arn)]


def test_counters_lists_every_scope_however_many_pages_they_take(aws: Any) -> None:
    # Given 300 capped pipelines whose counters take more than one 1 MB Query page
    ddb = aws[0]
    for i in range(300):
        key = {"pk": {"S": "LINE"}, "sk": {"S": f"CAP#pipeline#p{i:03d}"}}
        item = {**key, "runs": {"N": "1"}, "pad": {"S": "x" * 4000}}  # 4 KB: 300 take two pages
        ddb.put_item(TableName=TABLE, Item=item)
    # Then every scope is listed
    assert len(counters(ddb, TABLE)) == 300


def test_a_retried_acquire_refreshes_the_token_or_answers_at_once(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb = aws[0]
    caps = Caps(pipelines={"p": Limit(runs=1)})
    _acquire(aws, sfn, caps, _request("r1", second=0))
    _acquire(aws, sfn, caps, _request("r2", second=1))
    retried = AcquireRequest(**{**_request("r2", second=1).__dict__, "token": "token-r2-retry"})
    assert _acquire(aws, sfn, caps, retried) == "QUEUED"
    again = AcquireRequest(**{**_request("r1", second=0).__dict__, "token": "token-r1-retry"})
    assert _acquire(aws, sfn, caps, again) == "ADMITTED"
    release(ddb, sfn, TABLE, "r1", caps)
    assert [token for token, _ in sfn.succeeded] == ["token-r1", "token-r1-retry", "token-r2-retry"]


def test_queued_ledger_entry_never_overwrites_a_later_one(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb, s3 = aws
    key = "_runs/p/2024/06/01/r2.json"
    s3.put_object(Bucket=LEDGER, Key=key, Body=b'{"state": "STARTED"}')
    caps = Caps(pipelines={"p": Limit(runs=1)})
    _acquire(aws, sfn, caps, _request("r1"))
    assert _acquire(aws, sfn, caps, _request("r2", second=1)) == "QUEUED"
    assert json.loads(s3.get_object(Bucket=LEDGER, Key=key)["Body"].read()) == {"state": "STARTED"}


def test_transaction_conflicts_are_retried() -> None:
    conflict = {
        "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
        "CancellationReasons": [{"Code": "TransactionConflict"}, {"Code": "None"}],
    }
    calls: list[Any] = []

    class Flaky:
        def transact_write_items(self, TransactItems: Any) -> None:  # noqa: N803 - boto3 names
            calls.append(TransactItems)
            if len(calls) < 3:
                raise ClientError(conflict, "TransactWriteItems")  # type: ignore[arg-type]

    dynamo.transact(Flaky(), [{"Put": {}}])
    assert len(calls) == 3


# --------------------------------------------------------------------------- races


def test_concurrent_arrivals_and_releases_never_exceed_a_cap_and_leave_nothing_held(aws: Any) -> None:
    # Given caps per pipeline and per deployment (runs and vCPUs), and 60 runs arriving at random moments
    ddb, s3 = aws
    caps = Caps(deployment=Limit(runs=3, vcpus=10), pipelines={"a": Limit(runs=2), "b": Limit(runs=2)})
    rng = random.Random(7)
    plan = {f"r{i:02d}": (rng.choice(["a", "b", "c"]), rng.choice([0, 2, 4])) for i in range(60)}
    admitted_events = {run_id: threading.Event() for run_id in plan}
    active: dict[str, tuple[str, int]] = {}
    violations: list[str] = []
    guard = threading.Lock()

    def on_success(token: str) -> None:
        run_id = token.removeprefix("token-")
        with guard:
            active[run_id] = plan[run_id]
            held = list(active.values())
            if len(held) > 3 or sum(v for _, v in held) > 10:
                violations.append(f"deployment over its caps: {sorted(active)}")
            for pipeline in ("a", "b"):
                if sum(1 for p, _ in held if p == pipeline) > 2:
                    violations.append(f"pipeline {pipeline} over its cap: {sorted(active)}")
        admitted_events[run_id].set()

    sfn = FakeStepFunctions(on_success=on_success)
    work = list(plan)
    rng.shuffle(work)

    def worker() -> None:
        while True:
            with guard:
                if not work:
                    return
                run_id = work.pop()
            pipeline, vcpus = plan[run_id]
            time.sleep(rng.random() * 0.01)
            request = _request(run_id, pipeline, second=int(run_id[1:]) % 60, vcpus=vcpus)
            acquire(ddb, sfn, s3, TABLE, caps, request, ledger_bucket=LEDGER)
            assert admitted_events[run_id].wait(30), f"{run_id} never admitted"
            time.sleep(rng.random() * 0.005)
            with guard:
                del active[run_id]
            hints: dict[str, Any] = {"pipeline": pipeline, "reservation": Reservation(vcpus=vcpus)} if vcpus else {}
            assert release(ddb, sfn, TABLE, run_id, caps, **hints) is True

    # When eight workers acquire, run and release them all at once
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then no admission ever exceeded a cap, each run was admitted once, and nothing is left held
    assert violations == []
    assert sorted(sfn.admitted) == sorted(plan)
    assert _table_is_empty(ddb)
    assert dispatch(ddb, sfn, TABLE, caps) == []


# --------------------------------------------------------------------------- handler


def test_handler_release_and_bad_action(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMISSION_TABLE", TABLE)
    put_pipeline_settings(monkeypatch, "p", {"caps": {"runs": 1}})
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    handler = load_handler("admission")
    context = lambda_context("autopilot-test-admission")
    assert handler.lambda_handler({"action": "release", "run_id": "r1", "pipeline": "p"}, context) == {
        "released": False
    }
    # after a failure, the release also answers the failure as the ledger records it (issue 13.7)
    timed_out = {
        "action": "release",
        "run_id": "r1",
        "pipeline": "p",
        "error": {"Error": "States.Timeout", "Cause": ""},
    }
    failure = handler.lambda_handler(timed_out, context)["failure"]
    assert failure["error"] == "States.Timeout" and failure["cause"].startswith("a task or the run did not finish")
    huge = {**timed_out, "error": {"Error": "EMRServerless.JobFailed", "Cause": "x" * 50_000}}
    assert len(handler.lambda_handler(huge, context)["failure"]["cause"]) == 1024
    with pytest.raises(ValueError, match="action: got 'grab'"):
        handler.lambda_handler({"action": "grab"}, context)


def test_handler_reads_a_pipeline_s_caps_from_its_settings_parameter(
    aws: Any, sfn: FakeStepFunctions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployed admission function's caps: the deployment's from ADMISSION_CAPS, a pipeline's from its SSM
    parameter, read when first needed; a pipeline-stack deploy raising the cap is seen after the max age."""
    # Given a pipeline capped at one run by its parameter, and a 1 s max age
    monkeypatch.setenv("ADMISSION_TABLE", TABLE)
    monkeypatch.setenv("ADMISSION_CAPS", json.dumps({"deployment": {"runs": 10}}))
    monkeypatch.setenv("PIPELINE_SETTINGS_MAX_AGE_SECONDS", "1")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    put_pipeline_settings(monkeypatch, "capped", {"caps": {"runs": 1}})
    handler = load_handler("admission")
    monkeypatch.setattr(handler, "CLIENTS", Clients(dynamodb=aws[0], s3=aws[1], sfn=sfn))
    context = lambda_context("autopilot-test-admission")

    def ask(run_id: str, second: int) -> str:
        request = _request(run_id, "capped", second)
        event = {**request.__dict__, "action": "acquire", "reservation": request.reservation.as_dict()}
        return str(handler.lambda_handler(event, context)["state"])

    # When two runs ask: the second waits for the pipeline's one slot
    assert [ask("c1", 0), ask("c2", 1)] == ["ADMITTED", "QUEUED"]
    # When its stack is deployed with two runs, the third run (past the max age) is admitted beside the first
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=settings_parameter_name("autopilot-test", "capped"), Value='{"caps":{"runs":3}}', Type="String",
        Overwrite=True,
    )  # fmt: skip
    time.sleep(1.1)
    assert ask("c3", 2) == "ADMITTED"
    assert [token for token, _ in sfn.succeeded] == ["token-c1", "token-c2", "token-c3"]  # the waiting one first


def test_handler_adds_the_pipeline_dimension_only_beside_its_metric(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Releases publish no metric: a dimension added there stayed for the next invocation, and Powertools warned
    "Dimension 'pipeline' has already been added" when that one added it again."""
    import warnings

    monkeypatch.setenv("ADMISSION_TABLE", TABLE)
    put_pipeline_settings(monkeypatch, "p", {"caps": {"runs": 1}})
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    handler = load_handler("admission")
    context = lambda_context("autopilot-test-admission")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            handler.lambda_handler({"action": "release", "run_id": "r1", "pipeline": "p"}, context)
    assert not [w for w in caught if "has already been added" in str(w.message)]
    assert handler.metrics.dimension_set == {}


@pytest.mark.parametrize(("behind", "exact"), [(3, True), (20, False)])
def test_a_run_that_reaches_the_line_out_of_order_reads_at_most_5_items_to_tell_its_place(
    aws: Any, sfn: FakeStepFunctions, behind: int, exact: bool
) -> None:
    # Given a pipeline at its cap of 1 with 10 runs waiting that arrived before it and `behind` that arrived after it
    # but reached the line first (a router batch's executions reach AcquireRunSlot in any order)
    ddb, s3 = aws
    caps = Caps(pipelines={"p": Limit(runs=1)})
    _acquire(aws, sfn, caps, _arriving("running", 0))
    for order in [*range(1, 11), *range(100, 100 + behind)]:
        _acquire(aws, sfn, caps, _arriving(f"r{order:03d}", order))
    # When it reaches the line
    counting = CountingReads(ddb)
    late = acquire(counting, sfn, s3, TABLE, caps, _arriving("r050", 50), ledger_bucket=LEDGER)
    # Then it is 11th in line (exact with at most 4 runs behind it; an upper bound with more), having read at most its
    # pipeline's counters and count (3), 4 runs behind it and the line's head
    assert late.state == "QUEUED" and counting.items_read <= 3 + 4 + 1, counting.items_read
    if exact:
        assert late.position == 11
    else:
        assert late.position is not None and 11 < late.position <= 11 + behind - 4
    # And it is admitted 11th all the same
    for _ in range(11):
        assert release(ddb, sfn, TABLE, sfn.admitted[-1], caps) is True
    assert sfn.admitted[-1] == "r050"
