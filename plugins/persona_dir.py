"""Personas from a directory: ``CHATAPP_PERSONAS_DIR`` (config ``PERSONAS_DIR``).

Every ``*.yaml``, ``*.yml`` and ``*.json`` file in the directory (not its subdirectories) is one
persona in our own format (the ``Persona`` fields), or a Character Card (V2/V3, detected by
``spec``; V1 by its ``first_mes``-style fields); every ``*.png`` is a card image. Files load in
sorted name order. A bad file is skipped with a logged error naming it and the problem: the app
never fails to start because of one, and a persona is never half-loaded. Registers nothing when
``PERSONAS_DIR`` is unset. Files are read again whenever personas are (re)registered.
"""
from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import yaml

from chatapp.character_cards import (MAX_CARD_JSON_BYTES, MAX_PNG_BYTES, NAME_PATTERN, is_card,
                                     persona_from_card, read_card_png)
from chatapp.hookspecs import hookimpl
from chatapp.models import CACHE_SCOPES, Persona
from chatapp.schemas import CACHE_MODES

log = logging.getLogger(__name__)

PERSONA_SUFFIXES = (".yaml", ".yml", ".json")
CARD_SUFFIXES = (".png",)
PERSONA_FIELDS = tuple(Persona.__dataclass_fields__)
STEP_FIELDS = ("name", "label", "instruction")
#: the request params a persona may default (as the REST API's ``params`` accepts them)
PARAM_FIELDS = ("temperature", "max_tokens", "top_p", "cache")
_TEXT_FIELDS = ("system_prompt", "description", "greeting", "display_name", "example_dialogue", "creator_notes")


@hookimpl
def register_personas(config: Mapping[str, Any]) -> list[Persona]:
    """The personas in ``config["PERSONAS_DIR"]``; none when it is unset."""
    directory = config.get("PERSONAS_DIR")
    if not directory:
        return []
    return load_directory(directory, max_tokens_limit=config.get("MAX_TOKENS_LIMIT"))


def load_directory(directory: str | Path, max_tokens_limit: int | None = None) -> list[Persona]:
    """Every valid persona file in ``directory``, in sorted file-name order; bad files are
    logged and skipped, as is a second file defining a name already loaded from the directory."""
    path = Path(directory)
    if not path.is_dir():
        log.error("CHATAPP_PERSONAS_DIR=%s is not a directory; no personas loaded from it", directory)
        return []
    personas: list[Persona] = []
    seen: dict[str, str] = {}
    for file in sorted(path.iterdir(), key=lambda p: p.name):
        # dotfiles: editor backups and macOS "._x.json" resource forks are not personas
        if file.name.startswith(".") or file.suffix.lower() not in PERSONA_SUFFIXES + CARD_SUFFIXES:
            continue
        if not file.is_file():
            continue
        try:
            persona = load_persona_file(file, max_tokens_limit=max_tokens_limit)
        except (ValueError, OSError, yaml.YAMLError) as exc:
            log.error("persona file %s skipped: %s", file, exc)
            continue
        except Exception:  # a bug in a loader must not take the whole app down
            log.exception("persona file %s skipped: unexpected error", file)
            continue
        if persona.name in seen:
            log.error("persona file %s skipped: persona %r is already defined by %s",
                      file, persona.name, seen[persona.name])
            continue
        seen[persona.name] = file.name
        personas.append(persona)
    log.info("loaded %d persona(s) from %s", len(personas), path)
    return personas


def load_persona_file(path: str | Path, max_tokens_limit: int | None = None) -> Persona:
    """One persona from a file; ``ValueError`` (or a YAML/OS error) says what is wrong."""
    path = Path(path)
    suffix = path.suffix.lower()
    limit = MAX_PNG_BYTES if suffix in CARD_SUFFIXES else MAX_CARD_JSON_BYTES
    size = path.stat().st_size
    if size > limit:
        raise ValueError(f"file is {size} bytes; the limit is {limit}")
    raw = path.read_bytes()
    if suffix in CARD_SUFFIXES:
        persona = persona_from_card(read_card_png(raw))
    else:
        data = parse_json(raw) if suffix == ".json" else parse_yaml(raw)
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of persona fields, got {type(data).__name__}")
        persona = persona_from_card(data) if is_card(data) else persona_from_mapping(data, default_name=path.stem,
                                                                                       max_tokens_limit=max_tokens_limit)
    # a card's chatapp extension and the mapping above both end here: one set of rules
    problems = persona_problems(persona.to_dict(), max_tokens_limit)
    if problems:
        raise ValueError("; ".join(problems))
    return persona


def persona_from_mapping(data: Mapping[str, Any], default_name: str = "",
                         max_tokens_limit: int | None = None) -> Persona:
    """A persona from our own format: exactly the ``Persona`` fields, ``name`` defaulting to
    ``default_name`` (the file name without its suffix). Unknown keys are errors."""
    problems = []
    unknown = [k for k in data if k not in PERSONA_FIELDS]
    for key in unknown:
        close = difflib.get_close_matches(str(key), PERSONA_FIELDS, n=1)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    values = {k: v for k, v in data.items() if k in PERSONA_FIELDS}
    values.setdefault("name", default_name)
    problems += persona_problems(values, max_tokens_limit)
    if problems:
        raise ValueError("; ".join(problems))
    return Persona.from_dict(values)


def persona_problems(values: Mapping[str, Any], max_tokens_limit: int | None = None) -> list[str]:
    """What is wrong with these persona field values (types and ranges), as readable phrases."""
    problems: list[str] = []
    name = values.get("name")
    if not (isinstance(name, str) and NAME_PATTERN.match(name)):
        problems.append(f"name {name!r} must be 1-100 letters, digits, '_', '.' or '-' (starting with a letter "
                        "or digit)")
    for key in _TEXT_FIELDS:
        if not isinstance(values.get(key, ""), str):
            problems.append(f"{key} must be a string")
    for key in ("provider", "model"):
        if values.get(key) is not None and not (isinstance(values[key], str) and values[key]):
            problems.append(f"{key} must be a non-empty string or null")
    for key in ("alternate_greetings", "tags"):
        value = values.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{key} must be a list of strings")
    budget = values.get("history_budget")
    if budget is not None and not (_is_int(budget) and budget >= 1):
        problems.append("history_budget must be a positive integer or null")
    if values.get("cache_scope") is not None and values["cache_scope"] not in CACHE_SCOPES:
        problems.append(f"cache_scope must be one of {', '.join(CACHE_SCOPES)} or null")
    if not isinstance(values.get("extra", {}), dict):
        problems.append("extra must be a mapping")
    problems += _params_problems(values.get("params", {}), max_tokens_limit)
    problems += _steps_problems(values.get("steps", []))
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _params_problems(params: Any, max_tokens_limit: int | None) -> list[str]:
    """The same rules as the REST API's ``params``, so a persona default is never refused later."""
    if not isinstance(params, dict):
        return ["params must be a mapping"]
    problems = [f"params: unknown key {k!r} (allowed: {', '.join(PARAM_FIELDS)})" for k in params
                if k not in PARAM_FIELDS]
    if "temperature" in params and not (_is_number(params["temperature"]) and 0 <= params["temperature"] <= 2):
        problems.append("params.temperature must be a number from 0 to 2")
    if "top_p" in params and not (_is_number(params["top_p"]) and 0 <= params["top_p"] <= 1):
        problems.append("params.top_p must be a number from 0 to 1")
    if "max_tokens" in params:
        limit = int(max_tokens_limit or 0)
        if not (_is_int(params["max_tokens"]) and params["max_tokens"] >= 1):
            problems.append("params.max_tokens must be a positive integer")
        elif limit and params["max_tokens"] > limit:
            problems.append(f"params.max_tokens may be at most {limit} (CHATAPP_MAX_TOKENS_LIMIT)")
    if "cache" in params and params["cache"] not in CACHE_MODES:
        problems.append(f"params.cache must be one of {', '.join(CACHE_MODES)}")
    return problems


def _steps_problems(steps: Any) -> list[str]:
    if not isinstance(steps, list):
        return ["steps must be a list of {name, label, instruction}"]
    problems: list[str] = []
    names: set[str] = set()
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(step, dict):
            problems.append(f"{where} must be a mapping with name, label, instruction")
            continue
        problems += [f"{where}: unknown key {k!r} (allowed: {', '.join(STEP_FIELDS)})" for k in step
                     if k not in STEP_FIELDS]
        if not (isinstance(step.get("name"), str) and step["name"].strip()):
            problems.append(f"{where}.name must be a non-empty string")
        elif step["name"] in names:
            problems.append(f"{where}.name {step['name']!r} is used twice")
        else:
            names.add(step["name"])
        problems += [f"{where}.{k} must be a string" for k in ("label", "instruction")
                     if not isinstance(step.get(k, ""), str)]
    return problems


# --- parsing: duplicate keys are errors (the first would silently vanish) ---------------------

def parse_json(raw: bytes) -> Any:
    """JSON, refusing duplicate keys."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise yaml.constructor.ConstructorError(None, None, "unhashable or complex key", key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(raw: bytes) -> Any:
    """YAML (safe subset), refusing duplicate keys."""
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        # one log line: "invalid YAML at line 2, column 16: expected ',' or ']'..."
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"invalid YAML{where}: {exc.problem or exc.context}") from None
