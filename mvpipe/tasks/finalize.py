"""`mvpipe.finalize_project`: the chord body (and the re-trigger of late scenes).

Acknowledged late like every step, so a finalize whose process is lost is delivered again: one
lost on every try (the process killed each time) is counted like the media work
(`pipeline.lost_tries`), and after `MVPIPE_MAX_ATTEMPTS` lost tries the run ends saying why.
"""

from __future__ import annotations

import logging
from typing import Any

from mvpipe import hooks
from mvpipe.deps import get_context
from mvpipe.errors import NotFound
from mvpipe.pipeline.finalize import Settlement, finalize_run, give_up_run
from mvpipe.pipeline.lost_tries import LostTooOften, LostTries, carried_on
from mvpipe.providers.classify import describe
from mvpipe.tasks.assemble import assemble_project
from mvpipe.tasks.base import RETRIED_ERRORS, MvpipeTask, app, checked_ids, log_unexpected
from mvpipe.tasks.failures import OUTAGES, UNEXPECTED

log = logging.getLogger("mvpipe.tasks.finalize")

#: Unexpected errors retried per execution chain (outages are counted apart, without limit)
#: before finalize gives up: the give-up is counted on the project (each chain that gives up
#: counts, as `MAX_GIVE_UPS` says); the run is left to reconcile, which settles it with its
#: own read or takes the stale run over, until `MAX_GIVE_UPS` end it (`give_up_run`).
MAX_UNEXPECTED = 5


@app.task(base=MvpipeTask, bind=True, name="mvpipe.finalize_project")
def finalize_project(
    self: MvpipeTask,
    _header_results: Any,
    project_id: str,
    run_id: str | None,
    sequences: list[int] | None,
    outages: int = 0,
    scenes_on_board: bool = False,
    unexpected: int = 0,
    taken_over: str | None = None,
) -> dict[str, Any]:
    """The chord's result list is ignored on purpose: only the store tells the truth.
    `scenes_on_board`: the run's scenes are the list its planning kept on the run board.
    `taken_over`: the stale run this run replaced (its lost tries go on counting)."""
    counts = {OUTAGES: outages, UNEXPECTED: unexpected}
    checked_ids(
        project_id,
        run_id=run_id,
        run_optional=True,
        taken_over=taken_over,
        only=sequences,
        counts=counts,
    )
    kwargs = {**counts, "scenes_on_board": scenes_on_board, "taken_over": taken_over}
    try:
        ctx = get_context()  # its first use in a process reaches the store: an outage retries
        tries = LostTries(
            ctx,
            f"finalize:{project_id}",
            run_id=run_id,
            redelivered=self.redelivered(),
            taken_over=taken_over,
        )

        def finalize() -> Settlement:
            if run_id is not None:
                ctx.board.finalize_began(run_id)
            hooks.reached("during_finalize")
            scenes = ctx.board.run_scenes(run_id) if scenes_on_board and run_id else sequences
            return finalize_run(ctx, project_id, run_id, scenes)

        settlement = tries.attempt(finalize, "the run's finalize")
    except LostTooOften as exc:
        return _give_up(self, project_id, run_id, str(exc), kwargs, at_once=True)
    except NotFound:
        return {"project_id": project_id, "outcome": "project not found"}
    except RETRIED_ERRORS as exc:  # Conflict: it kept moving
        raise self.outage_retry(exc, kwargs) from None
    except Exception as exc:  # scrubbed, bounded: never a raw traceback in the log or backend
        log_unexpected(log, f"finalize_project {project_id}", exc)
        retry = self.unexpected_retry(exc, kwargs, MAX_UNEXPECTED)
        if retry is not None:
            raise retry from None
        return _give_up(self, project_id, run_id, describe(exc), kwargs)
    if settlement.assemble and run_id is not None:
        # The assembly takes this task's id, so the run's AsyncResult resolves to its result.
        # A second finalize of the run sends a second assembly: harmless (it finds the object
        # or the recorded key), and never none when a first message was lost.
        raise self.replace(assemble_project.si(project_id, run_id, **carried_on(taken_over)))
    return {
        "project_id": project_id,
        "run_id": run_id,
        "status": str(settlement.status),
        "released": settlement.released,
    }


def _give_up(
    task: MvpipeTask,
    project_id: str,
    run_id: str | None,
    error: str,
    kwargs: dict[str, Any],
    *,
    at_once: bool = False,
) -> dict[str, Any]:
    """No retry cured `error`: count the give-up (the run ends at `MAX_GIVE_UPS`; `at_once`:
    now, its tries lost as often as may be). An outage meanwhile retries (that execution meets
    the error and gives up again, counted again)."""
    log.warning("finalize of project %s gave up: %s", project_id, error)
    ended = run_id is not None and bool(
        task.record_give_up(
            kwargs,
            lambda ctx: give_up_run(ctx, project_id, run_id, error, at_once=at_once),
            log,
            f"finalize of project {project_id}",
        )
    )
    return {"project_id": project_id, "outcome": f"finalize failed: {error}", "ended": ended}
