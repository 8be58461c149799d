"""Compose each runtime's workflow (Amazon States Language) from the shared skeleton and its fragment.

Sources, all plain ASL-shaped JSON under `statemachines/`:

- `skeleton.json`: the blocks of states every workflow shares (prepare, input check, run slot, ledger
  STARTED, slot release, job metrics, ledger SUCCEEDED/FAILED, `_SUCCESS`, failure notification).
- `fragments/job_run.json`, `fragments/emr_ec2.json`: blocks the job-run runtimes (EMR Serverless, EMR on
  EKS) or the two EMR-on-EC2 workflows share.
- `fragments/<workflow>.json`: one per workflow; its `States` holds its own states and, in the order they
  take, includes of shared blocks.
- `retry_policies.json`: every retry rule, defined once and named by what it retries.

Composition rules (nothing else is special):

- A state named `@<label>` whose value holds `Include: "<file>.<block>"` is replaced by that block's
  states; its other members are parameters of the block (`Then`, `OnFailure`, ...). A block sees its
  file's `Bindings` (defaults), then the parameters in force where it is included, then the include's own.
- `{{Name}}` in a key or string is replaced by parameter `Name`; a string that is only `{{Name}}` takes the
  parameter's JSON value; a member keyed only `{{Name}}` (value null) is replaced by the members of the
  object parameter `Name` (an empty object adds none). Values taken this way are filled in turn.
- A string in a `Retry` list names a rule of `retry_policies.json`.
- `{"$ref": "#/States/<state>/<member>"}` is a copy of that member of the composed workflow.

`${Substitutions}` are left for CloudFormation. `python -m stacks.asl --write` refreshes the reviewed
snapshots `statemachines/rendered/<workflow>.asl.json` (`make asl`); `--check` fails when one is stale.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from stacks.naming import STATEMACHINES_DIR

FRAGMENTS_DIR = STATEMACHINES_DIR / "fragments"
RENDERED_DIR = STATEMACHINES_DIR / "rendered"
SKELETON = "skeleton"
WORKFLOWS = ("emr_serverless_job", "emr_eks_job", "emr_ec2_transient", "emr_ec2_existing")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
WHOLE_PLACEHOLDER = re.compile(r"^\{\{(\w+)\}\}$")
INCLUDE_PREFIX = "@"

Params = dict[str, Any]


class CompositionError(ValueError):
    """A fragment that cannot be composed: unknown block, parameter or retry policy, or a duplicate state."""


def _source_path(name: str) -> Path:
    return STATEMACHINES_DIR / f"{name}.json" if name == SKELETON else FRAGMENTS_DIR / f"{name}.json"


@cache
def _source(name: str) -> dict[str, Any]:
    path = _source_path(name)
    if not path.is_file():
        raise CompositionError(f"no workflow source {path.relative_to(STATEMACHINES_DIR.parent)}")
    return parse_source(path.read_text(encoding="utf-8"), path.name)


def parse_source(text: str, name: str) -> dict[str, Any]:
    """A source's JSON; a key given twice (two includes with one label, say) is an error, not a silent loss."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise CompositionError(f"{name}: {', '.join(repeated)} given twice in one object")
        return dict(pairs)

    result: dict[str, Any] = json.loads(text, object_pairs_hook=unique)
    return result


@cache
def retry_policies() -> dict[str, dict[str, Any]]:
    """The named retry rules, as `statemachines/retry_policies.json` defines them."""
    result: dict[str, dict[str, Any]] = json.loads(
        (STATEMACHINES_DIR / "retry_policies.json").read_text(encoding="utf-8")
    )["Policies"]
    return result


def _fill_text(text: str, params: Params) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise CompositionError(f"no value for {{{{{name}}}}} in {text!r}")
        filled = params[name]
        if not isinstance(filled, str):
            raise CompositionError(f"{{{{{name}}}}} inside {text!r} needs a string, got {filled!r}")
        return filled

    return PLACEHOLDER.sub(value, text)


def _fill(node: Any, params: Params) -> Any:
    """`node` with its `{{placeholders}}` filled from `params` (see the module docstring)."""
    if isinstance(node, str):
        whole = WHOLE_PLACEHOLDER.match(node)
        if whole and whole.group(1) in params:
            return _fill(copy.deepcopy(params[whole.group(1)]), params)
        return _fill_text(node, params)
    if isinstance(node, list):
        return [_fill(item, params) for item in node]
    if isinstance(node, dict):
        result: dict[str, Any] = {}
        for key, value in node.items():
            whole = WHOLE_PLACEHOLDER.match(key)
            if whole and isinstance(params.get(whole.group(1)), dict):
                if value is not None:
                    raise CompositionError(f"member {key} splices an object: its value must be null")
                result.update(_fill(copy.deepcopy(params[whole.group(1)]), params))
            else:
                result[_fill_text(key, params)] = _fill(value, params)
        return result
    return node


def _expand_retries(node: Any) -> Any:
    """Named retry policies replaced by their rules, at every depth (Map item processors too)."""
    if isinstance(node, list):
        return [_expand_retries(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: _expand_retries(value) for key, value in node.items()}
    retry = result.get("Retry")
    if isinstance(retry, list):
        result["Retry"] = [_policy(rule) if isinstance(rule, str) else rule for rule in retry]
    return result


def _policy(name: str) -> dict[str, Any]:
    policies = retry_policies()
    if name not in policies:
        raise CompositionError(f"no retry policy {name!r} in retry_policies.json (known: {', '.join(policies)})")
    return copy.deepcopy(policies[name]["Retrier"])


def _block(reference: str) -> tuple[dict[str, Any], Params]:
    source, _, block = reference.partition(".")
    document = _source(source)
    blocks = document.get("Blocks", {})
    if block not in blocks:
        raise CompositionError(f"no block {block!r} in {_source_path(source).name} (included as {reference!r})")
    return blocks[block], dict(document.get("Bindings", {}))


def _states(states: dict[str, Any], params: Params, into: dict[str, Any]) -> None:
    """Add `states` to `into` in order, expanding includes and filling placeholders."""
    for name, body in states.items():
        if name.startswith(INCLUDE_PREFIX):
            include = dict(body)
            reference = include.pop("Include", None)
            if not isinstance(reference, str):
                raise CompositionError(f"{name} has no Include")
            block, defaults = _block(reference)
            _states(block, {**defaults, **params, **_fill(include, params)}, into)
            continue
        state_name = _fill_text(name, params)
        if state_name in into:
            raise CompositionError(f"state {state_name!r} is defined twice")
        into[state_name] = _fill(body, params)


def _resolve_refs(node: Any, document: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve_refs(item, document) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"$ref"}:
        target: Any = document
        pointer = node["$ref"]
        for part in pointer.removeprefix("#/").split("/"):
            if not isinstance(target, dict) or part not in target:
                raise CompositionError(f"$ref {pointer!r} points at nothing")
            target = target[part]
        return _resolve_refs(copy.deepcopy(target), document)
    return {key: _resolve_refs(value, document) for key, value in node.items()}


def compose(workflow: str, params: Params | None = None) -> dict[str, Any]:
    """The ASL of `workflow` (one of WORKFLOWS), with its `${Substitutions}` still in place.

    `params` override the fragment's `Bindings` (a pipeline's JSON-typed values that a `${Substitution}`, always a
    string, cannot carry, e.g. an integer in a request); the reviewed snapshot is the workflow without them."""
    fragment = _source(workflow)
    states: dict[str, Any] = {}
    _states(fragment["States"], {**fragment.get("Bindings", {}), **(params or {})}, states)
    document = {"Comment": fragment["Comment"], "StartAt": fragment["StartAt"], "States": states}
    result: dict[str, Any] = _expand_retries(_resolve_refs(document, document))
    return result


def compose_once(workflow: str, params: Params | None = None) -> dict[str, Any]:
    """`compose(workflow, params)`, composed once per process (the pipelines of a runtime share their workflow's
    composition); each call returns a new copy, which the caller may fill in."""
    result: dict[str, Any] = json.loads(_composition(workflow, json.dumps(params or {})))
    return result


@cache
def _composition(workflow: str, params_json: str) -> str:
    return json.dumps(compose(workflow, json.loads(params_json)))


def render(definition: dict[str, Any]) -> str:
    """The text a definition is deployed and reviewed as."""
    return json.dumps(definition, indent=2) + "\n"


def snapshot_path(workflow: str) -> Path:
    return RENDERED_DIR / f"{workflow}.asl.json"


def _shown(path: Path) -> str:
    return (
        str(path.relative_to(STATEMACHINES_DIR.parent)) if path.is_relative_to(STATEMACHINES_DIR.parent) else str(path)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.asl", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="refresh statemachines/rendered/*.asl.json")
    action.add_argument("--check", action="store_true", help="fail when a snapshot differs from its composition")
    args = parser.parse_args(argv)
    stale = []
    for workflow in WORKFLOWS:
        text, path = render(compose(workflow)), snapshot_path(workflow)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {_shown(path)}")
        else:
            stale.append(_shown(path))
    if stale:
        print(f"stale (run `make asl`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
