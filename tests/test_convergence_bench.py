"""``bench/convergence.py --quick``: a run ends in the table and the JSON, and a rerun resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains a cnn in two subprocesses

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "convergence.py"
# One algorithm with client state (SCAFFOLD's control variates), one partition, one thread.
QUICK_ARGS = ("--quick", "--algorithms", "scaffold", "--partitions", "iid", "--threads", "1")


def _quick(out: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *QUICK_ARGS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_quick_run_trains_prints_the_table_and_a_rerun_skips_finished_runs(tmp_path: Path) -> None:
    first = _quick(tmp_path)
    saved = json.loads((tmp_path / "convergence.json").read_text())
    run = saved["runs"]["scaffold/iid"]
    assert run["finished"] and run["optimizer"] == "sgd"  # scaffold's clients train with plain SGD
    assert [r["round"] for r in run["history"]] == [1, 2]
    assert run["history"][-1]["accuracy"] > 0.2  # trained past chance (10 classes)
    assert "| scaffold | defaults | sgd" in first and "FedLess (published)" in first
    assert (tmp_path / "convergence.png").stat().st_size > 0

    second = _quick(tmp_path)
    assert "scaffold iid: finished in an earlier run, skipped" in second
    assert json.loads((tmp_path / "convergence.json").read_text())["runs"]["scaffold/iid"] == run
