"""examples/persona-plugin as a user gets it: pip-installed into a fresh virtualenv, then found
through its entry point by a chatapp app on the test Redis, in a subprocess of that virtualenv.

Checks: ``GET /-/plugins`` lists it with its distribution and version, ``GET /api/v1/personas``
serves its personas, a reply through ``cook`` gets the persona's system prompt and comes back
shaped by it (the ``echo`` provider), and ``CHATAPP_DISABLED_PLUGINS=galley`` keeps the module
from even being imported.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from typing import Any

import pytest

from tests.processes import ROOT, env_for

pytestmark = pytest.mark.slow

EXAMPLE = os.path.join(ROOT, "examples", "persona-plugin")
DIST, VERSION, ENTRY_POINT, MODULE = "chatapp-persona-galley", "0.1.0", "galley", "chatapp_persona_galley.plugin"
COOK_PROMPT_START = "You are the cook aboard a small sailing ship"

#: what the build backend needs to run offline with --no-build-isolation
PROBE = r"""
import json, importlib.util
from importlib import metadata

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None

setuptools = version("setuptools")
major_minor = tuple(int(p) for p in (setuptools or "0.0").split(".")[:2] if p.isdigit())
print(json.dumps({
    "chatapp": importlib.util.find_spec("chatapp") is not None,
    "pip": importlib.util.find_spec("pip") is not None,
    "setuptools": setuptools,
    # setuptools >= 70.1 builds wheels by itself; older ones need the wheel package
    "can_build": setuptools is not None and (major_minor >= (70, 1) or version("wheel") is not None),
    "entry_points": sorted(ep.name for ep in metadata.entry_points(group="chatapp")),
}))
"""

#: run in the plugin's virtualenv; settings come from the environment, as in production
CHECK = r"""
import json, sys
from importlib import metadata

from chatapp.app import create_app
from chatapp.chat import request_for_reply
from workers import runtime
from workers.jobs import generate_reply
from workers.keeper import LeaseKeeper

app = create_app()
ext = app.extensions["chatapp"]
client = app.test_client()
key = ext.users.create("example-plugin")[1]
auth = {"Authorization": f"Bearer {key}"}
out = {
    "installed_version": metadata.version("chatapp-persona-galley"),
    "plugins": client.get("/-/plugins").json["items"],
    "personas": client.get("/api/v1/personas", headers=auth).json["items"],
}
conv = client.post("/api/v1/conversations", json={"persona": "cook"}, headers=auth)
out["conversation"] = {"status": conv.status_code, "body": conv.json}
if conv.status_code == 201:
    cid = conv.json["id"]
    sent = client.post(f"/api/v1/conversations/{cid}/messages", json={"content": "What is for supper?"},
                       headers=auth)
    mid = sent.json["message_id"]
    request, provider = request_for_reply(ext, mid)
    out["prompt"] = [[m.role, m.content] for m in request.messages]
    out["request_persona"] = request.persona.name if request.persona else None
    runtime.install(ext, LeaseKeeper(ext))  # what a worker process sets up, minus its loop
    out["job"] = generate_reply(mid)
    out["reply"] = client.get(f"/api/v1/conversations/{cid}/messages/{mid}", headers=auth).json
out["module_imported"] = "chatapp_persona_galley.plugin" in sys.modules
ext.relay.stop()
ext.clients.close()
print("RESULT " + json.dumps(out))
"""


def run(args: list[str], cwd: str, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def make_venv(path: str, env: dict[str, str]) -> tuple[str, str]:
    """A virtualenv that sees this interpreter's packages (chatapp, its dependencies, pip).

    ``--system-site-packages`` alone is not enough when the tests run in a virtualenv (.venv):
    it exposes the *base* interpreter's site-packages, not the venv's. A .pth file in the new
    venv adds this venv's site dirs through ``site.addsitedir``, which also runs their own .pth
    files (so an editable chatapp install is found too). Packages installed into the new venv
    come first on ``sys.path``.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", path],
                   check=True, timeout=60)
    python = os.path.join(path, "bin", "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], path, env).strip()
    if sys.prefix != sys.base_prefix:
        parents = [p for p in site.getsitepackages() if os.path.isdir(p)]
        with open(os.path.join(purelib, "_chatapp_test_parent_env.pth"), "w") as f:
            f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
    return python, purelib


def result(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


def test_pip_installed_example_plugin_is_loaded_and_shapes_replies(tmp_path, app_config):
    env = env_for(app_config)
    pip_env = {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    python, purelib = make_venv(str(tmp_path / "venv"), env)

    probe = json.loads(run([python, "-c", PROBE], str(tmp_path), env))
    assert probe["chatapp"] and probe["pip"], probe
    if ENTRY_POINT in probe["entry_points"]:  # e.g. `pip install -e examples/persona-plugin` into .venv
        message = (f"{DIST} is already installed where the tests run, so this test cannot show that "
                   f"installing it is what loads it: pip uninstall {DIST}")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if not probe["can_build"]:
        # e.g. Python 3.11's venv: setuptools 65.5 and no wheel package; 3.12+: no setuptools at all.
        # The only network use: a setuptools that builds wheels by itself, from PyPI (or pip's cache).
        run([python, "-m", "pip", "install", "-q", "setuptools>=70.1"], str(tmp_path), pip_env, timeout=180)

    # a copy, so the build's egg-info and build/ folders never land in the checkout
    source = str(tmp_path / "persona-plugin")
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache"))
    # offline: --no-index; --no-cache-dir: no wheel of a throwaway path in pip's cache
    run([python, "-m", "pip", "install", "--no-index", "--no-cache-dir", "--no-deps", "--no-build-isolation",
         source], str(tmp_path), pip_env)
    assert os.path.isdir(os.path.join(purelib, "chatapp_persona_galley")), os.listdir(purelib)

    script = tmp_path / "check.py"
    script.write_text(CHECK)
    on = result(run([python, str(script)], str(tmp_path), env, timeout=60))

    plugins = {p["name"]: p for p in on["plugins"]}
    assert plugins[ENTRY_POINT] == {"name": ENTRY_POINT, "hooks": ["register_personas"],
                                    "version": VERSION, "package": DIST}, plugins.get(ENTRY_POINT)
    assert on["installed_version"] == VERSION and on["module_imported"]
    personas = {p["name"]: p for p in on["personas"]}
    assert {"assistant", "cook", "navigator"} <= set(personas)
    cook = personas["cook"]
    assert cook["display_name"] == "The Ship's Cook" and cook["system_prompt"].startswith(COOK_PROMPT_START)
    assert cook["greeting"].startswith("Pull up a crate") and cook["params"] == {"temperature": 0.8}
    assert [s["name"] for s in personas["navigator"]["steps"]] == ["understand", "route", "checklist"]

    assert on["conversation"]["status"] == 201, on["conversation"]
    assert on["conversation"]["body"]["persona"] == "cook"
    assert on["request_persona"] == "cook"
    assert on["prompt"] == [["system", cook["system_prompt"]], ["user", "What is for supper?"]]
    assert on["job"] == "done"
    assert on["reply"]["state"] == "done" and on["reply"]["content"] == "Echo (cook): What is for supper?"

    # blocked by its entry-point name: the module is not even imported, though still installed
    off_env = env_for({**app_config, "KEY_PREFIX": app_config["KEY_PREFIX"] + "off:"},
                      CHATAPP_DISABLED_PLUGINS=ENTRY_POINT)
    off = result(run([python, str(script)], str(tmp_path), off_env, timeout=60))
    assert off["installed_version"] == VERSION
    assert ENTRY_POINT not in {p["name"] for p in off["plugins"]}
    assert not off["module_imported"]
    assert not {"cook", "navigator"} & {p["name"] for p in off["personas"]}
    assert off["conversation"]["status"] == 400
    assert off["conversation"]["body"]["error"]["code"] == "unknown_persona"
