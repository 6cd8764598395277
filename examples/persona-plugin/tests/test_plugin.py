"""The plugin's personas, checked through chatapp's public plugin API only.

Run from this folder with ``python -m pytest`` in an environment that has chatapp installed.
No Redis and no chatapp app are needed.
"""
from importlib import metadata

import chatapp.hookspecs
import pluggy
import pytest
from chatapp import Persona, Step

from chatapp_persona_galley import plugin


def personas():
    """What chatapp gets: the hook called through a plugin manager that knows chatapp's hookspecs,
    so a misspelt hook or argument name fails here rather than being silently ignored."""
    pm = pluggy.PluginManager("chatapp")
    pm.add_hookspecs(chatapp.hookspecs)
    pm.register(plugin, name="galley")
    pm.check_pending()  # every @hookimpl in the module matches a hookspec
    (batch,) = pm.hook.register_personas(config={})
    return {p.name: p for p in batch}


def test_two_personas_with_unique_names():
    got = plugin.register_personas(config={})
    assert [p.name for p in got] == ["cook", "navigator"]
    assert all(isinstance(p, Persona) for p in got)
    assert set(personas()) == {"cook", "navigator"}


def test_cook():
    cook = personas()["cook"]
    assert cook.display_name == "The Ship's Cook"
    assert cook.system_prompt.startswith("You are the cook aboard a small sailing ship")
    assert cook.description and cook.greeting.startswith("Pull up a crate")
    assert cook.params == {"temperature": 0.8}
    assert cook.steps == [] and cook.provider is None and cook.model is None
    # what GET /api/v1/personas/cook serves
    data = cook.to_dict()
    assert data["name"] == "cook" and data["display_name"] == "The Ship's Cook"


def test_navigator_replies_in_steps():
    navigator = personas()["navigator"]
    assert navigator.display_name == "The Navigator"
    assert navigator.greeting == "Charts are out. Where are we headed, and when?"
    assert [s.name for s in navigator.steps] == ["understand", "route", "checklist"]
    assert all(isinstance(s, Step) and s.label and s.instruction for s in navigator.steps)
    assert navigator.to_dict()["steps"][1] == {
        "name": "route", "label": "The route", "instruction": "Lay out the journey leg by leg, with rough times."}


def test_entry_point_is_declared():
    try:
        dist = metadata.distribution("chatapp-persona-galley")
    except metadata.PackageNotFoundError:
        pytest.skip("not installed: `pip install -e .` to check the entry point too")
    (ep,) = [ep for ep in dist.entry_points if ep.group == "chatapp"]
    assert (ep.name, ep.value) == ("galley", "chatapp_persona_galley.plugin")
    assert ep.load() is plugin
