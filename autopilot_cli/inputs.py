"""The execution input of a run started by hand: the console input the workflows accept (lambdas/prepare:
`{"pipeline": ..., "inputs": [S3 URIs], "overrides": {...}}`), given as JSON, a JSON file, or a list of URIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autopilot_cli.errors import UsageProblem


def console_input(pipeline: str, text: str | None, file: Path | None, uris: list[str]) -> str:
    """The execution input as JSON: `--input`, `--input-file` or `--inputs` (at most one; none: `{"pipeline":
    PIPELINE}`). UsageProblem for invalid JSON, another pipeline's input or a URI not s3:// (the rest is prepare's
    to judge: the execution fails with what it refused)."""
    given = [flag for flag, value in (("--input", text), ("--input-file", file), ("--inputs", uris)) if value]
    if len(given) > 1:
        raise UsageProblem(f"{' and '.join(given)}: give one of --input, --input-file, --inputs")
    if uris:
        bad = [uri for uri in uris if not uri.startswith("s3://") or len(uri) <= len("s3://")]
        if bad:
            raise UsageProblem(f"--inputs: {', '.join(bad)}: expected s3://bucket/key or s3://bucket/prefix/")
        return json.dumps({"pipeline": pipeline, "inputs": uris})
    if file is not None:
        try:
            text = file.read_text()
        except OSError as exc:
            raise UsageProblem(f"--input-file {file}: {exc.strerror or exc}") from None
    if text is None:
        return json.dumps({"pipeline": pipeline})
    flag = "--input-file" if file is not None else "--input"
    _check(pipeline, _parse(text, flag), flag)
    return text


def _parse(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"{flag} is not valid JSON: {exc}") from None


def _check(pipeline: str, body: Any, flag: str) -> None:
    if not isinstance(body, dict):
        raise UsageProblem(f"{flag}: expected a JSON object such as {json.dumps({'pipeline': pipeline})}")
    if "pipeline" in body and body["pipeline"] != pipeline:
        raise UsageProblem(f"{flag}: names pipeline {body['pipeline']!r}, not {pipeline!r}")
