"""A handler's cold start imports only what it needs: importing `lambdas/<f>/handler.py` (in a fresh interpreter,
with the environment its stack gives it, tracing off as `make bench` measures it) must not load a heavy module
that the hot path does not use. `make bench` prints the import times; this test keeps the cause from coming back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LAMBDAS
from tests.function_environments import function_environments

# Module -> why no handler may import it at cold start.
HEAVY = {
    "aws_xray_sdk": "the X-Ray SDK (~100 ms): made only when tracing is on (autopilot_common.observability)",
    "pydantic": "the ledger schema's generator; handlers validate nothing with it",
    "yaml": "config files are read at synth time, not in Lambda",
    "config": "the app's config models (pydantic) live in the CDK app, not in Lambda",
    "aws_cdk": "the CDK is synth-time only",
    "moto": "tests only",
}
HANDLERS = sorted(p.parent.name for p in LAMBDAS.glob("*/handler.py"))


def import_handler(function: str, environment: dict[str, str], code: str) -> str:
    """Run `code` (which imports `handler`) in a fresh interpreter set up as the function's; its stdout."""
    path = [str(LAMBDAS / function), str(LAMBDAS / "common" / "python")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "AWS_LAMBDA"))}
    env.update(POWERTOOLS_TRACE_DISABLED="true", AWS_REGION="us-east-1", PYTHONPATH=os.pathsep.join(path))
    env.update(environment)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=path[0])
    assert out.returncode == 0, f"importing lambdas/{function}/handler.py failed:\n{out.stderr}"
    return out.stdout


def modules_after_import(function: str, environment: dict[str, str]) -> set[str]:
    code = "import json, sys; import handler; print(json.dumps(sorted(sys.modules)))"
    return set(json.loads(import_handler(function, environment, code)))


# Records every boto3/botocore client created while `handler` is imported (each loads its service model: ~50 ms).
CLIENTS_AT_IMPORT = """
import json, botocore.client
created, original = [], botocore.client.ClientCreator.create_client
def create_client(self, service_name, *args, **kwargs):
    created.append(service_name)
    return original(self, service_name, *args, **kwargs)
botocore.client.ClientCreator.create_client = create_client
import handler
print(json.dumps(created))
"""


@pytest.fixture(scope="module")
def environments(cloud_assembly: Path) -> dict[str, dict[str, str]]:
    return function_environments(cloud_assembly)


@pytest.mark.parametrize("function", HANDLERS)
def test_handler_import_loads_no_heavy_module(function: str, environments: dict[str, dict[str, str]]) -> None:
    loaded = modules_after_import(function, environments[function])
    heavy = {root: why for root, why in HEAVY.items() if any(m == root or m.startswith(root + ".") for m in loaded)}
    assert not heavy, f"lambdas/{function}/handler.py imports at cold start: {heavy}"


def test_the_check_sees_a_heavy_import(environments: dict[str, dict[str, str]]) -> None:
    """The subprocess really reports what the import loaded (a tracing-on Tracer pulls in the X-Ray SDK)."""
    env = {**environments["prepare"], "POWERTOOLS_TRACE_DISABLED": "false", "LAMBDA_TASK_ROOT": "/var/task"}
    assert "aws_xray_sdk.core" in modules_after_import("prepare", env)


@pytest.mark.parametrize("function", HANDLERS)
def test_handler_import_creates_no_client(function: str, environments: dict[str, dict[str, str]]) -> None:
    """Clients are made on first use (autopilot_common.clients.Clients), never at cold start."""
    created = json.loads(import_handler(function, environments[function], CLIENTS_AT_IMPORT))
    assert created == [], f"lambdas/{function}/handler.py creates AWS clients at import: {created}"


def test_the_check_sees_a_client_made_at_import(environments: dict[str, dict[str, str]]) -> None:
    code = CLIENTS_AT_IMPORT.replace("import handler", "import handler, boto3; boto3.client('sns')")
    assert json.loads(import_handler("prepare", environments["prepare"], code)) == ["sns"]
