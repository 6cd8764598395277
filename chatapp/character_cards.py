"""Character Card import and export: V1 (flat), V2 and V3, as JSON or embedded in a PNG.

Import (``persona_from_card``) maps the card onto a ``Persona``; everything the persona has no
field for (the card's own description/personality/scenario/system_prompt texts,
``post_history_instructions``, ``character_book``, ``extensions``, V3 additions, unknown keys) is
kept in ``persona.extra["character_card"]`` so that export (``card_from_persona``) gives back the
same card. ``creator_notes`` is for people only: it never reaches the system prompt.

PNG cards carry the card as base64 JSON in text chunks: ``chara`` (V2, or V1) and ``ccv3`` (V3).
The chunk handling below uses only the standard library (struct, zlib, base64).
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import re
import struct
import unicodedata
import zlib
from typing import Any, Iterator

from chatapp.models import Persona

log = logging.getLogger(__name__)

MAX_CARD_JSON_BYTES = 2 * 1024 * 1024
MAX_PNG_BYTES = 20 * 1024 * 1024

SPEC_V2, SPEC_V3 = "chara_card_v2", "chara_card_v3"
SPEC_VERSIONS = {SPEC_V2: "2.0", SPEC_V3: "3.0"}
#: where an imported card's remaining fields live in ``Persona.extra``
EXTRA_KEY = "character_card"
#: our own extension namespace in a card's ``data.extensions`` (fields a card cannot express)
EXTENSION_KEY = "chatapp"

#: card field -> Persona attribute, for the fields that map one to one (and so are exported
#: from the persona, picking up edits)
DIRECT_FIELDS = {
    "first_mes": "greeting",
    "alternate_greetings": "alternate_greetings",
    "mes_example": "example_dialogue",
    "creator_notes": "creator_notes",
    "tags": "tags",
}
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
#: the V2 spec's field order; exported cards use it, then V3 and unknown fields in their order
V2_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example",
             "creator_notes", "system_prompt", "post_history_instructions", "alternate_greetings",
             "character_book", "tags", "creator", "character_version", "extensions")
V3_ONLY_FIELDS = ("assets", "nickname", "creator_notes_multilingual", "source", "group_only_greetings",
                  "creation_date", "modification_date")
_STRING_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example",
                  "creator_notes", "system_prompt", "post_history_instructions", "nickname")
_LIST_FIELDS = ("alternate_greetings", "tags")
#: fields of a V1 card that our own persona format does not have: their presence marks a card
_V1_MARKERS = ("first_mes", "mes_example", "personality", "scenario")

#: the instruction a card gets when it brings no system_prompt (what ``{{original}}`` starts with)
DEFAULT_MAIN_PROMPT = ("Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}. "
                       "Stay in character and keep the conversation going.")
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
#: persona ids: they appear in URLs (/api/v1/personas/<name>)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# --- cards as JSON --------------------------------------------------------------------------

def is_card(data: Any) -> bool:
    """Whether a parsed JSON/YAML mapping is a character card rather than our persona format:
    it has a ``spec``, or V1 card fields (``first_mes``...) that a persona file never has."""
    return isinstance(data, dict) and ("spec" in data or any(k in data for k in _V1_MARKERS))


def card_version(card: Any) -> str:
    """``"v1"``, ``"v2"`` or ``"v3"``; ``ValueError`` for anything that is not a card we read."""
    if not isinstance(card, dict):
        raise ValueError("a character card must be a JSON object")
    spec = card.get("spec")
    if spec == SPEC_V2:
        version = "v2"
    elif spec == SPEC_V3:
        version = "v3"
    elif spec is not None:
        raise ValueError(f"unsupported card spec {spec!r} (expected {SPEC_V2!r} or {SPEC_V3!r})")
    elif "name" in card and any(k in card for k in _V1_MARKERS):
        return "v1"
    else:
        raise ValueError("not a character card: no 'spec' and no V1 fields (name, first_mes, ...)")
    if not isinstance(card.get("data"), dict):
        raise ValueError(f"a {spec} card needs a 'data' object")
    return version


def load_card_json(raw: bytes | str) -> dict[str, Any]:
    """Parse card JSON (refusing more than ``MAX_CARD_JSON_BYTES``) and check it is a card."""
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    if size > MAX_CARD_JSON_BYTES:
        raise ValueError(f"card JSON is {size} bytes; the limit is {MAX_CARD_JSON_BYTES}")
    try:
        card = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"card is not valid JSON: {exc}") from None
    card_version(card)
    return card


def dump_card_json(card: dict[str, Any]) -> bytes:
    """The card as compact UTF-8 JSON, refusing more than ``MAX_CARD_JSON_BYTES``."""
    raw = json.dumps(card, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_CARD_JSON_BYTES:
        raise ValueError(f"card JSON is {len(raw)} bytes; the limit is {MAX_CARD_JSON_BYTES}")
    return raw


def load_card(raw: bytes) -> dict[str, Any]:
    """A card from file contents: a PNG with an embedded card, or card JSON."""
    return read_card_png(raw) if raw.startswith(PNG_SIGNATURE) else load_card_json(raw)


# --- import ---------------------------------------------------------------------------------

def slugify(text: str) -> str:
    """A stable persona id from a card name: lowercase ASCII words joined by ``-``. A name with
    no Latin letters or digits (e.g. all CJK) gets ``card-`` and a short hash, still stable."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:64].strip("-")
    return slug or "card-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def character_definition(data: dict[str, Any]) -> str:
    """Description, personality and scenario, in the order card frontends send them."""
    parts = []
    if (data.get("description") or "").strip():
        parts.append(data["description"].strip())
    if (data.get("personality") or "").strip():
        parts.append("{{char}}'s personality: " + data["personality"].strip())
    if (data.get("scenario") or "").strip():
        parts.append("Scenario: " + data["scenario"].strip())
    return "\n\n".join(parts)


def build_system_prompt(data: dict[str, Any], verbatim: bool = False) -> str:
    """The persona's system prompt from a card's data.

    The card's default prompt is ``DEFAULT_MAIN_PROMPT`` plus the character definition. A card
    ``system_prompt`` replaces it; ``{{original}}`` in it stands for that default (substituted
    here, so the host never fills it with the app's generic default). A card system_prompt without
    ``{{original}}`` is followed by the definition, so the character is never lost.
    ``verbatim`` (cards chatapp exported from its own personas, marked in
    ``extensions.chatapp.prompt``) uses the card system_prompt as it is: their description is a
    blurb for people, not part of the prompt. ``{{char}}``/``{{user}}``/``{{date}}`` are left for
    the host to fill at render time.
    """
    definition = character_definition(data)
    original = "\n\n".join(p for p in (DEFAULT_MAIN_PROMPT, definition) if p)
    custom = (data.get("system_prompt") or "").strip()
    if not custom:
        return original
    if _ORIGINAL.search(custom):
        return _ORIGINAL.sub(lambda _: original, custom)
    if verbatim:
        return custom
    return "\n\n".join(p for p in (custom, definition) if p)


def _summary(description: str, display: str) -> str:
    """A one-paragraph description for people (the card's own text goes to the model)."""
    first = (description.strip().split("\n\n") or [""])[0].strip()
    first = re.sub(r"\{\{\s*char\s*\}\}|<BOT>", display, first, flags=re.IGNORECASE)
    first = re.sub(r"\{\{\s*user\s*\}\}|<USER>", "you", first, flags=re.IGNORECASE)
    return first if len(first) <= 280 else first[:279].rstrip() + "\u2026"


def _check_types(data: dict[str, Any]) -> None:
    for key in _STRING_FIELDS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"card field {key!r} must be a string, not {type(data[key]).__name__}")
    for key in _LIST_FIELDS:
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"card field {key!r} must be a list of strings")
    if not (data.get("name") or "").strip():
        raise ValueError("card has no 'name'")
    if data.get("extensions") is not None and not isinstance(data["extensions"], dict):
        raise ValueError("card field 'extensions' must be an object")


def _normalized(key: str, value: Any) -> Any:
    """What a direct field becomes on the persona (None/absent -> empty)."""
    if key in _LIST_FIELDS:
        return list(value or [])
    return value or ""


def persona_from_card(card: dict[str, Any]) -> Persona:
    """Map a V1, V2 or V3 card onto a ``Persona``; ``ValueError`` says what is wrong with it.

    ``name`` is a slug of the card name (or ``extensions.chatapp.name``), ``display_name`` the
    V3 ``nickname`` or the card name; the system prompt is woven by ``build_system_prompt``.
    """
    version = card_version(card)
    data = card if version == "v1" else card["data"]
    _check_types(data)
    ours = _our_extension(data)
    display = (data.get("nickname") or "").strip() or data["name"].strip()
    stored = {
        "spec": card.get("spec"),  # None: a V1 card
        "spec_version": card.get("spec_version"),
        "top": {k: copy.deepcopy(v) for k, v in card.items() if k not in ("spec", "spec_version", "data")}
        if version != "v1" else {},
        "data": {k: copy.deepcopy(v) for k, v in data.items() if k not in DIRECT_FIELDS},
        # direct fields whose original form the persona cannot show (absent, or null)
        "absent": [k for k in DIRECT_FIELDS if k not in data],
        "raw": {k: copy.deepcopy(data[k]) for k in DIRECT_FIELDS if k in data and data[k] != _normalized(k, data[k])},
    }
    persona = Persona(
        name=ours.get("name") or slugify(data["name"]),
        display_name=display,
        description=_summary(data.get("description") or "", display),
        system_prompt=build_system_prompt(data, verbatim=ours.get("prompt") == "verbatim"),
        extra={EXTRA_KEY: stored},
        **{attr: copy.deepcopy(_normalized(key, data.get(key))) for key, attr in DIRECT_FIELDS.items()},
    )
    # fields a card cannot express, written by card_from_persona for our own personas
    for attr in ("params", "provider", "model", "history_budget", "cache_scope"):
        if attr in ours:
            setattr(persona, attr, copy.deepcopy(ours[attr]))
    if "steps" in ours:
        try:
            persona.steps = Persona.from_dict({"name": persona.name, "steps": ours["steps"]}).steps
        except TypeError as exc:
            raise ValueError(f"card extensions.{EXTENSION_KEY}.steps: {exc}") from None
    return persona


def _our_extension(data: dict[str, Any]) -> dict[str, Any]:
    """``extensions.chatapp`` (written by ``card_from_persona``), shape-checked: a typo there
    must fail loudly rather than silently change the persona. Values are checked by the caller
    (e.g. plugins.persona_dir) like any persona's."""
    ours = (data.get("extensions") or {}).get(EXTENSION_KEY)
    if ours is None:
        return {}
    allowed = {"name", "prompt", "params", "provider", "model", "history_budget", "cache_scope", "steps"}
    if not isinstance(ours, dict):
        raise ValueError(f"card extensions.{EXTENSION_KEY} must be an object")
    unknown = sorted(set(ours) - allowed)
    if unknown:
        raise ValueError(f"card extensions.{EXTENSION_KEY} has unknown key(s): {', '.join(map(str, unknown))}")
    if "name" in ours and not (isinstance(ours["name"], str) and NAME_PATTERN.match(ours["name"])):
        raise ValueError(f"card extensions.{EXTENSION_KEY}.name must be 1-100 letters, digits, '_', '.' or '-'")
    if ours.get("prompt", "verbatim") != "verbatim":
        raise ValueError(f"card extensions.{EXTENSION_KEY}.prompt may only be 'verbatim'")
    if not isinstance(ours.get("steps", []), list):
        raise ValueError(f"card extensions.{EXTENSION_KEY}.steps must be a list")
    return ours


# --- export ---------------------------------------------------------------------------------

def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    """Spec fields in spec order, then the rest in their own order (deterministic output)."""
    known = [k for k in V2_FIELDS + V3_ONLY_FIELDS if k in data]
    return {k: data[k] for k in known + [k for k in data if k not in known]}


def _native_data(persona: Persona) -> dict[str, Any]:
    """Card data for a persona that did not come from a card."""
    ours: dict[str, Any] = {"name": persona.name, "prompt": "verbatim"}
    for attr in ("params", "provider", "model", "history_budget", "cache_scope"):
        value = getattr(persona, attr)
        if value not in (None, {}):
            ours[attr] = copy.deepcopy(value)
    if persona.steps:
        ours["steps"] = [vars(s).copy() for s in persona.steps]
    return {
        "name": persona.display_name or persona.name, "description": persona.description,
        "personality": "", "scenario": "", "system_prompt": persona.system_prompt,
        "post_history_instructions": "", "creator": "", "character_version": "",
        "extensions": {EXTENSION_KEY: ours}, "group_only_greetings": [],
    }


def convert_card(card: dict[str, Any], spec: str) -> dict[str, Any]:
    """A V2 card as V3 (adds the required ``group_only_greetings``) or a V3 card as V2 (drops
    the V3-only fields), for the other chunk of a PNG or for an older frontend."""
    version = card_version(card)
    if spec not in SPEC_VERSIONS:
        raise ValueError(f"unknown card spec {spec!r}")
    if card.get("spec") == spec:
        return copy.deepcopy(card)
    data = copy.deepcopy(card if version == "v1" else card["data"])
    top = {} if version == "v1" else {k: copy.deepcopy(v) for k, v in card.items()
                                      if k not in ("spec", "spec_version", "data")}
    if spec == SPEC_V2:
        data = {k: v for k, v in data.items() if k not in V3_ONLY_FIELDS}
    else:
        data.setdefault("group_only_greetings", [])
    return {"spec": spec, "spec_version": SPEC_VERSIONS[spec], "data": _ordered(data), **top}


def card_from_persona(persona: Persona, spec: str | None = None) -> dict[str, Any]:
    """The card for a persona: an imported card comes back as it was (with edits to the direct
    fields: greeting, alternate_greetings, example_dialogue, creator_notes, tags); another
    persona becomes a V3 card with its id and defaults under ``data.extensions.chatapp``.
    ``spec`` converts to ``chara_card_v2`` or ``chara_card_v3``."""
    stored = persona.extra.get(EXTRA_KEY) if isinstance(persona.extra.get(EXTRA_KEY), dict) else None
    if stored is not None:
        data = copy.deepcopy(stored.get("data") or {})
        verbatim = _our_extension(data).get("prompt") == "verbatim"
        if persona.system_prompt != build_system_prompt(data, verbatim=verbatim):
            # a card keeps its own texts; a changed prompt cannot be split back into them
            log.warning("persona %r: its edited system_prompt is not exported; the card keeps its own "
                        "description/personality/scenario/system_prompt", persona.name)
    else:
        data = _native_data(persona)
    raw, absent = (stored or {}).get("raw") or {}, (stored or {}).get("absent") or []
    for key, attr in DIRECT_FIELDS.items():
        value = getattr(persona, attr)
        if key in raw and _normalized(key, raw[key]) == value:
            data[key] = copy.deepcopy(raw[key])  # e.g. null stays null
        elif key in absent and not value:
            data.pop(key, None)  # absent stays absent
        else:
            data[key] = copy.deepcopy(value)
    original_spec = stored.get("spec") if stored is not None else SPEC_V3
    if original_spec is None:
        card: dict[str, Any] = _ordered(data)  # a V1 card stays flat
    else:
        card = {"spec": original_spec,
                "spec_version": stored.get("spec_version") if stored else SPEC_VERSIONS[SPEC_V3],
                "data": _ordered(data), **copy.deepcopy((stored or {}).get("top") or {})}
    return convert_card(card, spec) if spec and spec != original_spec else card


# --- PNG ------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("ccv3", "chara")  # preference order when reading
_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
#: an inflated text chunk larger than this is refused (a zip bomb guard)
_MAX_INFLATED = 4 * MAX_CARD_JSON_BYTES


def iter_png_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each chunk, checking the signature, lengths and every CRC."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos, end = len(PNG_SIGNATURE), len(png)
    while pos < end:
        if pos + 12 > end:
            raise ValueError(f"truncated PNG: chunk header at byte {pos}")
        length, ctype = struct.unpack(">I4s", png[pos:pos + 8])
        if pos + 12 + length > end:
            raise ValueError(f"truncated PNG: chunk {ctype!r} at byte {pos} runs past the end")
        payload = png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + payload) != crc:
            raise ValueError(f"corrupt PNG: bad CRC in chunk {ctype!r} at byte {pos}")
        yield ctype, payload
        pos += 12 + length
        if ctype == b"IEND":
            return
    raise ValueError("truncated PNG: no IEND chunk")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_INFLATED)
    if inflater.unconsumed_tail:
        raise ValueError("compressed text chunk is too large")
    return out


def _text_of(ctype: bytes, payload: bytes) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk."""
    keyword, _, rest = payload.partition(b"\0")
    try:
        if ctype == b"tEXt":
            return keyword.decode("latin-1"), rest.decode("latin-1")
        if ctype == b"zTXt":
            return keyword.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
        compressed = rest[:1] == b"\x01"
        _lang, _, rest = rest[2:].partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return keyword.decode("latin-1"), (_inflate(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable {ctype.decode()} chunk {keyword!r}: {exc}") from None


def _decode_chunk_card(keyword: str, text: str) -> dict[str, Any]:
    compact = "".join(text.split())
    if len(compact) > MAX_CARD_JSON_BYTES * 4 // 3 + 4:
        raise ValueError(f"card in PNG chunk {keyword!r} is larger than {MAX_CARD_JSON_BYTES} bytes")
    try:
        raw = base64.b64decode(compact, validate=True)
    except ValueError:
        raise ValueError(f"PNG chunk {keyword!r} is not valid base64") from None
    try:
        card = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"PNG chunk {keyword!r} does not hold valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ValueError(f"PNG chunk {keyword!r} holds JSON that is not an object")
    return card


def read_card_png(data: bytes) -> dict[str, Any]:
    """The card embedded in a PNG: the ``ccv3`` chunk (V3) if present, else ``chara``.

    ``ValueError`` for a non-PNG, a bad CRC, a PNG over ``MAX_PNG_BYTES``, no card chunk, bad
    base64 or bad JSON. A broken ``ccv3`` next to a good ``chara`` falls back to ``chara`` (logged).
    """
    if len(data) > MAX_PNG_BYTES:
        raise ValueError(f"PNG is {len(data)} bytes; the limit is {MAX_PNG_BYTES}")
    texts: dict[str, str] = {}
    for ctype, payload in iter_png_chunks(data):
        if ctype in _TEXT_TYPES and payload.split(b"\0", 1)[0].decode("latin-1") in CARD_KEYWORDS:
            keyword, text = _text_of(ctype, payload)
            texts.setdefault(keyword, text)  # the first of each wins, as in card frontends
    found = [k for k in CARD_KEYWORDS if k in texts]
    if not found:
        raise ValueError("PNG has no character card (no 'chara' or 'ccv3' text chunk)")
    for i, keyword in enumerate(found):
        try:
            return _decode_chunk_card(keyword, texts[keyword])
        except ValueError as exc:
            if i + 1 == len(found):
                raise
            log.warning("PNG card: %s; using the %r chunk instead", exc, found[i + 1])
    raise AssertionError("unreachable")


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def write_card_png(image: bytes, card: dict[str, Any]) -> bytes:
    """``image`` with ``card`` embedded; old ``chara``/``ccv3`` chunks are removed.

    A V3 card is written as ``ccv3`` plus a V2 copy in ``chara`` (for V2-only readers); a V2 or
    V1 card only as ``chara`` (a made-up ``ccv3`` would win on reading and change the card).
    """
    if len(image) > MAX_PNG_BYTES:
        raise ValueError(f"PNG is {len(image)} bytes; the limit is {MAX_PNG_BYTES}")
    version = card_version(card)
    new_texts = [("chara", card if version != "v3" else convert_card(card, SPEC_V2))]
    if version == "v3":
        new_texts.insert(0, ("ccv3", card))
    new_chunks = b"".join(
        _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + base64.b64encode(dump_card_json(c)))
        for keyword, c in new_texts)
    out = [PNG_SIGNATURE]
    for ctype, payload in iter_png_chunks(image):
        if ctype in _TEXT_TYPES and payload.split(b"\0", 1)[0].decode("latin-1") in CARD_KEYWORDS:
            continue
        if ctype == b"IEND":
            out.append(new_chunks)
        out.append(_chunk(ctype, payload))
    result = b"".join(out)
    if len(result) > MAX_PNG_BYTES:
        raise ValueError(f"PNG with the card would be {len(result)} bytes; the limit is {MAX_PNG_BYTES}")
    return result
