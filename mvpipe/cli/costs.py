"""Commands over what a project costs: estimate, budget."""

from __future__ import annotations

import json

import click

from mvpipe.cli.exits import EXIT_INVALID, fail, guarded
from mvpipe.cli.lazy import api


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
def estimate(project_id: str, sequence: int | None, as_json: bool) -> None:
    """What a run would still pay, in US dollars: every paid stage (generation, lip-sync)
    still missing, at MVPIPE_PRICES. Exact once the scenes are known; "about" before (a song's
    beats, found when a run plans it, decide its scenes: a run on no budget plans a project and
    pays for nothing, and the estimate is exact after it)."""
    from mvpipe.pricing import MICROS_PER_USD

    found = guarded(lambda: api.estimate_micros(project_id, sequence))
    dollars = found.micros / MICROS_PER_USD
    if as_json:
        payload = {"usd": dollars, "jobs": found.jobs, "exact": found.exact}
        click.echo(json.dumps(payload))
        return
    approx = "" if found.exact else "about "
    click.echo(f"{approx}${dollars:,.2f} for {found.jobs} paid job(s)")
    if not found.exact:
        click.echo(APPROXIMATE, err=True)


#: Said beside an estimate that is not exact: how to make it so.
APPROXIMATE = (
    "not exact until the project is planned: `mvpipe budget PROJECT 0` then `mvpipe run PROJECT`"
    " plans it and pays for nothing"
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
