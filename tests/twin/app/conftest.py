"""The twin's fidelity to AWS with the app deployed on it: this package's own deployment (tests/deployment.py).

A package of its own so that the deployment is stopped before the other twin tests start theirs: twins in one
process share moto's backends, and one twin would see the other's resources."""

from tests.deployment import deployed, env

__all__ = ["deployed", "env"]  # fixtures: imported here, they are scoped to this package
