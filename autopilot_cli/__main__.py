"""`python -m autopilot_cli ...`: the same as `emr-autopilot ...`."""

from autopilot_cli.app import run

run()
