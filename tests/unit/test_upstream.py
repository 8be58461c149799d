"""Router: pipelines run `after` others. Upstream run events (via SQS) -> fan-in state -> one downstream run over the
upstream runs' outputs; FAILED upstream runs -> an UPSTREAM_FAILED ledger entry. Everything AWS is moto."""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from autopilot_common.ledger import ledger_key, read_entry
from claims import ClaimStore
from fan_in import FanInStore, UpstreamRunEnd
from routing import DEFAULT_TTL_SECONDS, Metric, Router
from tests.conftest import load_event
from tests.unit.test_router import (
    ARTIFACTS,
    OUTPUTS,
    TABLE,
    TOPIC,
    Aws,
    count,
    executions,
    failures,
    manifest_of,
    route,
    router_aws,
    sqs_event,
)
from upstream import UpstreamRouter, parse_upstream_envelope

DOWNSTREAM = "sales-report"
OUTPUT_PREFIXES = {"sales-daily": "sales-daily", "stock-daily": "stock"}


@pytest.fixture
def aws(moto: str) -> Aws:
    return router_aws()


@pytest.fixture
def report_arn(aws: Aws) -> str:
    return aws.state_machine(f"autopilot-dev-{DOWNSTREAM}")


@pytest.fixture
def router(aws: Aws) -> Router:
    sns = boto3.client("sns", region_name="us-east-1")
    sns.create_topic(Name=TOPIC.rsplit(":", 1)[-1])
    store = FanInStore(aws.ddb, TABLE, ttl_seconds=DEFAULT_TTL_SECONDS)
    upstream = UpstreamRouter(s3=aws.s3, sfn=aws.sfn, fan_in=store, manifest_bucket=ARTIFACTS, outputs_bucket=OUTPUTS,
                              sns=sns, topic_arn=TOPIC)  # fmt: skip
    claims = ClaimStore(aws.ddb, TABLE, ttl_seconds=DEFAULT_TTL_SECONDS)
    return Router(s3=aws.s3, sfn=aws.sfn, claims=claims, manifest_bucket=ARTIFACTS, ledger_bucket=OUTPUTS,
                  upstream=upstream)  # fmt: skip


def run_event(
    pipeline: str,
    run_id: str,
    *,
    state: str = "SUCCEEDED",
    started_at: str = "2024-06-02T03:04:05.678Z",
    logical_date: str | None = None,
) -> dict[str, Any]:
    """The sample "Autopilot Run Succeeded" event, for another run (and state)."""
    event = load_event("autopilot_run_succeeded.json")
    detail = event["detail"]
    outputs = f"s3://{OUTPUTS}/{OUTPUT_PREFIXES[pipeline]}/run_id={run_id}/"
    marker = {"success_marker": outputs + "_SUCCESS"} if state == "SUCCEEDED" else {}
    detail.update(pipeline=pipeline, run_id=run_id, state=state, started_at=started_at,
                  ledger_uri=ledger_uri(pipeline, run_id), outputs={"prefix": outputs} | marker)  # fmt: skip
    if logical_date:
        detail["logical_date"] = logical_date
    if state == "FAILED":
        event["detail-type"] = "Autopilot Run Failed"
    return event


def ledger_uri(pipeline: str, run_id: str) -> str:
    return f"s3://{OUTPUTS}/_runs/{pipeline}/2024/06/02/{run_id}.json"


def lineage(pipeline: str, run_id: str) -> dict[str, str]:
    return {"pipeline": pipeline, "run_id": run_id, "ledger_uri": ledger_uri(pipeline, run_id)}


def envelope(event: dict[str, Any], arn: str, after: list[str], suffixes: list[str] | None = None) -> str:
    """What the downstream's upstream rule sends (stacks.triggers.upstream_envelope)."""
    upstream = {"after": after, "output_prefixes": {p: OUTPUT_PREFIXES[p] for p in after},
                "suffixes": suffixes or [], "ignore_zero_byte": True}  # fmt: skip
    return json.dumps({"pipeline": DOWNSTREAM, "state_machine_arn": arn, "upstream": upstream, "event": event})


def write_outputs(aws: Aws, pipeline: str, run_id: str, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        aws.s3.put_object(Bucket=OUTPUTS, Key=f"{OUTPUT_PREFIXES[pipeline]}/run_id={run_id}/{name}", Body=body)


JOB_OUTPUT = {
    "order_date=2024-06-01/part-00000.parquet": b"PAR1",
    "order_date=2024-06-02/part-00000.parquet": b"PAR1PAR1",
    "order_date=2024-06-02/.part-00000.parquet.crc": b"crc",
    "_temporary/0/part-00001.parquet": b"partial",
    "_metrics.json": b'{"rows_in": 3}',
    "_SUCCESS": b"",
}


def test_a_succeeded_upstream_run_starts_the_downstream_over_exactly_its_outputs(aws: Aws, router: Router,
                                                                               report_arn: str) -> None:  # fmt: skip
    # Given sales-daily's run wrote its job's output, _metrics.json and _SUCCESS
    write_outputs(aws, "sales-daily", "sales-daily-1", JOB_OUTPUT)
    # When its run event reaches sales-report, which runs after it
    body = envelope(run_event("sales-daily", "sales-daily-1"), report_arn, ["sales-daily"])
    report = route(router, sqs_event([body]))
    # Then one sales-report run starts over the two data files only
    assert failures(report) == []
    (execution,) = executions(aws, report_arn)
    manifest = manifest_of(aws, execution)
    assert [o.key for o in manifest.objects] == [
        "sales-daily/run_id=sales-daily-1/order_date=2024-06-01/part-00000.parquet",
        "sales-daily/run_id=sales-daily-1/order_date=2024-06-02/part-00000.parquet",
    ]
    execution_input = json.loads(aws.sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert execution_input["trigger"] == {"type": "upstream", "after": ["sales-daily"],
                                          "event_time": "2024-06-02T03:09:41Z",
                                          "upstream_runs": [lineage("sales-daily", "sales-daily-1")]}  # fmt: skip
    assert count(report, Metric.RUNS_STARTED, DOWNSTREAM) == 1
    # And the same event delivered again starts nothing more: it completed the group, so it starts the same run
    # again (its invocation may have died before StartExecution), which Step Functions refuses by its name
    again = route(router, sqs_event([body, body]))
    assert failures(again) == [] and len(executions(aws, report_arn)) == 1
    assert again.runs_started == [] and again.runs_duplicate == [execution["name"]] * 2


def test_two_upstreams_start_one_run_only_after_both_succeeded(aws: Aws, router: Router, report_arn: str) -> None:
    after = ["sales-daily", "stock-daily"]
    write_outputs(aws, "sales-daily", "s-1", {"part-0.parquet": b"s"})
    write_outputs(aws, "stock-daily", "k-1", {"part-0.parquet": b"k"})
    first = route(router, sqs_event([envelope(run_event("sales-daily", "s-1"), report_arn, after)]))
    assert failures(first) == [] and executions(aws, report_arn) == []
    assert count(first, Metric.UPSTREAM_RUNS, DOWNSTREAM) == 1
    second = route(router, sqs_event([envelope(run_event("stock-daily", "k-1"), report_arn, after)]))
    (execution,) = executions(aws, report_arn)
    assert second.runs_started == [execution["name"]]
    assert sorted(o.key for o in manifest_of(aws, execution).objects) == [
        "sales-daily/run_id=s-1/part-0.parquet",
        "stock/run_id=k-1/part-0.parquet",
    ]
    # Both events again, in one batch: nothing new; a new sales-daily run alone waits for a new stock-daily run
    both = [envelope(run_event(p, r), report_arn, after) for p, r in (("sales-daily", "s-1"), ("stock-daily", "k-1"))]
    route(router, sqs_event(both))
    write_outputs(aws, "sales-daily", "s-2", {"part-0.parquet": b"s2"})
    route(router, sqs_event([envelope(run_event("sales-daily", "s-2"), report_arn, after)]))
    assert len(executions(aws, report_arn)) == 1


def test_the_open_group_keeps_the_newest_run_of_each_upstream(aws: Aws, router: Router, report_arn: str) -> None:
    after = ["sales-daily", "stock-daily"]
    for run_id in ("s-old", "s-new", "k-1"):
        write_outputs(aws, "stock-daily" if run_id.startswith("k") else "sales-daily", run_id, {"p.parquet": b"x"})
    bodies = [
        envelope(run_event("sales-daily", "s-new", started_at="2024-06-02T05:00:00.000Z"), report_arn, after),
        envelope(run_event("sales-daily", "s-old", started_at="2024-06-02T04:00:00.000Z"), report_arn, after),
        envelope(run_event("stock-daily", "k-1"), report_arn, after),
    ]
    for body in bodies:  # the older run's event arrives late: it does not replace the newer one
        route(router, sqs_event([body]))
    (execution,) = executions(aws, report_arn)
    assert sorted(o.key for o in manifest_of(aws, execution).objects) == [
        "sales-daily/run_id=s-new/p.parquet",
        "stock/run_id=k-1/p.parquet",
    ]


def test_upstream_runs_with_a_logical_date_make_one_run_per_date(aws: Aws, router: Router, report_arn: str) -> None:
    after = ["sales-daily", "stock-daily"]
    for pipeline, run_id in (("sales-daily", "s-1"), ("stock-daily", "k-2"), ("stock-daily", "k-1"),
                             ("sales-daily", "s-1b")):  # fmt: skip
        write_outputs(aws, pipeline, run_id, {"p.parquet": b"x"})
    route(router, sqs_event([envelope(run_event("sales-daily", "s-1", logical_date="2024-06-01"), report_arn, after)]))
    route(router, sqs_event([envelope(run_event("stock-daily", "k-2", logical_date="2024-06-02"), report_arn, after)]))
    assert executions(aws, report_arn) == []  # two dates, each with one upstream: nothing complete
    route(router, sqs_event([envelope(run_event("stock-daily", "k-1", logical_date="2024-06-01"), report_arn, after)]))
    (execution,) = executions(aws, report_arn)
    execution_input = json.loads(aws.sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert execution_input["trigger"]["logical_date"] == "2024-06-01"
    # A later sales-daily run of that date starts nothing: the date's run started
    late = envelope(run_event("sales-daily", "s-1b", logical_date="2024-06-01",
                              started_at="2024-06-02T09:00:00.000Z"), report_arn, after)  # fmt: skip
    assert failures(route(router, sqs_event([late]))) == [] and len(executions(aws, report_arn)) == 1


def test_concurrent_upstream_events_start_the_downstream_exactly_once(aws: Aws, report_arn: str) -> None:
    # Given two routers that both read the empty group before either writes it (the race)
    after = ["sales-daily", "stock-daily"]
    both_read = threading.Barrier(2, timeout=10)
    real_get = FanInStore._get
    reads: dict[int, int] = {}

    def racing_get(self: FanInStore, item_id: str) -> dict[str, Any] | None:
        found = real_get(self, item_id)
        me = threading.get_ident()
        if "#open" in item_id and reads.setdefault(me, 0) == 0:
            reads[me] = 1
            both_read.wait()  # the first read of the group: wait until the other writer read it too
        return found

    store = FanInStore(aws.ddb, TABLE, ttl_seconds=DEFAULT_TTL_SECONDS)
    runs = [
        UpstreamRunEnd(p, r, ledger_uri(p, r), f"s3://{OUTPUTS}/{OUTPUT_PREFIXES[p]}/run_id={r}/", "2024-06-02T03:04Z")
        for p, r in (("sales-daily", "s-1"), ("stock-daily", "k-1"))
    ]
    outcomes: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FanInStore, "_get", racing_get)
        threads = [
            threading.Thread(target=lambda r=r: outcomes.append(store.record_success(DOWNSTREAM, after, r).outcome))
            for r in runs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Then one writer lost the version check, read again, and completed the group: one start, one wait
    assert sorted(outcomes) == ["started", "waiting"]
    assert store.waiting_runs(DOWNSTREAM, None) == ([], None)  # the open group starts again empty


def test_a_failed_upstream_run_starts_nothing_and_the_downstream_entry_names_it(aws: Aws, router: Router,
                                                                              report_arn: str) -> None:  # fmt: skip
    after = ["sales-daily", "stock-daily"]
    write_outputs(aws, "stock-daily", "k-1", {"p.parquet": b"x"})
    route(router, sqs_event([envelope(run_event("stock-daily", "k-1"), report_arn, after)]))
    failed = envelope(run_event("sales-daily", "s-9", state="FAILED"), report_arn, after)
    report = route(router, sqs_event([failed]))
    assert failures(report) == [] and executions(aws, report_arn) == []
    assert count(report, Metric.UPSTREAM_FAILURES, DOWNSTREAM) == 1
    listed = aws.s3.list_objects_v2(Bucket=OUTPUTS, Prefix=f"_runs/{DOWNSTREAM}/")["Contents"]
    (key,) = [o["Key"] for o in listed]
    entry = read_entry(aws.s3, OUTPUTS, key)
    assert entry is not None and entry["state"] == "UPSTREAM_FAILED"
    assert entry["failed_upstream"] == lineage("sales-daily", "s-9")
    assert entry["upstream_runs"] == [lineage("stock-daily", "k-1")]  # what had succeeded for it so far
    assert entry["reason"].startswith("upstream sales-daily run s-9 FAILED")
    assert key == ledger_key(DOWNSTREAM, datetime(2024, 6, 2, tzinfo=UTC), entry["run_id"])
    # Redelivered: the same entry is rewritten, not a second one
    route(router, sqs_event([failed]))
    assert len(aws.s3.list_objects_v2(Bucket=OUTPUTS, Prefix=f"_runs/{DOWNSTREAM}/")["Contents"]) == 1


def test_an_event_pointing_at_other_outputs_is_refused_naming_the_field(aws: Aws, router: Router,
                                                                      report_arn: str) -> None:  # fmt: skip
    event = run_event("sales-daily", "s-1")
    event["detail"]["outputs"]["prefix"] = f"s3://{OUTPUTS}/secrets/run_id=s-1/"
    report = route(router, sqs_event([envelope(event, report_arn, ["sales-daily"])]))
    assert failures(report) == ["msg-00000"] and executions(aws, report_arn) == []
    with pytest.raises(ValueError, match=r"^event.detail.outputs.prefix: got 's3://autopilot-dev-outputs/secrets/"):
        parse_upstream_envelope(envelope(event, report_arn, ["sales-daily"]), OUTPUTS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.update(source="aws.s3"), "event: source 'aws.s3', detail-type 'Autopilot Run Succeeded'; "),
        (lambda e: e["detail"].update(pipeline="other"), "event.detail.pipeline: got 'other'; expected one of "),
        (lambda e: e["detail"].pop("run_id"), "event.detail.run_id: got None; expected a non-empty string"),
    ],
)
def test_malformed_upstream_envelopes_name_the_field(report_arn: str, change: Any, message: str) -> None:
    event = copy.deepcopy(run_event("sales-daily", "s-1"))
    change(event)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_upstream_envelope(envelope(event, report_arn, ["sales-daily"]), OUTPUTS)


def test_upstream_runs_that_wrote_nothing_start_nothing_and_say_so(aws: Aws, router: Router, report_arn: str) -> None:
    write_outputs(aws, "sales-daily", "s-1", {"_SUCCESS": b"", "_metrics.json": b"{}"})
    report = route(router, sqs_event([envelope(run_event("sales-daily", "s-1"), report_arn, ["sales-daily"])]))
    assert failures(report) == [] and executions(aws, report_arn) == []
    (listed,) = aws.s3.list_objects_v2(Bucket=OUTPUTS, Prefix=f"_runs/{DOWNSTREAM}/")["Contents"]
    entry = read_entry(aws.s3, OUTPUTS, listed["Key"])
    assert entry is not None and entry["state"] == "SKIPPED"
    assert entry["reason"].startswith("its upstream runs wrote no output objects")
