"""boto3 clients for the functions that call EMR's control plane (finalize, guardrail, scaler)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

# EMR's control plane throttles bursts of List/Describe calls: adaptive retries smooth them.
THROTTLE_RETRIES = Config(retries={"mode": "adaptive", "max_attempts": 8})


def aws_client(service: str) -> Any:
    """A boto3 client for `service` that retries throttling adaptively (up to 8 attempts)."""
    return boto3.client(service, config=THROTTLE_RETRIES)
