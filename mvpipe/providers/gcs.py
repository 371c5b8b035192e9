"""Fetching a provider's output from Google Cloud Storage (Veo with an output GCS URI).

google-cloud-storage is imported lazily; it honours `STORAGE_EMULATOR_HOST` (then without
credentials), else application-default credentials. Its own retries are off: one fetch must
not hold a worker slot for minutes, and the poll that called it is retried by the pipeline.
"""

from __future__ import annotations

import os
import re
import time

from mvpipe.errors import ConfigurationError, PermanentProviderError, ProviderError
from mvpipe.providers.classify import from_transport, too_large, unfetched
from mvpipe.providers.outputs import Bounded
from mvpipe.settings import Settings

GS_URI = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<name>[^\s]+)$")


def split_gs_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name) of a `gs://bucket/name` URI; anything else is permanent."""
    match = GS_URI.match(uri)
    if match is None:
        raise PermanentProviderError(f"not a gs://bucket/object URI: {uri[:200]!r}")
    return match["bucket"], match["name"]


def fetch(provider: str, uri: str, settings: Settings) -> bytes:
    """The object's bytes, never more than `MVPIPE_MAX_CLIP_BYTES` of them: its size is read
    first, and a larger object is refused unread; the bytes are also counted as they are
    written (a gzip-stored object is decoded to more than its stored size), and the whole read
    is bounded by `MVPIPE_DOWNLOAD_TIMEOUT_SECONDS` (a dripping answer would hold a worker for
    ever). Read
    whole, not as a range: google-cloud-storage checks no checksum on a partial (206) answer,
    and a gzip-stored object ignores the range. The download is conditioned on the
    generation whose size was read. Errors classified like any provider call; a refused or
    missing object is `OutputUnavailable` (the poll is asked again and, if it never comes,
    the scene fails saying the job was paid)."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage

    timeout, max_bytes = settings.provider_timeout_seconds, settings.max_clip_bytes
    deadline = settings.download_timeout_seconds
    bucket, name = split_gs_uri(uri)
    ends = time.monotonic() + deadline
    sink = Bounded(provider, max_bytes, ends, deadline)
    try:
        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        blob = client.bucket(bucket).blob(name)
        blob.reload(timeout=timeout, retry=None)
        if blob.size is None or blob.size > max_bytes:
            raise too_large(provider, max_bytes)
        blob.download_to_file(
            sink, if_generation_match=blob.generation, timeout=timeout, retry=None
        )
    except auth_exceptions.DefaultCredentialsError as exc:
        raise ConfigurationError(
            f"{provider}: reading the GCS output needs application-default credentials ({exc})"
        ) from None
    except ProviderError:  # refused by the sink, or too large
        raise
    except api_exceptions.GoogleAPICallError as exc:
        raise unfetched(provider, exc.code, f"GCS output download: {exc.message}") from None
    except Exception as exc:
        transport = from_transport(provider, exc)
        if transport is None:
            raise
        raise transport from None
    return sink.getvalue()
