"""Celery settings for mvpipe, derived from `mvpipe.settings` (MVPIPE_* environment variables).

Importable from any directory once mvpipe is installed (it is a top-level module of the package).
"""

from kombu import Exchange, Queue

from mvpipe.messaging import flower_auth
from mvpipe.messaging.results import backend_url
from mvpipe.queues import MEDIA_QUEUE, PLAN_QUEUE, VIDEO_QUEUE
from mvpipe.settings import get_settings

# `celery flower` without our app (-A after `flower`, or none) still reaches our broker through
# this module: Flower then refuses without our credentials, or runs behind them.
flower_auth.guard_loaded_config()

_s = get_settings()

broker_url = _s.broker_url
result_backend = backend_url(_s.result_backend)  # Redis, without a MULTI/EXEC per state

# JSON only: no pickle, so a message can never carry code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A task is acknowledged only when it has finished; a lost worker's task is re-queued.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# The STARTED state lives in task events (Flower); a backend write per step would cost five
# Redis commands for a state nobody reads from the backend.
task_track_started = False
# Flower builds its task list from the workers' events (received, started, succeeded, and our
# POLLING/WAITING_FOR_SLOT/... states). A `task-sent` event per message only adds a SENT state
# before RECEIVED, at one Redis PUBLISH per message: off.
worker_send_task_events = True
task_send_sent_event = False

# Redelivery of unacked messages must come after the longest countdown we ever schedule.
broker_transport_options = {"visibility_timeout": _s.visibility_timeout}
result_backend_transport_options = {"visibility_timeout": _s.visibility_timeout}
result_expires = _s.result_expires  # also the life of chord counters: above the longest run
result_extended = True

# A step's next message (a poll, a retry, the re-finalize) must survive a broker restart of a
# few seconds: a failed publish would end the chord's header in FAILURE. ~30 s of retries.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 15,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 3.0,
}

broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_pool_limit = 10
redis_backend_health_check_interval = 10
redis_socket_keepalive = True
worker_cancel_long_running_tasks_on_connection_loss = False
# A pool process reports ready only after `worker_process_init`, where media workers warm song
# analysis (about 4 s on an idle core): the 4 s default would kill them while they warm.
worker_proc_alive_timeout = 120

task_default_queue = PLAN_QUEUE
# Each queue (what runs where: mvpipe.queues) with an exchange and routing key of its name.
task_queues = tuple(
    Queue(name, Exchange(name), routing_key=name) for name in (PLAN_QUEUE, VIDEO_QUEUE, MEDIA_QUEUE)
)
task_routes = {
    "mvpipe.generate_scene": {"queue": VIDEO_QUEUE, "routing_key": VIDEO_QUEUE},
    "mvpipe.analyse_song": {"queue": MEDIA_QUEUE, "routing_key": MEDIA_QUEUE},
    "mvpipe.prepare_song": {"queue": MEDIA_QUEUE, "routing_key": MEDIA_QUEUE},
    "mvpipe.assemble_project": {"queue": MEDIA_QUEUE, "routing_key": MEDIA_QUEUE},
    "mvpipe.*": {"queue": PLAN_QUEUE, "routing_key": PLAN_QUEUE},
}

beat_schedule = {
    "reconcile": {"task": "mvpipe.reconcile", "schedule": _s.reconcile_seconds},
}
# Outside the source tree; beat cannot create the directory itself.
_s.state_dir.mkdir(parents=True, exist_ok=True)
beat_schedule_filename = str(_s.state_dir / "celerybeat-schedule")
