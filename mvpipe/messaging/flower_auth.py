"""Flower never runs open: started through this app in any way (`celery -A mvpipe.celery_app
flower`, `mvpipe flower`, the local stack), it refuses without MVPIPE_FLOWER_USER and
MVPIPE_FLOWER_PASSWORD and otherwise runs behind basic auth from them, on 127.0.0.1 unless its
command line, config file or FLOWER_ADDRESS says otherwise.

Flower reads none of its options from the Celery app's configuration: it is the `celery`
command's `flower` sub-command and reads FLOWER_* variables, then its config file, then its
command line. Celery's preload options are the supported hook into every sub-command, Flower's
included: `install` adds one nobody passes, whose callback Click runs as it reads the
sub-command's arguments, before the command itself starts; for `flower` it checks the
credentials and sets the variables Flower reads.
"""

from __future__ import annotations

import os
import sys

import click
from celery import Celery

from mvpipe.errors import ConfigurationError
from mvpipe.settings import Settings, get_settings

#: sysexits' "configuration error": Celery's own commands end with these codes too.
EXIT_CONFIG = 78


def basic_auth(settings: Settings) -> str:
    """`user:password` for Flower's basic auth. Flower splits its credential list on commas and
    a browser its credentials on the first colon, so those are refused where they would let in
    someone else (a password "a,b" would also admit anyone sending "b")."""
    user = settings.flower_user or ""
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if not user or not password:
        raise ConfigurationError(
            "set MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD; Flower never runs open"
        )
    if ":" in user or "," in user or "," in password:
        raise ConfigurationError(
            "MVPIPE_FLOWER_USER may not hold ':' or ',' nor MVPIPE_FLOWER_PASSWORD ','"
            " (Flower splits its credentials on them)"
        )
    return f"{user}:{password}"


def _guard(ctx: click.Context, _param: click.Parameter, _value: object) -> None:
    if ctx.command.name != "flower":
        return
    try:
        auth = basic_auth(get_settings())
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    os.environ["FLOWER_BASIC_AUTH"] = auth  # ours, whatever the variable held
    if not os.environ.get("FLOWER_ADDRESS"):  # empty would mean every interface
        os.environ["FLOWER_ADDRESS"] = "127.0.0.1"


def install(app: Celery) -> None:
    """Add the guard to every `celery -A <this app> ...` sub-command (hidden: it takes no
    value anyone would pass, and exposes none to the command)."""
    app.user_options["preload"].add(
        click.Option(
            ["--mvpipe-flower-guard"],
            is_flag=True,
            hidden=True,
            expose_value=False,
            allow_from_autoenv=False,
            callback=_guard,
            help="Refuse to start Flower without credentials.",
        )
    )
