"""mvpipe: music videos generated scene by scene on a Celery cluster."""

__version__ = "0.1.0"
