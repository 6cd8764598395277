"""Personas: the built-ins, the directory loader (plugins.persona_dir) and Character Card V1/V2/V3
import and export as JSON and PNG (chatapp.character_cards)."""
from __future__ import annotations

import base64
import copy
import json
import logging
import os
import struct
import subprocess
import sys
import zlib

import pytest

from chatapp.character_cards import (DEFAULT_MAIN_PROMPT, MAX_CARD_JSON_BYTES, MAX_PNG_BYTES, card_from_persona,
                                     convert_card, iter_png_chunks, load_card, load_card_json, persona_from_card,
                                     read_card_png, write_card_png)
from chatapp.models import Persona, Step
from plugins import DEFAULT_PLUGINS, persona_dir
from plugins.personas import register_personas as builtin_personas
from tests.conftest import auth, close_app, make_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN_NAMES = ["assistant", "support-agent", "faq-bot", "tech-mentor-hinglish", "code-reviewer"]

# --- samples --------------------------------------------------------------------------------

V2_CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Captain Mira Vale",
        "description": "{{char}} is the captain of the airship Kestrel, a former cartographer.\n\n"
                       "She is forty, sharp-eyed and keeps a brass compass on a chain.",
        "personality": "dry humour, loyal, impatient with cowards",
        "scenario": "{{user}} has just signed on as the Kestrel's new navigator.",
        "first_mes": "*Mira looks up from the charts.* You must be the new navigator, {{user}}.",
        "mes_example": "<START>\n{{user}}: Where are we headed?\n{{char}}: North, past the storm wall.",
        "creator_notes": "SECRET-CREATOR-NOTE: works best with a temperature around 0.9.",
        "system_prompt": "",
        "post_history_instructions": "Keep replies under 150 words. {{original}}",
        "alternate_greetings": ["*The deck lurches.* Hold on to something, {{user}}!",
                                "Welcome aboard the Kestrel."],
        "character_book": {
            "name": "Kestrel lore",
            "extensions": {},
            "entries": [{"keys": ["storm wall"], "content": "A permanent storm ring around the north.",
                         "extensions": {"depth": 4}, "enabled": True, "insertion_order": 100,
                         "case_sensitive": False, "id": 1, "comment": ""}],
        },
        "tags": ["adventure", "airship"],
        "creator": "example-creator",
        "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "fav": False, "world": "kestrel",
                       "depth_prompt": {"prompt": "Mira is tired.", "depth": 4, "role": "system"},
                       "some_frontend": {"nested": {"list": [1, 2, {"deep": None}]}}},
        "x_unknown_field": {"kept": True},
    },
    "x_top_level": "kept too",
}

V3_CARD = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        "name": "Professor Quill Harrow",
        "description": "{{char}} teaches alchemy at a floating academy.",
        "personality": "patient, curious, absent-minded",
        "scenario": "A late evening in the academy library.",
        "first_mes": "Ah, {{user}}! Just in time to help me with this tincture.",
        "mes_example": "<START>\n{{user}}: What is that smell?\n{{char}}: Progress, mostly.",
        "creator_notes": "SECRET-V3-NOTE: pair with the library lorebook.",
        "system_prompt": "You are running a cozy fantasy story. {{original}} Never break character.",
        "post_history_instructions": "",
        "alternate_greetings": ["The Professor waves a smoking flask at {{user}}."],
        "character_book": {"name": "Academy", "entries": [], "extensions": {"scan_depth": 2}},
        "tags": ["fantasy", "teacher"],
        "creator": "example-creator",
        "character_version": "3",
        "extensions": {"chub": {"full_path": "example/quill", "related": ["a", "b"]}},
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"},
                   {"type": "background", "uri": "embeded://assets/bg.png", "name": "library", "ext": "png"}],
        "nickname": "Quill",
        "creator_notes_multilingual": {"fr": "SECRET-FR-NOTE", "hi": "SECRET-HI-NOTE"},
        "source": ["https://example.invalid/cards/quill"],
        "group_only_greetings": ["Everyone, gather round the cauldron!"],
        "creation_date": 1700000000,
        "modification_date": 1710000000,
        "x_v3_unknown": [1, {"two": 2}],
    },
}

V1_CARD = {"name": "Old Tom", "description": "A fisherman.", "personality": "grumpy", "scenario": "",
           "first_mes": "What do you want?", "mes_example": "", "x_legacy": 1}


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def tiny_png(*extra_chunks: bytes) -> bytes:
    """A valid 1x1 RGB PNG built with the stdlib, with ``extra_chunks`` before IEND."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x80\x00")  # filter byte + one orange pixel
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + b"".join(extra_chunks)
            + png_chunk(b"IEND", b""))


def text_chunk(keyword: str, card: object) -> bytes:
    return png_chunk(b"tEXt", keyword.encode() + b"\0" + base64.b64encode(json.dumps(card).encode()))


# --- built-ins ------------------------------------------------------------------------------

def test_builtin_personas_are_complete_and_valid():
    personas = builtin_personas(config={})
    assert [p.name for p in personas] == BUILTIN_NAMES
    for p in personas:
        assert persona_dir.persona_problems(p.to_dict(), 4096) == [], p.name
        assert p.display_name and p.description and p.system_prompt and p.greeting, p.name
        assert 1 <= len(p.alternate_greetings) <= 2, p.name
        assert p.params.get("max_tokens", 0) <= 1024 and "temperature" in p.params, p.name
    by_name = {p.name: p for p in personas}
    assert by_name["assistant"].greeting == "Hi! How can I help?"
    mentor = by_name["tech-mentor-hinglish"]
    assert [(s.name, s.label) for s in mentor.steps] == [("analyze", "Analyze"), ("think", "Think"),
                                                         ("answer", "Answer")]
    assert all(isinstance(s, Step) and s.instruction for s in mentor.steps)
    # Hinglish: Hindi words, Latin script only (no Devanagari)
    for text in (mentor.system_prompt, mentor.greeting):
        assert not any("\u0900" <= ch <= "\u097f" for ch in text)
        assert any(word in text.lower().split() for word in ("aap", "hoon", "kya", "karo", "batao"))
    assert by_name["faq-bot"].cache_scope == "persona"
    assert all(p.cache_scope is None for p in personas if p.name != "faq-bot")


def test_builtin_content_hash_is_stable():
    first = {p.name: p.content_hash() for p in builtin_personas(config={})}
    assert first == {p.name: p.content_hash() for p in builtin_personas(config={})}
    # and across processes (no dependence on hash randomisation or object identity)
    code = ("import json; from plugins.personas import register_personas as r; "
            "print(json.dumps({p.name: p.content_hash() for p in r(config={})}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == first
    # registrations are copies: changing one never changes the next app's persona
    builtin_personas(config={})[0].steps.append(Step("x"))
    assert builtin_personas(config={})[0].steps == []


def test_builtins_served_by_the_api(client, user_key):
    body = client.get("/api/v1/personas", headers=auth(user_key)).json
    assert [p["name"] for p in body["items"]] == BUILTIN_NAMES and body["default"] == "assistant"
    mentor = client.get("/api/v1/personas/tech-mentor-hinglish", headers=auth(user_key)).json
    assert [s["name"] for s in mentor["steps"]] == ["analyze", "think", "answer"]
    assert client.get("/api/v1/personas/faq-bot", headers=auth(user_key)).json["cache_scope"] == "persona"


# --- the directory loader, through a real app -----------------------------------------------

@pytest.fixture()
def dir_app(app_config, tmp_path):
    made = []

    def _build(directory=tmp_path):
        # once plugins.persona_dir is in DEFAULT_PLUGINS, registering it again would be refused
        extra = () if "plugins.persona_dir" in DEFAULT_PLUGINS else (persona_dir,)
        application = make_app({**app_config, "PERSONAS_DIR": str(directory)}, extra_plugins=extra)
        made.append(application)
        ext = application.extensions["chatapp"]
        return application.test_client(), ext.users.create(f"dir{len(made)}")[1]

    yield _build
    for application in made:
        close_app(application)


def write_persona_dir(path):
    # file order (a, b, c, d) deliberately differs from the persona names' order
    (path / "a-zeta.yaml").write_text(
        "name: zeta\n"
        "display_name: Zeta\n"
        "description: A YAML persona.\n"
        "system_prompt: |-\n  You are {{char}}. Be brief with {{user}}.\n"
        "greeting: Hi from YAML\n"
        "alternate_greetings: [Yo]\n"
        "params: {temperature: 0.4, max_tokens: 300}\n"
        "cache_scope: user\n"
        "steps:\n"
        "  - {name: plan, label: Plan, instruction: Make a plan.}\n"
        "  - {name: answer, label: Answer, instruction: Answer.}\n", encoding="utf-8")
    (path / "b-alpha.json").write_text(json.dumps({"name": "alpha", "system_prompt": "JSON persona.",
                                                   "tags": ["json"]}), encoding="utf-8")
    (path / "c-mira.json").write_text(json.dumps(V2_CARD), encoding="utf-8")
    (path / "d-quill.png").write_bytes(write_card_png(tiny_png(), V3_CARD))
    (path / "e-broken.yaml").write_text("name: broken\nsystem_prompt: [unclosed\n", encoding="utf-8")
    (path / "f-typo.yml").write_text("name: typo\ngreting: Hello\n", encoding="utf-8")
    (path / "g-bad.png").write_bytes(b"not a png at all")
    (path / "README.md").write_text("not a persona", encoding="utf-8")
    (path / ".hidden.json").write_text("{", encoding="utf-8")


def test_directory_personas_through_the_app(dir_app, tmp_path, caplog):
    write_persona_dir(tmp_path)
    with caplog.at_level(logging.ERROR, logger="plugins.persona_dir"):
        client, key = dir_app()
    items = client.get("/api/v1/personas", headers=auth(key)).json["items"]
    names = [p["name"] for p in items]
    assert names[:len(BUILTIN_NAMES)] == BUILTIN_NAMES  # the built-ins stay
    assert names[len(BUILTIN_NAMES):] == ["zeta", "alpha", "captain-mira-vale", "professor-quill-harrow"]
    by_name = {p["name"]: p for p in items}
    zeta = by_name["zeta"]
    assert zeta["system_prompt"] == "You are {{char}}. Be brief with {{user}}." and zeta["cache_scope"] == "user"
    assert zeta["params"] == {"temperature": 0.4, "max_tokens": 300}
    assert [s["name"] for s in zeta["steps"]] == ["plan", "answer"]
    assert by_name["alpha"]["display_name"] == "alpha" and by_name["alpha"]["tags"] == ["json"]
    mira = by_name["captain-mira-vale"]
    assert mira["display_name"] == "Captain Mira Vale" and mira["greeting"] == V2_CARD["data"]["first_mes"]
    assert "SECRET-CREATOR-NOTE" in mira["creator_notes"] and "SECRET" not in mira["system_prompt"]
    quill = by_name["professor-quill-harrow"]
    assert quill["display_name"] == "Quill" and quill["alternate_greetings"] == V3_CARD["data"]["alternate_greetings"]
    assert "extra" not in quill  # the API does not show the stored card
    assert "broken" not in names and "typo" not in names
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("e-broken.yaml" in e for e in errors)
    assert any("f-typo.yml" in e and "'greting'" in e and "did you mean 'greeting'" in e for e in errors)
    assert any("g-bad.png" in e and "not a PNG" in e for e in errors)
    assert not any("README" in e or ".hidden" in e for e in errors)
    assert len(errors) == 3


def test_directory_unset_or_missing_registers_nothing(tmp_path, caplog):
    assert persona_dir.register_personas(config={}) == []
    with caplog.at_level(logging.ERROR, logger="plugins.persona_dir"):
        assert persona_dir.register_personas(config={"PERSONAS_DIR": str(tmp_path / "nope")}) == []
    assert "is not a directory" in caplog.text


def test_directory_duplicate_name_keeps_the_first_file(tmp_path, caplog):
    (tmp_path / "1.yaml").write_text("name: dup\nsystem_prompt: first\n")
    (tmp_path / "2.json").write_text('{"name": "dup", "system_prompt": "second"}')
    with caplog.at_level(logging.ERROR, logger="plugins.persona_dir"):
        personas = persona_dir.load_directory(tmp_path)
    assert [(p.name, p.system_prompt) for p in personas] == [("dup", "first")]
    assert "2.json" in caplog.text and "already defined by 1.yaml" in caplog.text


@pytest.mark.parametrize("text, problem", [
    ("name: x\nparams: {temprature: 1}\n", "params: unknown key 'temprature'"),
    ("name: x\nparams: {temperature: hot}\n", "params.temperature must be a number"),
    ("name: x\nparams: {max_tokens: 999999}\n", "params.max_tokens may be at most 4096"),
    ("name: x\ncache_scope: everyone\n", "cache_scope must be one of"),
    ("name: x\nsteps: [{name: a, lable: A}]\n", "steps[0]: unknown key 'lable'"),
    ("name: x\nsteps: [{label: A}]\n", "steps[0].name must be a non-empty string"),
    ("name: x\ngreeting: 12\n", "greeting must be a string"),
    ("name: x\ntags: web\n", "tags must be a list of strings"),
    ("name: has space\n", "name 'has space' must be"),
    ("name: x\ngreeting: a\ngreeting: b\n", "duplicate key 'greeting'"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_persona_files_say_what_is_wrong(tmp_path, text, problem):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(Exception) as info:
        persona_dir.load_persona_file(path, max_tokens_limit=4096)
    assert problem in str(info.value)


def test_persona_file_name_defaults_to_the_file_stem(tmp_path):
    (tmp_path / "from-stem.json").write_text('{"system_prompt": "x", "extra": {"k": [1]}}')
    persona = persona_dir.load_persona_file(tmp_path / "from-stem.json")
    assert persona.name == "from-stem" and persona.extra == {"k": [1]}
    (tmp_path / "dup.json").write_text('{"name": "a", "name": "b"}')
    with pytest.raises(ValueError, match="duplicate key 'name'"):
        persona_dir.load_persona_file(tmp_path / "dup.json")


def test_oversized_persona_file_is_refused(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_CARD_JSON_BYTES + 1))
    with pytest.raises(ValueError, match="limit"):
        persona_dir.load_persona_file(path)


# --- card import ----------------------------------------------------------------------------

def test_v2_card_mapping():
    persona = persona_from_card(copy.deepcopy(V2_CARD))
    data = V2_CARD["data"]
    assert persona.name == "captain-mira-vale" and persona.display_name == "Captain Mira Vale"
    assert persona.greeting == data["first_mes"] and persona.alternate_greetings == data["alternate_greetings"]
    assert persona.example_dialogue == data["mes_example"] and persona.tags == data["tags"]
    assert persona.creator_notes == data["creator_notes"]
    # creator notes are for people only
    assert "SECRET" not in persona.system_prompt and "SECRET" not in persona.example_dialogue
    # no card system_prompt: the default main prompt, then description, personality, scenario
    prompt = persona.system_prompt
    assert prompt.startswith(DEFAULT_MAIN_PROMPT)
    positions = [prompt.index(data["description"].split("\n")[0]), prompt.index(data["personality"]),
                 prompt.index(data["scenario"])]
    assert positions == sorted(positions)
    assert "{{original}}" not in prompt and "{{char}}" in prompt  # macros are left for the host
    # the description for people is the first paragraph with {{char}} filled
    assert persona.description == "Captain Mira Vale is the captain of the airship Kestrel, a former cartographer."
    card = persona.extra["character_card"]
    assert card["data"]["post_history_instructions"] == data["post_history_instructions"]
    assert card["data"]["extensions"] == data["extensions"] and card["data"]["character_book"] == data["character_book"]
    assert card["data"]["x_unknown_field"] == {"kept": True} and card["top"] == {"x_top_level": "kept too"}


def test_v3_card_mapping_and_original_placeholder():
    persona = persona_from_card(copy.deepcopy(V3_CARD))
    data = V3_CARD["data"]
    assert persona.name == "professor-quill-harrow" and persona.display_name == "Quill"  # nickname wins
    prompt = persona.system_prompt
    assert prompt.startswith("You are running a cozy fantasy story. " + DEFAULT_MAIN_PROMPT)
    assert prompt.endswith("Never break character.") and "{{original}}" not in prompt
    assert data["description"] in prompt and data["personality"] in prompt and data["scenario"] in prompt
    assert "SECRET" not in prompt and "SECRET" not in persona.example_dialogue
    stored = persona.extra["character_card"]["data"]
    assert stored["group_only_greetings"] == data["group_only_greetings"] and stored["assets"] == data["assets"]


def test_card_system_prompt_without_original_keeps_the_definition():
    card = copy.deepcopy(V2_CARD)
    card["data"]["system_prompt"] = "Narrate in the second person."
    prompt = persona_from_card(card).system_prompt
    assert prompt.startswith("Narrate in the second person.\n\n") and card["data"]["personality"] in prompt
    assert DEFAULT_MAIN_PROMPT not in prompt


def test_v1_card_and_card_errors():
    persona = persona_from_card(copy.deepcopy(V1_CARD))
    assert persona.name == "old-tom" and persona.greeting == "What do you want?"
    assert card_from_persona(persona) == V1_CARD
    assert persona_from_card({"spec": "chara_card_v2", "spec_version": "2.0",
                              "data": {"name": "花子", "first_mes": "hi"}}).name.startswith("card-")
    for bad, message in [({"spec": "chara_card_v9", "data": {}}, "unsupported card spec"),
                         ({"spec": "chara_card_v2"}, "needs a 'data' object"),
                         ({"spec": "chara_card_v2", "data": {"name": ""}}, "no 'name'"),
                         ({"spec": "chara_card_v2", "data": {"name": "a", "tags": "x"}}, "'tags' must be a list"),
                         ({"hello": 1}, "not a character card"),
                         ({"spec": "chara_card_v2", "data": {"name": "a", "extensions": {"chatapp": {"nmae": "x"}}}},
                          "unknown key(s): nmae")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            persona_from_card(bad)


# --- export and round trips -----------------------------------------------------------------

@pytest.mark.parametrize("card", [V2_CARD, V3_CARD], ids=["v2", "v3"])
def test_card_round_trip_json(card):
    exported = card_from_persona(persona_from_card(copy.deepcopy(card)))
    assert exported == card
    # the same JSON text too (spec field order, unknown fields in their place)
    assert json.dumps(exported) == json.dumps(card)
    assert load_card_json(json.dumps(exported)) == card


@pytest.mark.parametrize("card", [V2_CARD, V3_CARD], ids=["v2", "v3"])
def test_card_round_trip_png(card):
    png = write_card_png(tiny_png(), card)
    assert read_card_png(png) == card and load_card(png) == card
    assert card_from_persona(persona_from_card(read_card_png(png))) == card
    # writing again replaces the old chunks instead of adding more
    again = write_card_png(png, card)
    assert again.count(b"tEXtchara") == 1 and again.count(b"tEXtccv3") == (1 if card is V3_CARD else 0)
    assert read_card_png(again) == card


def test_v3_png_also_carries_a_v2_chara_chunk():
    png = write_card_png(tiny_png(), V3_CARD)
    texts = dict(payload.split(b"\0", 1) for ctype, payload in iter_png_chunks(png) if ctype == b"tEXt")
    assert set(texts) == {b"ccv3", b"chara"}
    v2 = json.loads(base64.b64decode(texts[b"chara"]))
    assert v2["spec"] == "chara_card_v2" and v2["data"]["name"] == V3_CARD["data"]["name"]
    assert "nickname" not in v2["data"] and "assets" not in v2["data"]
    assert v2 == convert_card(V3_CARD, "chara_card_v2")
    # a V2 card written over a V3 PNG: the stale ccv3 is removed, so the V2 card is what reads back
    assert read_card_png(write_card_png(png, V2_CARD)) == V2_CARD


def test_export_picks_up_edits_and_keeps_nulls_and_absent_fields():
    card = copy.deepcopy(V2_CARD)
    card["data"]["creator_notes"] = None
    del card["data"]["tags"]
    persona = persona_from_card(copy.deepcopy(card))
    assert persona.creator_notes == "" and persona.tags == []
    assert card_from_persona(persona) == card  # null stays null, absent stays absent
    persona.greeting = "Edited greeting"
    persona.tags = ["new"]
    out = card_from_persona(persona)
    assert out["data"]["first_mes"] == "Edited greeting" and out["data"]["tags"] == ["new"]
    assert out["data"]["extensions"] == card["data"]["extensions"]


def test_native_persona_exports_as_v3_and_imports_back():
    mentor = next(p for p in builtin_personas(config={}) if p.name == "tech-mentor-hinglish")
    card = card_from_persona(mentor)
    assert card["spec"] == "chara_card_v3" and card["data"]["first_mes"] == mentor.greeting
    assert card["data"]["name"] == "Tech Mentor (Hinglish)"
    back = persona_from_card(json.loads(json.dumps(card)))
    for field in ("name", "display_name", "system_prompt", "greeting", "alternate_greetings", "example_dialogue",
                  "params", "steps", "cache_scope", "tags", "description"):
        assert getattr(back, field) == getattr(mentor, field), field
    assert card_from_persona(back) == card
    assert card_from_persona(mentor, spec="chara_card_v2")["spec"] == "chara_card_v2"


# --- PNG reading details and errors ---------------------------------------------------------

def test_png_prefers_ccv3_and_reads_ztxt_and_itxt():
    v2 = convert_card(V3_CARD, "chara_card_v2")
    png = tiny_png(text_chunk("chara", v2), text_chunk("ccv3", V3_CARD))
    assert read_card_png(png) == V3_CARD
    b64 = base64.b64encode(json.dumps(V2_CARD).encode())
    ztxt = png_chunk(b"zTXt", b"chara\0\0" + zlib.compress(b64))
    assert read_card_png(tiny_png(ztxt)) == V2_CARD
    itxt = png_chunk(b"iTXt", b"chara\0\x01\x00en\0\0" + zlib.compress(b64))
    assert read_card_png(tiny_png(itxt)) == V2_CARD
    # a broken ccv3 next to a good chara: the chara card is used
    bad_v3 = png_chunk(b"tEXt", b"ccv3\0!!!")
    assert read_card_png(tiny_png(text_chunk("chara", V2_CARD), bad_v3)) == V2_CARD


def test_png_errors_are_clear():
    with pytest.raises(ValueError, match="not a PNG"):
        read_card_png(b"GIF89a....")
    with pytest.raises(ValueError, match="no character card"):
        read_card_png(tiny_png())
    with pytest.raises(ValueError, match="not valid base64"):
        read_card_png(tiny_png(png_chunk(b"tEXt", b"chara\0not*base64")))
    with pytest.raises(ValueError, match="valid JSON"):
        read_card_png(tiny_png(png_chunk(b"tEXt", b"chara\0" + base64.b64encode(b"{nope"))))
    with pytest.raises(ValueError, match="not an object"):
        read_card_png(tiny_png(png_chunk(b"tEXt", b"chara\0" + base64.b64encode(b"[1]"))))
    corrupt = bytearray(write_card_png(tiny_png(), V2_CARD))
    corrupt[-20] ^= 0xFF  # inside the card chunk: its CRC no longer matches
    with pytest.raises(ValueError, match="bad CRC"):
        read_card_png(bytes(corrupt))
    with pytest.raises(ValueError, match="truncated"):
        read_card_png(tiny_png()[:-12])
    with pytest.raises(ValueError, match="limit"):
        read_card_png(tiny_png() + b"\0" * MAX_PNG_BYTES)
    with pytest.raises(ValueError, match="not a PNG"):
        write_card_png(b"nope", V2_CARD)
    huge = copy.deepcopy(V2_CARD)
    huge["data"]["description"] = "x" * MAX_CARD_JSON_BYTES
    with pytest.raises(ValueError, match="limit"):
        write_card_png(tiny_png(), huge)
    with pytest.raises(ValueError, match="limit"):
        load_card_json(json.dumps(huge))
    with pytest.raises(ValueError, match="not valid JSON"):
        load_card_json(b"{")


def test_plugin_contract_only_needs_persona():
    """A directory persona is a plain Persona, like any plugin's."""
    persona = persona_dir.persona_from_mapping({"name": "p", "steps": [{"name": "a"}]})
    assert isinstance(persona, Persona) and persona.steps == [Step("a")]
