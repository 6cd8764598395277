"""Pure parser tests: SSE, the OpenAI stream format, RunPod vLLM worker outputs, job errors."""
from __future__ import annotations

import json
import random

import pytest

from chatapp.errors import ProviderError
from chatapp.models import Usage
from plugins.runpod_formats import (
    CLASSIC,
    OPENAI_OBJECT,
    OPENAI_SSE,
    PLAIN_TEXT,
    OutputDecoder,
    decode_output,
    has_output,
    item_output,
    job_error_message,
)
from plugins.sse import ChatStreamDecoder, SSEParser, estimate_tokens, map_finish_reason, parse_event

TEXT = "Héllo, wörld! 🚀 Ünïcode\nand a second line. Done."


def openai_sse(text: str, pieces: int = 6, usage: bool = True, finish: str = "stop",
               crlf: bool = False) -> str:
    """An OpenAI chat-completion SSE stream carrying ``text`` in ``pieces`` deltas."""
    step = max(1, len(text) // pieces)
    chunks = [text[i:i + step] for i in range(0, len(text), step)]
    events = [{"id": "c1", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"id": "c1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]}
               for c in chunks]
    events.append({"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage:
        events.append({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}})
    eol = "\r\n" if crlf else "\n"
    out = ": keep-alive" + eol + eol
    out += "".join(f"data: {json.dumps(e, ensure_ascii=False)}{eol}{eol}" for e in events)
    return out + f"data: [DONE]{eol}{eol}"


def classic_yields(text: str, batches=(1, 3, 9, 27, 50), input_tokens: int = 5) -> list[dict]:
    """worker-vllm classic streaming yields: token batches growing 1, 3, 9, 27, then 50."""
    tokens = [text[i:i + 2] for i in range(0, len(text), 2)]
    out, pos, n = [], 0, 0
    while pos < len(tokens):
        size = batches[min(n, len(batches) - 1)]
        batch = tokens[pos:pos + size]
        pos += len(batch)
        n += 1
        out.append({"choices": [{"tokens": batch}], "usage": {"input": input_tokens, "output": pos}})
    return out


def decode_pieces(pieces: list) -> OutputDecoder:
    decoder = OutputDecoder()
    text = "".join(decoder.feed(p) for p in pieces) + decoder.flush()
    assert text == decoder.text
    return decoder


# -- SSE -----------------------------------------------------------------------------------------

def test_sse_basic_fields_comments_and_multiline_data():
    parser = SSEParser()
    events = parser.feed(": comment\nevent: x\nid: 1\ndata: a\ndata:b\n\ndata: [DONE]\n\n")
    assert events == ["a\nb", "[DONE]"]
    assert parser.flush() == []


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_sse_line_endings_split_everywhere(eol):
    stream = f"data: one{eol}{eol}data: two{eol}data: 2b{eol}{eol}"
    for cut in range(len(stream) + 1):
        parser = SSEParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:]) + parser.flush()
        assert events == ["one", "two\n2b"], (cut, eol)


def test_sse_flush_returns_unterminated_last_event():
    parser = SSEParser()
    assert parser.feed("data: {\"a\": 1}\n\ndata: [DONE]") == ['{"a": 1}']
    assert parser.flush() == ["[DONE]"]


def test_sse_bytes_split_inside_utf8_sequences():
    raw = openai_sse(TEXT).encode("utf-8")
    expected = ChatStreamDecoder().feed(raw)
    for cut in range(len(raw) + 1):
        decoder = ChatStreamDecoder()
        got = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) + decoder.flush()
        assert "".join(d.text for d in got) == TEXT
        assert got == expected
        assert decoder.done


def test_sse_one_byte_at_a_time_and_huge_line():
    big = "x" * 300_000
    raw = openai_sse(big, pieces=2).encode()
    decoder = ChatStreamDecoder()
    text = ""
    for i in range(0, len(raw), 7):
        text += "".join(d.text for d in decoder.feed(raw[i:i + 7]))
    assert text == big and decoder.done


def test_parse_event_variants():
    assert parse_event("[DONE]").done
    delta = parse_event(json.dumps({"choices": [{"delta": {"content": "hi"}, "finish_reason": "length"}],
                                    "usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
    assert (delta.text, delta.finish_reason, delta.usage) == ("hi", "length", Usage(1, 2))
    # llama.cpp / completions style "text" and a non-stream "message"
    assert parse_event('{"choices": [{"text": "t"}]}').text == "t"
    assert parse_event('{"choices": [{"message": {"content": "m"}}]}').text == "m"
    with pytest.raises(ProviderError, match="overloaded"):
        parse_event('{"error": {"message": "overloaded"}}')
    with pytest.raises(ProviderError, match="malformed"):
        parse_event("{not json")


def test_map_finish_reason():
    assert [map_finish_reason(r) for r in ("stop", "length", "tool_calls", "eos", None)] == [
        "stop", "length", "stop", "stop", None]


def test_estimate_tokens():
    assert estimate_tokens("") == 0
    assert estimate_tokens("Hello, world!") == 4


# -- RunPod worker outputs -----------------------------------------------------------------------

def test_classic_stream_batches_grow_and_usage_is_cumulative():
    yields = classic_yields(TEXT * 10)
    assert [len(y["choices"][0]["tokens"]) for y in yields[:6]] == [1, 3, 9, 27, 50, 50]
    decoder = decode_pieces(yields)
    assert decoder.format == CLASSIC
    assert decoder.text == TEXT * 10
    assert decoder.usage() == Usage(5, yields[-1]["usage"]["output"])
    assert decoder.finish_reason is None  # the classic format has none


def test_classic_non_stream_single_item_and_status_output_list():
    item = {"choices": [{"tokens": [TEXT]}], "usage": {"input": 3, "output": 9}}
    assert decode_output([item]).text == TEXT
    assert decode_output([item]).usage() == Usage(3, 9)
    # /status output of a streamed job is the list of all yields
    assert decode_output(classic_yields(TEXT)).text == TEXT


@pytest.mark.parametrize("crlf", [False, True])
def test_openai_sse_split_at_every_boundary(crlf):
    stream = openai_sse(TEXT, crlf=crlf)
    for cut in range(len(stream) + 1):
        pieces = [stream[:cut], stream[cut:]]
        decoder = decode_pieces(pieces)
        assert decoder.format == OPENAI_SSE, cut
        assert decoder.text == TEXT, cut
        assert decoder.usage() == Usage(7, 11)
        assert decoder.finish_reason == "stop"
        assert decoder.sse_done


def test_openai_sse_random_multi_splits():
    rng = random.Random(1234)
    stream = openai_sse(TEXT * 3, pieces=20, finish="length")
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        decoder = decode_pieces(pieces)
        assert decoder.text == TEXT * 3
        assert decoder.finish_reason == "length"


def test_openai_sse_without_usage_counts_tokens():
    decoder = decode_pieces([openai_sse("one two three", usage=False)])
    assert decoder.usage(fallback_input=4) == Usage(4, 3)


def test_openai_sse_without_done_is_flushed():
    stream = openai_sse(TEXT).replace("data: [DONE]\n\n", "")
    stream = stream[:-2]  # and the last event lacks its blank line
    assert decode_pieces([stream]).text == TEXT


def test_openai_non_stream_chat_completion():
    completion = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 34}}
    decoder = decode_output([completion])
    assert (decoder.format, decoder.text, decoder.finish_reason) == (OPENAI_OBJECT, TEXT, "length")
    assert decoder.usage() == Usage(12, 34)


def test_items_with_extra_keys_and_missing_output():
    assert item_output({"output": "x", "metrics": {"a": 1}, "id": "j"}) == "x"
    assert item_output({"metrics": {}}) is None
    assert item_output("nope") is None
    decoder = OutputDecoder()
    assert decoder.feed(None) == ""
    assert decoder.yields == 0


def test_big_items_work():
    big = "word " * 250_000  # about 1.25 MB in one yield
    assert decode_output([{"choices": [{"tokens": [big]}]}]).text == big
    assert decode_pieces([openai_sse(big, pieces=1)]).text == big


def test_plain_text_yields_from_custom_handlers():
    decoder = decode_pieces(["Hello", " world"])
    assert (decoder.format, decoder.text) == (PLAIN_TEXT, "Hello world")


def test_worker_error_yield_raises():
    with pytest.raises(ProviderError, match="CUDA out of memory"):
        OutputDecoder().feed({"error": "CUDA out of memory"})
    with pytest.raises(ProviderError, match="unknown format"):
        OutputDecoder().feed({"something": "else"})


def test_has_output():
    assert not any(has_output(v) for v in (None, "", [], {}))
    assert has_output(["x"])


# -- job errors ----------------------------------------------------------------------------------

def test_error_json_encoded_handler_exception():
    error = json.dumps({"error_type": "<class 'ValueError'>", "error_message": "bad prompt",
                        "error_traceback": "Traceback (most recent call last):\n  File x",
                        "hostname": "h1", "worker_id": "w1", "runpod_version": "1.7.0"})
    message, details = job_error_message(error)
    assert message == "bad prompt"
    assert "Traceback" not in message
    assert details["error_type"] == "<class 'ValueError'>" and details["worker_id"] == "w1"


def test_error_generator_handler_text():
    message, details = job_error_message(
        "handler: Engine crashed: KV cache full \ntraceback: Traceback (most recent call last):\n ...")
    assert message == "Engine crashed: KV cache full"
    assert details == {}


def test_error_other_shapes():
    assert job_error_message(None)[0] == "the worker gave no error message"
    assert job_error_message("plain failure")[0] == "plain failure"
    assert job_error_message({"error_message": "as dict"})[0] == "as dict"
    assert len(job_error_message("x" * 5000)[0]) <= 500
