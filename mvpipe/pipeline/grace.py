"""The orphan grace period: how old a leftover must be before reconcile may collect it.

A create uploads its song and writes its scene items before METADATA, and an operation uploads
its output before its scene records it: until the grace period is over, what looks orphaned may
be a write still on its way. So it must outlast a create's worst case
(`Settings.create_worst_seconds`); a shorter one is allowed (tests use 0), and said every pass.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mvpipe.settings import Settings

log = logging.getLogger("mvpipe.reconcile")


def grace_cutoff(settings: Settings, now: float) -> datetime:
    """What was written before this (aware, like S3's LastModified) may be a crash's
    leftovers, not a write still on its way."""
    return datetime.fromtimestamp(now - settings.orphan_grace_seconds, UTC)


def warn_short_grace(settings: Settings) -> bool:
    """Log a warning when the grace period is shorter than a create can take (a create
    still writing could lose its song and scenes). Returns whether it is."""
    grace, worst = settings.orphan_grace_seconds, settings.create_worst_seconds
    if grace >= worst:
        return False
    log.warning(
        "MVPIPE_ORPHAN_GRACE_SECONDS (%g) is shorter than a create can take (%g s: the store's"
        " retries and timeouts): reconcile may delete the song and scenes of a create still"
        " writing its METADATA",
        grace,
        worst,
    )
    return True
