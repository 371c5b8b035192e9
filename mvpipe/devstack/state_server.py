"""The local state server: moto's DynamoDB and S3 over HTTP, one request at a time.

moto is not built for concurrent access: a TransactWriteItems that fails puts back a copy of the
whole table taken when it started, erasing what other requests wrote meanwhile (a failed lease
claim could undo another worker's completed scene). Real DynamoDB never does that, so the local
stack serializes requests; moto is bound by the GIL anyway, so little throughput is lost.

That whole-table copy also makes every transaction cost O(table size): on a table of a thousand
scenes it was half of the server's time. With requests serialized, saving just the items a
transaction names gives the same rollback, so the server does that instead.

    python -m mvpipe.devstack.state_server -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import argparse
import base64
import functools
import inspect
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

WsgiApp = Callable[..., Iterable[bytes]]


def serialized(app: WsgiApp) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))  # the whole body, inside the lock

    return wsgi


def light_transactions() -> None:
    """Make moto's TransactWriteItems back up the items it writes, not whole tables."""
    import copy

    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    whole_table_copy = DynamoDBBackend.transact_write_items
    Saved = tuple[Table, DynamoType, DynamoType | None, Any]

    def save(backend: DynamoDBBackend, entry: dict[str, Any]) -> Saved:
        op = next(iter(entry.values()))
        table = backend.get_table(op["TableName"])
        key = op["Key"] if "Key" in op else op["Item"]
        hash_key = DynamoType(key[table.hash_key_attr])
        range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        return table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))

    def put_back(
        table: Table, hash_key: DynamoType, range_key: DynamoType | None, item: Any
    ) -> None:
        if range_key is None:
            table.items.pop(hash_key, None)
            if item is not None:
                table.items[hash_key] = item
            return
        table.items[hash_key].pop(range_key, None)
        if item is not None:
            table.items[hash_key][range_key] = item

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        try:
            # a ConditionCheck writes nothing: its item needs no copy
            saved = [save(self, e) for e in transact_items if "ConditionCheck" not in e]
        except Exception:  # malformed: moto reports it in its own words
            return whole_table_copy(self, transact_items)
        Table.__deepcopy__ = lambda table, memo: table  # type: ignore[attr-defined]
        try:
            return whole_table_copy(self, transact_items)
        except BaseException:
            for table, hash_key, range_key, item in reversed(saved):
                put_back(table, hash_key, range_key, item)
            raise
        finally:
            del Table.__deepcopy__  # type: ignore[attr-defined]

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def partition_queries() -> None:
    """Make moto's Query on a table's key read that partition, not every item of the table.

    moto answers it by sorting the whole table and filtering on the partition key: each load of
    a project cost O(table size), so a reconcile pass over N projects of a table that only grows
    (the test suite's, a long local run's) cost O(N x table). Handing it just the partition's
    items gives the same answer; index queries keep moto's own path."""
    from moto.dynamodb.models.table import Table

    whole_table_query = Table.query
    signature = inspect.signature(whole_table_query)

    def query(self: Table, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        # By name, however moto's backend passes it (positionally today).
        bound = signature.bind(self, hash_key, *args, **kwargs).arguments
        index_name = bound.get("index_name")
        if index_name is not None or hash_key is None:
            return whole_table_query(self, hash_key, *args, **kwargs)
        partition = self.items.get(hash_key)  # .get: the defaultdict must not grow a partition
        if partition is None:
            items = []
        elif self.range_key_attr:
            items = sorted(partition.values(), key=lambda item: item.range_key)
        else:
            items = [partition]
        self.all_items = lambda: items  # type: ignore[method-assign]
        try:
            return whole_table_query(self, hash_key, *args, **kwargs)
        finally:
            del self.all_items

    Table.query = query  # type: ignore[method-assign]


def listed_modules_once() -> None:
    """moto's dispatcher lists its package directory (a listdir and ~200 isdir calls) to route
    every request: a tenth of the server's time. The directory does not change while it runs."""
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


#: The attribute of an update expression's tree (its root) that keeps the text it was parsed
#: from: the tree is moto's parse of that text alone, so the text stands for it.
PARSED_FROM = "mvpipe_parsed_from"


def expressions_parsed_once() -> None:
    """Parse each distinct update expression once, and each condition's text once.

    A transaction's update is parsed by moto's request handler (to check its names), by the
    transaction and again by the update it runs, and every claim or record of a scene sends
    the same texts as the one before (pynamodb writes placeholders, `#0 = :0`): only their
    values differ. An update expression's syntax tree depends only on its text, and moto never
    changes it (its validator works on a copy), so the latest few are kept by their text. A
    condition's tree binds the request's names and values in as it is parsed, so what is kept
    by its text is its shape (`_ConditionShape`), bound to each request's names and values."""
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import (  # type: ignore[attr-defined]
        UpdateExpressionParser,
    )

    parse_condition = ConditionExpressionParser.parse
    parse_update = UpdateExpressionParser.make.__func__
    shapes: _Latest[_ConditionShape] = _Latest()
    bound: _Latest[tuple[Any, _ConditionShape]] = _Latest()
    updates: _Latest[Any] = _Latest()

    def parse(self: ConditionExpressionParser) -> Any:
        text = self.condition_expression
        if not text:
            return parse_condition(self)
        # The request's own repeats (a transaction's item is parsed three times) take the
        # operator tree bound the first time: moto never changes it.
        key = repr((text, self.expression_attribute_names, self.expression_attribute_values))
        hit = bound.get(key)
        if hit is not None:
            hit[1].report_found(self)
            return hit[0]
        shape = shapes.get(text)
        if shape is None:
            try:
                shape = _ConditionShape(text, parse_condition)
            except Exception:  # an invalid expression fails in moto's own words, each time
                return parse_condition(self)
            shapes.put(text, shape)
        op = shape.bind(self)
        bound.put(key, (op, shape))
        return op

    def make(cls: type, expression: str) -> Any:
        tree = updates.get(expression)
        if tree is None:
            tree = parse_update(cls, expression)
            setattr(tree, PARSED_FROM, expression)  # copies keep it (`update_checks_passed_once`)
            updates.put(expression, tree)
        return tree

    ConditionExpressionParser.parse = parse  # type: ignore[method-assign]
    UpdateExpressionParser.make = classmethod(make)


class _ConditionShape:
    """A condition expression parsed by moto's parser with each placeholder left unresolved.

    moto's parse depends on the request's names and values only where it looks a placeholder
    up (the first one missing raises there); the rest (its syntax, reserved words, function
    arguments' kinds, and the names and values it reports found) depends on the text alone.
    `bind` looks the placeholders up in the order moto's parse does, puts the answers in the
    kept syntax tree, and builds the operator tree from it with moto's own code."""

    def __init__(self, text: str, parse: Callable[[Any], Any]) -> None:
        """Parse `text` with `parse`, moto's own parse (not the server's patch of it)."""
        from moto.dynamodb.comparisons import ConditionExpressionParser

        lookups: list[tuple[bool, str]] = []  # (is a value, placeholder), in moto's order

        class Unresolved(ConditionExpressionParser):
            def _lookup_expression_attribute_value(self, name: str) -> Any:
                lookups.append((True, name))
                return name

            def _lookup_expression_attribute_name(self, name: str) -> str:
                lookups.append((False, name))
                return name

            def _make_op_condition(self, node: Any) -> Any:
                return node  # the checked syntax tree, before any value is used

        parser = Unresolved(text, None, None)
        self.tree = parse(parser)
        self.lookups = lookups
        self.names_found = list(parser.expr_attr_names_found)
        self.values_found = list(parser.expr_attr_values_found)
        self.value_kind = ConditionExpressionParser.Kind.EXPRESSION_ATTRIBUTE_VALUE
        self.identifier = ConditionExpressionParser.Nonterminal.IDENTIFIER

    def bind(self, parser: Any) -> Any:
        """What `parser.parse()` returns (and reports found) for this text."""
        values: dict[str, Any] = {}
        names: dict[str, Any] = {}
        for is_value, name in self.lookups:
            if is_value:
                values[name] = parser._lookup_expression_attribute_value(name)
            else:
                names[name] = parser._lookup_expression_attribute_name(name)
        tree = self._bound(self.tree, values, names)
        self.report_found(parser)
        return parser._make_op_condition(tree)

    def report_found(self, parser: Any) -> None:
        """The names and values a parse reports found (moto checks them against the request's)."""
        parser.expr_attr_names_found.extend(self.names_found)
        parser.expr_attr_values_found.extend(self.values_found)

    def _bound(self, node: Any, values: dict[str, Any], names: dict[str, Any]) -> Any:
        nonterminal, kind, text, value, children = node
        if kind == self.value_kind:
            value = values[text]
        elif nonterminal == self.identifier and text.startswith("#"):
            value = names[text]
        elif not children:
            return node
        else:
            children = [self._bound(child, values, names) for child in children]
        return type(node)(nonterminal, kind, text, value, children)


def update_trees_copied_by_pickle() -> None:
    """Copy an update expression's syntax tree for its validator by a pickle round trip.

    moto's validator rewrites the tree it validates, so it works on a `deepcopy` of the kept
    one: a sixth of an update's time, in Python, node by node. Pickle copies the same objects
    (the same `__reduce_ex__` state, shared and cyclic references kept) in C, several times
    faster. Anything else moto's validators copy (a value a function reads), and a tree that
    does not pickle, keeps `deepcopy`."""
    import copy
    import pickle

    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import Node  # type: ignore[attr-defined]

    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        if memo is None and isinstance(value, Node):
            try:
                return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
            except Exception:
                pass
        return copy.deepcopy(value, memo)

    validators.deepcopy = deepcopy  # type: ignore[assignment]


def traversals_dispatched_by_type() -> None:
    """Find the handler of each node of moto's tree traversals by the node's class, once.

    An update's validation runs its traversers over the tree: at every node moto asks
    `isinstance` of the abstract `Node` class (through `ABCMeta`), builds the traverser's
    `_processing_map()` (a new dict of bound methods) twice and matches the node against it.
    The answer depends only on the node's class and the traverser (nothing registers virtual
    subclasses), so it is kept by class: the same visit, in the same order, handled by the
    same method, without the repeated questions."""
    from moto.dynamodb.parsing.ast_nodes import (  # type: ignore[attr-defined]
        DepthFirstTraverser,
        Node,
    )

    is_node: dict[type, bool] = {}

    def handler(self: Any, kind: type) -> Callable[[Any], Any] | None:
        """The traverser's handler of a node of class `kind`: moto's first match, in order."""
        handlers: dict[type, Callable[[Any], Any] | None]
        handlers = self.__dict__.setdefault("_handlers_by_class", {})
        if kind not in handlers:
            handlers[kind] = next(
                (
                    processor
                    for class_key, processor in self._processing_map().items()
                    if issubclass(kind, class_key)
                ),
                None,
            )
        return handlers[kind]

    def traverse_node_recursively(self: Any, node: Any, child_id: int = -1) -> Any:
        kind = type(node)
        node_kind = is_node.get(kind)
        if node_kind is None:
            node_kind = is_node[kind] = issubclass(kind, Node)
        if not node_kind:
            return node
        parent_node = node.parent
        if node.children is not None:
            for i, child_node in enumerate(node.children):
                self.pre_processing_of_child(node, i)
                self.traverse_node_recursively(child_node, i)
        try:
            process = self._handlers_by_class[kind]
        except (AttributeError, KeyError):
            process = handler(self, kind)
        if process is not None:
            node = process(node)
            node.parent = parent_node
            if parent_node:
                parent_node.children[child_id] = node
        return node

    DepthFirstTraverser.traverse_node_recursively = traverse_node_recursively


def update_checks_passed_once() -> None:
    """Run an update's checks that depend on its expression alone once per expression.

    moto's update validator starts with three traversals that read only the expression's tree,
    its names and the table's key attributes (at most one ADD, REMOVE and SET clause; no path
    set twice; no key attribute updated), each at every nested level of the tree: about half
    of the validation of the claim's update, the same answer every time. A request whose
    expression, names and key attributes passed them lately skips them; anything else runs
    them (and an expression that fails them fails each time, in moto's words). The tree is
    known by the text it was parsed from (`expressions_parsed_once` marks it, and the copy
    validated keeps the mark); a tree without the mark is checked every time."""
    from moto.dynamodb.parsing import validators

    own_processors = validators.UpdateExpressionValidator.get_ast_processors
    static = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    passed: _Latest[bool] = _Latest()

    class PassedOnce:
        """Moto's static checks, as one traverser that runs them for an unseen request."""

        def __init__(self, checks: list[Any], names: Any, key_attributes: Any) -> None:
            self.checks = checks
            self.names = names
            self.key_attributes = key_attributes

        def traverse(self, node: Any) -> Any:
            text = getattr(node, PARSED_FROM, None)
            key = None if text is None else repr((text, self.names, self.key_attributes))
            if key is None or passed.get(key) is None:
                for check in self.checks:
                    node = check.traverse(node)
                if key is not None:
                    passed.put(key, True)
            return node

    def get_ast_processors(self: Any) -> list[Any]:
        processors: list[Any] = own_processors(self)
        first = 0
        while first < len(processors) and type(processors[first]) in static:
            first += 1
        if first == 0:
            return processors
        names = self.expression_attribute_names
        checks = PassedOnce(processors[:first], names, self.table.table_key_attrs)
        return [checks, *processors[first:]]

    validators.UpdateExpressionValidator.get_ast_processors = get_ast_processors  # type: ignore[method-assign]


T = TypeVar("T")


class _Latest(Generic[T]):
    """The last `size` values put, by key (a request's repeats hit; nothing grows)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: str, value: T) -> None:
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)


def handler_methods_listed_once() -> None:
    """moto lists a handler class's methods (`inspect.getmembers`) on every request to find
    the action's; a class's methods do not change while the server runs."""
    from moto.core import responses

    responses.method_names_from_class = functools.cache(responses.method_names_from_class)


def dynamodb_answered_directly(app: WsgiApp) -> WsgiApp:
    """Hand a DynamoDB request straight to moto's DynamoDB handler, as moto's app does after
    it routes it (by its `X-Amz-Target`) through its domain dispatcher and a Flask app: that
    routing was about a tenth of the server's time for a small request. Every other request
    (S3, DynamoDB Streams, moto's own API) keeps moto's route."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.moto_server.werkzeug_app import BackendRequest
    from werkzeug.wrappers import Response

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(_DYNAMODB_TARGET):
            return app(environ, start_response)
        request = BackendRequest(environ)
        status, headers, body = DynamoHandler.dispatch(
            request, request.raw_url, dict(request.headers)
        )
        return Response(body, status=status, headers=headers)(environ, start_response)

    return wsgi


#: The `X-Amz-Target` prefix of DynamoDB's current API (its Streams' is `DynamoDBStreams_`,
#: its 2011 API's `DynamoDB_20111205.`: both keep moto's route).
_DYNAMODB_TARGET = "DynamoDB_20120810."


def dynamodb_answers_written_directly() -> None:
    """Write the JSON of a plain DynamoDB answer (items, counts, keys) as it is.

    moto's answer is already DynamoDB's wire format (`DynamoResult`); its serializer then
    walks the operation's output shape from botocore's model, attribute by attribute, to write
    the same JSON: about a seventh of the server's time for a small request. `plain_answer`
    writes it with `json.dumps` for the item calls, queries and transactions, binary values
    base64-encoded as the serializer does; errors and every other answer keep moto's path."""
    from moto.dynamodb.responses import DynamoHandler

    serialized = DynamoHandler.serialized

    def answer(self: DynamoHandler, result: Any) -> Any:
        try:
            body = plain_answer(self._get_action(), result)
        except TypeError:  # a value JSON cannot hold: moto's serializer knows its shape
            body = None
        if body is None:
            return serialized(self, result)
        return 200, {"Content-Type": _JSON_1_0, **self.response_headers}, body

    DynamoHandler.serialized = answer  # type: ignore[method-assign,assignment]


def plain_answer(action: str, result: Any) -> str | None:
    """The body of a successful `action` answering `result` (moto's `ActionResult`), or None
    when moto's serializer must write it."""
    from moto.core.responses import ActionResult
    from moto.dynamodb.responses import DynamoResult

    if action not in _PLAIN_ACTIONS or type(result) not in (ActionResult, DynamoResult):
        return None
    value = result.result
    if not isinstance(value, dict) or not value.keys() <= _PLAIN_FIELDS:
        return None
    return json.dumps({k: v for k, v in value.items() if v is not None}, default=_base64)


def _base64(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"not a DynamoDB value: {type(value).__name__}")


_JSON_1_0 = "application/x-amz-json-1.0"
_PLAIN_ACTIONS = frozenset(
    {"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "TransactWriteItems"}
)
#: Their answers' fields: items and their keys as DynamoDB's JSON, counts, and the (empty)
#: capacity and metrics moto fills in.
_PLAIN_FIELDS = frozenset(
    {
        "Item",
        "Attributes",
        "Items",
        "Count",
        "ScannedCount",
        "LastEvaluatedKey",
        "ConsumedCapacity",
        "ItemCollectionMetrics",
    }
)


def main() -> None:
    """Serve moto's app over HTTP/1.1 with kept-alive connections, as DynamoDB and S3 do.

    werkzeug's server (moto's own) closes the connection after every answer, so each store
    call of a worker opened a new TCP connection: about a fifth of the client's CPU for a small
    call. `http_front` keeps them open; it runs the app on its one thread, which serializes
    requests as `serialized` does."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from mvpipe.devstack.http_front import serve
    from mvpipe.devstack.outages import switchable

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    light_transactions()
    partition_queries()
    listed_modules_once()
    expressions_parsed_once()
    update_trees_copied_by_pickle()
    traversals_dispatched_by_type()
    update_checks_passed_once()
    handler_methods_listed_once()
    dynamodb_answers_written_directly()
    moto = serialized(dynamodb_answered_directly(DomainDispatcherApplication(create_backend_app)))
    app = switchable(moto)  # a drill's outage (`outages`)
    serve(
        app,
        args.host,
        args.port,
        lambda: print(f"state server on http://{args.host}:{args.port}", flush=True),
    )


if __name__ == "__main__":
    main()
