"""botocore sessions that share one process-wide loader of AWS service models.

A botocore session decodes S3's and DynamoDB's model JSON (and the endpoint rules) through its
`data_loader`, which keeps what it decoded; a new session gets a new, empty loader and decodes it
all again, ~0.2 s a context. Every session made here gets the process's first loader instead:
the parsed models are read-only data, so the contexts of a process, its threads and a forked
child (which inherits them copy-on-write) share them. Nothing else is shared: each session
still resolves its own credentials and config and builds its own clients and sockets.

A worker's parent fills the loader (`warm`) before its pool forks, so no pool process decodes
them at its first context.
"""

from __future__ import annotations

import threading

from botocore.loaders import Loader
from botocore.session import Session, get_session

#: The loader every session made here reads service models through; the first session's own
#: (so it honours AWS_DATA_PATH as botocore would). No lock: two threads racing to set it each
#: keep a working loader, and a forked child can never inherit it held.
_loader: Loader | None = None


def new_session() -> Session:
    """A fresh botocore session whose service models come from the process's shared loader."""
    global _loader
    session = get_session()
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


#: The services a context's clients call (`ClipStore`'s S3, `Table`'s DynamoDB).
SERVICES = ("s3", "dynamodb")


def warm() -> None:
    """Decode into the shared loader what a process's first context reads: each service's model
    and endpoint rules, S3's paginators (`ClipStore.list`), the endpoints, partitions and default
    configuration. A worker's parent calls it before its pool forks, so every pool process
    inherits them instead of decoding them at its first task (~0.2 s each). Only data is made:
    no client, credentials, socket or thread. The calls are the ones botocore makes, so their
    cache entries are the ones its clients look up."""
    loader = new_session().get_component("data_loader")
    loader.load_data_with_path("endpoints")
    loader.load_data("partitions")
    loader.load_data("sdk-default-configuration")
    for service in SERVICES:
        loader.load_service_model(service, "service-2", api_version=None)
        loader.load_service_model(service, "endpoint-rule-set-1", api_version=None)
    version = loader.determine_latest_version("s3", "service-2")
    loader.load_service_model("s3", "paginators-1", version)


class ThreadSessions(threading.local):
    """pynamodb's per-thread botocore sessions (it builds a client with the session of whichever
    thread asks first), each made by `new_session`: set as a pynamodb connection's `_local`,
    where it keeps them. Credentials come from botocore's chain, as the settings configure no
    key pair for the table."""

    def __init__(self) -> None:
        self.session = new_session()
