"""The pause between two tries of a store call through an outage (DynamoDB's and S3's alike)."""

from __future__ import annotations

import random

from mvpipe.settings import STORE_RETRY_PAUSE_MAX


def retry_pause(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th failed try: doubling from 0.1 s up to
    `STORE_RETRY_PAUSE_MAX`, jittered down to half so that many callers don't retry together."""
    return min(STORE_RETRY_PAUSE_MAX, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
