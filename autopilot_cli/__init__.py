"""`emr-autopilot`: the operator's CLI for a deployment of EMR Autopilot, in AWS or in the local twin.

`deployment` finds a deployment (config/<env>.yaml, then the stack's CloudFormation outputs), `ledger` reads its
run ledger, `render` lays runs out for people, `app` holds the commands. The twin's own commands (`local up`,
`local drop`) live in `local.cli` and are mounted here.
"""
