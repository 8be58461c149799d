"""Daily budgets (`max_daily_usd`) at admission: the day's spend per scope, estimates, wait or fail, races."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from autopilot_common.admission import (
    BUDGET_EXCEEDED,
    Caps,
    Limit,
    Reservation,
    acquire,
    budget_notifier,
    dispatch,
    estimate_usd,
    record_spend,
    release,
    runs,
    spend_attribute,
)
from autopilot_common.dynamo import load_item
from autopilot_common.pricing import shipped_prices
from config.capacity import run_estimate_usd, run_reservation
from config.guardrails import Limits
from config.loader import ConfigError
from config.model import AppConfig
from stacks.admission import caps_json, caps_section
from tests.conftest import load_handler
from tests.unit.conftest import dev_config, put_pipeline_settings
from tests.unit.fakes import lambda_context
from tests.unit.test_admission import LEDGER, TABLE, FakeStepFunctions, _request
from tests.unit.test_admission import aws as aws  # noqa: F401 - the fixture
from tests.unit.test_admission import sfn as sfn  # noqa: F401 - the fixture

DAY = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def _clock(moment: datetime) -> Any:
    return lambda: moment


def _acquire(aws: Any, sfn: FakeStepFunctions, caps: Caps, run_id: str, usd: float, **kw: Any) -> Any:
    ddb, s3 = aws
    request = _request(run_id, kw.pop("pipeline", "p"), second=kw.pop("second", 0))
    request = type(request)(**{**request.__dict__, "reservation": Reservation(usd=usd)})
    notes: list[dict[str, Any]] = kw.pop("notes", [])
    return acquire(
        ddb,
        sfn,
        s3,
        TABLE,
        caps,
        request,
        ledger_bucket=LEDGER,
        clock=_clock(kw.pop("at", DAY)),
        notify=notes.append,
    )


def _spend(aws: Any, scope: str, day: datetime = DAY) -> float:
    ddb, _ = aws
    raw = ddb.get_item(TableName=TABLE, Key={"pk": {"S": "LINE"}, "sk": {"S": f"CAP#{scope}"}}, ConsistentRead=True)
    return float(load_item(raw.get("Item") or {}).get(spend_attribute(day.date()), 0))


def _ledger(aws: Any, run_id: str) -> dict[str, Any]:
    _, s3 = aws
    body = s3.get_object(Bucket=LEDGER, Key=f"_runs/p/2024/06/01/{run_id}.json")["Body"].read()
    return dict(json.loads(body))


def test_a_run_over_the_budget_waits_says_why_and_starts_when_a_cost_comes_in_below_its_estimate(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    # Given a pipeline with a $1 budget and runs estimated at $0.40
    ddb, _ = aws
    caps = Caps(pipelines={"p": Limit(usd=1.0)})
    notes: list[dict[str, Any]] = []
    assert _acquire(aws, sfn, caps, "a", 0.4, notes=notes).state == "ADMITTED"
    assert _acquire(aws, sfn, caps, "b", 0.4, second=1, notes=notes).state == "ADMITTED"
    # When a third arrives ($0.80 reserved + $0.40 > $1)
    outcome = _acquire(aws, sfn, caps, "c", 0.4, second=2, notes=notes)
    # Then it waits for the budget (not a slot), the ledger and one notification say so
    assert outcome.state == "QUEUED" and outcome.over_budget is not None
    admission = _ledger(aws, "c")["admission"]
    assert admission["waiting_for"] == "budget"
    assert admission["over_budget"] == {
        "scope": "pipeline#p",
        "max_daily_usd": 1.0,
        "spent_usd": 0.8,
        "estimate_usd": 0.4,
        "day": "2024-06-01",
    }
    assert [n["run_id"] for n in notes] == ["c"] and notes[0]["action"] == "held"
    assert _spend(aws, "pipeline#p") == pytest.approx(0.8)
    # and the admitted runs' ledger record says what they reserved
    answer = dict(sfn.succeeded)["token-a"]
    assert answer["budget"]["reserved_usd"] == 0.4 and answer["budget"]["scopes"] == ["pipeline#p"]
    # When another release dispatches, c is noted again but not notified twice
    release(ddb, sfn, TABLE, "a", caps, clock=_clock(DAY), notify=notes.append)
    assert len(notes) == 1 and "token-c" not in dict(sfn.succeeded)
    # When a's recorded cost ($0.10) replaces its estimate, the day's spend is $0.50 and c starts
    settled = record_spend(ddb, sfn, TABLE, caps, "a", 0.1, clock=_clock(DAY + timedelta(minutes=5)))
    assert settled is not None
    assert settled["reserved_usd"] == 0.4 and settled["spent_usd"] == 0.1 and settled["cost_known"] is True
    assert "token-c" in dict(sfn.succeeded)
    assert _spend(aws, "pipeline#p") == pytest.approx(0.1 + 0.4 + 0.4)
    # and recording it again changes nothing (idempotent)
    assert record_spend(ddb, sfn, TABLE, caps, "a", 0.1, clock=_clock(DAY)) is None
    assert _spend(aws, "pipeline#p") == pytest.approx(0.9)


def test_over_budget_fail_refuses_the_run_with_budget_exceeded_naming_scope_budget_spend_and_estimate(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    caps = Caps(pipelines={"p": Limit(usd=0.5, over_budget="fail")})
    assert _acquire(aws, sfn, caps, "a", 0.3).state == "ADMITTED"
    outcome = _acquire(aws, sfn, caps, "b", 0.3, second=1)
    assert outcome.state == "REJECTED"
    ((token, error, cause),) = sfn.failed
    assert token == "token-b" and error == BUDGET_EXCEEDED
    for part in ("pipeline#p", "max_daily_usd $0.500000", "spent $0.300000", "estimate is $0.300000", "2024-06-01"):
        assert part in cause
    ddb, _ = aws
    assert [r["sk"] for r in runs(ddb, TABLE)] == ["a"]  # b holds nothing and is out of line


def test_a_new_day_admits_a_run_waiting_for_the_budget(aws: Any, sfn: FakeStepFunctions) -> None:
    ddb, _ = aws
    caps = Caps(deployment=Limit(usd=1.0))
    assert _acquire(aws, sfn, caps, "a", 0.9).state == "ADMITTED"
    assert _acquire(aws, sfn, caps, "b", 0.9, second=1).state == "QUEUED"
    # another pipeline's run waits behind the deployment's budget too (FIFO)
    assert _acquire(aws, sfn, caps, "c", 0.05, pipeline="q", second=2).state == "QUEUED"
    assert dispatch(ddb, sfn, TABLE, caps, clock=_clock(DAY + timedelta(hours=1))) == []
    tomorrow = DAY + timedelta(hours=12, minutes=1)
    assert dispatch(ddb, sfn, TABLE, caps, clock=_clock(tomorrow)) == ["b", "c"]
    assert _spend(aws, "deployment", tomorrow) == pytest.approx(0.95)
    # a's cost comes in tomorrow: its estimate leaves yesterday, its cost counts today
    record_spend(ddb, sfn, TABLE, caps, "a", 0.2, clock=_clock(tomorrow))
    assert _spend(aws, "deployment") == pytest.approx(0.0)
    assert _spend(aws, "deployment", tomorrow) == pytest.approx(1.15)


def test_an_unknown_cost_keeps_the_estimate_and_a_known_one_becomes_the_next_estimate(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    ddb, _ = aws
    caps = Caps(pipelines={"p": Limit(usd=10.0)})
    _acquire(aws, sfn, caps, "a", 0.5)
    settled = record_spend(ddb, sfn, TABLE, caps, "a", None, clock=_clock(DAY))
    assert settled is not None and settled["cost_known"] is False and settled["spent_usd"] == 0.5
    assert _spend(aws, "pipeline#p") == pytest.approx(0.5)
    assert estimate_usd(ddb, TABLE, "p", 0.5) == 0.5  # nothing learned from an unknown cost
    _acquire(aws, sfn, caps, "b", 0.5, second=1)
    record_spend(ddb, sfn, TABLE, caps, "b", 2.25, clock=_clock(DAY))
    # the next run reserves the largest recent recorded cost, not the synth-time bound it was given
    _acquire(aws, sfn, caps, "c", 0.5, second=2)
    assert dict(sfn.succeeded)["token-c"]["budget"]["reserved_usd"] == 2.25
    assert _spend(aws, "pipeline#p") == pytest.approx(0.5 + 2.25 + 2.25)


def test_a_run_whose_estimate_alone_exceeds_the_budget_runs_once_a_day_not_never(
    aws: Any, sfn: FakeStepFunctions
) -> None:
    caps = Caps(pipelines={"p": Limit(usd=1.0)})
    assert _acquire(aws, sfn, caps, "a", 3.0).state == "ADMITTED"
    assert _acquire(aws, sfn, caps, "b", 3.0, second=1).state == "QUEUED"


def test_concurrent_admissions_never_overspend_a_budget(aws: Any) -> None:
    # Given a $1 budget and 24 runs estimated at $0.30 arriving at once from 8 threads
    ddb, s3 = aws
    caps = Caps(deployment=Limit(usd=1.0), pipelines={"p": Limit(usd=0.7)})
    sfn = FakeStepFunctions()
    work = [f"r{i:02d}" for i in range(24)]
    guard = threading.Lock()

    def worker() -> None:
        while True:
            with guard:
                if not work:
                    return
                run_id = work.pop()
            pipeline = "p" if int(run_id[1:]) % 2 else "q"
            request = _request(run_id, pipeline, second=int(run_id[1:]))
            request = type(request)(**{**request.__dict__, "reservation": Reservation(usd=0.3)})
            acquire(ddb, sfn, s3, TABLE, caps, request, ledger_bucket=LEDGER, clock=_clock(DAY))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then exactly what fits was admitted: 3 in all (0.9 <= 1.0), at most 2 of pipeline p (0.6 <= 0.7)
    admitted = sfn.admitted
    assert len(admitted) == 3, admitted
    assert sum(1 for r in admitted if int(r[1:]) % 2) <= 2
    assert _spend(aws, "deployment") == pytest.approx(0.9)
    assert len(runs(ddb, TABLE, "QUEUED")) == 21


def test_handler_spend_reads_cost_usd_of_the_final_ledger_update(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMISSION_TABLE", TABLE)
    put_pipeline_settings(monkeypatch, "p", {"caps": {"usd": 5.0}})
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    handler = load_handler("admission")
    context = lambda_context("autopilot-test-admission")
    assert handler.recorded_cost({"cost": {"usd": 0.25}}) == 0.25
    for unknown in ({}, {"cost": None}, {"cost": {"usd": None}}, {"cost": {"usd": True}}, None, {"cost": {"usd": -1}}):
        assert handler.recorded_cost(unknown) is None
    assert handler.lambda_handler({"action": "spend", "run_id": "nobody", "update": {}}, context) == {"budget": None}


# --------------------------------------------------------------------------- config and synth


def _config(
    budget: float | None = None, region: str = "us-east-1", eks_estimate: float | None = None, **limits: Any
) -> AppConfig:
    """config/dev.yaml with a deployment budget and `limits` on sales-daily (EMR Serverless, shared-spark)."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["region"] = region
        if eks_estimate is not None:
            raw["pipelines"]["sales-eks"].setdefault("limits", {})["run_estimate_usd"] = eks_estimate
        raw.setdefault("guardrails", {}).setdefault("limits", {})["max_daily_usd"] = budget
        raw["pipelines"]["sales-daily"].setdefault("limits", {}).update(limits)

    return dev_config(mutate)


def test_the_synth_estimate_is_the_application_maximum_for_the_job_timeout_at_the_price_table_rates() -> None:
    config = _config(budget=1000.0, eks_estimate=1.0)
    pipeline = config.pipelines["sales-daily"]
    rates = shipped_prices().serverless("us-east-1", "X86_64")
    hours = pipeline.runtime.execution_timeout_minutes / 60
    # shared-spark's maximum: 64 vCPU, 256 GB memory, 500 GB disk
    expected = hours * (64 * rates["vcpu_hour"] + 256 * rates["memory_gb_hour"] + 500 * rates["storage_gb_hour"])
    assert run_estimate_usd(config, "sales-daily", "us-east-1") == pytest.approx(expected, abs=1e-6)
    assert run_reservation(config, "sales-daily").usd == pytest.approx(expected, abs=1e-6)
    assert run_reservation(_config(), "sales-daily").usd is None  # no budget: no estimate, no spend step
    assert run_reservation(config, "sales-adhoc").usd == 0.0  # steps on an existing cluster add no cost
    # the admission function gets the budget; a pipeline that fails over budget has caps for its over_budget
    failing = _config(budget=1000.0, eks_estimate=1.0, over_budget="fail")
    caps = json.loads(caps_json(failing))
    assert caps == {"deployment": {**caps["deployment"], "usd": 1000.0}}  # the deployment's only
    assert (caps_section(failing.pipelines["sales-daily"]) or {})["over_budget"] == "fail"
    assert caps_section(_config().pipelines["sales-daily"]) is None  # uncapped, waits over budget: no section


def test_budget_problems_are_one_line_each_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        _config(budget=0.01)
    lines = [line for line in str(info.value).splitlines() if "sales-daily" in line]
    assert any("limits.run_estimate_usd: one run is estimated at $" in line for line in lines), lines
    # an EMR on EKS pipeline has no size to price: run_estimate_usd (or run_vcpus) is required under a budget
    assert any(
        "'sales-eks'" in line and "EMR on EKS runs have no size" in line for line in str(info.value).splitlines()
    )
    with pytest.raises(ConfigError, match="no prices for region eu-south-2"):
        _config(budget=1000.0, region="eu-south-2", eks_estimate=1.0)
    with pytest.raises(ConfigError, match="limits.run_estimate_usd: set, but no daily budget applies"):
        _config(run_estimate_usd=0.5)
    with pytest.raises(ValueError, match="max_daily_usd"):
        Limits(max_daily_usd=0)


def test_the_synth_estimate_of_a_transient_cluster_is_every_instance_with_its_ebs_for_the_run_timeout() -> None:
    def groups(raw: dict[str, Any]) -> None:
        raw["region"] = "us-east-1"
        raw["guardrails"] = {"limits": {"max_daily_usd": 1000.0}}
        raw["pipelines"]["sales-eks"]["limits"] = {"run_estimate_usd": 1.0}
        runtime = raw["pipelines"]["sales-cluster"]["runtime"]
        runtime.pop("scaling")
        runtime.pop("retry")  # on spot interruptions: this cluster has no spot instances (and no retry to count)
        runtime["instances"] = {"mode": "groups", "core": {"instance_type": "m5.xlarge", "count": 1}, "task": None}

    # primary m5.large (the default below 50 nodes), one core m5.xlarge, 64 GB gp3 each (the default volumes)
    config = dev_config(groups)
    table = shipped_prices()
    per_hour = (
        sum(
            table.instance("us-east-1", kind)["ec2_hour"] + table.instance("us-east-1", kind)["emr_hour"]
            for kind in ("m5.large", "m5.xlarge")
        )
        + 2 * 64 * table.ebs_gb_month("us-east-1", "gp3") / 730
    )
    expected = per_hour * config.pipelines["sales-cluster"].run_timeout_minutes / 60
    assert run_estimate_usd(config, "sales-cluster", "us-east-1") == pytest.approx(expected, abs=1e-6)


def test_a_budget_hold_is_published_like_the_run_notifications() -> None:
    published: list[dict[str, Any]] = []

    class Topic:
        def publish(self, **kwargs: Any) -> dict[str, Any]:
            published.append(kwargs)
            return {"MessageId": "m1"}

    assert budget_notifier(Topic(), None) is None  # type: ignore[arg-type]
    notify = budget_notifier(Topic(), "arn:aws:sns:us-east-1:123456789012:autopilot-dev")  # type: ignore[arg-type]
    assert notify is not None
    notify({"run_id": "r1", "pipeline": "sales-budget", "action": "held", "message": "run r1 waits"})
    (call,) = published
    assert call["Subject"] == "EMR Autopilot run waits for its budget: sales-budget"
    assert call["MessageAttributes"]["state"] == {"DataType": "String", "StringValue": "QUEUED"}
    assert json.loads(call["Message"])["run_id"] == "r1"
