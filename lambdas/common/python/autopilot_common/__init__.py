"""Code shared by the EMR Autopilot Lambda functions (shipped as a Lambda layer from `lambdas/common`)."""
