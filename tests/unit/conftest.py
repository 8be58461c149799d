"""Fixtures the unit tests share (the twin tests use `moto` too, through tests/twin/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

MOTO_REGION = "us-east-1"


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
