"""The Celery app: `celery -A mvpipe.celery_app worker|beat|flower` (Flower, also through
`mvpipe flower`, refuses to run without basic auth and listens on 127.0.0.1 by default).

Importing this module opens no connection and builds no client; task modules are listed by name.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from celery import Celery
from celery.signals import task_postrun, worker_init, worker_process_init, worker_ready

from mvpipe.messaging import broker, flower_auth, kombu_guard
from mvpipe.queues import MEDIA_QUEUE
from mvpipe.settings import get_settings

log = logging.getLogger("mvpipe.worker")

#: The task modules, by name: the app imports none of them itself (a worker does, at start).
TASK_MODULES = (
    "mvpipe.tasks.plan",
    "mvpipe.tasks.analyse",
    "mvpipe.tasks.generate",
    "mvpipe.tasks.finalize",
    "mvpipe.tasks.assemble",
    "mvpipe.tasks.reconcile",
)

# A `redis://` broker's transport is kombu's without a MULTI/EXEC per delivery and ack.
broker.install()
app = Celery("mvpipe", include=list(TASK_MODULES))
app.config_from_object("celeryconfig")
flower_auth.install(app)


@worker_init.connect
def _guard_broker_reconnects(**_: object) -> None:
    kombu_guard.install()


@worker_init.connect
def _warm_before_fork(**_: object) -> None:
    """Decode botocore's S3 and DynamoDB models in the worker's own process, which sends this
    before its pool starts: prefork's processes (and any that replace them) fork from it with
    the models decoded, the threads pool's tasks run in it. Data only (~15 MB, once): no client
    or socket a fork would share. Then its startup objects are frozen, so that a pool
    process's own freeze at its start collects only what it made (a full collection of
    everything it inherited cost each ~130 ms of CPU, and touched every inherited object)."""
    from mvpipe.store import sessions

    sessions.warm()
    _freeze_startup_objects()


@worker_process_init.connect
def _warm_song_analysis(**_: object) -> None:
    global _pool_process
    _pool_process = True
    _warm_media()
    _freeze_startup_objects()


@worker_ready.connect
def _freeze_before_threads(**_: object) -> None:
    """Celery's threads pool runs tasks in the worker's own process and sends no
    `worker_process_init`: its startup objects are frozen here, before any task runs (frozen
    after a first task, the other threads' tasks in flight would be frozen with them, and a
    frozen cycle is never freed)."""
    if not _pool_process:
        _freeze_startup_objects()


#: Tasks between two full garbage collections in a pool process (or a threads pool's process).
COLLECT_EVERY = 20
_tasks_run = 0
#: Whether this is a process of a process pool (prefork, solo), where one task runs at a time.
_pool_process = False
_counting = threading.Lock()


def _freeze_startup_objects() -> None:
    """Take what a pool process (or the worker's process, before it forks one) holds for good
    (imports, warmed libraries) out of the garbage collector's view, so that the full
    collections of `_collect_cycles` scan only what tasks made since."""
    gc.collect()
    gc.freeze()


@task_postrun.connect
def _collect_cycles(**_: object) -> None:
    """A full garbage collection every `COLLECT_EVERY` tasks of a pool process.

    Celery ends each waiting step with `Ignore`, and its tracer leaves the exception, its own
    frame and a copy of the traceback (every frame's code positions: ~400 KB) in a reference
    cycle. The cycle outlives the young generations' collections (the frame still runs when
    they happen) and only a full collection frees it; Python runs one when the survivors grow
    by a quarter of all long-lived objects, which with a few million library objects is rare:
    the cycles piled up at ~400 KB per step (pool RSS 1.4x from 100 to 999 waiting scenes).
    In a process pool the first task's end also freezes the modules it imported lazily; in a
    threads pool (tasks of every thread counted together) the worker froze at ready instead."""
    global _tasks_run
    with _counting:
        _tasks_run += 1
        count = _tasks_run
    if count == 1 and _pool_process:
        _freeze_startup_objects()
    elif count % COLLECT_EVERY == 0:
        gc.collect()


def _warm_media() -> None:
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
