"""The CLI's exit codes, and the one line an error becomes instead of a traceback.

Exit codes: 0 done, 1 the project failed, 2 invalid input, 3 not found, 4 conflict,
5 timed out, 6 a service or setting is unavailable.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from mvpipe.errors import (
    BrokerUnavailable,
    ConfigurationError,
    Conflict,
    InvalidInput,
    MvpipeError,
    NotFound,
    StoreUnavailable,
    Timeout,
)

T = TypeVar("T")

EXIT_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_TIMEOUT, EXIT_UNAVAILABLE = (
    1,
    2,
    3,
    4,
    5,
    6,
)
_EXIT_CODES: list[tuple[type[MvpipeError], int]] = [
    (InvalidInput, EXIT_INVALID),
    (NotFound, EXIT_NOT_FOUND),
    (Conflict, EXIT_CONFLICT),
    (Timeout, EXIT_TIMEOUT),
    (StoreUnavailable, EXIT_UNAVAILABLE),
    (ConfigurationError, EXIT_UNAVAILABLE),
]

#: What a user whose store cannot be reached checks first.
STORE_HINT = (
    "is the store running and reachable? MVPIPE_DYNAMODB_ENDPOINT and MVPIPE_S3_ENDPOINT point at"
    " it; `mvpipe stack` prints them for a local one"
)
#: What a user whose AWS credentials botocore cannot find (or finds in part) checks: the places
#: its chain looks, in order.
CREDENTIALS_HINT = (
    "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    " naming a profile of AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE, or run with an"
    " instance or container role; `mvpipe stack` prints a local store's"
)


def fail(message: str, code: int) -> NoReturn:
    from mvpipe.models import printable  # an error may quote a service's text

    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run an API call; user mistakes and outages become one line and an exit code. Only a
    connection's errors mean the stack is not running: a local file's (a full disk, a
    read-only directory) are the API's typed errors, never "cannot reach a backing service"."""
    try:
        return fn()
    except BrokerUnavailable as exc:  # its message names the broker's settings already
        fail(str(exc), EXIT_UNAVAILABLE)
    except Exception as exc:
        from mvpipe.store.pauses import credentials_missing

        if credentials_missing(exc):
            fail(f"{exc} ({CREDENTIALS_HINT})", EXIT_UNAVAILABLE)
        if isinstance(exc, StoreUnavailable):
            fail(f"{exc} ({STORE_HINT})", EXIT_UNAVAILABLE)
        if isinstance(exc, MvpipeError):
            code = next((c for t, c in _EXIT_CODES if isinstance(exc, t)), EXIT_FAILED)
            fail(str(exc), code)
        if isinstance(exc, ConnectionError | socket.gaierror):  # refused, reset, no such host
            fail(f"cannot reach a backing service: {exc}", EXIT_UNAVAILABLE)
        raise


class OneLineGroup(click.Group):
    """The command group. Click's own usage errors (a value of the wrong type, a missing
    argument, an unknown option or command) become one line and `EXIT_INVALID` like every
    other error, instead of Click's three-line usage block; a bare `mvpipe` still shows the
    help."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            fail(_usage_line(exc), EXIT_INVALID)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else 0)


def wait_options(
    follows: str, default_seconds: float
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--wait/--no-wait` and `--timeout` (read by `wait_seconds`), the options of a command
    that can wait for what it asked; `follows`: what --wait does, for its help;
    `default_seconds`: how long it waits without --timeout."""
    from mvpipe.models import MAX_WAIT_SECONDS

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        timeout = click.option(
            "--timeout",
            type=float,
            help=f"Seconds to wait with --wait (default {default_seconds:.0f}, at most "
            f"{MAX_WAIT_SECONDS:.0f}).",
        )
        wait = click.option("--wait/--no-wait", default=False, show_default=True, help=follows)
        return wait(timeout(command))

    return add


def wait_seconds(wait: bool, timeout: float | None, default: float) -> float:
    """A command's `--timeout`, which bounds its `--wait`: without `--wait` it is a usage error
    (it would be ignored), else checked (`validate_seconds`) before anything starts."""
    from mvpipe.models import validate_seconds

    if timeout is not None and not wait:
        fail("--timeout needs --wait (it bounds the wait)", EXIT_INVALID)
    seconds = default if timeout is None else timeout
    if wait:
        guarded(lambda: validate_seconds(seconds, "--timeout"))
    return seconds


def _usage_line(exc: click.UsageError) -> str:
    """Click's message on one line, lower-cased like ours, naming the help to read."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    return message if exc.ctx is None else f"{message} (see {exc.ctx.command_path} --help)"
