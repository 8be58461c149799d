"""What the unit tests share: the `moto` fixture (the twin tests use it too, through tests/twin/conftest.py), table
and alarm setup, pipeline settings parameters, config/dev.yaml, and a one-pipeline emr-ec2 config."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from autopilot_common.pipeline_settings import settings_parameter_name
from config.ec2 import Ec2Runtime
from config.loader import validate_config
from config.model import AppConfig
from local import moto_dynamodb
from tests.conftest import REPO

moto_dynamodb.install()  # transactions back up the items they touch, not whole tables (as the twin runs them)

MOTO_REGION = "us-east-1"
DEV_SOURCE = "config/dev.yaml"
DEV_YAML: dict[str, Any] = yaml.safe_load((REPO / DEV_SOURCE).read_text())
SPARK = {"type": "spark", "name": "etl", "entry_point": "sales_etl.py"}


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every AWS service mocked by moto, with fake credentials and the region in the environment; yields the region.

    Fixtures that need buckets, tables or state machines build them on top: `def s3(moto: str) -> ...`."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_DEFAULT_REGION": MOTO_REGION,
        "AWS_REGION": MOTO_REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield MOTO_REGION


def create_table(dynamodb: Any, name: str, hash_key: str, range_key: str | None = None) -> None:
    """An on-demand DynamoDB table keyed by string attributes, as the app's tables are."""
    keys = [(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else [])
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": kind} for key, kind in keys],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"} for key, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )


def put_memory_alarm(cloudwatch: Any, name: str, cluster_id: str) -> None:
    """A scale-out alarm named `name` on the cluster's YARN memory, as the default `memory-low` rule makes it."""
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        Namespace="AWS/ElasticMapReduce",
        MetricName="YARNMemoryAvailablePercentage",
        Dimensions=[{"Name": "JobFlowId", "Value": cluster_id}],
        Statistic="Average",
        Period=300,
        EvaluationPeriods=3,
        Threshold=15,
        ComparisonOperator="LessThanThreshold",
    )


def dev_config(mutate: Callable[[dict[str, Any]], Any]) -> AppConfig:
    """config/dev.yaml changed by `mutate(raw)` (on a copy), validated; ConfigError names config/dev.yaml."""
    raw = copy.deepcopy(DEV_YAML)
    mutate(raw)
    return validate_config(raw, DEV_SOURCE)


def ec2_config(runtime: dict[str, Any]) -> dict[str, Any]:
    """A config with one emr-ec2 pipeline `pipe` running the `SPARK` step, its runtime updated with `runtime`."""
    return {
        "pipelines": {"pipe": {"runtime": {"type": "emr-ec2", "steps": [SPARK], **runtime}, "run_timeout_minutes": 600}}
    }


def ec2_runtime(**runtime: Any) -> Ec2Runtime:
    """The validated runtime of `ec2_config(runtime)`."""
    result = validate_config(ec2_config(runtime)).pipelines["pipe"].runtime
    assert isinstance(result, Ec2Runtime)
    return result


SETTINGS_DEPLOYMENT = "autopilot-test"


def put_pipeline_settings(monkeypatch: pytest.MonkeyPatch, pipeline: str, sections: dict[str, Any]) -> None:
    """`pipeline`'s settings parameter as its stack deploys it (stacks/pipeline_settings.py), in moto's SSM, and the
    `DEPLOYMENT` a shared function reads it under."""
    monkeypatch.setenv("DEPLOYMENT", SETTINGS_DEPLOYMENT)
    boto3.client("ssm", region_name=MOTO_REGION).put_parameter(
        Name=settings_parameter_name(SETTINGS_DEPLOYMENT, pipeline), Value=json.dumps(sections), Type="String"
    )
