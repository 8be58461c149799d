"""The e2e scenarios run on their own deployment of the synthesized app (tests/deployment.py)."""

from tests.deployment import deployed, env

__all__ = ["deployed", "env"]  # fixtures: imported here, they are scoped to this package
