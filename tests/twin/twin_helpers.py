"""What the twin tests share: polling, a one-stack cloud assembly, a deployed twin, state machine runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local.twin import Twin


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02
) -> Any:
    """The predicate's first truthy value, polled every `interval` seconds; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def write_assembly(directory: Path, stack: str, template: dict[str, Any]) -> Path:
    """A minimal cloud assembly (manifest + one template) the twin's deployer can read."""
    directory.mkdir(parents=True)
    (directory / f"{stack}.template.json").write_text(json.dumps(template))
    artifact = {"type": "aws:cloudformation:stack", "environment": "aws://unknown-account/unknown-region",
                "properties": {"templateFile": f"{stack}.template.json"}}  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps({"version": "55.0.0", "artifacts": {stack: artifact}}))
    return directory


@contextmanager
def deployed_twin(
    workdir: Path, stack: str, template: dict[str, Any], *, time_scale: float = 0.002
) -> Iterator[tuple[Twin, dict[str, Any]]]:
    """A started twin (no Spark) with `template` deployed: (twin, stack outputs); stopped afterwards.

    Its clock runs 500x (EMR .sync polls every 0.12 s instead of 60 s)."""
    twin = Twin(workdir=workdir, spark=False, time_scale=time_scale).start()
    try:
        report = twin.deploy(write_assembly(workdir / "cdk.out", stack, template))
        yield twin, report.outputs
    finally:
        twin.stop()


def run_machine(sfn: Any, name: str, definition: dict[str, Any], role_arn: str, timeout: float = 15) -> dict[str, Any]:
    """Create a state machine, run it once with `{}` and return the finished execution's description."""
    arn = sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role_arn)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=arn, input="{}")["executionArn"]

    def finished() -> bool:
        return str(sfn.describe_execution(executionArn=execution)["status"]) != "RUNNING"

    wait_for(finished, timeout=timeout, what=f"execution of {name}")
    described: dict[str, Any] = sfn.describe_execution(executionArn=execution)
    return described
