"""``python -m bench.compare``: another commit's stack against this checkout's, in alternating
rounds, each side importing its own tree's code (the tool benchmarks.md's comparisons come from)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import redis_binary
from tests.processes import ROOT

pytestmark = pytest.mark.slow


def worktrees() -> list[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def test_compare_runs_both_sides_alternately_and_cleans_up(tmp_path):
    redis_binary()
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs a git checkout")
    before = worktrees()
    out = tmp_path / "compare.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPP_", "RUNPOD_", "OPENAI_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run([sys.executable, "-m", "bench.compare", "HEAD", "--rounds", "2", "--n", "20",
                           "--clients", "4", "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"rev", "HEAD", "this checkout"}
    for side in ("HEAD", "this checkout"):
        rounds = result[side]["rounds"]
        assert len(rounds) == 2 and all(r["bare"] > 0 and r["reply"] > 0 and r["reply_cpu_ms"] > 0 for r in rounds)
        assert 0 < result[side]["median_round_ratio"] < 5
    order = [line.split(": ")[0] for line in proc.stdout.splitlines() if line.startswith("round ")]
    assert order == ["round 1, HEAD", "round 1, this checkout", "round 2, this checkout", "round 2, HEAD"]
    assert worktrees() == before  # the temporary worktree is gone
