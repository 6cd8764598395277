"""A conversation keeps the persona version it started with; prompts fill persona templates."""
from __future__ import annotations

from dataclasses import replace

from chatapp.chat import request_for_reply
from tests.conftest import auth


def system_of(ext, mid):
    request, _ = request_for_reply(ext, mid)
    return request.messages[0].content if request.messages[0].role == "system" else None


def test_editing_a_persona_never_rewrites_old_conversations(client, ext, user_key):
    old = client.post("/api/v1/conversations", json={"persona": "assistant"}, headers=auth(user_key)).json
    ext.catalog.personas["assistant"] = replace(ext.catalog.personas["assistant"], system_prompt="You are NEW.")
    new = client.post("/api/v1/conversations", json={"persona": "assistant"}, headers=auth(user_key)).json
    assert old["persona_version"] and old["persona_version"] != new["persona_version"]
    m_old = client.post(f"/api/v1/conversations/{old['id']}/messages", json={"content": "hi"},
                        headers=auth(user_key)).json["message_id"]
    m_new = client.post(f"/api/v1/conversations/{new['id']}/messages", json={"content": "hi"},
                        headers=auth(user_key)).json["message_id"]
    assert "NEW" not in system_of(ext, m_old) and system_of(ext, m_new) == "You are NEW."
    # choosing the persona again on purpose moves the conversation to the current version
    patched = client.patch(f"/api/v1/conversations/{old['id']}", json={"persona": "assistant"},
                           headers=auth(user_key)).json
    assert patched["persona_version"] == new["persona_version"]


def test_persona_template_placeholders_are_filled(client, ext, user_key):
    ext.catalog.personas["assistant"] = replace(
        ext.catalog.personas["assistant"], display_name="Ada",
        system_prompt="{{original}} You are {{char}}, talking to {{user}} on {{date}}.",
        example_dialogue="{{user}}: hi\n{{char}}: hello")
    conv = client.post("/api/v1/conversations", json={}, headers=auth(user_key)).json
    mid = client.post(f"/api/v1/conversations/{conv['id']}/messages", json={"content": "x"},
                      headers=auth(user_key)).json["message_id"]
    name = ext.users.authenticate(user_key).name
    text = system_of(ext, mid)
    assert text.startswith(f"You are a helpful assistant. You are Ada, talking to {name} on 20")
    assert f"Example dialogue:\n{name}: hi\nAda: hello" in text and "{{" not in text
