"""One helper for every Lambda function of the app (no copy-pasted function/role blocks)."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from config.model import LambdaSettings
from stacks.arns import service_principal
from stacks.nag import suppress
from stacks.naming import LAMBDAS_DIR, METRICS_NAMESPACE, POWERTOOLS_LAYER_ACCOUNT, POWERTOOLS_LAYER_NAME, function_name

RUNTIME = lambda_.Runtime.PYTHON_3_14
_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


class FunctionFactory(Construct):
    """Builds the app's functions: code from the plain folder `lambdas/<name>/`, the shared code layer
    (`lambdas/common`), and Powertools from the AWS-managed public layer (not bundled, no Docker).

    Defaults: Python 3.14, x86_64, X-Ray tracing active, JSON logs to a log group with the configured
    retention, `POWERTOOLS_*` environment set.
    """

    def __init__(self, scope: Construct, construct_id: str, *, settings: LambdaSettings, prefix: str) -> None:
        super().__init__(scope, construct_id)
        self._settings = settings
        self._prefix = prefix
        # Built with the region/partition pseudo-parameters so one template deploys to any region.
        self.powertools = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "Powertools",
            f"arn:{Aws.PARTITION}:lambda:{Aws.REGION}:{POWERTOOLS_LAYER_ACCOUNT}:layer:"
            f"{POWERTOOLS_LAYER_NAME}:{settings.powertools_layer_version}",
        )
        self.common = lambda_.LayerVersion(
            self,
            "Common",
            code=lambda_.Code.from_asset(str(LAMBDAS_DIR / "common"), exclude=["**/__pycache__/**"]),
            compatible_runtimes=[RUNTIME],
            description="EMR Autopilot shared code (autopilot_common)",
        )

    def function(
        self,
        scope: Construct,
        name: str,
        *,
        description: str,
        environment: Mapping[str, str],
        timeout: Duration | None = None,
        reserved_concurrency: int | None = None,
    ) -> lambda_.Function:
        """A function from `lambdas/<name>/handler.py` (`handler.lambda_handler`)."""
        service = f"autopilot-{name}"
        log_group = logs.LogGroup(
            scope,
            f"{name.title()}Logs",
            retention=_RETENTION[self._settings.log_retention_days],
            removal_policy=RemovalPolicy.DESTROY,
        )
        # The function's own role: writing only its log group (AWSLambdaBasicExecutionRole would allow writing
        # every log group of the account), plus what each construct grants it.
        role = iam.Role(
            scope,
            f"{name.title()}FunctionRole",
            assumed_by=service_principal("lambda.amazonaws.com"),
            description=f"EMR Autopilot {name} function",
        )
        log_group.grant_write(role)
        function = lambda_.Function(
            scope,
            f"{name.title()}Function",
            role=role,
            function_name=function_name(self._prefix, name),
            description=description,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            handler="handler.lambda_handler",
            code=lambda_.Code.from_asset(str(LAMBDAS_DIR / name), exclude=["**/__pycache__/**"]),
            layers=[self.powertools, self.common],
            memory_size=self._settings.memory_mb,
            timeout=timeout or Duration.seconds(60),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            reserved_concurrent_executions=reserved_concurrency,
            environment={
                "POWERTOOLS_SERVICE_NAME": service,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **environment,
            },
        )
        suppress(
            function,
            "AwsSolutions-IAM5",
            "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions.",
            ["Resource::*"],
        )
        return function
