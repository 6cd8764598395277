"""``chatapp-cli batch``: many one-shot questions through ``POST /api/v1/batch``, progress while the
server works through them, then the answers and what they cost."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from chatapp.client.api import ApiClient, ApiError
from chatapp.client.output import money

POLL_MIN_S, POLL_MAX_S = 0.3, 2.0
#: without a terminal, a progress line at most this often (logs stay short)
PLAIN_EVERY_S = 5.0
BAR_WIDTH = 30


def read_questions(path: str) -> list[str]:
    """One question per non-empty line of ``path`` (``-`` = standard input), stripped."""
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ApiError("bad_input", f"Cannot read {path}: {exc.strerror or exc}.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def answered(batch: dict[str, Any]) -> int:
    """Items that have ended (done, failed or cancelled)."""
    total = int(batch.get("total") or 0)
    if "pending" in batch:
        return total - int(batch.get("pending") or 0)
    return sum(int(batch.get(k) or 0) for k in ("done", "failed", "cancelled"))


class Progress:
    """A redrawn bar on a terminal; otherwise a plain line now and then, so logs stay readable."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_line_at = 0.0
        self.last_done = -1

    def text(self, batch: dict[str, Any]) -> str:
        """The counts and cost as one line."""
        total, finished = int(batch.get("total") or 0), answered(batch)
        cost = "cost" if batch.get("state") == "done" else "cost so far"
        return f"{finished}/{total} finished ({batch.get('failed', 0)} failed), {cost} {money(batch.get('total_cost_usd'))}"

    def update(self, batch: dict[str, Any]) -> None:
        """Show the current counts."""
        total, finished = max(1, int(batch.get("total") or 0)), answered(batch)
        if self.tty:
            filled = BAR_WIDTH * finished // total
            self.stream.write(f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.text(batch)}\x1b[K")
        elif finished != self.last_done and time.monotonic() - self.last_line_at >= PLAIN_EVERY_S:
            self.stream.write(f"batch: {self.text(batch)}\n")
            self.last_line_at, self.last_done = time.monotonic(), finished
        self.stream.flush()

    def finish(self, batch: dict[str, Any]) -> None:
        """The final state, ending the bar's line."""
        if self.tty:
            self.update(batch)
            self.stream.write("\n")
        else:
            self.stream.write(f"batch: {self.text(batch)}\n")
        self.stream.flush()


def wait_for(api: ApiClient, batch_id: str, progress: Progress) -> dict[str, Any]:
    """Poll until the batch is done; 429/503 answers are waited out rather than fatal."""
    delay = POLL_MIN_S
    while True:
        try:
            batch = api.batch(batch_id)
        except ApiError as exc:
            if exc.status not in (429, 503):
                raise
            wait = exc.retry_after or ""
            time.sleep(min(30.0, float(wait)) if wait.replace(".", "", 1).isdigit() else 2.0)
            continue
        if batch.get("state") == "done":
            progress.finish(batch)
            return batch
        progress.update(batch)
        time.sleep(delay)
        delay = min(POLL_MAX_S, delay * 1.5)


def answers_text(batch: dict[str, Any]) -> str:
    """Each question and its answer (or its error), in the order given."""
    blocks = []
    for item in sorted(batch.get("items", []), key=lambda i: i.get("index", 0)):
        n = int(item.get("index", 0)) + 1
        if item.get("state") == "done":
            answer = item.get("content", "")
        else:
            err = item.get("error") or {}
            answer = f"[{item.get('state')}] {err.get('message', '')} ({err.get('code', item.get('state'))})"
        cached = ", cached" if item.get("cached") else ""
        blocks.append(f"Q{n}: {item.get('prompt', '')}\nA{n}: {answer}\n    (cost {money(item.get('cost_usd'))}{cached})")
    return "\n\n".join(blocks)


def summary_text(batch: dict[str, Any]) -> str:
    """Total, average per request and the projection per 1,000 requests."""
    total = int(batch.get("total") or 0)
    average = float(batch.get("average_cost_usd") or 0.0)
    cached = sum(1 for i in batch.get("items", []) if i.get("cached"))
    cancelled = f", {batch['cancelled']} cancelled" if batch.get("cancelled") else ""
    return "\n".join([
        f"{total} questions: {batch.get('done', 0)} answered, {batch.get('failed', 0)} failed{cancelled}, "
        f"{cached} from cache",
        f"total cost:                   {money(batch.get('total_cost_usd'))}",
        f"average per request:          {money(average)}",
        f"projected per 1,000 requests: {money(average * 1000)}",
    ])


def run_batch(api: ApiClient, path: str, persona: str | None = None, as_json: bool = False) -> int:
    """The ``batch`` command; exit status 0 when every question was answered, else 1."""
    questions = read_questions(path)
    if not questions:
        raise ApiError("bad_input", f"No questions in {path}: put one question on each line.")
    created = api.create_batch(questions, persona)
    batch_id = created["id"]
    progress = Progress()
    try:
        batch = wait_for(api, batch_id, progress)
    except KeyboardInterrupt:
        sys.stderr.write(f"\nstopped waiting; batch {batch_id} goes on on the server\n")
        return 130
    if as_json:
        print(json.dumps({**batch, "id": batch_id,
                          "projected_per_1000_usd": round(float(batch.get("average_cost_usd") or 0) * 1000, 6)}))
    else:
        print(answers_text(batch))
        print()
        print(summary_text(batch))
    return 0 if int(batch.get("done") or 0) == int(batch.get("total") or 0) else 1
