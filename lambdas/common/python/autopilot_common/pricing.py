"""What a run cost in dollars: its recorded usage times the price table shipped with the app (`prices.json`).

One home for the price table and the cost model of every runtime:

- EMR Serverless bills the job run's `billedResourceUtilization` (GetJobRun: vCPU-hours, memory GB-hours and
  storage GB-hours beyond 20 GB per worker, with a one-minute minimum per worker) at the region's rates for the
  application's architecture (EMR Serverless API reference, JobRun.billedResourceUtilization).
- EMR on EC2 bills every instance per second with a one-minute minimum, from launch to termination: the EC2 price
  (on-demand, or the spot price when one is known) plus the EMR price of its type (the same for either market),
  plus its EBS volumes (per GB-month of 730 hours).
- EMR on EKS bills the vCPU and memory the job's pods request, per hour, at the EMR on EKS rates; the EKS nodes
  the pods run on (EC2 or Fargate) are billed separately and are not included.

A price the table lacks (region, instance type, architecture, volume type) gives `usd: None` with the reason:
never a wrong number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict  # pydantic (the ledger schema's generator) needs it on Python < 3.12

PRICES_FILE = Path(__file__).with_name("prices.json")
HOURS_PER_MONTH = 730  # AWS prices EBS per GB-month of 730 hours
MINIMUM_BILLED_SECONDS = 60  # EC2 (Linux) and EMR bill per second, with a one-minute minimum per instance
Market = Literal["ON_DEMAND", "SPOT"]


class CostLine(TypedDict):
    """One priced item: `quantity` `unit` at `rate_usd` each."""

    item: str
    quantity: float
    unit: str
    rate_usd: float
    usd: float


class Cost(TypedDict):
    """A run's cost: `usd` None (with `reason`) when a price is missing."""

    usd: float | None
    breakdown: list[CostLine]
    price_source: str
    prices_as_of: str
    reason: NotRequired[str]
    notes: NotRequired[list[str]]


class MissingPrice(LookupError):
    """The price table has no price for what was used; the message says which."""


@dataclass(frozen=True)
class PriceTable:
    """The parsed `prices.json`: per region, EMR Serverless and EMR on EKS rates, EBS and instance prices."""

    data: Mapping[str, Any]

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        return cls(json.loads(path.read_text()))

    @property
    def source(self) -> str:
        return f"{PRICES_FILE.name} v{self.data['version']}: {self.data['source']}"

    @property
    def as_of(self) -> str:
        return str(self.data["prices_as_of"])

    def region(self, region: str) -> Mapping[str, Any]:
        regions: Mapping[str, Any] = self.data["regions"]
        prices = regions.get(region)
        if prices is None:
            raise MissingPrice(f"no prices for region {region} (the price table lists {', '.join(sorted(regions))})")
        resolved: Mapping[str, Any] = regions[prices["same_as"]] if "same_as" in prices else prices
        return resolved

    def serverless(self, region: str, architecture: str) -> Mapping[str, float]:
        rates = self.region(region).get("emr_serverless", {}).get(architecture)
        if rates is None:
            raise MissingPrice(f"no EMR Serverless {architecture} prices for {region}")
        return rates  # type: ignore[no-any-return]

    def eks(self, region: str) -> Mapping[str, float]:
        rates = self.region(region).get("emr_eks")
        if rates is None:
            raise MissingPrice(f"no EMR on EKS prices for {region}")
        return rates  # type: ignore[no-any-return]

    def instance(self, region: str, instance_type: str) -> Mapping[str, float]:
        prices = self.region(region).get("instances", {}).get(instance_type)
        if prices is None:
            raise MissingPrice(f"no price for instance type {instance_type} in {region}")
        return prices  # type: ignore[no-any-return]

    def ebs_gb_month(self, region: str, volume_type: str) -> float:
        price = self.region(region).get("ebs_gb_month", {}).get(volume_type)
        if price is None:
            raise MissingPrice(f"no EBS {volume_type} price for {region}")
        return float(price)


@cache
def shipped_prices() -> PriceTable:
    """The table shipped with the app (read once per process)."""
    return PriceTable.from_file(PRICES_FILE)


def _line(item: str, quantity: float, unit: str, rate: float) -> CostLine:
    return {
        "item": item,
        "quantity": round(quantity, 6),
        "unit": unit,
        "rate_usd": rate,
        "usd": round(quantity * rate, 6),
    }


def _cost(table: PriceTable, lines: list[CostLine], notes: list[str]) -> Cost:
    cost: Cost = {
        "usd": round(sum(line["usd"] for line in lines), 6),
        "breakdown": lines,
        "price_source": table.source,
        "prices_as_of": table.as_of,
    }
    if notes:
        cost["notes"] = notes
    return cost


def unpriced(table: PriceTable, reason: str, notes: Sequence[str] = ()) -> Cost:
    """No number: what was missing, and the usage we could not price stays in the ledger beside it."""
    cost: Cost = {
        "usd": None,
        "breakdown": [],
        "price_source": table.source,
        "prices_as_of": table.as_of,
        "reason": reason,
    }
    if notes:
        cost["notes"] = list(notes)
    return cost


def serverless_cost(table: PriceTable, region: str, architecture: str, billed: Mapping[str, float] | None) -> Cost:
    """EMR Serverless: GetJobRun's `billedResourceUtilization` ({vCPUHour, memoryGBHour, storageGBHour})."""
    if not billed:
        return unpriced(table, "the job run reported no billedResourceUtilization (it never ran, or EMR omitted it)")
    try:
        rates = table.serverless(region, architecture)
    except MissingPrice as exc:
        return unpriced(table, str(exc))
    usage = (
        ("vCPU", "vCPUHour", "vCPU-hour", "vcpu_hour"),
        ("memory", "memoryGBHour", "GB-hour", "memory_gb_hour"),
        ("storage beyond 20 GB/worker", "storageGBHour", "GB-hour", "storage_gb_hour"),
    )
    lines = [
        _line(f"EMR Serverless {what} ({architecture})", float(billed.get(key, 0.0)), unit, rates[rate])
        for what, key, unit, rate in usage
    ]
    return _cost(table, lines, [])


def eks_cost(table: PriceTable, region: str, vcpu_hours: float, memory_gb_hours: float) -> Cost:
    """EMR on EKS: the vCPU- and memory-hours the job's pods requested."""
    note = "EMR on EKS charges only: the EKS nodes (EC2 or Fargate) the pods ran on are billed separately, not included"
    try:
        rates = table.eks(region)
    except MissingPrice as exc:
        return unpriced(table, str(exc), [note])
    lines = [
        _line("EMR on EKS vCPU", vcpu_hours, "vCPU-hour", rates["vcpu_hour"]),
        _line("EMR on EKS memory", memory_gb_hours, "GB-hour", rates["memory_gb_hour"]),
    ]
    return _cost(table, lines, [note])


@dataclass(frozen=True)
class InstanceUsage:
    """One EC2 instance of a cluster: type, market, seconds from launch to termination, EBS attached, and the spot
    price per hour when one was found for its type and zone (None: priced at on-demand, flagged)."""

    instance_type: str
    market: Market
    seconds: float
    ebs: tuple[tuple[str, float], ...] = ()  # (volume type, GB) of each EBS volume EMR attached
    spot_hour: float | None = None


def ec2_cost(table: PriceTable, region: str, instances: Sequence[InstanceUsage]) -> Cost:
    """EMR on EC2: per instance type and market, EC2 + EMR instance-hours, then EBS GB-months."""
    if not instances:
        return unpriced(table, "the cluster reported no instances (none was launched, or ListInstances was empty)")
    ec2: dict[tuple[str, str, float], float] = {}  # (type, market label, rate) -> hours
    emr: dict[tuple[str, float], float] = {}
    ebs: dict[tuple[str, float], float] = {}  # (volume type, rate per GB-month) -> GB-months
    notes: list[str] = []
    spot_at_on_demand = 0
    try:
        for usage in instances:
            prices = table.instance(region, usage.instance_type)
            hours = max(usage.seconds, MINIMUM_BILLED_SECONDS) / 3600
            if usage.market == "SPOT" and usage.spot_hour is not None:
                key = (usage.instance_type, "spot", usage.spot_hour)
            else:
                spot_at_on_demand += usage.market == "SPOT"
                key = (usage.instance_type, "on-demand", prices["ec2_hour"])
            ec2[key] = ec2.get(key, 0.0) + hours
            emr_key = (usage.instance_type, prices["emr_hour"])
            emr[emr_key] = emr.get(emr_key, 0.0) + hours
            for volume_type, gb in usage.ebs:
                ebs_key = (volume_type, table.ebs_gb_month(region, volume_type))
                ebs[ebs_key] = ebs.get(ebs_key, 0.0) + gb * hours / HOURS_PER_MONTH
    except MissingPrice as exc:
        return unpriced(table, str(exc))
    if spot_at_on_demand:
        notes.append(
            f"{spot_at_on_demand} spot instance(s) priced at the on-demand price (no spot price was available): "
            "the EC2 part is an upper bound"
        )
    lines = [_line(f"EC2 {t} {label}", h, "instance-hour", rate) for (t, label, rate), h in sorted(ec2.items())]
    lines += [_line(f"Amazon EMR {t}", h, "instance-hour", rate) for (t, rate), h in sorted(emr.items())]
    lines += [_line(f"EBS {v}", gbm, "GB-month", rate) for (v, rate), gbm in sorted(ebs.items())]
    return _cost(table, lines, notes)
