"""Fuzzing (issue 6): the REST API from its own OpenAPI description (schemathesis, in-process WSGI)
and the websocket with random frames from a seeded generator, both against one app with a real
in-thread worker; then the store must be consistent. Bounded and reproducible for CI: hypothesis
is derandomized with a small ``max_examples`` per operation, the websocket generator is seeded.

Requirements: no 5xx, no logged server error, every 4xx body is the canonical error body, the
socket stays open on any bad frame, and no half-written conversation or stuck reply.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
import schemathesis
import websocket
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, ignored_auth, response_schema_conformance, status_code_conformance,
)

from tests.conftest import FAST, LiveServer, _counter, app_with_worker, auth
from tests.wsclient import WS

#: per operation; ~30 operations, so a few hundred requests in all
MAX_EXAMPLES = 40
WS_FRAMES = 300
WS_SEED = 20240606


class ErrorLog(logging.Handler):
    """Every ERROR record, or any record with a traceback, from any logger while fuzzing."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def report(self) -> str:
        return "\n".join(f"{r.name}: {r.getMessage()}\n{logging.Formatter().formatException(r.exc_info)}"
                         if r.exc_info else f"{r.name}: {r.getMessage()}" for r in self.records)


@dataclass
class FuzzEnv:
    app: Any
    ext: Any
    uid: str
    key: str
    other_uid: str
    other_key: str
    errors: ErrorLog
    other_snapshot: dict[str, bytes] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)

    def conversation_ids(self, uid: str | None = None) -> list[str]:
        uid = uid or self.uid
        p = self.ext.prefix
        return (self.ext.redis.zrange(f"{p}user:{uid}:convs", 0, -1)
                + self.ext.redis.zrange(f"{p}user:{uid}:batchconvs", 0, -1))

    def message_ids(self, cid: str) -> list[str]:
        return self.ext.redis.zrange(f"{self.ext.prefix}conv:{cid}:msgs", 0, -1)

    def seed_conversation(self, key: str | None = None) -> tuple[str, str]:
        """A conversation with one finished reply, through the API; returns (cid, reply id)."""
        r = self.app.test_client().post("/api/v1/chat", json={"message": "seed: hello fuzzer"},
                                        headers=auth(key or self.key))
        assert r.status_code == 200, r.json
        return r.json["conversation_id"], r.json["message_id"]

    def other_keys(self) -> dict[str, bytes]:
        """Every key naming the other user, its conversations or its messages, with its value."""
        raw = self.ext.clients.raw
        names = {self.other_uid, *self.conversation_ids(self.other_uid)}
        for cid in self.conversation_ids(self.other_uid):
            names.update(self.message_ids(cid))
        out = {}
        for k in raw.scan_iter(match=f"{self.ext.prefix}*".encode(), count=1000):
            text = k.decode()
            if any(n in text for n in names):
                out[text] = raw.dump(k)
        return out


FUZZ_CONFIG = {
    # the fuzzer sends far more than a person: limits would answer 429 to everything after a minute
    "RATE_LIMIT_REQUESTS_PER_MINUTE": 0, "RATE_LIMIT_SENDS_PER_MINUTE": 0, "MAX_ACTIVE_GENERATIONS": 0,
}


@pytest.fixture(scope="module")
def fuzz_env(redis_server: Any) -> Iterator[FuzzEnv]:
    n = next(_counter)
    config = {"TESTING": True, "REDIS_URL": redis_server.url, "KEY_PREFIX": f"fz{n}:", "QUEUE_NAME": f"chat-fz{n}",
              **FAST, **FUZZ_CONFIG}
    with app_with_worker(config) as (app, ext):
        errors = ErrorLog()
        logging.getLogger().addHandler(errors)
        try:
            user, key = ext.users.create(f"fuzzer{n}")
            other, other_key = ext.users.create(f"bystander{n}")
            env = FuzzEnv(app, ext, user.id, key, other.id, other_key, errors)
            for _ in range(2):
                env.seed_conversation()
            env.seed_conversation(other_key)
            r = app.test_client().post("/api/v1/batch", json={"prompts": ["batch one", "batch two"]},
                                       headers=auth(key))
            assert r.status_code in (200, 201, 202), r.json
            env.batch_ids.append(r.json["id"])
            # the bystander's reply is done; its after_generation (usage, budget, cache) runs
            # shortly after, from the outbox: snapshot once that has happened too
            deadline = time.monotonic() + 10
            while ext.redis.xlen(f"{ext.prefix}finished") and time.monotonic() < deadline:
                time.sleep(0.05)
            env.other_snapshot = env.other_keys()
            yield env
        finally:
            logging.getLogger().removeHandler(errors)


# -- REST -------------------------------------------------------------------------------------------

def canonical_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is JSON ``{"error": {"code", "message", "details"}}`` with a snake_case code."""
    if response.status_code < 400:
        return None
    assert "application/json" in response.headers.get("content-type", [""])[0], response.headers
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, body
    assert isinstance(err["code"], str) and err["code"] and err["code"] == err["code"].lower(), body
    assert " " not in err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["details"], dict), body
    if response.status_code == 429:
        assert "retry-after" in {k.lower() for k in response.headers}, response.headers
    return True


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          ignored_auth, canonical_error_body]


def _path_ids(env: FuzzEnv):
    """Half the time, replace generated path ids with real ones of the fuzz user (read when drawn)."""

    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        if not path_parameters or not set(path_parameters) & {"cid", "mid", "bid", "name", "user_id"}:
            return st.just(path_parameters)

        # the draws never depend on Redis (hypothesis replays them); only what they pick does
        def real(picks: tuple[int, int, int]) -> dict[str, Any]:
            out = dict(path_parameters)
            pick = picks[0] if "cid" in out else picks[2]
            if "cid" in out:
                cids = env.conversation_ids()
                out["cid"] = cids[picks[0] % len(cids)] if cids else out["cid"]
                mids = env.message_ids(out["cid"])
                if "mid" in out and mids:
                    out["mid"] = mids[picks[1] % len(mids)]
            if "bid" in out:
                out["bid"] = env.batch_ids[pick % len(env.batch_ids)]
            if "name" in out:
                names = sorted(env.ext.catalog.personas)
                out["name"] = names[pick % len(names)]
            if "user_id" in out:
                out["user_id"] = [env.uid, env.other_uid][pick % 2]
            return out

        index = st.integers(0, 1000)
        return st.one_of(st.just(path_parameters), st.tuples(index, index, index).map(real))

    return flatmap_path_parameters


@pytest.fixture(scope="module")
def api_schema(fuzz_env: FuzzEnv) -> Any:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_env.app)
    schema.hook("flatmap_path_parameters")(_path_ids(fuzz_env))
    return schema


# schemathesis' pytest integration (``from_fixture``) needs the schema at import time or a pytest
# older than 9.2, so each operation gets its own derandomized hypothesis run here instead.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_rest_api_fuzz(fuzz_env: FuzzEnv, api_schema: Any, mode: GenerationMode) -> None:
    failures: list[str] = []
    seen: dict[str, Counter] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 25
    for operation in operations:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode, hooks=api_schema.hooks))
        def fuzz(case: Any) -> None:
            response = case.call_and_validate(headers=auth(fuzz_env.key), checks=CHECKS)
            seen.setdefault(operation.label, Counter())[response.status_code] += 1
            # DELETE may have removed the seeded conversations: keep real ids to aim at
            if len(fuzz_env.conversation_ids()) < 3:
                fuzz_env.seed_conversation()

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to negate: no parameters, no body
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, then one report
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
    # useful cases: real ids were hit (positive), and bad or missing keys were tried (negative)
    ok = {label for label, statuses in seen.items() if any(200 <= code < 300 for code in statuses)}
    if mode is GenerationMode.POSITIVE:
        assert {"GET /api/v1/conversations/{cid}", "GET /api/v1/conversations/{cid}/messages/{mid}",
                "POST /api/v1/conversations/{cid}/messages", "DELETE /api/v1/conversations/{cid}"} <= ok, seen
    else:
        assert sum(statuses[401] for statuses in seen.values()) >= 50, seen
    assert not failures, "\n\n".join(failures)
    assert not fuzz_env.errors.records, fuzz_env.errors.report()


# -- websocket --------------------------------------------------------------------------------------

#: what a reply's events and the error frame look like (DESIGN.md section 6)
EVENT_FIELDS = {
    "accepted": {"conversation_id", "user_message_id", "message_id", "client_message_id"},
    "status": {"message_id", "seq", "state"}, "delta": {"message_id", "seq", "text"},
    "done": {"message_id", "seq", "finish_reason", "usage", "cost_usd", "cached"},
    "error": {"code", "message"}, "pong": set(),
}
WEIRD_STRINGS = ["", " ", "\x00", "\u200b", "é" * 50, "😀" * 20, "\ud800", "\udfff", "a\ud83d", "\ufffd", "\\",
                 "null", "ping", "send", "-1", "1e309", "<script>", "' OR 1=1 --", "%s%n", "../../etc/passwd",
                 "\n\r\t", "x" * 5000]


def random_scalar(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, 0, -1, 1, 2**63, -(2**63) - 1, 10**40, rng.randint(-10**6, 10**6), 0.5, -0.0, 1e308,
        float("inf"), float("nan"), rng.random() * 1000, rng.choice(WEIRD_STRINGS),
        "".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(0, 40))),
    ])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth > 3 or kind < 0.6:
        return random_scalar(rng)
    if kind < 0.8:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {str(random_scalar(rng)): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


class FrameMaker:
    """Random frames, seeded; some aimed at the fuzz user's real conversations and replies."""

    def __init__(self, rng: random.Random, env: FuzzEnv) -> None:
        self.rng, self.env = rng, env
        self.limit = int(env.ext.config["MAX_WS_FRAME_BYTES"])

    def real_cid(self) -> str | None:
        cids = self.env.conversation_ids()
        return self.rng.choice(cids) if cids and self.rng.random() < 0.7 else random_scalar(self.rng)

    def real_mid(self) -> Any:
        cids = self.env.conversation_ids()
        mids = self.env.message_ids(self.rng.choice(cids)) if cids else []
        return self.rng.choice(mids) if mids and self.rng.random() < 0.7 else random_scalar(self.rng)

    def params(self) -> Any:
        rng = self.rng
        if rng.random() < 0.3:
            return random_value(rng)
        keys = ["temperature", "max_tokens", "top_p", "cache", "seed"]
        return {k: rng.choice([random_scalar(rng), 0, 1, 0.7, 4096, 5000, "use", "skip", "refresh"])
                for k in rng.sample(keys, rng.randint(0, len(keys)))}

    def maybe_extra(self, frame: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        for name in list(frame):  # a field of the wrong type
            if name != "type" and rng.random() < 0.15:
                frame[name] = random_value(rng)
        if rng.random() < 0.1:
            frame.pop(rng.choice(list(frame)))
        if rng.random() < 0.1:
            frame[str(random_scalar(rng))] = random_value(rng)
        return frame

    def frame(self) -> tuple[str, Any]:
        """(opcode name, payload): "text" with a str, "binary" with bytes."""
        rng = self.rng
        kind = rng.choices(["value", "object", "send", "subscribe", "cancel", "ping", "not_json", "binary",
                            "empty", "big"], weights=[6, 8, 20, 14, 8, 3, 8, 4, 2, 3])[0]
        if kind == "value":
            return "text", json.dumps(random_value(rng))
        if kind == "object":
            frame = {str(random_scalar(rng)): random_value(rng) for _ in range(rng.randint(0, 4))}
            if rng.random() < 0.8:
                frame["type"] = rng.choice([random_value(rng), "send", "subscribe", "cancel", "ping", "SEND",
                                            "pong", "done", " ping"])
            return "text", json.dumps(frame)
        if kind == "send":
            if rng.random() < 0.5:  # well-formed: these really run (or hit a real limit)
                cid = self.env.conversation_ids()
                frame = {"type": "send", "conversation_id": rng.choice([None, *cid[-3:]]),
                         "content": rng.choice(WEIRD_STRINGS[1:] + [f"hello fuzz {i}" for i in range(5)])}
                if rng.random() < 0.5:
                    frame["client_message_id"] = f"fz{rng.randint(0, 20)}"
                if rng.random() < 0.3:
                    frame["params"] = {"max_tokens": rng.randint(1, 50), "temperature": rng.random(),
                                       "cache": rng.choice(["use", "skip", "refresh"])}
                return "text", json.dumps(frame)
            frame = {"type": "send", "conversation_id": rng.choice([None, self.real_cid()]),
                     "content": rng.choice([rng.choice(WEIRD_STRINGS), "hello fuzz " + str(rng.random()),
                                            random_scalar(rng)])}
            if rng.random() < 0.5:
                frame["client_message_id"] = rng.choice([f"fz{rng.randint(0, 20)}", random_scalar(rng)])
            if rng.random() < 0.3:
                frame["persona"] = rng.choice(["assistant", random_scalar(rng)])
            if rng.random() < 0.5:
                frame["params"] = self.params()
            return "text", json.dumps(self.maybe_extra(frame))
        if kind == "subscribe":
            if rng.random() < 0.5:
                frame = {"type": "subscribe", "message_id": self.real_mid(), "after_seq": rng.randint(0, 8)}
                return "text", json.dumps(frame)
            frame = {"type": "subscribe", "message_id": self.real_mid(),
                     "after_seq": rng.choice([0, 1, 3, -1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), "2", 1.5,
                                              None, True])}
            return "text", json.dumps(self.maybe_extra(frame))
        if kind == "cancel":
            frame = {"type": "cancel", "message_id": self.real_mid()}
            return "text", json.dumps(frame if rng.random() < 0.5 else self.maybe_extra(frame))
        if kind == "ping":
            return "text", json.dumps(self.maybe_extra({"type": "ping"}))
        if kind == "not_json":
            good = json.dumps({"type": "send", "conversation_id": None, "content": "x"})
            return "text", rng.choice([
                good[: rng.randint(0, len(good) - 1)], "{", "}", "[", "nul", "NaN", "{'type': 'ping'}", "\x00",
                "{\"type\": \"ping\",}", "\ufeff{\"type\":\"ping\"}", "".join(chr(rng.randint(32, 126)) for _ in range(30)),
                "{\"type\":\"ping\"}{\"type\":\"ping\"}", "[" * 5000 + "]" * 5000, "\"\\ud800\"",
            ])
        if kind == "binary":
            return "binary", rng.choice([b"", b"\x00\x01", json.dumps({"type": "ping"}).encode(),
                                         bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000)))])
        if kind == "empty":
            return rng.choice([("text", ""), ("binary", b"")])
        # big: around the frame limit, and up to twice it (the server closes only beyond 4x)
        size = rng.choice([self.limit - 100, self.limit + 1, self.limit * 2, 33 * 1024, rng.randint(1, 2 * self.limit)])
        unit, ascii_only = rng.choice(["a", "é", "😀"]), rng.random() < 0.5
        unit_bytes = len(json.dumps(unit, ensure_ascii=ascii_only).encode()) - 2
        frame = {"type": rng.choice(["send", "ping", "subscribe"]), "conversation_id": None,
                 "content": unit * (size // unit_bytes)}
        return "text", json.dumps(frame, ensure_ascii=ascii_only)


def check_frame(frame: dict[str, Any], sent: Any) -> None:
    kind = frame.get("type")
    assert kind in EVENT_FIELDS, (frame, sent)
    assert EVENT_FIELDS[kind] <= set(frame), (frame, sent)
    if kind == "error":
        assert isinstance(frame["code"], str) and frame["code"] and " " not in frame["code"], (frame, sent)
        assert isinstance(frame["message"], str) and frame["message"], (frame, sent)
        assert frame["code"] != "internal_error", (frame, sent)


def test_websocket_random_frames(fuzz_env: FuzzEnv) -> None:
    rng = random.Random(WS_SEED)
    maker = FrameMaker(rng, fuzz_env)
    server = LiveServer(fuzz_env.app)
    try:
        ws = WS(server.ws_url, fuzz_env.key)
        counts: Counter = Counter()
        for i in range(WS_FRAMES):
            opcode, payload = maker.frame()
            if opcode == "binary":
                ws.conn.send_binary(payload)
            else:
                ws.conn.send(payload)
            ws.send({"type": "ping"})  # the socket must still be open and answering
            try:
                frames = ws.until(lambda f: f.get("type") == "pong", timeout=15)
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                pytest.fail(f"frame {i} closed the socket or went unanswered ({exc!r}): {payload[:300]!r}")
            for frame in frames:
                check_frame(frame, payload[:300])
                counts[frame["type"] if frame["type"] != "error" else "error:" + frame["code"]] += 1
        assert counts["accepted"] >= 5 and counts["done"] >= 1, counts  # some sends really ran
        ws.close()
        # a text frame that is not UTF-8 breaks the protocol itself: the server may close (1007),
        # but it must not crash, and the next socket works
        bad = WS(server.ws_url, fuzz_env.key)
        bad.conn.send(b'{"type": "ping", "x": "\xff\xfe"}', opcode=websocket.ABNF.OPCODE_TEXT)
        try:
            answer = bad.recv(timeout=5)
            assert answer["type"] == "error" and answer["code"] != "internal_error", answer
        except (websocket.WebSocketException, OSError, ValueError):
            pass  # closed by the server: allowed for a protocol violation
        bad.conn.close()
        again = WS(server.ws_url, fuzz_env.key)
        again.send({"type": "ping"})
        assert again.recv() == {"type": "pong"}
        again.close()
    finally:
        server.stop()
    assert not fuzz_env.errors.records, fuzz_env.errors.report()


# -- afterwards -------------------------------------------------------------------------------------

def test_store_is_consistent_after_fuzzing(fuzz_env: FuzzEnv) -> None:
    """No half-written conversation, no reply left hanging, and the bystander's data untouched."""
    ext, r, p = fuzz_env.ext, fuzz_env.ext.redis, fuzz_env.ext.prefix
    deadline = time.monotonic() + 20
    while True:
        problems: list[str] = []
        replies = 0
        for cid in fuzz_env.conversation_ids():
            conv = r.hgetall(f"{p}conv:{cid}")
            mids = fuzz_env.message_ids(cid)
            if not conv:
                problems.append(f"{cid}: indexed but gone")
                continue
            if int(conv["message_count"]) != len(mids):
                problems.append(f"{cid}: message_count {conv['message_count']} but {len(mids)} messages")
            messages = {mid: r.hgetall(f"{p}msg:{mid}") for mid in mids}
            answered = {m.get("reply_to") for m in messages.values() if m.get("role") == "assistant"}
            for mid, m in messages.items():
                if not m:
                    problems.append(f"{cid}/{mid}: listed but gone")
                elif m["user_id"] != fuzz_env.uid or m["conversation_id"] != cid:
                    problems.append(f"{cid}/{mid}: belongs elsewhere")
                elif m["role"] == "user" and mid not in answered:
                    problems.append(f"{cid}/{mid}: a user message without a reply")
                elif m["role"] == "assistant":
                    replies += 1
                    if m["state"] in ("queued", "generating"):
                        problems.append(f"{cid}/{mid}: reply still {m['state']}")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not problems, problems
    assert replies >= 10  # the fuzzing really sent messages
    assert fuzz_env.other_keys() == fuzz_env.other_snapshot, "the bystander's keys changed"
    assert ext.users.authenticate(fuzz_env.other_key).id == fuzz_env.other_uid
    assert not fuzz_env.errors.records, fuzz_env.errors.report()
