"""How a task chain counts its failures: outages apart from errors nobody expected.

An outage (the store or the broker away) is retried with backoff for as long as it lasts
(docs/DESIGN.md: a write whose outcome is unknown is retried until it is known); an unexpected
error (a bug) is retried a bounded number of times, then the task gives up. Each kind has its
own count, carried by the retries in the task's keyword of that name, so a long outage never
spends a bug's retries and a bug never makes an outage give up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The task keywords that carry each kind's count.
OUTAGES, UNEXPECTED = "outages", "unexpected"


def next_outage_retry(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords a task's retry after one more outage carries: outages have no limit, so
    there always is one (`counted`)."""
    return counted(kwargs, OUTAGES)


def next_retry(kwargs: Mapping[str, Any], kind: str, limit: int) -> dict[str, Any] | None:
    """The keywords a task's retry after one more failure of `kind` carries (`counted`); None
    once `limit` failures of `kind` were retried (the task gives up)."""
    if int(kwargs.get(kind, 0)) >= limit:
        return None
    return counted(kwargs, kind)


def counted(kwargs: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """This execution's `kwargs` with `kind`'s count plus one (missing, as in an older
    message: 0), every other keyword (the other kind's count too) as it was."""
    return {**kwargs, kind: int(kwargs.get(kind, 0)) + 1}
