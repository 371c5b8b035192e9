"""Flower never runs open: started in any way that reaches our configuration (`celery -A
mvpipe.celery_app flower`, `mvpipe flower`, the local stack, and also `celery flower -A
mvpipe.celery_app` or plain `celery flower`, which run on Celery's default app, configured by
celeryconfig), it refuses without MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD and otherwise
runs behind basic auth from them alone, on 127.0.0.1 unless its command line, config file or
FLOWER_ADDRESS names another (non-empty) address.

Flower reads none of its options from the Celery app's configuration: it is the `celery`
command's `flower` sub-command and reads FLOWER_* variables, then its config file, then its
command line. Two hooks set the variables it reads before it reads them:
- `install` adds a Celery preload option to our app, nobody passes it, and Click runs its
  callback as it reads the sub-command's arguments, before Flower's own parsing;
- `guard_loaded_config`, called by celeryconfig as it loads: with -A after `flower` (or none)
  Celery never loads our app, and Flower's default app loads celeryconfig only once Flower has
  parsed its options, so it sets the variables and has Flower parse them again.
Either way a parse callback then checks Flower's final options: a config file, `--basic-auth`
(`--basic-auth=` parses to [""], which admits anyone) or a FLOWER_* variable in another case
that replaced our credentials, or an empty address (every interface), is refused.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click
from celery import Celery
from tornado.options import options as flower_options

from mvpipe.errors import ConfigurationError
from mvpipe.providers.classify import MIN_SECRET_CHARS
from mvpipe.settings import Settings, get_settings

#: sysexits' "configuration error": Celery's own commands end with these codes too.
EXIT_CONFIG = 78

#: Whether Flower's final options are checked (the parse callback is registered).
_checking = False


def basic_auth(settings: Settings) -> str:
    """`user:password` for Flower's basic auth. Flower splits its credential list on commas and
    a browser its credentials on the first colon, so those are refused where they would let in
    someone else (a password "a,b" would also admit anyone sending "b"), and a password too
    short to be scrubbed from error texts is refused."""
    user = settings.flower_user or ""
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if not user or not password:
        raise ConfigurationError(
            "set MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD; Flower never runs open"
        )
    if len(password) < MIN_SECRET_CHARS:  # error texts could then show it: none is scrubbed
        raise ConfigurationError(
            f"MVPIPE_FLOWER_PASSWORD must be at least {MIN_SECRET_CHARS} characters"
        )
    if ":" in user or "," in user or "," in password:
        raise ConfigurationError(
            "MVPIPE_FLOWER_USER may not hold ':' or ',' nor MVPIPE_FLOWER_PASSWORD ','"
            " (Flower splits its credentials on them)"
        )
    if not (user + password).isascii():  # Flower's hmac.compare_digest takes ASCII text only
        raise ConfigurationError(
            "MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD must be ASCII"
            " (Flower would answer every request with an error)"
        )
    return f"{user}:{password}"


def _refuse(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _credentials() -> str:
    try:
        return basic_auth(get_settings())
    except ConfigurationError as exc:
        _refuse(str(exc))


def _prepare() -> None:
    """Refuse without credentials; otherwise set the variables Flower reads and have its
    final options checked."""
    global _checking
    os.environ["FLOWER_BASIC_AUTH"] = _credentials()  # ours, whatever the variable held
    if not os.environ.get("FLOWER_ADDRESS"):  # empty would mean every interface
        os.environ["FLOWER_ADDRESS"] = "127.0.0.1"
    if not _checking:
        flower_options.add_parse_callback(_check_options)
        _checking = True


def _check_options() -> None:
    """Run by Flower's option parser once it has read its command line (again after its config
    file): what it read last is what it runs with."""
    if flower_options.basic_auth != [_credentials()] or not flower_options.address:
        _refuse(
            "Flower's basic auth must be MVPIPE_FLOWER_USER:MVPIPE_FLOWER_PASSWORD alone and its"
            " address non-empty: a Flower config file, FLOWER_* variable or --basic-auth/--address"
            " option changed them"
        )


def _guard(ctx: click.Context, _param: click.Parameter, _value: object) -> None:
    if ctx.command.name == "flower":
        _prepare()


def guard_loaded_config() -> None:
    """Called by celeryconfig as it loads. Inside `celery flower` our preload guard has run
    unless Celery runs its default app (-A after `flower`, or none): Flower has then parsed its
    options already, without our credentials, and is about to listen; set them and have Flower
    parse its options again, in its own order, checked as above."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command.name != "flower" or _checking:
        return
    from flower.command import apply_env_options, apply_options

    _prepare()
    apply_env_options()
    apply_options(sys.argv[0], list(ctx.params.get("tornado_argv", ())))


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
