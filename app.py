#!/usr/bin/env python3
"""EMR Autopilot CDK app: loads `config/<env>.yaml` (`-c env=NAME`, default `dev`) and composes the platform stack
`<project>-<env>` and the pipeline stacks `<project>-<env>-pipelines-<n>`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from config.loader import ConfigError, load_config
from stacks.app_stack import AutopilotStack, PipelinesStack
from stacks.naming import deployment_name, pipeline_stack_name, pipeline_stacks
from stacks.workflow import PipelineWorkflow


def cli_context() -> dict[str, Any]:
    """The context `cdk synth` gives the app: cdk.json's feature flags plus the metadata the CLI turns on.

    Tests build the app with it, so they check the same template the CLI writes (feature flags such as
    `enablePartitionLiterals` change ARNs, and with them which cdk-nag suppressions match).
    """
    context: dict[str, Any] = json.loads((Path(__file__).resolve().parent / "cdk.json").read_text())["context"]
    return {**context, "aws:cdk:enable-path-metadata": True, "aws:cdk:enable-asset-metadata": True}


def build_app(env_name: str | None = None, app: cdk.App | None = None, *, nag: bool = True) -> cdk.App:
    """Build the app for one environment; raises ConfigError with a clear message on bad config.

    `-c env=NAME` selects `config/NAME.yaml`; `-c config_path=FILE` reads another file (benchmarks).
    """
    app = app or cdk.App()
    env_name = env_name or app.node.try_get_context("env") or "dev"
    config_path = app.node.try_get_context("config_path")
    config = load_config(env_name, Path(config_path) if config_path else None)
    prefix = deployment_name(config.project, env_name)
    environment = cdk.Environment(
        account=config.account or os.environ.get("CDK_DEFAULT_ACCOUNT"),
        region=config.region or os.environ.get("CDK_DEFAULT_REGION"),
    )
    platform = AutopilotStack(
        app,
        prefix,
        config=config,
        env_name=env_name,
        env=environment,
        description=f"EMR Autopilot ({env_name}): storage, shared functions, guardrails (the platform stack)",
    )
    pipelines: dict[str, PipelineWorkflow] = {}
    for index, names in sorted(pipeline_stacks(config).items()):
        stack = PipelinesStack(
            app,
            pipeline_stack_name(prefix, index),
            config=config,
            prefix=prefix,
            platform_stack=platform,
            pipelines=names,
            env=environment,
            description=f"EMR Autopilot ({env_name}): pipelines {', '.join(names)}"[:1024],
        )
        pipelines.update(stack.pipelines)
    platform.add_deployment_wide(config, {name: pipelines[name] for name in config.pipelines})
    if nag:
        cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app


def main() -> None:
    try:
        app = build_app()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    app.synth()


if __name__ == "__main__":
    main()
