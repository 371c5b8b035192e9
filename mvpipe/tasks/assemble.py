"""`mvpipe.assemble_project`: a run's last step, on queue `mvpipe.media`.

Sent by finalize once every scene is completed. Duplicates and redeliveries are harmless: the
final video's key is its inputs' hash (an existing object is reused) and the recording write is
conditioned on the run. A worker lost mid-assembly leaves the run without liveness; reconcile
takes it over and the new run's finalize sends the assembly again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from mvpipe.deps import get_context
from mvpipe.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from mvpipe.pipeline.assemble import assemble_run, give_up
from mvpipe.providers.classify import describe
from mvpipe.store.clips import ObjectMissing
from mvpipe.tasks.base import MvpipeTask, app, checked_ids, log_unexpected

log = logging.getLogger("mvpipe.tasks.assemble")

#: Unexpected errors tolerated per execution chain before the assembly gives up.
MAX_UNEXPECTED = 5


@app.task(base=MvpipeTask, bind=True, name="mvpipe.assemble_project")
def assemble_project(
    self: MvpipeTask, project_id: str, run_id: str, outages: int = 0
) -> dict[str, Any]:
    checked_ids(project_id, run_id=run_id, counts={"outages": outages})
    ctx = get_context()
    try:
        assembly = assemble_run(ctx, project_id, run_id)
    except ObjectMissing as exc:  # a clip or the song is gone: reconcile resets a lost clip
        give_up(ctx, project_id, run_id, describe(exc))
        return {"project_id": project_id, "outcome": f"assembly failed: {describe(exc)}"}
    except NotFound:
        return {"project_id": project_id, "outcome": "project not found"}
    except InvalidInput as exc:  # a clip or the song cannot be joined: no retry helps
        give_up(ctx, project_id, run_id, str(exc))
        return {"project_id": project_id, "outcome": f"assembly failed: {exc}"}
    except (StoreUnavailable, Conflict, redis.RedisError) as exc:
        raise self.outage_retry(exc, {}, outages) from None
    except Exception as exc:
        log_unexpected(log, f"assemble_project {project_id}", exc)
        if outages < MAX_UNEXPECTED:
            raise self.outage_retry(exc, {}, outages) from None
        give_up(ctx, project_id, run_id, describe(exc))
        return {"project_id": project_id, "outcome": "assembly failed"}
    return {
        "project_id": project_id,
        "run_id": run_id,
        "status": str(assembly.status),
        "outcome": assembly.outcome,
        "final_video_s3_key": assembly.key,
        "reused": assembly.reused,
    }
