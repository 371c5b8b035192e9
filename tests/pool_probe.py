"""Loaded into a test's worker (`CELERY_WORKER_INCLUDE`, which the worker imports in its own
process). In the directory `PROBE_DIR` names, as JSON: the worker's process records which
botocore data files it held decoded once its `worker_init` receivers had run, and whether they
were out of the garbage collector's view (`worker.json`); each pool process, as it starts,
which it found decoded and which its first context then decoded (`<pid>.json`)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from celery.signals import worker_init, worker_process_init

from mvpipe.deps import get_context
from mvpipe.store import sessions

#: The environment variable naming the directory of the records.
PROBE_DIR = "POOL_PROBE_DIR"


def decoded() -> set[str]:
    """The data files (botocore's paths, e.g. `s3/2006-03-01/service-2`) the process's shared
    loader holds decoded: its cache keeps each by path."""
    loader = sessions._loader
    if loader is None:
        return set()
    return {key[1] for key in vars(loader)["_cache"] if key[0] == "load_data_with_path"}


def frozen() -> bool:
    """Whether the shared loader's cache is out of the collector's view (`gc.freeze` took it:
    `gc.get_objects` lists every tracked object but those)."""
    loader = sessions._loader
    cache = None if loader is None else vars(loader)["_cache"]
    return cache is not None and not any(o is cache for o in gc.get_objects())


def _directory() -> Path | None:
    """Where the records go; None in a process that imported this module without a probe."""
    directory = os.environ.get(PROBE_DIR)
    return None if directory is None else Path(directory)


def _write(directory: Path, name: str, record: dict[str, object]) -> None:
    """The record, whole or not there yet."""
    path = directory / f"{name}.json"
    path.with_suffix(".tmp").write_text(json.dumps({"pid": os.getpid(), **record}))
    path.with_suffix(".tmp").rename(path)


@worker_init.connect
def _record_worker(**_: object) -> None:
    """Connected after mvpipe's own receivers (imported with the app): runs after them."""
    directory = _directory()
    if directory is not None:
        _write(directory, "worker", {"decoded": sorted(decoded()), "frozen": frozen()})


@worker_process_init.connect
def _record_pool_process(**_: object) -> None:
    directory = _directory()
    if directory is None:
        return
    record: dict[str, object] = {"parent": os.getppid()}
    try:
        inherited = decoded()
        get_context().clips.list("pool-probe/")  # a first context, and S3's paginator
        record |= {"inherited": sorted(inherited), "decoded": sorted(decoded() - inherited)}
    except Exception as exc:  # the test reads why, rather than waiting for a record
        record["error"] = repr(exc)
    _write(directory, str(os.getpid()), record)
