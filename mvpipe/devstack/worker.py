"""The Celery app as the local stack's workers load it: `celery -A mvpipe.devstack.worker`.

It is `mvpipe.celery_app`'s app with the drills' failpoints armed when `MVPIPE_FAILPOINTS` names
any. Armed here, in the worker's main process, before its pool starts: prefork's processes fork
from it and the threads pool runs in it, so every execution sees them. Production workers load
`mvpipe.celery_app` itself and never import this package.
"""

from __future__ import annotations

from mvpipe.celery_app import app
from mvpipe.devstack import failpoints

failpoints.arm()

__all__ = ["app"]
