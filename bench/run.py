"""`make bench`: prints figures, asserts nothing.

- idle cluster time of a 3-step EMR-on-EC2 pipeline on the twin, steps noticed by `.sync` polling vs their events
  (`bench/zero_idle.py`);
- `cdk synth` wall time (the real CLI) for the app with 1 and with 25 pipelines (generated configs);
- the router's events/s through its handler against moto for a 10,000-object burst, and how many
  executions that burst starts;
- the cold import time of each handler module next to a bare `import boto3`, in the same run.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CDK = REPO / "node_modules" / ".bin" / "cdk"


def generated_config(pipelines: int) -> dict[str, object]:
    base = yaml.safe_load((REPO / "config" / "dev.yaml").read_text())
    template = base["pipelines"]["sales-daily"]
    base["pipelines"] = {}
    for i in range(pipelines):
        pipeline = copy.deepcopy(template)
        pipeline["trigger"]["prefix"] = f"feed{i:02d}/"
        base["pipelines"][f"feed-{i:02d}"] = pipeline
    return base


def synth_seconds(pipelines: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"bench-{pipelines}.yaml"
        config.write_text(yaml.safe_dump(generated_config(pipelines)))
        started = time.perf_counter()
        subprocess.run(
            [str(CDK), "synth", "--quiet", "-c", "env=bench", "-c", f"config_path={config}", "-o", f"{tmp}/out"],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - started
        (template,) = Path(tmp, "out").glob("*.template.json")
        return elapsed, len(json.loads(template.read_text())["Resources"])


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
    subprocess.run([PYTHON, str(REPO / "bench" / "zero_idle.py")], check=True)  # first: its own synth and twin

    print("== cdk synth (real CLI, wall time) ==")
    for count in (1, 25):
        seconds, resources = synth_seconds(count)
        print(f"  {count:>2} pipeline(s): {seconds:6.1f} s ({resources} resources; CloudFormation allows 500)")

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
