"""The local state server's transactions: a cancelled one changes nothing, as in DynamoDB."""

from __future__ import annotations

import base64
import http.client
import json
import uuid
from urllib.parse import urlparse

import boto3
import botocore.exceptions
import pytest
from moto.core.responses import ActionContext, ActionResult
from moto.core.serialize import get_serializer_class
from moto.core.utils import get_service_model
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.responses import DynamoHandler, DynamoResult

from mvpipe.devstack.localstack import LocalStack
from mvpipe.devstack.state_server import _Latest, plain_answer
from tests.helpers import create_key_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dynamodb(stack: LocalStack):  # type: ignore[no-untyped-def]
    client = boto3.client("dynamodb", endpoint_url=stack.env["MVPIPE_DYNAMODB_ENDPOINT"])
    name = f"txn-{uuid.uuid4().hex[:8]}"
    create_key_table(client, name)
    yield client, name
    client.delete_table(TableName=name)


def key(sk: str) -> dict:
    return {"PK": {"S": "P"}, "SK": {"S": sk}}


def test_a_cancelled_transaction_leaves_every_item_as_it_was(dynamodb) -> None:  # type: ignore[no-untyped-def]
    client, table = dynamodb
    client.put_item(TableName=table, Item={**key("a"), "n": {"N": "1"}})
    client.put_item(TableName=table, Item={**key("other"), "n": {"N": "7"}})
    client.put_item(TableName=table, Item={**key("gate"), "open": {"BOOL": False}})
    with pytest.raises(client.exceptions.TransactionCanceledException):
        client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": table,
                        "Key": key("a"),
                        "UpdateExpression": "SET n = :two",
                        "ExpressionAttributeValues": {":two": {"N": "2"}},
                    }
                },
                {"Put": {"TableName": table, "Item": {**key("new"), "n": {"N": "3"}}}},
                {"Delete": {"TableName": table, "Key": key("other")}},
                {
                    "ConditionCheck": {
                        "TableName": table,
                        "Key": key("gate"),
                        "ConditionExpression": "#o = :yes",
                        "ExpressionAttributeNames": {"#o": "open"},
                        "ExpressionAttributeValues": {":yes": {"BOOL": True}},
                    }
                },
            ]
        )
    items = client.query(
        TableName=table,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": {"S": "P"}},
    )["Items"]
    assert {i["SK"]["S"]: i.get("n", {}).get("N") for i in items} == {
        "a": "1",
        "gate": None,
        "other": "7",
    }


def test_a_committed_transaction_applies_every_write(dynamodb) -> None:  # type: ignore[no-untyped-def]
    client, table = dynamodb
    client.put_item(TableName=table, Item={**key("b"), "n": {"N": "1"}})
    client.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": table,
                    "Key": key("b"),
                    "UpdateExpression": "SET n = n + :one",
                    "ConditionExpression": "n = :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            },
            {"Put": {"TableName": table, "Item": {**key("c"), "n": {"N": "5"}}}},
        ]
    )
    got = client.get_item(TableName=table, Key=key("b"))["Item"]["n"]["N"]
    assert got == "2"
    assert client.get_item(TableName=table, Key=key("c"))["Item"]["n"]["N"] == "5"


def test_a_client_connection_stays_open_between_requests(stack: LocalStack) -> None:
    """As with DynamoDB and S3, a client's calls reuse one connection (a new one per call cost
    a worker about a fifth of a small call's CPU)."""
    port = urlparse(stack.env["MVPIPE_S3_ENDPOINT"]).port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sockets = []
    for _ in range(3):
        connection.request("GET", "/")  # S3 ListBuckets
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert connection.sock is not None, "the server closed the connection"
        sockets.append(connection.sock)
    connection.close()
    assert all(s is sockets[0] for s in sockets)


def test_a_query_on_the_key_answers_from_its_partition_alone(dynamodb) -> None:  # type: ignore[no-untyped-def]
    """The server reads a key's partition for a Query (moto sorted the whole table for each):
    the answers are still DynamoDB's, in key order, by condition, reversed, paged, filtered."""
    client, table = dynamodb
    for pk in ("Q1", "Q2", "Q3"):
        for sk in ("s#3", "s#1", "meta", "s#2"):
            item = {"PK": {"S": pk}, "SK": {"S": sk}, "n": {"N": str(len(sk))}}
            client.put_item(TableName=table, Item=item)

    def query(condition: str = "PK = :p", values: dict | None = None, **extra: object) -> list[str]:
        found = client.query(
            TableName=table,
            KeyConditionExpression=condition,
            ExpressionAttributeValues={":p": {"S": "Q2"}, **(values or {})},
            **extra,
        )
        return [f"{i['PK']['S']}/{i['SK']['S']}" for i in found["Items"]]

    assert query() == ["Q2/meta", "Q2/s#1", "Q2/s#2", "Q2/s#3"]
    prefix = "PK = :p AND begins_with(SK, :s)"
    after = {":s": {"S": "s#"}}
    assert query(prefix, after) == ["Q2/s#1", "Q2/s#2", "Q2/s#3"]
    assert query(prefix, after, ScanIndexForward=False) == ["Q2/s#3", "Q2/s#2", "Q2/s#1"]
    first = client.query(
        TableName=table,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": {"S": "Q2"}},
        Limit=3,
    )
    assert [i["SK"]["S"] for i in first["Items"]] == ["meta", "s#1", "s#2"]
    rest = client.query(
        TableName=table,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": {"S": "Q2"}},
        ExclusiveStartKey=first["LastEvaluatedKey"],
    )
    assert [i["SK"]["S"] for i in rest["Items"]] == ["s#3"]
    assert query(values={":four": {"N": "4"}}, FilterExpression="n = :four") == ["Q2/meta"]
    assert query(values={":p": {"S": "absent"}}) == []


def new_table(client, **schema: object) -> str:  # type: ignore[no-untyped-def]
    name = f"part-{uuid.uuid4().hex[:8]}"
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **schema)
    return name


def test_a_query_on_a_table_without_a_sort_key_answers_its_one_item(stack: LocalStack) -> None:
    """A table keyed by its partition key alone keeps one item per key (not a partition of
    items): a Query answers that item, and a Query on an absent key adds nothing to the table
    (a partition grown empty would be counted and scanned as an item)."""
    client = boto3.client("dynamodb", endpoint_url=stack.env["MVPIPE_DYNAMODB_ENDPOINT"])
    table = new_table(
        client,
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"}],
    )
    try:
        for pk in ("H1", "H2"):
            client.put_item(TableName=table, Item={"PK": {"S": pk}, "n": {"N": pk[1]}})

        def query(pk: str) -> list[tuple[str, str]]:
            found = client.query(
                TableName=table,
                KeyConditionExpression="PK = :p",
                ExpressionAttributeValues={":p": {"S": pk}},
            )
            return [(i["PK"]["S"], i["n"]["N"]) for i in found["Items"]]

        assert query("H2") == [("H2", "2")]
        assert query("absent") == []
        assert client.describe_table(TableName=table)["Table"]["ItemCount"] == 2
        scanned = client.scan(TableName=table)["Items"]
        assert sorted(i["PK"]["S"] for i in scanned) == ["H1", "H2"]
    finally:
        client.delete_table(TableName=table)


def test_a_query_on_an_index_answers_across_partitions(stack: LocalStack) -> None:
    """An index's key is not the table's: its Query reads every partition (moto's own path),
    in the index's sort order, reversed and paged as DynamoDB answers."""
    client = boto3.client("dynamodb", endpoint_url=stack.env["MVPIPE_DYNAMODB_ENDPOINT"])
    strings = ("PK", "SK", "G", "GS")
    table = new_table(
        client,
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in strings],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-g",
                "KeySchema": [
                    {"AttributeName": "G", "KeyType": "HASH"},
                    {"AttributeName": "GS", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    try:
        rows = [("A", "open", "3"), ("B", "done", "1"), ("C", "open", "1"), ("D", "open", "2")]
        for pk, g, gs in rows:
            item = {"PK": {"S": pk}, "SK": {"S": "meta"}, "G": {"S": g}, "GS": {"S": gs}}
            client.put_item(TableName=table, Item=item)

        def query(g: str, **extra: object) -> dict:  # type: ignore[type-arg]
            return client.query(
                TableName=table,
                IndexName="by-g",
                KeyConditionExpression="G = :g",
                ExpressionAttributeValues={":g": {"S": g}},
                **extra,
            )

        def keys(answer: dict) -> list[str]:  # type: ignore[type-arg]
            return [i["PK"]["S"] for i in answer["Items"]]

        assert keys(query("open")) == ["C", "D", "A"]
        assert keys(query("open", ScanIndexForward=False)) == ["A", "D", "C"]
        assert keys(query("done")) == ["B"]
        assert keys(query("absent")) == []
        first = query("open", Limit=2)
        assert keys(first) == ["C", "D"]
        assert keys(query("open", ExclusiveStartKey=first["LastEvaluatedKey"])) == ["A"]
    finally:
        client.delete_table(TableName=table)


def bump(client, table: str, seen: str) -> None:  # type: ignore[no-untyped-def]
    """One transaction adding 1 to `n` if it is `seen`: the same texts each time, new values."""
    client.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": table,
                    "Key": key("r"),
                    "UpdateExpression": "SET #n = #n + :one",
                    "ConditionExpression": "#n = :seen",
                    "ExpressionAttributeNames": {"#n": "n"},
                    "ExpressionAttributeValues": {":one": {"N": "1"}, ":seen": {"N": seen}},
                }
            }
        ]
    )


def test_a_repeated_expression_is_judged_on_its_values_and_the_item_as_it_is(dynamodb) -> None:  # type: ignore[no-untyped-def]
    """The server keeps the expressions it parsed lately: the same condition text with another
    value is judged on that value, the same request again on the item as it is now, and the
    same update expression applies again."""
    client, table = dynamodb
    client.put_item(TableName=table, Item={**key("r"), "n": {"N": "1"}})
    bump(client, table, "1")
    bump(client, table, "2")
    with pytest.raises(client.exceptions.TransactionCanceledException):
        bump(client, table, "2")  # the very request that passed, now stale
    bump(client, table, "3")
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.update_item(
            TableName=table,
            Key=key("r"),
            UpdateExpression="SET #n = #n + :one",
            ConditionExpression="#n = :seen",
            ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":one": {"N": "1"}, ":seen": {"N": "1"}},
        )
    assert client.get_item(TableName=table, Key=key("r"))["Item"]["n"]["N"] == "4"


def test_a_repeated_request_is_checked_as_the_first(dynamodb) -> None:  # type: ignore[no-untyped-def]
    """DynamoDB refuses a request naming an attribute no expression uses: a request sent
    again is checked the same way, not refused (nor waved through) because its condition was
    parsed before."""
    client, table = dynamodb
    client.put_item(TableName=table, Item={**key("g2"), "open": {"BOOL": True}})

    def check(names: dict[str, str]) -> None:
        client.transact_write_items(
            TransactItems=[
                {
                    "ConditionCheck": {
                        "TableName": table,
                        "Key": key("g2"),
                        "ConditionExpression": "#o = :yes",
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": {":yes": {"BOOL": True}},
                    }
                }
            ]
        )

    for _ in range(2):
        check({"#o": "open"})
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError, match="unused"):
            check({"#o": "open", "#x": "x"})


def test_the_latest_parsed_are_kept_and_nothing_more() -> None:
    kept: _Latest[int] = _Latest(size=2)
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # used: now the latest
    kept.put("c", 3)
    assert (kept.get("a"), kept.get("b"), kept.get("c")) == (1, None, 3)


def every_type() -> dict[str, DynamoType]:
    """An item with a value of every DynamoDB type, binary ones as moto holds them (base64)."""
    blob = base64.b64encode(b"\x00\xff").decode()
    values = {
        "PK": {"S": "P"},
        "SK": {"S": "SCENE#001"},
        "n": {"N": "1.50"},
        "empty": {"S": ""},
        "b": {"B": blob},
        "ok": {"BOOL": False},
        "none": {"NULL": True},
        "l": {"L": [{"S": "x"}, {"N": "2"}, {"L": []}]},
        "m": {"M": {"ss": {"SS": ["q", "r"]}, "inner": {"M": {}}}},
        "ns": {"NS": ["1", "2.5"]},
        "bs": {"BS": [blob]},
    }
    return {name: DynamoType(value) for name, value in values.items()}


def key_of(item: dict[str, DynamoType]) -> dict[str, DynamoType]:
    return {"PK": item["PK"], "SK": item["SK"]}


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("GetItem", lambda: DynamoResult({"Item": every_type()})),
        ("GetItem", lambda: DynamoResult({})),
        ("PutItem", lambda: DynamoResult({})),
        ("UpdateItem", lambda: DynamoResult({"Attributes": every_type()})),
        ("DeleteItem", lambda: DynamoResult({"Attributes": every_type()})),
        (
            "Query",
            lambda: DynamoResult(
                {
                    "Items": [every_type(), every_type()],
                    "Count": 2,
                    "ScannedCount": 3,
                    "LastEvaluatedKey": key_of(every_type()),
                }
            ),
        ),
        ("Query", lambda: DynamoResult({"Items": [], "Count": 0, "ScannedCount": 0})),
        (
            "TransactWriteItems",
            lambda: ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}}),
        ),
    ],
)
def test_a_plain_answer_is_the_json_motos_serializer_writes(action: str, result) -> None:  # type: ignore[no-untyped-def]
    """The server writes a plain DynamoDB answer without moto's shape-driven serializer: the
    JSON is the serializer's, value for value (binary values base64, empty strings, lists and
    maps kept)."""
    model = get_service_model("dynamodb")
    serializer = get_serializer_class("dynamodb", "json")
    context = ActionContext(model, model.operation_model(action), serializer, DynamoHandler())
    _, _, motos = result().execute_result(context)
    plain = plain_answer(action, result())
    assert plain is not None
    assert json.loads(plain) == json.loads(motos)


def test_other_answers_are_left_to_motos_serializer() -> None:
    assert plain_answer("DescribeTable", DynamoResult({"Table": {"TableName": "t"}})) is None
    assert plain_answer("GetItem", ActionResult(ValueError("an error"))) is None
    assert plain_answer("Query", DynamoResult({"Items": [], "Unexpected": 1})) is None
