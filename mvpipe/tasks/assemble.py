"""`mvpipe.assemble_project`: a run's last step, on queue `mvpipe.media`.

Sent by finalize once every scene is completed. Duplicates and redeliveries are harmless: the
final video's key is its inputs' hash (an existing object is reused, and one execution builds it
while another waits) and the recording write is conditioned on the run. A pool process lost
mid-assembly has its message delivered again (it builds once the dead builder's hold lapses);
builds lost in a row are counted, and past `MVPIPE_MAX_ATTEMPTS` the run is released saying why
(`pipeline.lost_tries`). A whole worker lost leaves the run without liveness; reconcile takes
it over and the new run's finalize sends the assembly again, saying which run it took over:
its builds lost count on from that run's.
"""

from __future__ import annotations

import logging
from typing import Any

from mvpipe.deps import get_context
from mvpipe.errors import InvalidInput, NotFound
from mvpipe.pipeline.assemble import BUILDING, assemble_run, give_up
from mvpipe.providers.classify import describe
from mvpipe.store.clips import ObjectMissing
from mvpipe.tasks.base import RETRIED_ERRORS, MvpipeTask, app, checked_ids, log_unexpected
from mvpipe.tasks.failures import OUTAGES, UNEXPECTED

log = logging.getLogger("mvpipe.tasks.assemble")

#: Unexpected errors retried per execution chain (outages are counted apart, without limit)
#: before the assembly gives up.
MAX_UNEXPECTED = 5
#: How often an assembly waiting for another's build of the same video looks again (a hold's
#: try and a read of the project each time).
BUILD_CHECK_SECONDS = 2.0


@app.task(base=MvpipeTask, bind=True, name="mvpipe.assemble_project")
def assemble_project(
    self: MvpipeTask,
    project_id: str,
    run_id: str,
    outages: int = 0,
    unexpected: int = 0,
    redelivered: bool = False,
    taken_over: str | None = None,
) -> dict[str, Any]:
    counts: dict[str, Any] = {OUTAGES: outages, UNEXPECTED: unexpected}
    checked_ids(project_id, run_id=run_id, taken_over=taken_over, counts=counts)
    counts["taken_over"] = taken_over  # carried by a retry, as the counts are
    # A build's message delivered again mostly finds its lost builder's hold and waits on a new
    # message (`rerun_later`): that one carries the flag, or the build it makes goes uncounted.
    again = redelivered is True or self.redelivered()
    try:
        ctx = get_context()  # its first use in a process reaches the store: an outage retries
        assembly = assemble_run(ctx, project_id, run_id, redelivered=again, taken_over=taken_over)
    except ObjectMissing as exc:  # a clip or the song is gone: reconcile resets a lost clip
        return _give_up(self, project_id, run_id, describe(exc), counts)
    except NotFound:
        return {"project_id": project_id, "outcome": "project not found"}
    except InvalidInput as exc:  # a clip or the song cannot be joined: no retry helps
        return _give_up(self, project_id, run_id, str(exc), counts)
    except RETRIED_ERRORS as exc:
        raise self.outage_retry(exc, counts) from None
    except Exception as exc:
        log_unexpected(log, f"assemble_project {project_id}", exc)
        retry = self.unexpected_retry(exc, counts, MAX_UNEXPECTED)
        if retry is not None:
            raise retry from None
        return _give_up(self, project_id, run_id, describe(exc), counts)
    if assembly.outcome == BUILDING:
        progress = {"project_id": project_id, "run_id": run_id, "detail": assembly.outcome}
        carried = {**counts, "redelivered": True} if again else counts
        raise self.rerun_later("WAITING_FOR_ASSEMBLY", BUILD_CHECK_SECONDS, carried, progress)
    return {
        "project_id": project_id,
        "run_id": run_id,
        "status": str(assembly.status),
        "outcome": assembly.outcome,
        "final_video_s3_key": assembly.key,
        "reused": assembly.reused,
    }


def _give_up(
    task: MvpipeTask, project_id: str, run_id: str, error: str, counts: dict[str, Any]
) -> dict[str, Any]:
    """No retry makes the final video: release the run saying why (`give_up`)."""
    task.record_give_up(
        counts,
        lambda ctx: give_up(ctx, project_id, run_id, error),
        log,
        f"assembly of project {project_id}",
    )
    return {"project_id": project_id, "outcome": f"assembly failed: {error}"}
