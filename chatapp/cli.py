"""``flask --app wsgi users create NAME [--admin]``: prints the new key alone on the last line."""
from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from chatapp.errors import ChatAppError

users_cli = AppGroup("users", help="Manage users and API keys.")


@users_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Allow admin-only routes.")
def create_user(name: str, admin: bool) -> None:
    """Create a user and print its API key (shown once; stored hashed)."""
    try:
        user, key = current_app.extensions["chatapp"].users.create(name, admin=admin)
    except ChatAppError as err:
        raise click.ClickException(err.message) from err
    click.echo(f"Created {'admin ' if admin else ''}user {user.name} ({user.id}). API key (shown once):", err=True)
    click.echo(key)


def init_app(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.extensions["chatapp"].pm.hook.register_commands(cli=app.cli)
