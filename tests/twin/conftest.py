"""The twin's tests: its models on moto (`moto`), and its fidelity to AWS with the app deployed on it (`env`, on
this package's own deployment; modules that deploy a hand-made stack define their own `deployed` and `env`)."""

from tests.deployment import deployed, env
from tests.unit.conftest import moto

__all__ = ["deployed", "env", "moto"]  # fixtures: imported here, they are scoped to this package
