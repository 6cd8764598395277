"""Shared benchmark plumbing: a private redis-server, the Procfile's processes, and stats."""
from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else float("nan"),
            "mean": statistics.fmean(values) if values else float("nan")}


def capped(values: list[float], limit: int = 20_000, digits: int = 4) -> list[float]:
    """Raw samples for the JSON (bench/plots.py draws them): at most ``limit``, evenly spaced over
    the run in the order they were taken, rounded so the files stay small."""
    if len(values) > limit:
        step = len(values) / limit
        values = [values[int(i * step)] for i in range(limit)]
    return [round(v, digits) for v in values]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def _stat_cpu_s(path: str) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` file (a process's or a thread's)."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    """redis-server + gunicorn web + ``python -m workers``, all on loopback, torn down at exit."""

    def __init__(self, env: dict[str, str] | None = None, web_workers: int = 1, worker_concurrency: int = 100,
                 start_worker: bool = True, appendonly: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="chatapp-bench-")
        self.redis_port, self.web_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.worker_concurrency = worker_concurrency
        redis_bin = shutil.which("redis-server")
        if not redis_bin:
            raise SystemExit("bench needs redis-server on PATH")
        self.redis_args = [redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", self.dir,
                           "--save", "", "--appendonly", "no"]
        if appendonly:  # AOF with fsync every second, as the embedded default runs it
            self.redis_args[-1:] = ["yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
        self.redis_proc = self._spawn(self.redis_args, "redis")
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self._wait(lambda: self.redis.ping())
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATAPP_", "RUNPOD_", "OPENAI_"))}
        # one benchmark user drives hundreds of replies: lift the per-user limits
        self.env.update({"CHATAPP_MAX_ACTIVE_GENERATIONS": "0", "CHATAPP_RATE_LIMIT_SENDS_PER_MINUTE": "0",
                         "CHATAPP_RATE_LIMIT_REQUESTS_PER_MINUTE": "0", "CHATAPP_MAX_SOCKETS_PER_USER": "0"})
        self.env.update({"REDIS_URL": self.redis_url, "PORT": str(self.web_port), "WEB_CONCURRENCY": str(web_workers),
                         "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.web = self._spawn([os.path.join(BIN, "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app",
                                "--access-logfile", "/dev/null"], "web")
        self.worker = None
        if start_worker:
            self.worker = self.start_worker()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.ws_url = f"ws://127.0.0.1:{self.web_port}/ws"
        self._wait(lambda: requests.get(self.url + "/healthz", timeout=1).raise_for_status())
        out = subprocess.run([os.path.join(BIN, "flask"), "--app", "wsgi", "users", "create", "bench"], cwd=ROOT,
                             env=self.env, capture_output=True, text=True, check=True)
        self.key = out.stdout.strip().splitlines()[-1]

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(os.path.join(self.dir, f"{name}.log"), "wb")
        proc = subprocess.Popen(args, cwd=ROOT, env=getattr(self, "env", None), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait(check: Any, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                check()
                return
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        """Start a ``python -m workers`` process (it becomes ``self.worker``)."""
        self.worker = self._spawn([sys.executable, "-m", "workers", "--concurrency", str(self.worker_concurrency)],
                                  name)
        return self.worker

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        """Signal the current worker process (its whole session) and reap it."""
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, sig)
            self.worker.wait(15)

    def restart_redis(self, down_s: float = 1.0, name: str = "redis-restarted") -> float:
        """SIGTERM redis-server (it writes its AOF and exits), stay down ``down_s``, start it again
        on the same port and dir; returns the time.time() at which it answered again."""
        os.killpg(self.redis_proc.pid, signal.SIGTERM)
        self.redis_proc.wait(30)
        time.sleep(down_s)
        self.redis_proc = self._spawn(self.redis_args, name)
        self._wait(lambda: self.redis.ping())
        return time.time()

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            with open(os.path.join(self.dir, f"{name}.log"), "rb") as f:
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def web_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.web.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def redis_connections(self, pid: int) -> int:
        return sum(1 for c in self.redis.client_list() if c.get("name") == f"chatapp-{pid}")

    @staticmethod
    def cpu_s(pid: int) -> float:
        """CPU seconds (user + system) the process has used so far."""
        return _stat_cpu_s(f"/proc/{pid}/stat")

    @staticmethod
    def thread_cpu_s(pid: int) -> dict[str, float]:
        """CPU seconds so far of a worker process's threads, by the names the worker gives them at
        the OS level (``workers.thread_names``): the RQ loop (the main thread), the reply threads,
        the finisher, the event writer, and the rest (threads that ended are counted only in the
        process total)."""
        groups = {"chatapp-reply": "reply_threads", "chatapp-finishe": "finisher", "chatapp-event-w": "event_writer"}
        out = dict.fromkeys(["rq_loop", *groups.values(), "other_threads"], 0.0)
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
                cpu = _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat")
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            group = "rq_loop" if tid == str(pid) else next(
                (g for prefix, g in groups.items() if comm.startswith(prefix)), "other_threads")
            out[group] += cpu
        return out

    def usage(self) -> dict[str, float]:
        """CPU seconds so far of the web workers, the worker, redis-server and this process, and
        the commands Redis has run (scripts' own commands included)."""
        pids = {"web": self.web_pids(), "worker": [self.worker.pid] if self.worker else [],
                "redis": [self.redis_proc.pid], "bench": [os.getpid()]}
        out = {f"{name}_cpu_s": sum(self.cpu_s(p) for p in group) for name, group in pids.items()}
        if self.worker:
            out.update({f"worker_{name}_cpu_s": s for name, s in self.thread_cpu_s(self.worker.pid).items()})
        out["redis_commands"] = sum(v["calls"] for v in self.redis.info("commandstats").values())
        return out

    @staticmethod
    def rss_mb(pid: int) -> float:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_cli(suite: str, doc: str, benches: dict[str, Any]) -> None:
    """``python -m bench.<suite> NAME|all``: run benchmarks, print them, save JSON in bench/results/."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*benches, "all"])
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name, bench in benches.items():
        if args.what in (name, "all"):
            results[name] = bench()
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", f"{suite}-{args.what}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")
