"""Twin fidelity: Lambda refuses a function whose environment variables exceed 4 KB in aggregate (Lambda quotas), at
CreateFunction (so CloudFormation fails the deployment) and at UpdateFunctionConfiguration. The app's guardrail once
carried 5.5 KB (every pipeline's state machine ARN and every workflow role's ARN) and deployed on the twin anyway."""

from __future__ import annotations

from local.lambda_runtime import ENVIRONMENT_LIMIT_BYTES, environment_problem


def test_an_environment_over_4_kb_is_refused_naming_the_largest_variables() -> None:
    fits = {"A": "x" * (ENVIRONMENT_LIMIT_BYTES - len('{"A":""}'))}
    assert environment_problem("fn", fits) is None
    over = {**fits, "PIPELINES": "y" * 10}
    problem = environment_problem("fn", over)
    assert problem is not None
    assert "exceeded the 4KB limit" in problem and "A (4088 chars)" in problem and "PIPELINES (10 chars)" in problem
