"""Commands for whoever runs the cluster: reconcile, flower."""

from __future__ import annotations

import os
import sys

import click

from mvpipe.cli.exits import guarded
from mvpipe.cli.lazy import api


@click.command(short_help="Repair what crashes left behind.")
@click.argument("project_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--sweep",
    is_flag=True,
    help="Also do now the sweeps beat does once per MVPIPE_FULL_SWEEP_SECONDS [3600] and "
    "MVPIPE_STRAY_SWEEP_SECONDS [3600]: every finished and idle project, and the scene items "
    "and songs of creates that never finished (past MVPIPE_ORPHAN_GRACE_SECONDS [3600]).",
)
def reconcile(project_id: str | None, as_json: bool, sweep: bool) -> None:
    """Repair what crashes left behind, in every project or just PROJECT_ID (beat runs this on a
    schedule for every project); prints what was repaired.

    On a terminal, the projects examined so far (and with --sweep the project folders swept)
    are shown on standard error as the pass goes."""
    from mvpipe.cli.progress import counted

    bars = ("project folders swept", "projects examined") if sweep else ("projects examined",)
    with counted(*bars, shown=not as_json) as tells:
        progress = None if tells is None else tells[-1]
        swept = tells[0] if tells is not None and sweep else None
        report = guarded(
            lambda: api.reconcile(
                project_id,
                sweep_strays=sweep or None,
                full_sweep=sweep or None,
                progress=progress,
                swept=swept,
            )
        )
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    for name, value in report.model_dump().items():
        click.echo(f"{name:<18} {value}")


@click.command(
    context_settings={"ignore_unknown_options": True}, short_help="Start Flower behind basic auth."
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; 0.0.0.0 opens it to the network.",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(address: str, flower_args: tuple[str, ...]) -> None:
    """Start Flower (the Celery dashboard) behind basic auth: refuses without
    MVPIPE_FLOWER_USER and MVPIPE_FLOWER_PASSWORD; listens on 127.0.0.1 unless --address says
    otherwise, on Flower's port 5555 unless --port=N; other arguments go to Flower."""
    from mvpipe.messaging.flower_auth import basic_auth
    from mvpipe.settings import get_settings

    # Refused here with the CLI's exit code; the app applies the same check and the credentials
    # to every Flower it starts (`celery -A mvpipe.celery_app flower` too).
    guarded(lambda: basic_auth(get_settings()))
    argv = [sys.executable, "-m", "celery", "-A", "mvpipe.celery_app", "flower"]
    os.execv(sys.executable, [*argv, f"--address={address}", *flower_args])
