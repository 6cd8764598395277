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
