"""The Celery queues by name, defined once: celeryconfig declares and routes them, the stages
say where each runs, the dispatcher sends a song's analysis ahead, and a worker warms song
analysis only when it takes media work. Pure: no I/O, no Celery."""

from __future__ import annotations

#: Planning, finalizing, reconcile: short steps that hold no provider call (the default queue).
PLAN_QUEUE = "mvpipe.plan"
#: Provider calls and polls.
VIDEO_QUEUE = "mvpipe.video"
#: Memory-heavy media work: song analysis, cutting, assembly.
MEDIA_QUEUE = "mvpipe.media"
