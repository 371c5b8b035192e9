"""Thin Celery wrappers: ids in, retry policy, call the pipeline."""
