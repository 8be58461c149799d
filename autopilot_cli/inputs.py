"""The execution input of a run started by hand: the console input the workflows accept (lambdas/prepare:
`{"pipeline": ..., "inputs": [S3 URIs], "overrides": {...}}`), given as JSON, a JSON file, or a list of URIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autopilot_cli.errors import OperationFailed, UsageProblem
from autopilot_cli.ledger import RunRecord
from autopilot_common.manifest import InputManifest
from autopilot_common.s3uri import parse_s3_uri

MAX_CONSOLE_INPUTS = 1000  # lambdas/prepare: what one console input may list


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


def rerun_input(s3: Any, record: RunRecord) -> dict[str, Any]:
    """The console input that runs `record`'s input manifest again: its objects as `inputs`, its overrides, and
    `rerun_of` (prepare records it in the new run's trigger and ledger entry). OperationFailed when the run has no
    manifest (a SKIPPED arrival), the manifest is gone, or it lists more objects than a console input takes."""
    uri = record.raw.get("input_manifest")
    if not isinstance(uri, str) or not uri:
        raise OperationFailed(f"run {record.run_id} ({record.state}) has no input manifest to run again")
    bucket, key = parse_s3_uri(uri, field="input_manifest")
    try:
        manifest = InputManifest.from_json(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        raise OperationFailed(f"run {record.run_id}: its input manifest {uri} is gone") from None
    if manifest.object_count > MAX_CONSOLE_INPUTS:
        raise OperationFailed(
            f"run {record.run_id} read {manifest.object_count} objects; a console run takes at most "
            f"{MAX_CONSOLE_INPUTS}: start runs over their prefixes instead (start --inputs s3://bucket/prefix/)"
        )
    body: dict[str, Any] = {"pipeline": record.pipeline, "inputs": [o.uri for o in manifest.objects]}
    if overrides := record.raw.get("overrides"):
        body["overrides"] = overrides
    return body | {"rerun_of": record.run_id}
