"""Synthesize the app once per session; every infra test reads the same assembly."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

os.environ.setdefault("CDK_DEFAULT_ACCOUNT", "123456789012")
os.environ.setdefault("CDK_DEFAULT_REGION", "us-east-1")

import aws_cdk as cdk  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

from app import build_app, cli_context  # noqa: E402
from stacks.app_stack import AutopilotStack  # noqa: E402


@dataclass
class Synthesized:
    """The platform stack (`stack`) and every stack of the deployment (`stacks`); `raw` and `template` are the
    union of their templates (logical ids are unique across them: each is its construct path's hash)."""

    app: cdk.App
    stack: AutopilotStack
    template: Template
    raw: dict[str, Any]
    stacks: list[cdk.Stack]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw["Resources"].items() if v["Type"] == kind}

    def pipeline_settings(self) -> dict[str, dict[str, Any]]:
        """Every pipeline's settings parameter (autopilot_common.pipeline_settings), by pipeline name: its sections,
        each deploy-time token (`Ref`, `Fn::GetAtt`) read as the string "X"."""
        return {
            str(p["Properties"]["Name"]).rpartition("/")[2]: json.loads(joined(p["Properties"]["Value"]))
            for p in self.resources("AWS::SSM::Parameter").values()
        }


def joined(value: Any) -> str:
    """A template string value with each token (anything but a string in an `Fn::Join`) as "X"."""
    if isinstance(value, str):
        return value
    separator, parts = value["Fn::Join"]
    return str(separator).join(part if isinstance(part, str) else "X" for part in parts)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = build_app("dev", cdk.App(outdir=str(outdir), context=cli_context()))
    stack = next(c for c in app.node.children if isinstance(c, AutopilotStack))
    stacks = [c for c in app.node.children if isinstance(c, cdk.Stack)]
    raw = merged_templates(stacks)
    yield Synthesized(app=app, stack=stack, template=Template.from_json(raw), raw=raw, stacks=stacks)


def merged_templates(stacks: list[cdk.Stack]) -> dict[str, Any]:
    """One template holding every stack's resources and outputs, each `Fn::ImportValue` replaced by the exported
    value (a `Ref`/`Fn::GetAtt` of the platform stack), so tests read the deployment as one template."""
    merged: dict[str, Any] = {"Resources": {}, "Outputs": {}}
    for stack in stacks:
        template = Template.from_stack(stack).to_json()
        for section in ("Resources", "Outputs"):
            body = template.get(section, {})
            clash = set(body) & set(merged[section])
            assert not clash, f"{stack.stack_name}: {section} {sorted(clash)} also in another stack"
            merged[section].update(body)
        for section in ("Conditions", "Parameters", "Mappings", "Rules"):
            merged.setdefault(section, {}).update(template.get(section, {}))
    exports = {output["Export"]["Name"]: output["Value"] for output in merged["Outputs"].values() if "Export" in output}

    def link(value: Any) -> Any:
        if isinstance(value, list):
            return [link(v) for v in value]
        if isinstance(value, dict):
            if set(value) == {"Fn::ImportValue"}:
                return exports[value["Fn::ImportValue"]]
            return {k: link(v) for k, v in value.items()}
        return value

    linked: dict[str, Any] = link(merged)
    return linked
