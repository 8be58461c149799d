"""cdk-nag, cfn-lint and a real ASL validator over what the app synthesizes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from aws_cdk.assertions import Annotations, Match
from cfnlint.api import ManualArgs, lint

from tests.conftest import REPO
from tests.infra.conftest import Synthesized

ASL_VALIDATOR = REPO / "node_modules" / ".bin" / "asl-validator"


def test_cdk_nag_aws_solutions_has_no_unsuppressed_findings(synth: Synthesized) -> None:
    annotations = Annotations.from_stack(synth.stack)
    findings = [
        f"{m.id}: {m.entry.data}"
        for kind in ("find_error", "find_warning")
        for m in getattr(annotations, kind)("*", Match.string_like_regexp("AwsSolutions-.*"))
    ]
    assert findings == []


def test_cfn_lint_reports_no_errors(synth: Synthesized) -> None:
    # The deployment's own region (an env is one region): EMR on EKS, for one, is not offered everywhere.
    matches = lint(json.dumps(synth.raw), config=ManualArgs(regions=[synth.stack.region]))
    errors = [f"{m.rule.id} {m.message} ({m.path})" for m in matches if m.rule.id.startswith("E")]
    assert errors == []


@pytest.mark.parametrize("path", sorted((REPO / "statemachines" / "rendered").glob("*.asl.json")), ids=lambda p: p.name)
def test_asl_is_valid(path: Path, tmp_path: Path) -> None:
    # Fill the ${Substitutions} with plausible values, as CloudFormation does at deploy time.
    fake = {
        "Partition": "aws",
        "PrepareFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:autopilot-dev-prepare",
        "NotificationTopicArn": "arn:aws:sns:us-east-1:123456789012:autopilot-dev-notifications",
        "JobRoleArn": "arn:aws:iam::123456789012:role/job",
    }
    text = re.sub(r"\$\{(\w+)\}", lambda m: fake.get(m.group(1), f"value-of-{m.group(1)}"), path.read_text())
    definition = tmp_path / path.name
    definition.write_text(text)
    result = subprocess.run(
        [str(ASL_VALIDATOR), "--json-path", str(definition)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_asl_validator_rejects_a_broken_definition(tmp_path: Path) -> None:
    # Guard against a validator that accepts anything.
    broken = tmp_path / "broken.asl.json"
    broken.write_text(json.dumps({"StartAt": "Nope", "States": {"A": {"Type": "Pass", "End": True}}}))
    result = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(broken)], capture_output=True, check=False)
    assert result.returncode != 0
