"""Repository promises: the README's two commands, CI running the same test command, the Procfile."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def readme_commands() -> list[str]:
    first_screen = read("README.md").split("---")[0]
    return [line.strip() for line in first_screen.splitlines() if line.startswith("    ")]


def test_readme_first_screen_has_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("python -m chatapp")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in read(".ci/run").splitlines()


def test_procfile_matches_design():
    lines = dict(line.split(": ", 1) for line in read("Procfile").strip().splitlines())
    assert lines["web"] == "gunicorn -c gunicorn.conf.py wsgi:app"
    assert lines["worker"] == "python -m workers"


def test_deploy_files_agree_with_the_procfile_and_config():
    import json

    import yaml

    from chatapp.config import DEFAULTS, PLAIN_ENV

    procfile = dict(line.split(": ", 1) for line in read("Procfile").strip().splitlines())
    render = yaml.safe_load(read("render.yaml"))
    services = {s["type"]: s for s in render["services"]}
    assert services["web"]["startCommand"] == procfile["web"]
    assert services["worker"]["startCommand"] == procfile["worker"]
    assert services["web"]["healthCheckPath"] == "/healthz"
    assert services["keyvalue"]["maxmemoryPolicy"] == "noeviction"
    app = json.loads(read("app.json"))
    assert set(app["formation"]) == set(procfile)
    assert any(a["plan"].startswith("heroku-redis") for a in app["addons"])
    known = set(PLAIN_ENV) | {f"CHATAPP_{k}" for k in DEFAULTS} | {"PYTHON_VERSION", "WEB_CONCURRENCY"}
    names = set(app["env"]) | {v["key"] for s in render["services"] for v in s.get("envVars", [])}
    assert names <= known, names - known
    secrets = {"RUNPOD_API_KEY", "OPENAI_API_KEY"}
    for service in render["services"]:
        for var in service.get("envVars", []):
            if var["key"] in secrets:
                assert var.get("sync") is False and "value" not in var  # never a secret in the repo
    assert read("requirements.txt").strip().splitlines()[-1] == "."
