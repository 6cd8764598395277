"""Short-turn throughput of another commit against this checkout, in alternating rounds.

    python -m bench.compare REV [--rounds 8] [--n 600]

One run of ``bench.pipeline throughput`` moves by about ±0.1 on a shared 2-core machine, more
than most single changes move it, and two runs made minutes apart see different machines. This
checks REV out into a temporary git worktree, starts one stack (redis-server, web, worker) from
that tree and one from this checkout, each driven by its own process importing its own tree's
code, and alternates worker-stage rounds between them: a round is ``bench.pipeline``'s bare RQ
round then its reply round, exactly as ``throughput`` times them. The order alternates too
(ABBA), so drift in the machine's speed falls on both sides alike. Prints every round, then per
side the median of its round ratios, its ratio of medians and its worker-CPU ratio. The worktree
and both stacks are removed at the end.

REV must have ``bench.pipeline`` with ``_bare_rq_rate`` and ``_pipeline_rate`` (session 5 on).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: what a serving process prefixes its answers with (anything else it prints is passed through)
ANSWER = "ROUND "


def serve(n: int, clients: int) -> None:
    """One side: a stack from the tree this process imports from, a round per line of stdin."""
    from bench import pipeline as bp
    from bench.harness import Stack

    stack = Stack(bp.INSTANT, worker_concurrency=32)
    try:
        bp._pipeline_rate(stack, clients * 2, clients)  # warm up both kinds, as throughput does
        bp._bare_rq_rate(stack, 50)
        print(ANSWER + json.dumps({"code": os.path.dirname(os.path.dirname(os.path.abspath(bp.__file__)))}), flush=True)
        for _line in sys.stdin:
            costs: list[dict[str, float]] = []
            bare = bp._bare_rq_rate(stack, n, True, costs)
            reply = bp._pipeline_rate(stack, n, clients, True, costs)
            print(ANSWER + json.dumps({"bare": bare, "reply": reply, "bare_cpu_ms": costs[0]["worker_cpu_ms"],
                                       "reply_cpu_ms": costs[1]["worker_cpu_ms"]}), flush=True)
    finally:
        stack.close()


class Side:
    """A serving process run from ``tree``, with that tree first on its import path."""

    def __init__(self, name: str, tree: str, n: int, clients: int) -> None:
        self.name, self.rounds = name, []
        env = {**os.environ, "PYTHONPATH": tree}
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", "--n", str(n),
                                      "--clients", str(clients)], cwd=tree, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        code = self.answer()["code"]
        if os.path.realpath(code) != os.path.realpath(tree):  # the stack's processes run from ``tree`` too
            raise RuntimeError(f"{name}: imported the benchmark from {code}, not {tree}")

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(ANSWER):
                return json.loads(line[len(ANSWER):])
            print(f"[{self.name}] {line}", end="")
        raise RuntimeError(f"{self.name}: the benchmark process ended (exit {self.proc.wait()})")

    def round(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        result = self.answer()
        self.rounds.append(result)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the serving process closes its stack and ends
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def medians(self) -> dict[str, float]:
        med = statistics.median
        return {"median_round_ratio": med(r["reply"] / r["bare"] for r in self.rounds),
                "ratio_of_medians": med(r["reply"] for r in self.rounds) / med(r["bare"] for r in self.rounds),
                "cpu_ratio": med(r["bare_cpu_ms"] for r in self.rounds) / med(r["reply_cpu_ms"] for r in self.rounds)}


def compare(rev: str, rounds: int, n: int, clients: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="chatapp-compare-")
    base = os.path.join(tmp, "base")
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", base, rev], cwd=ROOT, check=True)
    sides: list[Side] = []
    try:
        sides = [Side(rev, base, n, clients), Side("this checkout", ROOT, n, clients)]
        for i in range(rounds):
            for side in sides if i % 2 == 0 else sides[::-1]:
                r = side.round()
                print(f"round {i + 1}, {side.name}: bare {r['bare']:.0f} jobs/s, replies {r['reply']:.0f}/s, "
                      f"ratio {r['reply'] / r['bare']:.3f}; worker CPU {r['bare_cpu_ms']:.2f} / "
                      f"{r['reply_cpu_ms']:.2f} ms per item", flush=True)
        out = {side.name: {**side.medians(), "rounds": side.rounds} for side in sides}
        for side in sides:
            m = out[side.name]
            print(f"{side.name}: median of round ratios {m['median_round_ratio']:.3f}, ratio of medians "
                  f"{m['ratio_of_medians']:.3f}, worker CPU ratio {m['cpu_ratio']:.3f} ({rounds} rounds of {n})")
        return out
    finally:
        for side in sides:
            side.close()
        subprocess.run(["git", "worktree", "remove", "--force", base], cwd=ROOT, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", nargs="?", help="the commit to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--n", type=int, default=600, help="items per round and side")
    parser.add_argument("--clients", type=int, default=20, help="REST clients sending the replies")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "compare.json"),
                        help="where to write the rounds (default bench/results/compare.json)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.n, args.clients)
        return
    if not args.rev:
        parser.error("name the commit to compare with, e.g. HEAD~1")
    result = compare(args.rev, args.rounds, args.n, args.clients)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rev": args.rev, **result}, f, indent=2)


if __name__ == "__main__":
    main()
