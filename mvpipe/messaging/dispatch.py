"""Enqueues mvpipe's tasks by name (so the API never imports task modules)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery, Signature
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from mvpipe.errors import BrokerUnavailable
from mvpipe.providers.classify import describe
from mvpipe.queues import MEDIA_QUEUE

log = logging.getLogger("mvpipe.messaging.dispatch")

PLAN_SCENES = "mvpipe.plan_scenes"
GENERATE_SCENE = "mvpipe.generate_scene"
FINALIZE_PROJECT = "mvpipe.finalize_project"
ASSEMBLE_PROJECT = "mvpipe.assemble_project"
PREPARE_SONG = "mvpipe.prepare_song"

#: A message whose loss costs only time (a new project's song analysed ahead of its run, which
#: analyses it anyway) gives up on a broker away within seconds: a connect or a reply waits this
#: long, and the publish is tried twice, where a run's steps retry for ~30 s (celeryconfig).
QUICK_SEND_SECONDS = 2.0
QUICK_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.2,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def start_run(
        self,
        project_id: str,
        run_id: str,
        sequences: list[int] | None = None,
        *,
        taken_over: str | None = None,
    ) -> AsyncResult:
        """The run's root task carries the run id as its task id: AsyncResult(run_id) is the run.
        `taken_over`: the stale run this one replaces (its work's lost tries count on)."""
        kwargs: dict[str, Any] = {"only": sequences}
        if taken_over is not None:
            kwargs["taken_over"] = taken_over
        return self._send(PLAN_SCENES, args=[project_id, run_id], kwargs=kwargs, task_id=run_id)

    def resume(
        self,
        project_id: str,
        sequence: int,
        run_id: str | None,
        provider: str,
        operation_id: str | None = None,
        stage: str | None = None,
        *,
        after_loss: bool = False,
    ) -> AsyncResult:
        """One generate_scene outside any chord: polls `operation_id` (of `stage`, generation
        by default), or runs the scene's first missing stage. `after_loss`: the chain it
        replaces stopped, maybe with its worker (its tries count as a redelivery's)."""
        kwargs: dict[str, Any] = {"operation_id": operation_id, "stage": stage}
        if after_loss:
            kwargs["redelivered"] = True
        return self._send(
            GENERATE_SCENE, args=[project_id, sequence, run_id, provider], kwargs=kwargs
        )

    def finalize(
        self, project_id: str, run_id: str | None, sequences: list[int] | None
    ) -> AsyncResult:
        return self._send(FINALIZE_PROJECT, args=[None, project_id, run_id, sequences])

    def assemble(self, project_id: str, run_id: str) -> AsyncResult:
        return self._send(ASSEMBLE_PROJECT, args=[project_id, run_id])

    def prepare_song(self, project_id: str) -> AsyncResult:
        """Ask a media worker to analyse a new project's song now, outside any run (its
        result is not kept: nobody waits on it). Bounded (`QUICK_SEND_SECONDS`): on its own
        connection, so a broker that is away cannot hold the caller for long."""
        with self.app.connection_for_write(
            connect_timeout=QUICK_SEND_SECONDS,
            transport_options={
                "socket_connect_timeout": QUICK_SEND_SECONDS,
                "socket_timeout": QUICK_SEND_SECONDS,
            },
        ) as connection:
            return self._send(
                PREPARE_SONG,
                args=[project_id],
                queue=MEDIA_QUEUE,
                ignore_result=True,
                connection=connection,
                retry_policy=QUICK_RETRY_POLICY,
            )

    def _send(self, name: str, **options: Any) -> AsyncResult:
        """Publish (retried through a short broker outage by Celery's publish retry policy)."""
        try:
            return self.app.send_task(name, **options)
        except (OperationalError, redis.RedisError) as exc:
            raise BrokerUnavailable.because(exc) from exc

    @staticmethod
    def parked(message: Signature) -> str:
        """A task message kept in Redis until a freed provider slot wakes it (JSON only)."""
        return json.dumps(dict(message), separators=(",", ":"))

    @staticmethod
    def parked_project(message: str) -> str | None:
        """The project whose scene a parked message resumes (`generate_scene`'s first
        argument; None when the message does not say)."""
        try:
            args = json.loads(message).get("args") or []
        except (ValueError, AttributeError):
            return None
        return str(args[0]) if args else None

    def wake(self, parked: Iterable[str]) -> int:
        """Send parked messages now; a lost one only delays its scene to its own timed check."""
        sent = 0
        for message in parked:
            try:
                self.app.signature(json.loads(message)).apply_async()
                sent += 1
            except Exception as exc:
                log.warning("could not wake a waiting scene: %s", describe(exc))
        return sent
