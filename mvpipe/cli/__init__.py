"""The `mvpipe` command line: parse, check, call `api` (or the local stack's entry points in
`mvpipe.devstack`), print. Errors are one clear line and a documented exit code (`exits`).

Commands by family: `projects` (create, status, projects, fetch), `runs` (run, regenerate,
cancel), `costs` (estimate, budget), `operations` (reconcile, flower), `local` (stack, demo);
shared by them: `exits`, `display` and `progress` (a run's live bars).
"""

from __future__ import annotations

import click

from mvpipe.cli import costs, local, operations, projects, runs
from mvpipe.cli.exits import OneLineGroup


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mvpipe")
def main() -> None:
    """mvpipe: generate music videos scene by scene on a Celery cluster.

    Configuration comes from MVPIPE_* environment variables (see the README). Money is in US
    dollars, times in seconds.

    \b
    Exit codes: 0 done, 1 the project failed, 2 invalid input, 3 not found,
    4 conflict, 5 timed out, 6 a service or setting is unavailable.
    An error is one line on standard error, starting with "error:".
    """


for _command in (
    projects.create,
    projects.status,
    projects.projects,
    projects.fetch,
    runs.run,
    runs.regenerate,
    runs.cancel,
    costs.estimate,
    costs.budget,
    operations.reconcile,
    operations.flower,
    local.stack,
    local.demo,
):
    main.add_command(_command)

__all__ = ["main"]
