"""PNG plots of the benchmarks' raw samples, where a distribution says more than a median.

    python -m bench.plots [--out docs/benchmarks] [--results bench/results]

Reads the JSON the benchmark scripts write to bench/results/ (their ``samples`` keys) and draws:

    chunk-latency.png    added latency per chunk at 1 / 100 / 200 concurrent streams (bench.streaming
                         latency; 200 from bench.streaming capacity), next to the bare Redis hop
    ttft.png             time to first token, whole pipeline vs the official SDK (bench.runpod ttft)
    history-latency.png  conversation listing, 100 vs 100,000 conversations (bench.pipeline history)
    cache-latency.png    cache hits over REST and the websocket vs GET /healthz (bench.features cache)

A plot whose JSON is missing (or predates the ``samples`` keys) is skipped with a message. When
several files hold the same benchmark (``streaming-latency.json``, ``streaming-all.json``), the
newest run is used. Needs matplotlib (``pip install -e '.[bench]'``); draws headless (Agg).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.harness import ROOT, percentile

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
GREY = "#888888"


# -- reading the results -----------------------------------------------------------------------
def load(results: str, suite: str, bench: str, has: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The newest ``{suite}-*.json`` whose ``bench`` entry passes ``has``; None if there is none."""
    best = None
    for path in glob.glob(os.path.join(results, f"{suite}-*.json")):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        entry = data.get(bench)
        if isinstance(entry, dict) and _safe(has, entry) and (best is None or data.get("when", "") > best.get("when", "")):
            best = data
    return best


def _safe(check: Callable[[dict[str, Any]], bool], entry: dict[str, Any]) -> bool:
    try:
        return bool(check(entry))
    except (KeyError, TypeError):
        return False


def machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    return (f"{m.get('cpus', '?')} CPUs, {m.get('processor', '?')}, {m.get('platform', '?')}, "
            f"Python {m.get('python', '?')}")


def footer(fig: Any, *runs: tuple[dict[str, Any], str]) -> None:
    """The machine line and the date of each run drawn, under the plot."""
    lines = [f"Machine: {machine_line(runs[0][0])}"]
    lines += [f"{what}: measured {data.get('when', '?').replace('T', ' ').replace('Z', ' UTC')}" for data, what in runs]
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7.5, color="#555555", va="bottom", ha="left")


# -- drawing helpers ---------------------------------------------------------------------------
def cdf(ax: Any, values: list[float], label: str, **kw: Any) -> None:
    xs = sorted(values)
    n = len(xs)
    ax.step(xs, [(i + 1) / n for i in range(n)], where="post", label=label, **kw)


def tail(ax: Any, values: list[float], label: str, **kw: Any) -> None:
    """Fraction of samples at or above x (log-log shows the p99 and beyond)."""
    xs = sorted(values)
    n = len(xs)
    ax.step(xs, [(n - i) / n for i in range(n)], where="post", label=label, **kw)


def stats(values: list[float]) -> str:
    return f"p50 {_ms(percentile(values, 50))}, p99 {_ms(percentile(values, 99))}, n={len(values)}"


def _ms(v: float) -> str:
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def log_ms(ax: Any, axis: str = "x") -> None:
    """A log axis labelled in plain milliseconds (1, 2, 5, 10, ...), readable over a narrow range too."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1.3 else (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def quantile_guides(ax: Any) -> None:
    for q in (0.5, 0.99):
        ax.axhline(q, color=GREY, lw=0.7, ls=":")
        ax.annotate(f"p{round(q * 100)}", xy=(1.0, q), xycoords=("axes fraction", "data"), xytext=(3, -3),
                    textcoords="offset points", fontsize=8, color=GREY)


def target_line(ax: Any, x: float, text: str) -> None:
    ax.axvline(x, color=GREY, lw=0.9, ls="--")
    ax.annotate(text, xy=(x, 0.02), xycoords=("data", "axes fraction"), xytext=(3, 0), textcoords="offset points",
                fontsize=8, color=GREY, rotation=90, va="bottom")


def save(fig: Any, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return path


def skip(name: str, command: str) -> None:
    print(f"skip {name}: no results with raw samples; run `python -m {command}` first")


# -- the plots ---------------------------------------------------------------------------------
def plot_chunk_latency(results: str, out: str) -> str | None:
    lat = load(results, "streaming", "latency", lambda e: any("samples" in v for v in e.values()))
    cap = load(results, "streaming", "capacity", lambda e: "samples" in e["generations_200"])
    if lat is None:
        skip("chunk-latency.png", "bench.streaming latency")
        return None
    color = {1: COLORS[0], 100: COLORS[1], 200: COLORS[2]}
    series = []  # (label, samples, color, line style, line width)
    for key, entry in sorted(lat["latency"].items(), key=lambda kv: int(kv[0].split("_")[-1])):
        if "samples" in entry:
            n = int(key.split("_")[-1])
            c = color.get(n, COLORS[3])
            name = f"{n} stream{'s' if n > 1 else ''}"
            series.append((f"pipeline, {name}", entry["samples"]["pipeline_ms"], c, "-", 1.8))
            series.append((f"bare Redis hop, {name}", entry["samples"]["redis_hop_ms"], c, "--", 1.1))
    if cap is not None:
        for key, entry in cap["capacity"].items():
            n = int(key.split("_")[-1])
            if "samples" in entry:
                series.append((f"pipeline, {n} streams (capacity run)", entry["samples"]["chunk_latency_ms"],
                               color.get(n, COLORS[4]), "-." if n in {int(k.split("_")[-1]) for k in lat["latency"]}
                               else "-", 1.4))
    else:
        print("chunk-latency.png: no 200-stream samples (python -m bench.streaming capacity); drawing without")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 6.4))
    for label, values, c, ls, lw in series:
        cdf(left, values, f"{label} ({stats(values)})", color=c, ls=ls, lw=lw, alpha=0.85 if ls == "--" else 1)
        tail(right, values, label, color=c, ls=ls, lw=lw, alpha=0.85 if ls == "--" else 1)
    log_ms(left)
    left.set_ylim(0, 1.0)
    left.set_xlabel("added latency per chunk (ms, log scale)")
    left.set_ylabel("fraction of chunks at or below")
    left.set_title("CDF")
    quantile_guides(left)
    target_line(left, 5, "target p50 ≤ 5 ms")
    target_line(left, 50, "target p99 ≤ 50 ms")
    log_ms(right)
    right.set_yscale("log")
    right.set_xlabel("added latency per chunk (ms, log scale)")
    right.set_ylabel("fraction of chunks at or above (log scale)")
    right.set_title("Tail")
    right.axhline(0.01, color=GREY, lw=0.7, ls=":")
    right.annotate("1 % (p99)", xy=(0.0, 0.01), xycoords=("axes fraction", "data"), xytext=(3, 3),
                   textcoords="offset points", fontsize=8, color=GREY)
    target_line(right, 50, "target p99 ≤ 50 ms")
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle("Added latency per chunk: provider emit → websocket delta (50 ms between chunks)")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.08), ncol=2, fontsize=8, frameon=False)
    runs = [(lat, "bench.streaming latency (1 and 100 streams, 50 chunks each, one stack)")]
    if cap is not None:
        runs.append((cap, "bench.streaming capacity (100 and 200 streams, 100 chunks each, a stack per level)"))
    footer(fig, *runs)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    return save(fig, out, "chunk-latency.png")


def plot_ttft(results: str, out: str) -> str | None:
    data = load(results, "runpod", "ttft", lambda e: e["samples"]["pipeline_ms"] is not None)
    if data is None:
        skip("ttft.png", "bench.runpod ttft")
        return None
    entry = data["ttft"]
    groups = [("whole pipeline\n(websocket send → first delta)", entry["samples"]["pipeline_ms"]),
              ("official SDK\n(Endpoint.run() → first job.stream() item)", entry["samples"]["sdk_ms"])]
    fig, ax = plt.subplots(figsize=(8, 5.6))
    ax.boxplot([g[1] for g in groups], positions=[1, 2], widths=0.45, showfliers=False,
               medianprops={"color": "black"}, boxprops={"color": GREY}, whiskerprops={"color": GREY},
               capprops={"color": GREY})
    jitter = random.Random(7)
    for i, (_label, values) in enumerate(groups):
        ax.scatter([i + 1 + jitter.uniform(-0.12, 0.12) for _ in values], values, s=22, color=COLORS[i],
                   alpha=0.8, zorder=3, label=f"{_label.splitlines()[0]}: {stats(values)}")
        ax.annotate(f"{min(values):.0f}–{max(values):.0f} ms", xy=(i + 1.27, percentile(values, 50)), fontsize=8.5,
                    va="center", color=COLORS[i])
    emulator_ms = entry.get("emulator_ttft_s", 0.2) * 1000
    ax.axhline(emulator_ms, color=GREY, lw=0.9, ls="--")
    ax.annotate(f"emulator's own time to first token ({emulator_ms:.0f} ms)", xy=(1.5, emulator_ms),
                xycoords=("data", "data"), xytext=(0, -12), textcoords="offset points", fontsize=8, color=GREY,
                ha="center")
    ax.set_xticks([1, 2], [g[0] for g in groups], fontsize=9)
    ax.set_xlim(0.4, 2.6)
    ax.set_ylim(0, max(max(v) for _, v in groups) * 1.15)
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(f"Time to first token on the RunPod emulator (ratio of p50s {entry['ratio_p50']:.2f})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, axis="y", alpha=0.3)
    footer(fig, (data, "bench.runpod ttft (interleaved trials)"))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, out, "ttft.png")


def request_latency_cdf(data: dict[str, Any], samples: dict[str, list[float]], series: tuple, title: str,
                        source: str, name: str, out: str, target_ms: float | None = None) -> str:
    """One CDF figure of client-side request latencies: ``series`` is (key, label, dashed) per curve."""
    fig, ax = plt.subplots(figsize=(9, 5.6))
    for i, (key, label, dashed) in enumerate(series):
        if key in samples:
            cdf(ax, samples[key], f"{label} ({stats(samples[key])})", color=COLORS[i], lw=1.6,
                ls="--" if dashed else "-")
    log_ms(ax)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("request latency, client-side on loopback (ms, log scale)")
    ax.set_ylabel("fraction of requests at or below")
    ax.set_title(title)
    quantile_guides(ax)
    if target_ms is not None:
        target_line(ax, target_ms, f"target p50 ≤ {target_ms:g} ms")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=1, frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    footer(fig, (data, source))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, out, name)


def plot_history(results: str, out: str) -> str | None:
    data = load(results, "pipeline", "history", lambda e: e["samples"]["100_first_page_ms"] is not None)
    if data is None:
        skip("history-latency.png", "bench.pipeline history")
        return None
    return request_latency_cdf(
        data, data["history"]["samples"],
        (("100_first_page_ms", "100 conversations, first page", False),
         ("100k_first_page_ms", "100,000 conversations, first page", False),
         ("100k_later_page_ms", "100,000 conversations, 5th page (cursor)", False)),
        "GET /api/v1/conversations?limit=20: 100 vs 100,000 stored conversations",
        "bench.pipeline history (interleaved requests)", "history-latency.png", out)


def plot_cache(results: str, out: str) -> str | None:
    data = load(results, "features", "cache", lambda e: e["samples"]["chat_hit_ms"] is not None)
    if data is None:
        skip("cache-latency.png", "bench.features cache")
        return None
    return request_latency_cdf(
        data, data["cache"]["samples"],
        (("healthz_baseline_ms", "GET /healthz (baseline)", True),
         ("chat_hit_ms", "POST /api/v1/chat (hit)", False),
         ("wait_true_hit_ms", "POST …/messages?wait=true (hit)", False),
         ("websocket_hit_ms", "websocket send → done (hit)", False)),
        "Cache hits with no worker running: REST vs websocket vs /healthz", "bench.features cache",
        "cache-latency.png", out, target_ms=5)


PLOTS = (plot_chunk_latency, plot_ttft, plot_history, plot_cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks"), help="folder for the PNGs")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results"), help="the benchmarks' JSON")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for plot in PLOTS:
        plot(args.results, args.out)


if __name__ == "__main__":
    main()
