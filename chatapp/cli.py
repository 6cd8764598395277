"""``flask --app wsgi users create NAME [--admin]``: prints the new key alone on the last line.
``flask --app wsgi retention sweep [--days N]``: deletes idle conversations now."""
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


retention_cli = AppGroup("retention", help="Delete conversations idle longer than CHATAPP_RETENTION_DAYS.")


@retention_cli.command("sweep")
@click.option("--days", type=float, default=None, help="Override CHATAPP_RETENTION_DAYS for this run.")
def retention_sweep(days: float | None) -> None:
    """Delete idle conversations now (waits for no schedule; refuses while another sweep runs)."""
    from chatapp.retention import RetentionSweeper

    sweeper = RetentionSweeper(current_app.extensions["chatapp"], days=days)
    if not sweeper.enabled:
        raise click.ClickException("Retention is off: set CHATAPP_RETENTION_DAYS or pass --days.")
    deleted = sweeper.sweep()
    if deleted is None:
        raise click.ClickException("Another process is sweeping right now; try again shortly.")
    click.echo(f"Deleted {deleted} conversations idle for more than {sweeper.days:g} days.")


def init_app(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(retention_cli)
    app.extensions["chatapp"].pm.hook.register_commands(cli=app.cli)
