"""Commands over what a project costs: estimate, budget."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from mvpipe.cli.exits import (
    EXIT_INVALID,
    EXIT_TIMEOUT,
    fail,
    guarded,
    wait_options,
    wait_seconds,
)
from mvpipe.cli.lazy import api

if TYPE_CHECKING:
    from mvpipe.pipeline.cost import Estimate

#: How long `estimate --wait` waits for a song's analysis by default: seconds on a warm worker
#: (~1.3 s for a 3-minute song), minutes when the media queue has other work before it.
ANALYSIS_WAIT_SECONDS = 600.0
#: How often it looks.
ANALYSIS_POLL_SECONDS = 0.25


@click.command(short_help="What a run would still pay, in US dollars.")
@click.argument("project_id")
@click.option(
    "--scene",
    "sequence",
    type=int,
    help="What regenerating this scene (its number, from 1) would cost instead.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the estimate as JSON (usd, jobs, exact)."
)
@wait_options(
    "While the project's song is being analysed, wait for its analysis (up to --timeout), "
    "then print the estimate its beats make.",
    ANALYSIS_WAIT_SECONDS,
)
def estimate(
    project_id: str, sequence: int | None, as_json: bool, wait: bool, timeout: float | None
) -> None:
    """What a run would still pay, in US dollars: every paid stage (generation, lip-sync)
    still missing, at MVPIPE_PRICES. Exact once the scenes are known; "about" before. A song's
    beats decide its scenes: a worker analyses the song when the project is created, and the
    estimate is exact once it has (--wait waits for it while it is on its way; which scenes
    are lip-synced is the planner's, known when a run plans the project: on no budget it pays
    for nothing)."""
    from mvpipe.pricing import MICROS_PER_USD

    seconds = wait_seconds(wait, timeout, ANALYSIS_WAIT_SECONDS)
    found = guarded(lambda: api.estimate_micros(project_id, sequence))
    if wait and found.awaiting_analysis:
        found = _analysed(project_id, sequence, seconds)
    dollars = found.micros / MICROS_PER_USD
    if as_json:
        payload = {"usd": dollars, "jobs": found.jobs, "exact": found.exact}
        click.echo(json.dumps(payload))
        return
    approx = "" if found.exact else "about "
    click.echo(f"{approx}${dollars:,.2f} for {found.jobs} paid job(s)")
    if not found.exact:
        click.echo(ANALYSING if found.awaiting_analysis else APPROXIMATE, err=True)


def _analysed(project_id: str, sequence: int | None, timeout: float) -> Estimate:
    """The estimate once the song's analysis is recorded; exit 5 after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(min(ANALYSIS_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        found = guarded(lambda: api.estimate_micros(project_id, sequence))
        if not found.awaiting_analysis:
            return found
        if time.monotonic() >= deadline:
            fail(
                f"the song of project {project_id} was not analysed within {timeout:g} s: is a "
                "worker consuming the mvpipe.media queue running? (a run analyses it too)",
                EXIT_TIMEOUT,
            )


#: Said beside an estimate that is not exact: how to make it so.
APPROXIMATE = (
    "not exact until the project is planned: `mvpipe budget PROJECT 0` then `mvpipe run PROJECT`"
    " plans it and pays for nothing"
)
#: Said beside the estimate of a song project whose analysis is on its way (queued or running).
ANALYSING = (
    "not exact until the song's analysis is recorded (a worker analyses it once the project is"
    " created): ask again in a moment, or wait for it with `mvpipe estimate PROJECT --wait`"
)


@click.command(
    context_settings={"ignore_unknown_options": True},  # so "-5" is a value
    short_help="Set a project's budget in US dollars.",
)
@click.argument("project_id")
@click.argument("usd")
def budget(project_id: str, usd: str) -> None:
    """Set a project's budget to USD US dollars (0 to 1,000,000, not below what the project has
    committed; `none`: no limit). Raising it lets the next `run` pay for the scenes that
    stopped over budget."""
    value: float | None = None
    if usd.strip().lower() != "none":
        try:
            value = float(usd)
        except ValueError:
            fail(f"budget must be a number of US dollars or 'none', not {usd!r}", EXIT_INVALID)
    from mvpipe.cli.progress import money

    view = guarded(lambda: api.set_budget(project_id, value))
    click.echo(f"cost      {money(view)}")
