"""Narrow cdk-nag suppressions: each on one resource, with the finding's exact `appliesTo` where the
rule supports it, and a reason."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_lambda as lambda_
from cdk_nag import NagPackSuppression, NagSuppressions, RegexAppliesTo
from constructs import IConstruct


def suppress(construct: IConstruct, rule: str, reason: str, applies_to: Sequence[str] | None = None) -> None:
    """Suppress one cdk-nag rule on one construct (and its children).

    `applies_to` entries are exact finding strings (e.g. `Resource::*`) or `regex:/.../g` patterns.
    """
    targets: list[str | RegexAppliesTo] | None = None
    if applies_to:
        targets = [RegexAppliesTo(regex=a[len("regex:") :]) if a.startswith("regex:") else a for a in applies_to]
    suppression = [NagPackSuppression(id=rule, reason=reason, applies_to=targets)]
    NagSuppressions.add_resource_suppressions(construct, suppression, apply_to_children=True)
    # A function's role is its sibling (FunctionFactory makes it), not its child: it carries the function's grants.
    role = getattr(construct, "role", None) if isinstance(construct, lambda_.Function) else None
    if role is not None and construct.node.try_find_child(role.node.id) is not role:
        NagSuppressions.add_resource_suppressions(role, suppression, apply_to_children=True)
