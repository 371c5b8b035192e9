"""The Celery app: `celery -A mvpipe.celery_app worker|beat|flower`.

Importing this module opens no connection and builds no client; task modules are listed by name.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init

from mvpipe import kombu_guard

app = Celery(
    "mvpipe",
    include=[
        "mvpipe.tasks.plan",
        "mvpipe.tasks.generate",
        "mvpipe.tasks.finalize",
        "mvpipe.tasks.reconcile",
    ],
)
app.config_from_object("celeryconfig")


@worker_init.connect
def _guard_broker_reconnects(**_: object) -> None:
    kombu_guard.install()
