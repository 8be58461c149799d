"""EventBridge rules on AWS service events, written one way (the guardrails' and the scaler's rules)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import aws_events as events
from constructs import Construct


def service_event_rule(
    scope: Construct,
    construct_id: str,
    *,
    description: str,
    source: str,
    detail_type: str,
    detail: Mapping[str, Any],
    target: events.IRuleTarget,
) -> events.Rule:
    """A rule matching one service's events of one detail-type whose `detail` matches `detail`."""
    return events.Rule(
        scope,
        construct_id,
        description=description,
        event_pattern=events.EventPattern(source=[source], detail_type=[detail_type], detail=dict(detail)),
        targets=[target],
    )


def api_call_rule(
    scope: Construct,
    construct_id: str,
    *,
    description: str,
    service: str,
    event_names: list[str],
    target: events.IRuleTarget,
) -> events.Rule:
    """Successful (no `errorCode`) calls of `event_names` to `service` (e.g. `elasticmapreduce`) as CloudTrail
    delivers them to EventBridge ("AWS API Call via CloudTrail")."""
    return service_event_rule(
        scope,
        construct_id,
        description=description,
        source=f"aws.{service}",
        detail_type="AWS API Call via CloudTrail",
        detail={
            "eventSource": [f"{service}.amazonaws.com"],
            "eventName": event_names,
            "errorCode": [{"exists": False}],
        },
        target=target,
    )
