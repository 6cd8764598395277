"""CI smoke of the fault suite: ``python -m bench.faults --smoke`` runs every check briefly against
the real processes and must meet every target (see docs/benchmarks.md, "Fault suite")."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from chatapp.runpod_emulator import FAULTS
from tests.conftest import redis_binary
from tests.processes import ROOT

pytestmark = pytest.mark.slow

TIMEOUT_S = 240  # about 70 s on an idle 2-core machine


def test_fault_suite_smoke_meets_every_target(tmp_path):
    redis_binary()  # skips (or fails in CI) without redis-server, like the other Redis tests
    from bench.faults import check_names

    out = tmp_path / "faults.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPP_", "RUNPOD_", "OPENAI_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "bench.faults", "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the suite stops every process it started on SIGTERM
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
        pytest.fail(f"the smoke fault suite took more than {TIMEOUT_S} s:\n{stdout[-5000:]}")
    assert proc.returncode == 0, stdout[-5000:]
    names = check_names()
    # every fault the emulator can inject has a row of its own
    assert all(any(n.startswith("runpod emulator fault: ") and fault in n for n in names) for fault in FAULTS), names
    table = stdout[stdout.index("\ncheck "):]
    for name in names:
        assert name in table, f"summary does not list {name!r}:\n{table}"
    assert "FAIL" not in table, table
    report = json.loads(out.read_text())
    assert {c["check"] for c in report["checks"]} == set(names)
    assert all(c["passed"] for c in report["checks"]), [c for c in report["checks"] if not c["passed"]]
