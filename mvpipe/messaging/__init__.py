"""Celery's plumbing on Redis, apart from the tasks themselves: sending tasks by name
(`dispatch`, for the API and the tasks), the result backend (`results`, named by celeryconfig),
the broker transport (`broker`, named by celeryconfig),
the broker's reconnect guard (`kombu_guard`, installed by `mvpipe.celery_app`) and Flower's guard
(`flower_auth`: installed by `mvpipe.celery_app`, and called by celeryconfig for a Flower on
Celery's default app).

Above the pipeline (it implements the pipeline's `Dispatcher`), below the tasks and the API.
"""
