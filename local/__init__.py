"""EMR Autopilot local twin: the synthesized CDK app on moto, offline."""
