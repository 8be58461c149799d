"""Run cost in dollars (`autopilot_common.pricing`): usage x the shipped price table, `usd: None` with the reason when
a price is missing, and the ledger schema accepting what it produces."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from autopilot_common.pricing import (
    MINIMUM_BILLED_SECONDS,
    InstanceUsage,
    PriceTable,
    ec2_cost,
    eks_cost,
    serverless_cost,
    shipped_prices,
)
from config.ledger_schema import ledger_schema

TABLE = shipped_prices()


def _rates(region: str) -> Any:
    return TABLE.region(region)


def test_the_shipped_table_is_complete_for_every_region_it_lists() -> None:
    for region in TABLE.data["regions"]:
        prices = _rates(region)
        for arch in ("X86_64", "ARM64"):
            assert set(prices["emr_serverless"][arch]) == {"vcpu_hour", "memory_gb_hour", "storage_gb_hour"}
        assert set(prices["emr_eks"]) == {"vcpu_hour", "memory_gb_hour"}
        for instance_type, item in prices["instances"].items():
            assert set(item) == {"ec2_hour", "emr_hour"}, instance_type
            assert 0 < item["emr_hour"] < item["ec2_hour"], instance_type  # EMR's price is a fraction of EC2's


def test_serverless_cost_is_billed_utilization_times_the_architectures_rates() -> None:
    billed = {"vCPUHour": 1.5, "memoryGBHour": 6.0, "storageGBHour": 2.0}
    cost = serverless_cost(TABLE, "us-east-1", "X86_64", billed)
    rates = _rates("us-east-1")["emr_serverless"]["X86_64"]
    expected = 1.5 * rates["vcpu_hour"] + 6.0 * rates["memory_gb_hour"] + 2.0 * rates["storage_gb_hour"]
    assert cost["usd"] == pytest.approx(expected, abs=1e-6)
    assert cost["usd"] == pytest.approx(1.5 * 0.052624 + 6 * 0.0057785 + 2 * 0.000111, abs=1e-6)  # AWS's list rates
    assert [line["unit"] for line in cost["breakdown"]] == ["vCPU-hour", "GB-hour", "GB-hour"]
    arm = serverless_cost(TABLE, "us-east-1", "ARM64", billed)
    assert arm["usd"] is not None and arm["usd"] < cost["usd"]  # Graviton is priced lower
    assert cost["prices_as_of"] == TABLE.as_of and "prices.json" in cost["price_source"]


def test_a_region_the_table_lacks_gives_no_number_but_the_reason() -> None:
    cost = serverless_cost(TABLE, "ap-south-2", "X86_64", {"vCPUHour": 1.0})
    assert cost["usd"] is None and cost["breakdown"] == []
    assert "no prices for region ap-south-2" in cost["reason"] and "us-east-1" in cost["reason"]
    assert serverless_cost(TABLE, "us-east-1", "X86_64", None)["reason"].startswith("the job run reported no")


def test_a_region_may_share_another_regions_prices() -> None:
    billed = {"vCPUHour": 1.0, "memoryGBHour": 1.0, "storageGBHour": 0.0}
    assert (
        serverless_cost(TABLE, "us-west-2", "X86_64", billed)["usd"]
        == serverless_cost(TABLE, "us-east-1", "X86_64", billed)["usd"]
    )


def test_ec2_cost_prices_each_instance_from_launch_to_end_with_emr_uplift_and_ebs() -> None:
    instances = [
        InstanceUsage("m5.xlarge", "ON_DEMAND", 1800, ebs=(("gp2", 64.0),)),  # primary: 30 minutes
        InstanceUsage("m5.xlarge", "ON_DEMAND", 1800, ebs=(("gp2", 64.0),)),
        InstanceUsage("r5.xlarge", "SPOT", 900, spot_hour=0.08),  # a spot task node with a known spot price
    ]
    cost = ec2_cost(TABLE, "us-east-1", instances)
    m5, r5 = _rates("us-east-1")["instances"]["m5.xlarge"], _rates("us-east-1")["instances"]["r5.xlarge"]
    expected = (
        1.0 * m5["ec2_hour"] + 1.0 * m5["emr_hour"]  # two instances x 0.5 h
        + 0.25 * 0.08 + 0.25 * r5["emr_hour"]  # spot: EC2 at the spot price, EMR at its full price
        + 2 * 64 * 0.5 / 730 * 0.10  # gp2 GB-months
    )  # fmt: skip
    assert cost["usd"] == pytest.approx(expected, abs=1e-5)
    items = {line["item"]: line for line in cost["breakdown"]}
    assert items["EC2 m5.xlarge on-demand"]["quantity"] == 1.0 and items["EC2 r5.xlarge spot"]["rate_usd"] == 0.08
    assert "notes" not in cost


def test_ec2_bills_a_one_minute_minimum_and_flags_spot_priced_at_on_demand() -> None:
    cost = ec2_cost(TABLE, "us-east-1", [InstanceUsage("m5.large", "SPOT", 5)])
    m5 = _rates("us-east-1")["instances"]["m5.large"]
    hours = MINIMUM_BILLED_SECONDS / 3600
    assert cost["usd"] == pytest.approx(hours * (m5["ec2_hour"] + m5["emr_hour"]), abs=1e-6)
    assert "priced at the on-demand price" in cost["notes"][0] and "upper bound" in cost["notes"][0]


def test_an_instance_type_the_table_lacks_gives_no_number() -> None:
    cost = ec2_cost(
        TABLE,
        "us-east-1",
        [InstanceUsage("m5.large", "ON_DEMAND", 60), InstanceUsage("x2gd.16xlarge", "ON_DEMAND", 60)],
    )
    assert cost["usd"] is None and cost["reason"] == "no price for instance type x2gd.16xlarge in us-east-1"
    assert ec2_cost(TABLE, "us-east-1", [])["usd"] is None


def test_eks_cost_says_the_nodes_are_not_included() -> None:
    cost = eks_cost(TABLE, "us-east-1", vcpu_hours=4.0, memory_gb_hours=16.0)
    assert cost["usd"] == pytest.approx(4 * 0.01012 + 16 * 0.00111125, abs=1e-6)
    assert "not included" in cost["notes"][0]
    assert eks_cost(TABLE, "eu-north-1", 1.0, 1.0)["usd"] is None


def test_a_table_from_a_file(tmp_path: Any) -> None:
    data = json.loads(json.dumps(TABLE.data))
    data["regions"] = {"eu-west-1": {"emr_eks": {"vcpu_hour": 0.02, "memory_gb_hour": 0.002}}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    table = PriceTable.from_file(path)
    assert eks_cost(table, "eu-west-1", 1.0, 1.0)["usd"] == pytest.approx(0.022)
    assert serverless_cost(table, "eu-west-1", "X86_64", {"vCPUHour": 1})["reason"] == (
        "no EMR Serverless X86_64 prices for eu-west-1"
    )


def test_every_cost_shape_is_valid_in_a_ledger_entry() -> None:
    validator = jsonschema.Draft202012Validator(ledger_schema())
    base = {
        "schema_version": 1,
        "run_id": "r",
        "pipeline": "p",
        "state": "SUCCEEDED",
        "started_at": "2026-12-07T00:00:00Z",
    }
    for cost in (
        serverless_cost(TABLE, "us-east-1", "X86_64", {"vCPUHour": 1.0, "memoryGBHour": 1.0, "storageGBHour": 0.0}),
        serverless_cost(TABLE, "nowhere-1", "X86_64", {"vCPUHour": 1.0}),
        ec2_cost(TABLE, "us-east-1", [InstanceUsage("m5.large", "SPOT", 5)]),
        eks_cost(TABLE, "us-east-1", 1.0, 1.0),
    ):
        assert not list(validator.iter_errors({**base, "cost": cost})), cost
