"""Each handler's environment as its stack gives it, read from a synthesized cloud assembly (every template in it).

`make bench` imports each handler with it, and tests/infra/test_handler_imports.py checks what that import loads.
CloudFormation tokens (`Ref`, `Fn::GetAtt`, `Fn::Join`) become placeholder strings: an import needs only a
variable's presence and shape (JSON variables stay valid JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import LAMBDAS


def function_environments(assembly: Path) -> dict[str, dict[str, str]]:
    """`{function: variables}` for every `lambdas/<function>/handler.py`, matched to the Lambda function whose
    asset holds that very file. Raises naming a handler that no function of the assembly runs."""
    handlers = {p.parent.name: p.read_bytes() for p in LAMBDAS.glob("*/handler.py")}
    environments: dict[str, dict[str, str]] = {}
    for template in assembly.glob("*.template.json"):
        for resource in json.loads(template.read_text())["Resources"].values():
            asset = resource.get("Metadata", {}).get("aws:asset:path")
            handler = assembly / str(asset) / "handler.py"
            if resource["Type"] != "AWS::Lambda::Function" or not asset or not handler.exists():
                continue
            code = handler.read_bytes()
            for name in (n for n, source in handlers.items() if source == code):
                variables = resource["Properties"].get("Environment", {}).get("Variables", {})
                environments[name] = {key: _placeholder(key, value) for key, value in variables.items()}
    missing = sorted(set(handlers) - set(environments))
    if missing:
        raise LookupError(f"no function in {assembly} runs lambdas/{missing[0]}/handler.py")
    return environments


def _placeholder(name: str, token: Any) -> str:
    """A string for a CloudFormation value: `Fn::Join` joined, `Ref`/`Fn::GetAtt` as `bench-<logical id>` (an ARN
    for `*_ARN` variables)."""
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and "Fn::Join" in token:
        separator, parts = token["Fn::Join"]
        return str(separator).join(_placeholder(name, part) for part in parts)
    if name.endswith("_ARN"):
        return "arn:aws:sns:us-east-1:123456789012:placeholder"
    target = token.get("Ref") or token.get("Fn::GetAtt", ["token"])[0] if isinstance(token, dict) else "token"
    return f"placeholder-{target}"
