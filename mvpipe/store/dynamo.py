"""Thin I/O around the pynamodb model: reads, conditional writes, transactions.

Translates pynamodb errors into mvpipe's: a failed condition is an answer (False / the reasons),
an outage is `StoreUnavailable` after a bounded retry of the *same* write. Re-sending the same
write is safe because every transition checks, on a failed condition, whether its own earlier
attempt already took effect (invariant 7).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from pynamodb.connection import Connection
from pynamodb.exceptions import PynamoDBException, TableError, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe.errors import ConfigurationError, StoreUnavailable
from mvpipe.settings import Settings
from mvpipe.store import pauses
from mvpipe.store.sessions import ThreadSessions
from mvpipe.store.table import METADATA, SCENE_PREFIX, ItemBase, bind_table, project_pk

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How a failed condition reads in a transaction's cancellation reasons.
CONDITION_FAILED = "ConditionalCheckFailed"
_CONDITION_ERROR = "ConditionalCheckFailedException"
_NOT_TRANSIENT = {"ValidationException", "ResourceNotFoundException", "AccessDeniedException"}


class Table:
    """The project table of one process."""

    def __init__(self, settings: Settings) -> None:
        self.model = bind_table(settings)
        # pynamodb makes each thread's botocore session itself (and with it a loader that decodes
        # DynamoDB's model again); these share the process's parsed models instead.
        self.model._get_connection().connection._local = ThreadSessions()
        self._outages = pauses.Outages("DynamoDB", settings.store_retry_seconds, _is_outage, log)
        self._settings = settings

    # -- setup ---------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the table on first use; safe when many processes race to do it."""
        if self._call(self._exists):
            return
        try:
            self.model.create_table(wait=True)
        except TableError as exc:
            if "ResourceInUseException" not in str(exc) and not self._call(self._exists):
                raise

    def _exists(self) -> bool:
        """Whether the table exists. pynamodb's `exists` lets any other answer than "no such
        table" out as botocore's `ClientError` (its other calls wrap it): wrapped here too, so
        that `_call` retries an outage (a 503, throttling) and names a refusal as one; as a bare
        `ClientError` a 503 read as a refusal (it carries no HTTP status)."""
        try:
            return self.model.exists()
        except ClientError as exc:
            raise TableError(f"Unable to describe table: {exc}", exc) from exc

    def close(self) -> None:
        """Close the client's connections, if it was built (pynamodb builds it on first use)."""
        connection = self.model._connection
        client = None if connection is None else connection.connection._client
        if client is not None:
            client.close()

    # -- reads ---------------------------------------------------------------------------------
    def get(self, pk: str, sk: str) -> ItemBase | None:
        def read() -> ItemBase | None:
            try:
                return self.model.get(pk, sk, consistent_read=True)
            except self.model.DoesNotExist:
                return None

        return self._call(read)

    def existing(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of `keys` = (PK, SK) have an item: one BatchGetItem per hundred keys,
        strongly consistent."""

        def read() -> set[tuple[str, str]]:
            found = self.model.batch_get(keys, consistent_read=True, attributes_to_get=["PK", "SK"])
            return {(i.pk, i.sk) for i in found}

        return self._call(read) if keys else set()

    def query_project(self, project_id: str) -> list[ItemBase]:
        """METADATA and every scene of a project, strongly consistent, in key order."""
        return self._call(
            lambda: list(self.model.query(project_pk(project_id), consistent_read=True))
        )

    def iter_by_status(self, status: str) -> Iterator[ItemBase]:
        yield from self._call(lambda: list(self.model.status_index.query(status)))  # type: ignore[attr-defined]

    def newest_of_status(self, status: str, limit: int) -> list[ItemBase]:
        """The last `limit` items of the status index's `status` partition (the newest by
        GSI1SK, createdAt), newest first: one Query, however long the partition's history."""

        def read() -> list[ItemBase]:
            index = self.model.status_index  # type: ignore[attr-defined]
            return list(index.query(status, scan_index_forward=False, limit=limit, page_size=limit))

        return self._call(read)

    def status_page(
        self,
        status: str,
        limit: int,
        after: tuple[str, str] | None = None,
        until: str | None = None,
    ) -> tuple[list[ItemBase], bool]:
        """One Query of the status index's `status` partition, in the index's order (GSI1SK,
        then the key), from after the project `after` = (its GSI1SK, its id) and up to GSI1SK
        `until` (a key condition, so nothing past it is read): at most `limit` items, and
        whether the index may hold more. A walk over a partition reads only as far as it
        goes, not the whole partition."""
        start = None
        if after is not None:
            at, project_id = after
            start = {
                "GSI1PK": {"S": status},
                "GSI1SK": {"S": at},
                "PK": {"S": project_pk(project_id)},
                "SK": {"S": METADATA},
            }

        def read() -> tuple[list[ItemBase], bool]:
            index = self.model.status_index  # type: ignore[attr-defined]
            bound = None if until is None else self.model.gsi1sk <= until
            page = index.query(
                status,
                range_key_condition=bound,
                limit=limit,
                page_size=limit,
                last_evaluated_key=start,
            )
            items = list(page)
            return items, page.last_evaluated_key is not None

        return self._call(read)

    def stray_scene_keys(self, created_before: str) -> list[tuple[str, str]]:
        """Scene items of projects with no METADATA, created before the cutoff (ISO time).

        A full scan: reconcile runs it rarely (a crash mid-create is the only source of strays).
        """
        return self.stray_page(created_before, None, None)[0]

    def stray_page(
        self, created_before: str, limit: int | None, after: tuple[str, str] | None
    ) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
        """The stray scene items of one Scan page of `limit` items (None: the whole table) from
        after the item `after` = (PK, SK), and where the next page starts (None: the scan is
        over). A project's items may straddle two pages, so a scene whose METADATA is not on
        its page is a stray only once a read of that METADATA finds none."""
        start = None if after is None else {"PK": {"S": after[0]}, "SK": {"S": after[1]}}

        def read() -> tuple[list[ItemBase], tuple[str, str] | None]:
            page = self.model.scan(
                attributes_to_get=["PK", "SK", "createdAt"],
                limit=limit,
                page_size=limit,
                last_evaluated_key=start,
            )
            items = list(page)
            key = page.last_evaluated_key
            return items, None if key is None else (key["PK"]["S"], key["SK"]["S"])

        items, following = self._call(read)
        with_metadata = {i.pk for i in items if i.sk == METADATA}
        scenes = [
            (i.pk, i.sk)
            for i in items
            if i.sk.startswith(SCENE_PREFIX)
            and i.pk not in with_metadata
            and (i.created_at or "") <= created_before
        ]
        orphaned = {pk for pk in {pk for pk, _ in scenes} if self.get(pk, METADATA) is None}
        return [key for key in scenes if key[0] in orphaned], following

    # -- writes --------------------------------------------------------------------------------
    def put(self, item: ItemBase, condition: Condition | None = None) -> bool:
        return self._conditional(lambda: item.save(condition=condition))

    def delete(self, pk: str, sk: str, condition: Condition | None = None) -> bool:
        return self._conditional(lambda: self.model(pk, sk).delete(condition=condition))

    def update(self, pk: str, sk: str, actions: list[Action], condition: Condition | None) -> bool:
        """One conditional UpdateItem; False when the condition did not hold."""
        return self.update_item(pk, sk, actions, condition) is not None

    def update_item(
        self, pk: str, sk: str, actions: list[Action], condition: Condition | None
    ) -> ItemBase | None:
        """One conditional UpdateItem; the item as the write left it (its ALL_NEW return, no
        read needed), None when the condition did not hold."""
        item = self.model(pk, sk)
        if not self._conditional(lambda: item.update(actions=actions, condition=condition)):
            return None
        return item

    def transact(self, build: Callable[[TransactWrite], None]) -> list[str | None] | None:
        """One TransactWriteItems. None on success, else the cancellation code of each part."""

        def commit() -> list[str | None] | None:
            try:
                with TransactWrite(connection=self._connection()) as tx:
                    build(tx)
            except TransactWriteError as exc:
                if _code(exc) == "TransactionCanceledException":
                    reasons = [_reason(r.code if r else None) for r in exc.cancellation_reasons]
                    if any(code == CONDITION_FAILED for code in reasons):
                        return reasons
                raise
            return None

        return self._call(commit)

    def batch_put(self, items: list[ItemBase]) -> None:
        def write() -> None:
            with self.model.batch_write() as batch:
                for item in items:
                    batch.save(item)

        self._call(write)

    def batch_delete(self, keys: list[tuple[str, str]]) -> None:
        def write() -> None:
            with self.model.batch_write() as batch:
                for pk, sk in keys:
                    batch.delete(self.model(pk, sk))

        self._call(write)

    # -- plumbing ------------------------------------------------------------------------------
    def _connection(self) -> Connection:
        return self.model._get_connection().connection

    def _conditional(self, write: Callable[[], Any]) -> bool:
        def attempt() -> bool:
            try:
                write()
            except PynamoDBException as exc:
                if _code(exc) == _CONDITION_ERROR:
                    return False
                raise
            return True

        return self._call(attempt)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return self._outages.call(fn)
        except PynamoDBException as exc:
            if refused(exc):
                # DynamoDB's own words name what to repair (the IAM action a policy lacks);
                # pynamodb's message only says which call failed
                said = exc.cause_response_message or exc.msg
                raise ConfigurationError(
                    f"DynamoDB refused the request ({_code(exc)}: {said}); check the "
                    "table (MVPIPE_TABLE, MVPIPE_AWS_REGION) and the credentials' permissions"
                ) from exc
            raise StoreUnavailable(f"DynamoDB unavailable: {exc.msg}") from exc


def refused(exc: PynamoDBException) -> bool:
    """Whether DynamoDB refused the request (a bad request, a missing table, no permission):
    trying again would meet the same answer. Anything else (throttling, a 5xx, no answer) is
    an outage."""
    return _code(exc) in _NOT_TRANSIENT


def _code(exc: PynamoDBException) -> str | None:
    """The error code DynamoDB answered with; None when no answer came at all (a timeout)."""
    try:
        return exc.cause_response_code
    except AttributeError:  # pynamodb reads `response` of a cause that has none
        return None


def _reason(code: str | None) -> str | None:
    return CONDITION_FAILED if code in (CONDITION_FAILED, _CONDITION_ERROR) else code


def _is_outage(exc: Exception) -> bool:
    """Whether a try's error will pass (`refused` says which DynamoDB answers won't)."""
    return isinstance(exc, PynamoDBException) and not refused(exc)
