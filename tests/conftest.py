"""Shared test helpers: import paths for the Lambda code, sample events, handler loading."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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
