"""`make bench`: prints figures, asserts nothing. `python bench/run.py [section ...]` runs some sections only.

- idle: idle cluster time of a 3-step EMR-on-EC2 pipeline on the twin, steps noticed by `.sync` polling vs their
  events (`bench/zero_idle.py`);
- synth: `cdk synth` wall time (the real CLI) for 1, 25, 100 and 300 generated mixed pipelines (bench/pipelines.py),
  with each stack's resources, template bytes, outputs and managed policies per role, and the largest stack's share
  of each limit; synth(300)/synth(1), of wall time and of CPU time (user + system of the CLI and the app: on a
  machine other work shares, the CPU ratio moves less than the wall one);
- imports: each handler's cold import next to a bare `import boto3` (paired fresh interpreters, medians, ratio),
  with the environment its synthesized stack gives it;
- router: the router's events/s through its handler for a 10,000-object burst, window and per_object: against moto,
  the AWS calls per event, and the router's own code with the time inside SDK calls left out (bench/router_burst.py);
- twin: the app on the twin: a 2,500-object window burst (routed / finished after the last put), and 100- and
  1,000-object per-object bursts under a cap of 5 (wall time, admission items read per admitted run, peak memory)
  (bench/twin_burst.py).
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
from resource import RUSAGE_CHILDREN, getrusage

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pipelines import mixed_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CDK = REPO / "node_modules" / ".bin" / "cdk"
sys.path[:0] = [str(REPO)]


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


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (and theirs)."""
    usage = getrusage(RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def synth_stacks(pipelines: int) -> tuple[float, float, dict[str, dict[str, int]]]:
    """`cdk synth` (the real CLI, cdk-nag on) of `pipelines` generated mixed pipelines: wall time, CPU time, figures
    per stack."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"bench-{pipelines}.yaml"
        config.write_text(yaml.safe_dump(mixed_config(pipelines)))
        cpu_before = children_cpu_seconds()
        started = time.perf_counter()
        subprocess.run(
            [str(CDK), "synth", "--quiet", "-c", "env=bench", "-c", f"config_path={config}", "-o", f"{tmp}/out"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - started
        cpu = children_cpu_seconds() - cpu_before
        figures = {
            path.name.removesuffix(".template.json"): stack_figures(path)
            for path in sorted(Path(tmp, "out").glob("*.template.json"))
        }
        return elapsed, cpu, figures


def print_synth_figures() -> None:
    """Synth time and per-stack figures for 1, 25, 100 and 300 pipelines; the largest stack's use of each limit."""
    print("== cdk synth: generated mixed pipelines (real CLI, wall time; bench/pipelines.py) ==")
    seconds: dict[int, float] = {}
    cpu_seconds: dict[int, float] = {}
    for count in SYNTH_PIPELINES:
        elapsed, cpu, stacks = synth_stacks(count)
        seconds[count], cpu_seconds[count] = elapsed, cpu
        largest = {key: max(f[key] for f in stacks.values()) for key in STACK_LIMITS}
        print(f"  {count:>3} pipeline(s): {elapsed:6.1f} s (CPU {cpu:5.1f} s), {len(stacks)} stacks")
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
    print(
        f"  synth({most})/synth({fewest}): {seconds[most] / seconds[fewest]:.2f} "
        f"(CPU time: {cpu_seconds[most] / cpu_seconds[fewest]:.2f})"
    )


def handler_environments() -> dict[str, dict[str, str]]:
    """Each handler's environment as its stack gives it, from a synthesized `dev` assembly."""
    os.environ.setdefault("CDK_DEFAULT_ACCOUNT", "123456789012")
    os.environ.setdefault("CDK_DEFAULT_REGION", "us-east-1")
    import aws_cdk as cdk

    from app import build_app, cli_context
    from tests.function_environments import function_environments

    with tempfile.TemporaryDirectory() as out:
        build_app("dev", cdk.App(outdir=out, context=cli_context()), nag=False).synth()
        return function_environments(Path(out))


def import_ratios(function_env: dict[str, str], path: list[str], pairs: int = 7) -> tuple[float, float, float]:
    """Median seconds of a fresh interpreter importing `handler` and of one importing only boto3, run in pairs
    (alternating, so machine load hits both alike), and the median of the per-pair ratios."""
    base = {**os.environ, **function_env, "POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1", "PYTHONPATH": os.pathsep.join(path)}  # fmt: skip
    base.pop("PYTHONDONTWRITEBYTECODE", None)

    def once(statement: str) -> float:
        code = f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)"
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=base, cwd=path[0])
        if out.returncode:
            raise SystemExit(f"bench: `{statement}` in {path[0]} failed:\n{out.stderr.strip()}")
        return float(out.stdout.strip())

    once("import handler")  # warm the bytecode cache, as a deployed package ships it
    handler_s, boto3_s, ratios = [], [], []
    for _ in range(pairs):
        h, b = once("import handler"), once("import boto3")
        handler_s.append(h)
        boto3_s.append(b)
        ratios.append(h / b)
    return statistics.median(handler_s), statistics.median(boto3_s), statistics.median(ratios)


def cold_import_section() -> None:
    print("== cold import: each handler next to `import boto3` (paired fresh interpreters, medians, tracing off) ==")
    common = str(REPO / "lambdas" / "common" / "python")
    for function, env in sorted(handler_environments().items()):
        handler_s, boto3_s, ratio = import_ratios(env, [str(REPO / "lambdas" / function), common])
        flag = "" if ratio <= 1.5 else "   (target <= 1.5x)"
        print(f"  lambdas/{function + '/handler.py':<22}{handler_s * 1000:6.0f} ms vs boto3 {boto3_s * 1000:4.0f} ms"
              f" = {ratio:4.2f}x{flag}")  # fmt: skip


def synth_section() -> None:
    print_synth_figures()


def router_section() -> None:
    print("== router in-process against moto, 10,000 objects ==")
    subprocess.run([PYTHON, str(REPO / "bench" / "router_burst.py")], check=True)


def twin_section() -> None:
    print("== the app on the twin (IAM on, instant job runs), each burst in a fresh process ==")
    for scenario, objects in (("window", 2500), ("capped", 100), ("capped", 1000)):
        subprocess.run([PYTHON, str(REPO / "bench" / "twin_burst.py"), scenario, str(objects)], check=True)


def idle_section() -> None:
    subprocess.run([PYTHON, str(REPO / "bench" / "zero_idle.py")], check=True)  # its own synth and twin


def main() -> None:
    sections = {
        "idle": idle_section,
        "synth": synth_section,
        "imports": cold_import_section,
        "router": router_section,
        "twin": twin_section,
    }
    chosen = sys.argv[1:] or list(sections)
    unknown = sorted(set(chosen) - set(sections))
    if unknown:
        raise SystemExit(f"bench: unknown section(s) {unknown}; choose from {sorted(sections)}")
    for name in chosen:
        sections[name]()


if __name__ == "__main__":
    main()
