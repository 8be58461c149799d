"""Generated deployments for measuring the stacks: N pipelines cycling through config/dev.yaml's mix (serverless on
a shared application, EMR on EC2 transient and existing-cluster, EMR on EKS with its own virtual cluster, upstream
fan-in, CloudTrail sources, schedules), copy k of pipeline `p` named `p-k`, with its own trigger prefix.

Used by `make bench` (bench/run.py) and the infra test of the stack limits (tests/infra/test_stack_limits.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent

# The stacks a generated deployment spreads its pipelines over: enough that no stack holds more than
# stacks.naming.MAX_PIPELINES_PER_STACK (config validation refuses more).
GENERATED_PIPELINE_STACKS = {1: 1, 25: 3, 50: 4, 100: 7, 300: 20}


def mixed_config(pipelines: int, pipeline_stacks: int | None = None) -> dict[str, Any]:
    """config/dev.yaml with `pipelines` generated pipelines in its runtime mix, spread over `pipeline_stacks`
    (default GENERATED_PIPELINE_STACKS' entry, else one stack per 15 pipelines)."""
    base: dict[str, Any] = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    templates: list[tuple[str, dict[str, Any]]] = list(base["pipelines"].items())
    generated: dict[str, Any] = {}
    for i in range(pipelines):
        name, template = templates[i % len(templates)]
        k = i // len(templates)
        pipeline = copy.deepcopy(template)
        trigger = pipeline.get("trigger")
        if trigger is not None:
            if "prefix" in trigger:
                old, new = trigger["prefix"], f"{trigger['prefix'].rstrip('/')}-{k:02d}/"
                trigger["prefix"] = new
                if "partition_template" in trigger:
                    trigger["partition_template"] = new + trigger["partition_template"].removeprefix(old)
            if "after" in trigger:
                trigger["after"] = [f"{u}-{k:02d}" for u in trigger["after"]]
        generated[f"{name}-{k:02d}"] = pipeline
    base["pipelines"] = generated
    base["pipeline_stacks"] = pipeline_stacks or GENERATED_PIPELINE_STACKS.get(pipelines, -(-pipelines // 15))
    return base
