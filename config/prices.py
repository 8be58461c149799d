"""`make prices`: refresh the shipped price table (`autopilot_common/prices.json`) from the AWS Price List API.

    python -m config.prices [--regions us-east-1,us-west-2] [--types m5.xlarge,...] [--dry-run]
    python -m config.prices --check [--max-age-days 90]

It calls the Price List API's `GetProducts` (needs credentials allowed `pricing:GetProducts`, e.g. `AWS_PROFILE`)
with `TERM_MATCH` filters per price, reads each PriceList entry's on-demand USD price
(`terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD`) and writes the table only when every region it lists has
its EMR Serverless, EMR on EKS and EBS rates. A price the API does not return, or returns ambiguously (several
different prices for one filter set), is left out of the table and reported: never guessed. What each price is
matched on is in the query functions below (`_ec2`, `_emr`, `_serverless`, `_eks`, `_ebs`) and in
docs/operations/cost.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import NoCredentialsError

from autopilot_common.pricing import PRICES_FILE
from config.ec2 import INSTANCE_TYPE_PATTERN, CoreFleet, CoreGroup, Ec2Runtime, InstanceFleets, TaskFleet, TaskGroup
from config.loader import CONFIG_DIR, ConfigError, load_config

# The Price List API is served from these regions only (botocore data/endpoints.json: partition `aws`, service
# `api.pricing`); it returns the prices of every region whatever endpoint is called.
PRICING_ENDPOINT_REGIONS = ("us-east-1", "eu-central-1", "ap-south-1")
ARCHITECTURES = ("X86_64", "ARM64")
VOLUME_TYPES = ("gp2", "gp3")
DEFAULT_MAX_AGE_DAYS = 90

# EMR Serverless bills per metered unit: the Price List's ElasticMapReduce products whose `usagetype` contains
# SERVERLESS, by `meterunit` (storage has one rate for both architectures). Matched the way AWS's own EMR sizing
# tool reads them (com.amazonaws.emr.api.AwsPricing.getEmrServerlessPrice).
SERVERLESS_METER_UNITS = {
    "X86_64": {"vcpu_hour": "CPUHours", "memory_gb_hour": "GBHours", "storage_gb_hour": "StorageGBHours"},
    "ARM64": {"vcpu_hour": "ARMCPUHours", "memory_gb_hour": "ARMGBHours", "storage_gb_hour": "StorageGBHours"},
}
# EMR on EKS: productFamily "EMR Containers", operation StartJobRun, by meterunit; the EC2 compute provider's rates
# (Fargate has its own products; the app's cost model has one rate pair, the one for pods on EC2 nodes).
EKS_METER_UNITS = {"vcpu_hour": "CPUHours", "memory_gb_hour": "GBHours"}
EKS_JOB_RUN = {"productFamily": "EMR Containers", "operation": "StartJobRun", "computeprovider": "EC2"}
# EC2: the plain on-demand Linux price of a shared-tenancy instance (capacitystatus=Used: a running instance, not
# an unused capacity reservation), as AWS's Price List examples filter it.
EC2_LINUX_SHARED = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
# EMR's per-instance price on top of EC2's (softwareType EMR; the same products list other software types).
EMR_INSTANCE = {"productFamily": "Elastic Map Reduce Instance", "softwareType": "EMR"}

SOURCE = (
    "AWS Price List API (pricing:GetProducts, on-demand USD, TERM_MATCH filters): EC2 = AmazonEC2 instanceType, "
    "regionCode, operatingSystem=Linux, tenancy=Shared, preInstalledSw=NA, capacitystatus=Used, "
    "licenseModel=No License required; EMR = ElasticMapReduce productFamily=Elastic Map Reduce Instance, "
    "softwareType=EMR, instanceType, regionCode; EMR Serverless = ElasticMapReduce regionCode, meterunit "
    "(CPUHours, GBHours, ARMCPUHours, ARMGBHours, StorageGBHours) with usagetype containing SERVERLESS; EMR on EKS = "
    "ElasticMapReduce productFamily=EMR Containers, operation=StartJobRun, computeprovider=EC2, meterunit "
    "(CPUHours, GBHours); EBS = AmazonEC2 productFamily=Storage, volumeApiName (gp2, gp3). Written by `make prices`."
)


class PricesError(Exception):
    """A problem the tool reports in one line (bad flag, unreadable table, missing credentials)."""


class Unpriced(LookupError):
    """The API returned no price, or several different ones, for a filter set."""


@dataclass(frozen=True)
class Query:
    """One price: a GetProducts call (service code and TERM_MATCH filters) and an optional attribute test."""

    what: str
    service: str
    filters: Mapping[str, str]
    keep: Callable[[Mapping[str, str]], bool] | None = None


def _products(client: Any, query: Query) -> list[dict[str, Any]]:
    """Every product of a filter set, across pages (GetProducts returns NextToken while more remain)."""
    request: dict[str, Any] = {
        "ServiceCode": query.service,
        "FormatVersion": "aws_v1",
        "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in query.filters.items()],
        "MaxResults": 100,
    }
    products: list[dict[str, Any]] = []
    while True:
        page = client.get_products(**request)
        products += [json.loads(entry) for entry in page.get("PriceList", [])]  # each entry is a JSON string
        if not page.get("NextToken"):
            return products
        request["NextToken"] = page["NextToken"]


def _on_demand_usd(product: Mapping[str, Any]) -> set[Decimal]:
    return {
        Decimal(dimension["pricePerUnit"]["USD"])
        for term in product.get("terms", {}).get("OnDemand", {}).values()
        for dimension in term.get("priceDimensions", {}).values()
        if "USD" in dimension.get("pricePerUnit", {})
    }


def fetch_price(client: Any, query: Query) -> float:
    """The one on-demand USD price the filter set matches; Unpriced when there is none or more than one."""
    products = [p for p in _products(client, query) if query.keep is None or query.keep(p["product"]["attributes"])]
    if not products:
        raise Unpriced("the API returned no product for these filters")
    prices = set().union(*(_on_demand_usd(p) for p in products))
    if not prices:
        raise Unpriced(f"{len(products)} product(s) matched but none has an on-demand USD price")
    if len(prices) > 1:
        shown = ", ".join(str(p.normalize()) for p in sorted(prices))
        raise Unpriced(f"ambiguous: {len(products)} products matched with different prices ({shown})")
    return float(prices.pop())


def _serverless(region: str, architecture: str, rate: str) -> Query:
    unit = SERVERLESS_METER_UNITS[architecture][rate]
    return Query(
        f"EMR Serverless {architecture} {rate}",
        "ElasticMapReduce",
        {"regionCode": region, "meterunit": unit},
        keep=lambda attributes: "SERVERLESS" in attributes.get("usagetype", "").upper(),
    )


def _eks(region: str, rate: str) -> Query:
    filters = {"regionCode": region, **EKS_JOB_RUN, "meterunit": EKS_METER_UNITS[rate]}
    return Query(f"EMR on EKS {rate}", "ElasticMapReduce", filters)


def _ebs(region: str, volume_type: str) -> Query:
    filters = {"regionCode": region, "productFamily": "Storage", "volumeApiName": volume_type}
    return Query(f"EBS {volume_type} per GB-month", "AmazonEC2", filters)


def _ec2(region: str, instance_type: str) -> Query:
    filters = {"regionCode": region, "instanceType": instance_type, **EC2_LINUX_SHARED}
    filters["licenseModel"] = "No License required"  # no BYOL or bundled-licence products
    return Query(f"EC2 {instance_type} on-demand", "AmazonEC2", filters)


def _emr(region: str, instance_type: str) -> Query:
    filters = {"regionCode": region, "instanceType": instance_type, **EMR_INSTANCE}
    return Query(f"Amazon EMR {instance_type}", "ElasticMapReduce", filters)


@dataclass
class RegionPrices:
    """One region's section of the table, and what could not be priced."""

    section: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def missing_required(self) -> list[str]:
        """What the table cannot ship without: both architectures' EMR Serverless rates, EMR on EKS, EBS."""
        missing = [f"EMR Serverless {a}" for a in ARCHITECTURES if a not in self.section.get("emr_serverless", {})]
        missing += [] if "emr_eks" in self.section else ["EMR on EKS"]
        missing += [f"EBS {v}" for v in VOLUME_TYPES if v not in self.section.get("ebs_gb_month", {})]
        return missing


def region_prices(client: Any, region: str, instance_types: Iterable[str]) -> RegionPrices:
    """Query every price of one region; a group (an architecture, EKS, an instance type) goes in only when complete."""
    result = RegionPrices({})

    def group(queries: Mapping[str, Query]) -> dict[str, float] | None:
        found: dict[str, float] = {}
        for key, query in queries.items():
            try:
                found[key] = fetch_price(client, query)
            except Unpriced as exc:
                result.problems.append(f"{region}: {query.what}: {exc}")
        return found if len(found) == len(queries) else None

    serverless = {
        arch: group({rate: _serverless(region, arch, rate) for rate in SERVERLESS_METER_UNITS[arch]})
        for arch in ARCHITECTURES
    }
    result.section["emr_serverless"] = {arch: rates for arch, rates in serverless.items() if rates is not None}
    eks = group({rate: _eks(region, rate) for rate in EKS_METER_UNITS})
    if eks is not None:
        result.section["emr_eks"] = eks
    result.section["ebs_gb_month"] = {
        volume: price[volume] for volume in VOLUME_TYPES if (price := group({volume: _ebs(region, volume)})) is not None
    }
    instances = {}
    for instance_type in sorted(set(instance_types)):
        prices = group({"ec2_hour": _ec2(region, instance_type), "emr_hour": _emr(region, instance_type)})
        if prices is not None:
            instances[instance_type] = prices
    result.section["instances"] = instances
    return result


def build_table(old: Mapping[str, Any], sections: Mapping[str, Mapping[str, Any]], today: dt.date) -> dict[str, Any]:
    """The new table: the old one's units and currency, a bumped version, today's date, a region identical to an
    earlier one written as `same_as` it."""
    regions: dict[str, Any] = {}
    for region, section in sections.items():
        twin = next((r for r in regions if regions[r] == section), None)
        regions[region] = section if twin is None else {"same_as": twin}
    return {
        "version": int(old["version"]) + 1,
        "prices_as_of": today.isoformat(),
        "currency": "USD",
        "source": SOURCE,
        "units": old["units"],
        "regions": regions,
    }


def _flatten(table: Mapping[str, Any]) -> dict[str, float]:
    regions: Mapping[str, Any] = table.get("regions", {})
    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix} {key}" if prefix else str(key), value)
        else:
            flat[prefix] = float(node)

    for region, section in regions.items():
        walk(region, regions[section["same_as"]] if "same_as" in section else section)
    return flat


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every price that changed, appeared or went away, old → new (regions written `same_as` compared resolved);
    a region only one table lists is one line."""
    before, after = _flatten(old), _flatten(new)
    old_regions, new_regions = set(old.get("regions", {})), set(new.get("regions", {}))
    lines = [f"{r}: removed (not among the regions refreshed)" for r in sorted(old_regions - new_regions)]
    lines += [f"{r}: added" for r in sorted(new_regions - old_regions)]
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key), after.get(key)
        if was == now or key.split(" ", 1)[0] not in old_regions & new_regions:
            continue
        lines.append(f"{key}: {'(none)' if was is None else f'{was:g}'} → {'(none)' if now is None else f'{now:g}'}")
    return lines


def config_instance_types(config_files: Sequence[Path]) -> set[str]:
    """Every instance type the deployment's configs can launch: their fleets and groups, and the model's defaults."""
    types = {t.type for t in CoreFleet().instance_types + TaskFleet().instance_types}
    types |= {CoreGroup().instance_type, TaskGroup().instance_type}
    for path in config_files:
        try:
            config = load_config(path.stem, path)
        except ConfigError as exc:
            raise PricesError(f"cannot read the instance types of {path.name}: {exc}") from None
        for pipeline in config.pipelines.values():
            runtime = pipeline.runtime
            if not isinstance(runtime, Ec2Runtime):
                continue
            inst = runtime.instances
            types.add(runtime.primary_instance_type())
            if isinstance(inst, InstanceFleets):
                fleets = [inst.primary.instance_types or [], inst.core.instance_types]
                fleets.append(inst.task.instance_types if inst.task else [])
                types |= {t.type for fleet in fleets for t in fleet}
            else:
                groups = [inst.primary.instance_type, inst.core.instance_type]
                groups.append(inst.task.instance_type if inst.task else None)
                types |= {t for t in groups if t}
    return types


def _listed_types(table: Mapping[str, Any]) -> set[str]:
    regions: Mapping[str, Any] = table["regions"]
    return {t for section in regions.values() for t in section.get("instances", {})}


def _csv(value: str, flag: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise PricesError(f"{flag}: expected a comma-separated list, got {value!r}")
    return items


def check_age(table: Mapping[str, Any], max_age_days: int, today: dt.date) -> tuple[bool, str]:
    """Whether the table is at most `max_age_days` old, and a line saying how old it is."""
    try:
        as_of = dt.date.fromisoformat(str(table["prices_as_of"]))
    except (KeyError, ValueError):
        return False, f"prices_as_of is {table.get('prices_as_of')!r}; expected a date YYYY-MM-DD"
    age = (today - as_of).days
    verdict = "older than" if age > max_age_days else "within"
    return age <= max_age_days, f"the shipped prices are {age} day(s) old (as of {as_of}), {verdict} {max_age_days}"


def refresh(
    client: Any,
    old: Mapping[str, Any],
    regions: Sequence[str],
    instance_types: Iterable[str],
    today: dt.date,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The new table (None when a region lacks a required rate) and every problem found on the way."""
    sections: dict[str, Any] = {}
    problems: list[str] = []
    incomplete = False
    types = sorted(set(instance_types))
    for region in regions:
        found = region_prices(client, region, types)
        problems += found.problems
        missing = found.missing_required()
        if missing:
            incomplete = True
            problems.append(f"{region}: the table cannot be written without {', '.join(missing)}")
        sections[region] = found.section
    return (None if incomplete else build_table(old, sections, today)), problems


def _pricing_client(endpoint_region: str) -> Any:
    # A fresh session: AWS_PROFILE and the credential chain are read now, not from a cached default session.
    return boto3.session.Session().client("pricing", region_name=endpoint_region)


def main(argv: Sequence[str] | None = None, client: Any = None, today: dt.date | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m config.prices", description=__doc__.split("\n")[0])
    parser.add_argument("--regions", help="comma-separated region codes (default: the regions the table lists)")
    parser.add_argument("--types", help="comma-separated instance types (default: the configs' and the table's)")
    parser.add_argument("--table", type=Path, default=PRICES_FILE, help="the price table to refresh")
    parser.add_argument("--dry-run", action="store_true", help="print the changes (old → new) without writing")
    parser.add_argument("--check", action="store_true", help="exit 1 when the table is older than --max-age-days")
    parser.add_argument("--max-age-days", type=int, default=DEFAULT_MAX_AGE_DAYS)
    parser.add_argument("--endpoint-region", default="us-east-1", choices=PRICING_ENDPOINT_REGIONS)
    args = parser.parse_args(argv)
    today = today or dt.date.today()
    try:
        old = json.loads(args.table.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: --table {args.table}: cannot read a price table: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if args.max_age_days < 0:
            print(f"error: --max-age-days: expected a number of days >= 0, got {args.max_age_days}", file=sys.stderr)
            return 2
        fresh, line = check_age(old, args.max_age_days, today)
        print(line)
        return 0 if fresh else 1
    try:
        regions = _csv(args.regions, "--regions") if args.regions else list(old["regions"])
        if args.types:
            types = set(_csv(args.types, "--types"))
            bad = sorted(t for t in types if not re.match(INSTANCE_TYPE_PATTERN, t))
            if bad:
                raise PricesError(f"--types: {', '.join(bad)} is not an instance type; expected e.g. m5.xlarge")
        else:
            types = config_instance_types(sorted(CONFIG_DIR.glob("*.yaml"))) | _listed_types(old)
        new, problems = refresh(client or _pricing_client(args.endpoint_region), old, regions, types, today)
    except PricesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            "error: no AWS credentials: `make prices` needs an account, e.g. AWS_PROFILE=<profile> "
            "whose credentials are allowed pricing:GetProducts",
            file=sys.stderr,
        )
        return 2
    for problem in problems:
        print(f"not priced: {problem}", file=sys.stderr)
    if new is None:
        print(f"error: {args.table} left unchanged: a region lacks a required rate (see above)", file=sys.stderr)
        return 1
    changes = diff(old, new)
    print("\n".join(changes) if changes else "no price changed")
    if args.dry_run:
        print(f"dry run: {args.table} not written")
        return 0
    args.table.write_text(json.dumps(new, indent=2) + "\n")
    print(f"wrote {args.table} (version {new['version']}, prices as of {new['prices_as_of']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
