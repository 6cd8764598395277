"""chatapp.fastjson writes exactly what json.dumps (compact, UTF-8 as is) writes."""
from __future__ import annotations

import json
import platform

import pytest

from chatapp import fastjson

VALUES = [
    {"text": " word"}, {"text": "x", "part": "analyze"}, {"state": "generating"},
    [["delta", '{"text":"a \\"quoted\\" word"}', "a"]], "plain", "é ü 日本 \u2028 \n \t \"", "",
    {"usage": {"input_tokens": 540, "output_tokens": 7}, "cost_usd": 0.000123, "cached": False, "error": None},
    1e14, 1e-7, 0.1 + 0.2, -0.0, 12345678901234567890, -5, True, None, [], {},
    {"nested": [{"a": [1, 2.5, None, {"b": "c"}]}], "n": float("nan"), "i": float("inf")},
    {1: "int keys", 2.5: "float keys", None: "null key", False: "bool key"},
]


@pytest.mark.parametrize("value", VALUES)
def test_the_same_text_as_json_dumps(value):
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_what_json_cannot_encode_is_a_type_error_as_with_json_dumps():
    with pytest.raises(TypeError):
        fastjson.dumps({"when": object()})


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="the C encoder is CPython's")
def test_cpython_uses_the_reused_c_encoder():
    assert fastjson._iterencode is not None  # else every call silently takes the slower path
