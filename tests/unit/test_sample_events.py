"""tests/events/: every sample is documented with its AWS source and has the envelope AWS delivers it in."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EVENTS, load_event

SAMPLES = sorted(p.name for p in EVENTS.glob("*.json"))
EVENTBRIDGE_ENVELOPE = ["version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"]


def test_every_sample_is_listed_in_the_readme_with_a_source() -> None:
    readme = (EVENTS / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1] for line in readme.splitlines() if line.startswith("| `")}
    listed = {name.strip(" `") for row in rows for name in row.split(",")}
    assert listed == set(SAMPLES)
    assert all("](https://docs.aws.amazon.com/" in line for line in readme.splitlines() if line.startswith("| `"))


@pytest.mark.parametrize("name", [s for s in SAMPLES if s != "sqs_router_batch.json"])
def test_an_eventbridge_sample_has_the_envelope_in_order(name: str) -> None:
    event = load_event(name)
    assert list(event) == EVENTBRIDGE_ENVELOPE
    assert event["version"] == "0" and event["account"] == "123456789012" and event["region"] == "us-east-1"
    if event["detail-type"] == "AWS API Call via CloudTrail":
        detail = event["detail"]
        assert event["source"] == "aws." + detail["eventSource"].split(".")[0]
        assert detail["eventTime"] == event["time"] and detail["awsRegion"] == event["region"]


def test_the_sqs_sample_carries_the_routers_envelopes_of_eventbridge_events() -> None:
    records = load_event("sqs_router_batch.json")["Records"]
    assert records and all(r["eventSource"] == "aws:sqs" for r in records)
    for record in records:
        envelope = json.loads(record["body"])
        assert list(envelope["event"]) == EVENTBRIDGE_ENVELOPE
