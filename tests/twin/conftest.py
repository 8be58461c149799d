"""The twin's tests: its models on moto (`moto`), and app-level fidelity on their own deployment of the app."""

from tests.deployment import deployed, env
from tests.unit.conftest import moto

__all__ = ["deployed", "env", "moto"]  # fixtures: imported here, they are scoped to this package
