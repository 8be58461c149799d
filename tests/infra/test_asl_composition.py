"""The workflows composed from statemachines/ (skeleton, fragments, retry policies) are the reviewed snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stacks import asl

SOURCES = [asl.STATEMACHINES_DIR / "skeleton.json", *sorted(asl.FRAGMENTS_DIR.glob("*.json"))]


@pytest.mark.parametrize("workflow", asl.WORKFLOWS)
def test_composed_workflow_is_its_snapshot(workflow: str) -> None:
    # A change to a source must come with `make asl`, so the rendered workflow is reviewed with it.
    composed = asl.compose(workflow)
    snapshot = asl.snapshot_path(workflow).read_text(encoding="utf-8")
    assert composed == json.loads(snapshot)
    assert asl.render(composed) == snapshot


def test_snapshots_are_exactly_the_workflows() -> None:
    assert sorted(p.name for p in asl.RENDERED_DIR.glob("*")) == sorted(f"{w}.asl.json" for w in asl.WORKFLOWS)


def _retry_rules(node: Any) -> list[Any]:
    if isinstance(node, list):
        return [rule for item in node for rule in _retry_rules(item)]
    if not isinstance(node, dict):
        return []
    own = list(node["Retry"]) if isinstance(node.get("Retry"), list) else []
    return own + [rule for value in node.values() for rule in _retry_rules(value)]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_sources_name_their_retry_policies(source: Path) -> None:
    rules = _retry_rules(json.loads(source.read_text(encoding="utf-8")))
    assert [rule for rule in rules if not isinstance(rule, str)] == []
    # A parameter (`{{CancelRetry}}`) names its policy where the block is included.
    assert {rule for rule in rules if not asl.WHOLE_PLACEHOLDER.match(rule)} <= set(asl.retry_policies())


def test_every_retry_policy_is_used() -> None:
    used = {json.dumps(rule) for workflow in asl.WORKFLOWS for rule in _retry_rules(asl.compose(workflow))}
    unused = [name for name, policy in asl.retry_policies().items() if json.dumps(policy["Retrier"]) not in used]
    assert unused == []


def _compose_with(monkeypatch: pytest.MonkeyPatch, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    monkeypatch.setattr(asl, "_source", sources.__getitem__)
    return asl.compose("flow")


def test_includes_fill_parameters_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = {
        "Bindings": {"Then": "Default"},
        "Blocks": {
            "wait": {
                "Wait{{Suffix}}": {"Type": "Wait", "{{Note}}": None, "Seconds": 1, "Next": "{{Then}}"},
                "Copy{{Suffix}}": {"Type": "Pass", "Parameters": {"$ref": "#/States/First/Parameters"}, "End": True},
            }
        },
    }
    flow = {
        "Comment": "c",
        "StartAt": "First",
        "Bindings": {"Note": {"Comment": "why"}},
        "States": {
            "First": {"Type": "Pass", "Parameters": {"a": 1}, "Next": "Wait"},
            "@one": {"Include": "shared.wait", "Suffix": "", "Then": "WaitAgain"},
            "@two": {"Include": "shared.wait", "Suffix": "Again", "Note": {}},
        },
    }
    states = _compose_with(monkeypatch, {"shared": shared, "flow": flow})["States"]
    assert list(states) == ["First", "Wait", "Copy", "WaitAgain", "CopyAgain"]
    assert states["Wait"] == {"Type": "Wait", "Comment": "why", "Seconds": 1, "Next": "WaitAgain"}
    assert states["WaitAgain"] == {"Type": "Wait", "Seconds": 1, "Next": "Default"}
    assert states["CopyAgain"]["Parameters"] == {"a": 1}


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ({"A": {"Type": "Pass", "Next": "{{Missing}}"}}, "no value for {{Missing}}"),
        ({"A": {"Type": "Task", "Retry": ["no_such_policy"], "End": True}}, "no retry policy 'no_such_policy'"),
        ({"@x": {"Include": "flow.nothing"}}, "no block 'nothing'"),
        ({"A": {"Type": "Pass", "End": True}, "@again": {"Include": "flow.a"}}, "state 'A' is defined twice"),
        ({"A": {"Type": "Pass", "Parameters": {"$ref": "#/States/B/Parameters"}, "End": True}}, "points at nothing"),
    ],
)
def test_composition_rejects_broken_sources(
    monkeypatch: pytest.MonkeyPatch, states: dict[str, Any], message: str
) -> None:
    flow = {"Comment": "c", "StartAt": "A", "States": states, "Blocks": {"a": {"A": {"Type": "Pass", "End": True}}}}
    with pytest.raises(asl.CompositionError, match=message.replace("{", r"\{").replace("}", r"\}")):
        _compose_with(monkeypatch, {"flow": flow})


def test_a_label_given_twice_is_rejected() -> None:
    with pytest.raises(asl.CompositionError, match="@release given twice"):
        asl.parse_source('{"States": {"@release": {"Include": "a.b"}, "@release": {"Include": "a.c"}}}', "f.json")


def test_stale_snapshot_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(asl, "RENDERED_DIR", tmp_path)
    assert asl.main(["--check"]) == 1
    assert asl.main(["--write"]) == 0
    assert asl.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("workflow", "member"),
    [("emr_serverless_job", "RetryPolicy"), ("emr_eks_job", "RetryPolicyConfiguration")],
)
def test_a_pipelines_retry_policy_goes_into_both_start_job_run_requests(workflow: str, member: str) -> None:
    # Given the binding a pipeline with runtime.retry.max_attempts 3 composes its workflow with
    composed = asl.compose(workflow, {"JobRunRetry": {member: {"MaxAttempts": 3}}})
    # Then the request-response start and the .sync wait send the same policy (one job run, same ClientToken)
    for state in ("StartJob", "RunJob"):
        assert composed["States"][state]["Parameters"][member] == {"MaxAttempts": 3}
    # and the reviewed snapshot (max_attempts 1, the service's default) sends none
    assert member not in asl.compose(workflow)["States"]["StartJob"]["Parameters"]
