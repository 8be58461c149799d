"""Synthesize the app once per session; every infra test reads the same assembly."""

from __future__ import annotations

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
    app: cdk.App
    stack: AutopilotStack
    template: Template
    raw: dict[str, Any]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw["Resources"].items() if v["Type"] == kind}


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthesized]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    app = build_app("dev", cdk.App(outdir=str(outdir), context=cli_context()))
    stack = next(c for c in app.node.children if isinstance(c, AutopilotStack))
    template = Template.from_stack(stack)
    yield Synthesized(app=app, stack=stack, template=template, raw=template.to_json())
