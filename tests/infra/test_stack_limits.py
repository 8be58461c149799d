"""The deployment scales by stacks: generated deployments of 50 and 300 mixed pipelines (bench/pipelines.py, config/
dev.yaml's runtime mix) synthesize into a platform stack and pipeline stacks that each stay under 80 % of
CloudFormation's and IAM's limits, refer only to the platform stack, and hold every pipeline whole; every function's
environment fits Lambda's 4 KB and every pipeline's settings parameter its SSM tier; adding or removing a pipeline
never moves another to a different stack."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
import yaml

from app import build_app, cli_context
from autopilot_common.pipeline_settings import STANDARD_TIER_MAX_CHARS
from bench.pipelines import mixed_config
from local.lambda_runtime import environment_problem
from stacks.app_stack import AutopilotStack, PipelinesStack
from stacks.naming import pipeline_stack_index
from stacks.pipeline_settings import LONGEST_TOKEN_VALUE

# CloudFormation quotas (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html)
# and IAM's managed policies per role (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html).
LIMITS = {"resources": 500, "template_bytes": 1_000_000, "outputs": 200, "managed_policies_per_role": 10}
HEADROOM = 0.8


def synthesized(tmp: Path, config: dict[str, Any]) -> cdk.cx_api.CloudAssembly:
    path = tmp / "generated.yaml"
    path.write_text(yaml.safe_dump(config))
    context = {**cli_context(), "config_path": str(path)}
    return build_app("bench", cdk.App(outdir=str(tmp / "cdk.out"), context=context), nag=False).synth()


def managed_policies_per_role(template: dict[str, Any]) -> Counter[str]:
    """Customer managed policies of this template attached to each role, plus the role's ManagedPolicyArns."""
    counts: Counter[str] = Counter()
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            counts[logical_id] += len(resource["Properties"].get("ManagedPolicyArns", []))
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            for role in resource["Properties"].get("Roles", []):
                counts[json.dumps(role)] += 1
    return counts


# A deploy-time value in an environment at its longest: an ARN or physical name (the longest the app's functions get,
# an SNS topic or state-machine ARN prefix, stays under 128 characters).
LONGEST_VARIABLE_TOKEN = 128


def worst_case(value: Any, token_length: int = LONGEST_VARIABLE_TOKEN) -> str:
    """A template string value with every token (`Ref`, `Fn::GetAtt`, `Fn::ImportValue`) at `token_length`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(worst_case(part, token_length) for part in parts)
    return "x" * token_length


def imports(value: Any) -> list[str]:
    if isinstance(value, list):
        return [name for v in value for name in imports(v)]
    if isinstance(value, dict):
        if set(value) == {"Fn::ImportValue"}:
            return [str(value["Fn::ImportValue"])]
        return [name for v in value.values() for name in imports(v)]
    return []


# Both in the gate: 300 pipelines synthesize in about 12 s on 2 cores.
@pytest.mark.parametrize("pipelines", [50, 300])
def test_every_stack_stays_under_80_percent_of_each_limit(tmp_path: Path, pipelines: int) -> None:
    # Given a generated deployment of `pipelines` mixed pipelines
    config = mixed_config(pipelines)
    # When it is synthesized
    assembly = synthesized(tmp_path, config)
    # Then the platform stack and the pipeline stacks each stay under 80 % of every limit
    stacks = {s.stack_name: s for s in assembly.stacks}
    # Each template read once from its file (`artifact.template` crosses the jsii bridge on every access: the 300
    # pipeline case spent minutes there)
    templates = {name: json.loads(Path(a.template_full_path).read_text()) for name, a in stacks.items()}
    platform = "autopilot-bench"
    assert set(stacks) == {platform} | {
        f"autopilot-bench-pipelines-{pipeline_stack_index(name, config['pipeline_stacks'])}"
        for name in config["pipelines"]
    }
    for name, artifact in stacks.items():
        template = templates[name]
        figures = {
            "resources": len(template["Resources"]),
            "template_bytes": Path(artifact.template_full_path).stat().st_size,
            "outputs": len(template.get("Outputs", {})),
            "managed_policies_per_role": max(managed_policies_per_role(template).values(), default=0),
        }
        over = {k: v for k, v in figures.items() if v > HEADROOM * LIMITS[k]}
        assert not over, f"{name}: {over} over 80 % of {LIMITS}"
        # Cross-stack references only from a pipeline stack to the platform stack
        imported = imports(template)
        if name == platform:
            assert imported == [], imported
        else:
            assert imported and all(i.startswith(f"{platform}:") for i in imported), name
    # Every function's environment fits Lambda's 4 KB, and every pipeline's settings parameter its Standard tier
    functions = {
        f"{name}/{logical_id}": r["Properties"].get("Environment", {}).get("Variables", {})
        for name, template in templates.items()
        for logical_id, r in template["Resources"].items()
        if r["Type"] == "AWS::Lambda::Function"
    }
    assert functions
    problems = [environment_problem(f, {k: worst_case(v) for k, v in env.items()}) for f, env in functions.items()]
    assert not [p for p in problems if p], problems
    parameters = {
        r["Properties"]["Name"]: worst_case(r["Properties"]["Value"], LONGEST_TOKEN_VALUE)
        for template in templates.values()
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SSM::Parameter"
    }
    assert sorted(parameters) == sorted(f"/autopilot-bench/pipelines/{p}" for p in config["pipelines"])
    assert not {n: len(v) for n, v in parameters.items() if len(v) > STANDARD_TIER_MAX_CHARS}
    # Every pipeline whole in the stack its name hashes to: its workflow, trigger and clock under one stack
    machines = {
        r["Properties"]["StateMachineName"]: name
        for name, template in templates.items()
        for r in template["Resources"].values()
        if r["Type"] == "AWS::StepFunctions::StateMachine"
    }
    assert len(machines) == pipelines
    holders: dict[str, set[str]] = {}
    for name, template in templates.items():
        for r in template["Resources"].values():
            for pipeline in PIPELINE_CONSTRUCT.findall(r.get("Metadata", {}).get("aws:cdk:path", "")):
                holders.setdefault(pipeline, set()).add(name)
    for pipeline in config["pipelines"]:
        expected = f"autopilot-bench-pipelines-{pipeline_stack_index(pipeline, config['pipeline_stacks'])}"
        assert machines[f"autopilot-bench-{pipeline}"] == expected
        assert holders[pipeline] == {expected}, pipeline


# A pipeline's constructs: its workflow, trigger and clock (`.../Pipeline-<name>/...`).
PIPELINE_CONSTRUCT = re.compile(r"/(?:Pipeline|Trigger|Clock)-([a-z0-9-]+)/")


def pipeline_homes(config: dict[str, Any], tmp: Path) -> dict[str, str]:
    """Pipeline -> the stack that builds it (the construct tree; no synthesis)."""
    path = tmp / f"homes-{len(config['pipelines'])}.yaml"
    path.write_text(yaml.safe_dump(config))
    app = build_app("bench", cdk.App(context={**cli_context(), "config_path": str(path)}), nag=False)
    homes = {
        pipeline: stack.stack_name
        for stack in app.node.children
        if isinstance(stack, PipelinesStack)
        for pipeline in stack.pipelines
    }
    assert any(isinstance(s, AutopilotStack) for s in app.node.children)
    return homes


def test_adding_or_removing_a_pipeline_never_moves_another(tmp_path: Path) -> None:
    # Given 25 generated pipelines over 3 pipeline stacks
    config = mixed_config(25)
    before = pipeline_homes(config, tmp_path)
    assert len(set(before.values())) == 3
    # When one pipeline is removed (one no other runs after) and a new one is added
    removed = "sales-adhoc-00"
    smaller = {**config, "pipelines": {k: v for k, v in config["pipelines"].items() if k != removed}}
    bigger = {**config, "pipelines": {**config["pipelines"], "sales-new": config["pipelines"]["sales-adhoc-00"]}}
    # Then every other pipeline stays in its stack
    after_removal = pipeline_homes(smaller, tmp_path)
    after_addition = pipeline_homes(bigger, tmp_path)
    assert after_removal == {k: v for k, v in before.items() if k != removed}
    assert {k: v for k, v in after_addition.items() if k != "sales-new"} == before
