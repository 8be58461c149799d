"""`make prices` (`config.prices`): the shipped price table refreshed from the AWS Price List API, on a botocore
Stubber (no network): the exact GetProducts filters, PriceList entries as JSON strings in AWS's product/terms shape,
ambiguous or missing prices reported and left out, the dry-run diff, and one clear line without credentials."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from autopilot_common.pricing import PRICES_FILE, PriceTable, serverless_cost
from config.loader import CONFIG_DIR
from config.prices import build_table, check_age, config_instance_types, diff, main, refresh

TODAY = dt.date(2027, 1, 15)
REGION = "us-east-1"
OLD = json.loads(PRICES_FILE.read_text())


def _product(service: str, family: str, attributes: Mapping[str, str], usd: str | None, sku: str) -> str:
    """One PriceList entry as GetProducts returns it: a JSON string (product, serviceCode, terms, ...)."""
    on_demand: dict[str, Any] = {}
    if usd is not None:
        on_demand = {
            f"{sku}.JRTCKXETXF": {
                "priceDimensions": {
                    f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                        "unit": "Hrs",
                        "endRange": "Inf",
                        "description": f"${usd} per unit",
                        "appliesTo": [],
                        "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                        "beginRange": "0",
                        "pricePerUnit": {"USD": usd},
                    }
                },
                "sku": sku,
                "effectiveDate": "2026-12-01T00:00:00Z",
                "offerTermCode": "JRTCKXETXF",
                "termAttributes": {},
            }
        }
    reserved = {  # a 1-year reserved term, cheaper: must not be read as the on-demand price
        f"{sku}.4NA7Y494T4": {
            "priceDimensions": {f"{sku}.4NA7Y494T4.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": "0.0010"}}},
            "termAttributes": {"LeaseContractLength": "1yr", "PurchaseOption": "No Upfront"},
        }
    }
    entry = {
        "product": {
            "productFamily": family,
            "attributes": {"servicecode": service, "regionCode": REGION, **attributes},
            "sku": sku,
        },
        "serviceCode": service,
        "terms": {"OnDemand": on_demand, "Reserved": reserved},
        "version": "20261201000000",
        "publicationDate": "2026-12-01T00:00:00Z",
    }
    return json.dumps(entry)


class Catalog:
    """A pricing client on a Stubber, and the calls the tool is expected to make, in order."""

    def __init__(self) -> None:
        self.client = boto3.client(
            "pricing", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        self.stubber = Stubber(self.client)

    def expect(self, service: str, filters: Mapping[str, str], *pages: list[str]) -> None:
        params: dict[str, Any] = {
            "ServiceCode": service,
            "FormatVersion": "aws_v1",
            "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
            "MaxResults": 100,
        }
        for number, page in enumerate(pages or ([],)):
            response: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": page}
            if number + 1 < len(pages):
                response["NextToken"] = f"page-{number + 2}"
            expected = dict(params, NextToken=f"page-{number + 1}") if number else params
            self.stubber.add_response("get_products", response, expected)

    def serverless(self, unit: str, usagetype: str, usd: str, *pages_before: list[str]) -> None:
        attributes = {"meterunit": unit, "usagetype": usagetype, "operation": ""}
        found = _product("ElasticMapReduce", "EMR Serverless", attributes, usd, f"SL{unit}")
        self.expect("ElasticMapReduce", {"regionCode": REGION, "meterunit": unit}, *pages_before, [found])

    def eks(self, unit: str, usd: str | None) -> None:
        filters = {
            "regionCode": REGION,
            "productFamily": "EMR Containers",
            "operation": "StartJobRun",
            "computeprovider": "EC2",
            "meterunit": unit,
        }
        attributes = {"meterunit": unit, "usagetype": f"USE1-EMR-EKS-{unit}", "computeprovider": "EC2"}
        products = [] if usd is None else [_product("ElasticMapReduce", "EMR Containers", attributes, usd, f"EK{unit}")]
        self.expect("ElasticMapReduce", filters, products)

    def ebs(self, volume: str, usd: str) -> None:
        filters = {"regionCode": REGION, "productFamily": "Storage", "volumeApiName": volume}
        attributes = {"volumeApiName": volume, "usagetype": f"EBS:VolumeUsage.{volume}"}
        self.expect("AmazonEC2", filters, [_product("AmazonEC2", "Storage", attributes, usd, f"EB{volume}")])

    def ec2(self, instance_type: str, *usd: str | None) -> None:
        linux = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
        filters = {"regionCode": REGION, "instanceType": instance_type, **linux, "licenseModel": "No License required"}
        attributes = {
            **{k: v for k, v in filters.items() if k != "regionCode"},
            "usagetype": f"BoxUsage:{instance_type}",
        }
        products = [
            _product("AmazonEC2", "Compute Instance", attributes, p, f"EC{i}{instance_type}") for i, p in enumerate(usd)
        ]
        self.expect("AmazonEC2", filters, products)

    def emr(self, instance_type: str, *usd: str) -> None:
        filters = {
            "regionCode": REGION,
            "instanceType": instance_type,
            "productFamily": "Elastic Map Reduce Instance",
            "softwareType": "EMR",
        }
        attributes = {"instanceType": instance_type, "softwareType": "EMR", "usagetype": f"BoxUsage:{instance_type}"}
        family = "Elastic Map Reduce Instance"
        products = [
            _product("ElasticMapReduce", family, attributes, p, f"EM{i}{instance_type}") for i, p in enumerate(usd)
        ]
        self.expect("ElasticMapReduce", filters, products)

    def rates(self, eks_vcpu: str | None = "0.0101200000") -> None:
        """Every per-region rate, in the order the tool asks for them."""
        # A product metered in CPUHours that is not EMR Serverless (EMR on EKS), on a first page: must be skipped.
        eks_product = _product(
            "ElasticMapReduce",
            "EMR Containers",
            {"meterunit": "CPUHours", "usagetype": "USE1-EMR-EKS-CPUHours"},
            "0.0101200000",
            "OTHER",
        )
        self.serverless("CPUHours", "USE1-EMR-SERVERLESS-vCPUHours", "0.0526240000", [eks_product])
        self.serverless("GBHours", "USE1-EMR-SERVERLESS-MemoryGBHours", "0.0057785000")
        self.serverless("StorageGBHours", "USE1-EMR-SERVERLESS-StorageGBHours", "0.0001110000")
        self.serverless("ARMCPUHours", "USE1-EMR-SERVERLESS-ARM-vCPUHours", "0.0420940000")
        self.serverless("ARMGBHours", "USE1-EMR-SERVERLESS-ARM-MemoryGBHours", "0.0046280000")
        self.serverless("StorageGBHours", "USE1-EMR-SERVERLESS-StorageGBHours", "0.0001110000")
        self.eks("CPUHours", eks_vcpu)
        self.eks("GBHours", "0.0011112500")
        self.ebs("gp2", "0.1000000000")
        self.ebs("gp3", "0.0800000000")


@pytest.fixture
def catalog() -> Iterator[Catalog]:
    catalog = Catalog()
    with catalog.stubber:
        yield catalog
        catalog.stubber.assert_no_pending_responses()


def test_the_tool_builds_a_regions_section_exactly_from_the_price_list(catalog: Catalog) -> None:
    catalog.rates()
    catalog.ec2("m5.xlarge", "0.2000000000")
    catalog.emr("m5.xlarge", "0.0500000000")
    new, problems = refresh(catalog.client, OLD, [REGION], ["m5.xlarge"], TODAY)
    assert problems == []
    assert new is not None
    assert new["regions"] == {
        REGION: {
            "emr_serverless": {
                "X86_64": {"vcpu_hour": 0.052624, "memory_gb_hour": 0.0057785, "storage_gb_hour": 0.000111},
                "ARM64": {"vcpu_hour": 0.042094, "memory_gb_hour": 0.004628, "storage_gb_hour": 0.000111},
            },
            "emr_eks": {"vcpu_hour": 0.01012, "memory_gb_hour": 0.00111125},
            "ebs_gb_month": {"gp2": 0.1, "gp3": 0.08},
            "instances": {"m5.xlarge": {"ec2_hour": 0.2, "emr_hour": 0.05}},
        }
    }
    assert new["version"] == OLD["version"] + 1 and new["prices_as_of"] == "2027-01-15"
    assert "Price List API" in new["source"] and "capacitystatus=Used" in new["source"]
    assert new["units"] == OLD["units"]


def test_ambiguous_or_missing_prices_are_reported_and_left_out(catalog: Catalog) -> None:
    catalog.rates()
    catalog.ec2("m5.xlarge", "0.1920000000", "0.2100000000")  # two products, two prices: ambiguous
    catalog.emr("m5.xlarge", "0.0480000000")
    catalog.ec2("r5.xlarge", "0.2520000000", "0.252")  # two products, one price: fine
    catalog.emr("r5.xlarge")  # nothing returned
    catalog.ec2("z9.xlarge", None)  # a product with no on-demand term
    catalog.emr("z9.xlarge", "0.1")
    new, problems = refresh(catalog.client, OLD, [REGION], ["r5.xlarge", "m5.xlarge", "z9.xlarge"], TODAY)
    assert new is not None and new["regions"][REGION]["instances"] == {}
    assert problems == [
        f"{REGION}: EC2 m5.xlarge on-demand: ambiguous: 2 products matched with different prices (0.192, 0.21)",
        f"{REGION}: Amazon EMR r5.xlarge: the API returned no product for these filters",
        f"{REGION}: EC2 z9.xlarge on-demand: 1 product(s) matched but none has an on-demand USD price",
    ]


def test_a_region_without_its_eks_rate_leaves_the_table_unwritten(catalog: Catalog, tmp_path: Path) -> None:
    catalog.rates(eks_vcpu=None)
    table = tmp_path / "prices.json"
    table.write_text(PRICES_FILE.read_text())
    argv = ["--table", str(table), "--regions", REGION, "--types", "m5.xlarge"]
    catalog.ec2("m5.xlarge", "0.2")
    catalog.emr("m5.xlarge", "0.05")
    assert main(argv, client=catalog.client, today=TODAY) == 1
    assert table.read_text() == PRICES_FILE.read_text()


def test_dry_run_prints_old_to_new_per_price_and_writes_nothing(
    catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog.rates()
    catalog.ec2("m5.xlarge", "0.2000000000")
    catalog.emr("m5.xlarge", "0.0480000000")
    table = tmp_path / "prices.json"
    table.write_text(PRICES_FILE.read_text())
    argv = ["--table", str(table), "--regions", REGION, "--types", "m5.xlarge", "--dry-run"]
    assert main(argv, client=catalog.client, today=TODAY) == 0
    out = capsys.readouterr().out.splitlines()
    assert "us-east-1 instances m5.xlarge ec2_hour: 0.192 → 0.2" in out
    assert "us-east-1 instances m5.large ec2_hour: 0.096 → (none)" in out  # not asked for: shown as going away
    assert "us-west-2: removed (not among the regions refreshed)" in out  # REGIONS= names the table's regions
    assert not any(line.startswith("us-west-2 ") for line in out)
    assert not any("m5.xlarge emr_hour" in line for line in out)  # unchanged prices are not listed
    assert out[-1] == f"dry run: {table} not written"
    assert table.read_text() == PRICES_FILE.read_text()


def test_a_written_table_is_read_by_the_cost_model(catalog: Catalog, tmp_path: Path) -> None:
    catalog.rates()
    catalog.ec2("m5.xlarge", "0.2")
    catalog.emr("m5.xlarge", "0.05")
    table = tmp_path / "prices.json"
    table.write_text(PRICES_FILE.read_text())
    assert main(["--table", str(table), "--regions", REGION, "--types", "m5.xlarge"], catalog.client, TODAY) == 0
    written = PriceTable.from_file(table)
    assert written.as_of == "2027-01-15" and written.instance(REGION, "m5.xlarge") == {
        "ec2_hour": 0.2,
        "emr_hour": 0.05,
    }
    cost = serverless_cost(written, REGION, "ARM64", {"vCPUHour": 2.0, "memoryGBHour": 8.0, "storageGBHour": 0.0})
    assert cost["usd"] == pytest.approx(2 * 0.042094 + 8 * 0.004628, abs=1e-6)


def test_identical_regions_are_written_same_as_and_diffed_resolved() -> None:
    section = OLD["regions"]["us-east-1"]
    new = dict(OLD, regions={"us-east-1": section, "us-west-2": json.loads(json.dumps(section))})
    new["regions"]["us-west-2"]["emr_eks"]["vcpu_hour"] = 0.02
    assert diff(OLD, new) == ["us-west-2 emr_eks vcpu_hour: 0.01012 → 0.02"]
    assert diff(OLD, OLD) == []
    sections = {"us-east-1": section, "us-west-2": dict(section), "eu-west-1": new["regions"]["us-west-2"]}
    regions = build_table(OLD, sections, TODAY)["regions"]
    assert regions["us-west-2"] == {"same_as": "us-east-1"} and regions["eu-west-1"]["emr_eks"]["vcpu_hour"] == 0.02


def test_without_credentials_the_tool_says_what_it_needs_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (no network)
    assert main(["--regions", REGION, "--types", "m5.xlarge", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no AWS credentials" in err
    assert "AWS_PROFILE" in err and "pricing:GetProducts" in err


def test_check_says_how_old_the_table_is_and_fails_past_the_limit(tmp_path: Path) -> None:
    as_of = dt.date.fromisoformat(OLD["prices_as_of"])
    assert check_age(OLD, 90, as_of + dt.timedelta(days=90)) == (
        True,
        f"the shipped prices are 90 day(s) old (as of {as_of}), within 90",
    )
    fresh, line = check_age(OLD, 90, as_of + dt.timedelta(days=91))
    assert not fresh and "91 day(s) old" in line and "older than 90" in line
    table = tmp_path / "prices.json"
    table.write_text(json.dumps(dict(OLD, prices_as_of="2020-01-01")))
    assert main(["--table", str(table), "--check", "--max-age-days", "30"], today=TODAY) == 1
    assert main(["--check"], today=as_of) == 0


def test_bad_flags_give_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--regions", " , ", "--dry-run"], client=object(), today=TODAY) == 2
    assert "--regions: expected a comma-separated list" in capsys.readouterr().err
    assert main(["--types", "m5.xlarge,M5 XL", "--dry-run"], client=object(), today=TODAY) == 2
    assert "--types: M5 XL is not an instance type" in capsys.readouterr().err
    assert main(["--check", "--max-age-days", "-1"], today=TODAY) == 2
    assert "--max-age-days: expected a number of days >= 0" in capsys.readouterr().err
    assert main(["--table", str(tmp_path / "absent.json")], today=TODAY) == 2
    assert "--table" in capsys.readouterr().err


def test_default_instance_types_cover_the_configs_and_the_models_defaults() -> None:
    types = config_instance_types(sorted(CONFIG_DIR.glob("*.yaml")))
    assert {"m5.xlarge", "m5a.xlarge", "m6i.xlarge", "m5.large"} <= types  # fleet defaults and the primary's sizing
    assert all("." in t for t in types)
