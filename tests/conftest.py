"""Shared test helpers: import paths for the Lambda code, sample events, handler loading; the app synthesized once."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EVENTS = REPO / "tests" / "events"
LAMBDAS = REPO / "lambdas"

# Lambda code runs with its own folder and the common layer on the path, as in AWS.
for path in [LAMBDAS / "common" / "python", *sorted(p for p in LAMBDAS.iterdir() if p.is_dir() and p.name != "common")]:
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def load_event(name: str) -> dict[str, Any]:
    """A sample event from tests/events/ (real AWS shapes)."""
    result: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return result


def load_handler(function: str) -> ModuleType:
    """Import `lambdas/<function>/handler.py` under a unique module name (every function has a handler.py)."""
    path = LAMBDAS / function / "handler.py"
    spec = importlib.util.spec_from_file_location(f"{function}_handler", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cloud_assembly(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's `dev` cloud assembly without cdk-nag, synthesized once per session (tests/deployment.py deploys it)."""
    os.environ.setdefault("CDK_DEFAULT_ACCOUNT", "123456789012")
    os.environ.setdefault("CDK_DEFAULT_REGION", "us-east-1")
    import aws_cdk as cdk  # here, not at the top: the unit tests do not pay for importing the CDK

    from app import build_app, cli_context

    outdir = tmp_path_factory.mktemp("cdk.out")
    build_app("dev", cdk.App(outdir=str(outdir), context=cli_context()), nag=False).synth()
    return outdir


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the twin's IAM did over the suite's deployments of the app (CI logs show it)."""
    deployment = sys.modules.get("tests.deployment")  # imported only by suites that deploy the app
    if deployment is not None and deployment.IAM_SUMMARY:
        s = deployment.IAM_SUMMARY
        terminalreporter.write_line(
            f"twin IAM: {s['calls']} calls of the app's principals authorized ({s['operations']} distinct operations, "
            f"{s['authorizations']} authorizations, {s['statements_evaluated']} statements evaluated), "
            f"{s['denials']} refused (by tests that provoke refusals), {len(s['unmapped'])} unmapped"
        )
    if deployment is not None and deployment.LEDGER_WRITES:
        writes = deployment.LEDGER_WRITES
        terminalreporter.write_line(
            f"run ledger: {len(writes)} entries written, {len(deployment.ledger_problems(writes))} schema problems"
        )
