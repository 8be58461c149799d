"""`make bench`: prints figures, asserts nothing.

- `cdk synth` wall time (the real CLI) for 1, 25, 100 and 300 generated mixed pipelines (bench/pipelines.py), with
  each stack's resources, template bytes, outputs and managed policies per role, and the largest stack's share of
  each limit; synth(300)/synth(1);
- the router's events/s through its handler against moto for a 10,000-object burst, and how many
  executions that burst starts;
- the cold import time of each handler module next to a bare `import boto3`, in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pipelines import mixed_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CDK = REPO / "node_modules" / ".bin" / "cdk"


# CloudFormation's quotas per stack, and IAM's managed policies per role (tests/infra/test_stack_limits.py).
STACK_LIMITS = {"resources": 500, "template_bytes": 1_000_000, "outputs": 200, "managed_policies_per_role": 10}
SYNTH_PIPELINES = (1, 25, 100, 300)


def stack_figures(template_path: Path) -> dict[str, int]:
    """Resources, template bytes, outputs and the most managed policies one role of the stack has."""
    template = json.loads(template_path.read_text())
    per_role: dict[str, int] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            per_role[logical_id] = per_role.get(logical_id, 0) + len(
                resource["Properties"].get("ManagedPolicyArns", [])
            )
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            for role in resource["Properties"].get("Roles", []):
                key = json.dumps(role)
                per_role[key] = per_role.get(key, 0) + 1
    return {
        "resources": len(template["Resources"]),
        "template_bytes": template_path.stat().st_size,
        "outputs": len(template.get("Outputs", {})),
        "managed_policies_per_role": max(per_role.values(), default=0),
    }


def synth_stacks(pipelines: int) -> tuple[float, dict[str, dict[str, int]]]:
    """`cdk synth` (the real CLI, cdk-nag on) of `pipelines` generated mixed pipelines: wall time, figures per stack."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"bench-{pipelines}.yaml"
        config.write_text(yaml.safe_dump(mixed_config(pipelines)))
        started = time.perf_counter()
        subprocess.run(
            [str(CDK), "synth", "--quiet", "-c", "env=bench", "-c", f"config_path={config}", "-o", f"{tmp}/out"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - started
        figures = {
            path.name.removesuffix(".template.json"): stack_figures(path)
            for path in sorted(Path(tmp, "out").glob("*.template.json"))
        }
        return elapsed, figures


def print_synth_figures() -> None:
    """Synth time and per-stack figures for 1, 25, 100 and 300 pipelines; the largest stack's use of each limit."""
    print("== cdk synth: generated mixed pipelines (real CLI, wall time; bench/pipelines.py) ==")
    seconds: dict[int, float] = {}
    for count in SYNTH_PIPELINES:
        elapsed, stacks = synth_stacks(count)
        seconds[count] = elapsed
        largest = {key: max(f[key] for f in stacks.values()) for key in STACK_LIMITS}
        print(f"  {count:>3} pipeline(s): {elapsed:6.1f} s, {len(stacks)} stacks")
        for name, figures in stacks.items():
            print(
                f"      {name:<32} {figures['resources']:>4} resources {figures['template_bytes'] / 1000:>7.0f} KB "
                f"{figures['outputs']:>3} outputs {figures['managed_policies_per_role']:>2} managed policies/role"
            )
        print(
            "      largest stack, % of each limit: "
            + ", ".join(f"{key} {100 * largest[key] / limit:.0f} %" for key, limit in STACK_LIMITS.items())
        )
    most, fewest = SYNTH_PIPELINES[-1], SYNTH_PIPELINES[0]
    print(f"  synth({most})/synth({fewest}): {seconds[most] / seconds[fewest]:.2f}")


def import_seconds(statement: str, path: list[str]) -> float:
    code = f"import sys,time; sys.path[:0]={path!r}; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)"
    env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
           "MANIFEST_BUCKET": "b", "IDEMPOTENCY_TABLE": "t"}  # fmt: skip
    samples = []
    for _ in range(5):
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, env=env)
        samples.append(float(out.stdout.strip()))
    return statistics.median(samples)


def main() -> None:
    print_synth_figures()

    print("== cold import (median of 5 fresh interpreters) ==")
    common = str(REPO / "lambdas" / "common" / "python")
    print(f"  import boto3              {import_seconds('import boto3', []) * 1000:7.0f} ms")
    for function in sorted(p.name for p in (REPO / "lambdas").iterdir() if (p / "handler.py").exists()):
        seconds = import_seconds("import handler", [str(REPO / "lambdas" / function), common])
        print(f"  lambdas/{function + '/handler.py':<17}{seconds * 1000:7.0f} ms")

    print("== router burst against moto ==")
    subprocess.run([PYTHON, str(REPO / "bench" / "router_burst.py")], check=True)


if __name__ == "__main__":
    main()
