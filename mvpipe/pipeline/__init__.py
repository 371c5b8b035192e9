"""Pipeline logic: plan, one generate step, finalize, reconcile.

Store, Redis and providers come in through a `Context`; Celery stays out (the task layer turns a
returned `Step` into a retry, and implements `Dispatcher` for work that must be enqueued).
"""
