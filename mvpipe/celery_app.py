"""The Celery app: `celery -A mvpipe.celery_app worker|beat|flower`.

Importing this module opens no connection and builds no client; task modules are listed by name.
"""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.signals import worker_init, worker_process_init

from mvpipe import kombu_guard
from mvpipe.settings import get_settings

#: The queue of memory-heavy media work (song analysis, cutting, assembly).
MEDIA_QUEUE = "mvpipe.media"

log = logging.getLogger("mvpipe.worker")

app = Celery(
    "mvpipe",
    include=[
        "mvpipe.tasks.plan",
        "mvpipe.tasks.analyse",
        "mvpipe.tasks.generate",
        "mvpipe.tasks.finalize",
        "mvpipe.tasks.assemble",
        "mvpipe.tasks.reconcile",
    ],
)
app.config_from_object("celeryconfig")


@worker_init.connect
def _guard_broker_reconnects(**_: object) -> None:
    kombu_guard.install()


@worker_process_init.connect
def _warm_song_analysis(**_: object) -> None:
    """Load and compile librosa in each pool process of a worker that consumes mvpipe.media.

    The first analysis in a process otherwise spends about 4 s importing and JIT-compiling; a
    task must not. It costs about 240 MB per process, so workers that never take media work
    (`-Q mvpipe.plan,mvpipe.video`) skip it, and `MVPIPE_WARM_MEDIA=0` turns it off.
    """
    if not get_settings().warm_media or MEDIA_QUEUE not in app.amqp.queues.consume_from:
        return
    from mvpipe.media.analysis import warm

    started = time.perf_counter()
    warm()
    log.info("song analysis warmed in %.2f s", time.perf_counter() - started)
