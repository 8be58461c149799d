"""The twin's tests: its models on moto (`moto`); app-level fidelity lives in tests/twin/app/."""

from tests.unit.conftest import moto

__all__ = ["moto"]  # a fixture: imported here, it serves this package
