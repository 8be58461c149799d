"""`make demo` end to end (without Spark): it prints only human lines and ends with the runs table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_prints_only_human_lines_and_a_runs_table(cloud_assembly: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'lambdas' / 'common' / 'python'}"}
    done = subprocess.run(
        [sys.executable, "-m", "local.demo", "--no-spark", "--cdk-out", str(cloud_assembly)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    printed = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(printed)
    for line in printed:
        assert not line.lstrip().startswith("{") and "Traceback" not in line and "Warning" not in line, line
    assert any("waiting for sales-daily's batching window" in line for line in printed), printed
    header = next(i for i, line in enumerate(printed) if line.startswith("RUN ID "))
    assert [line.split()[2] for line in printed[header + 1 : header + 3]] == ["SUCCEEDED", "SUCCEEDED"]
    # And it says what each run cost, line by line from the ledger's breakdown
    report = printed.index("What each run cost:")
    assert [line for line in printed[report + 1 :] if line.startswith("  sales-") and ": $" in line], printed[report:]
