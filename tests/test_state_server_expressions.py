"""The state server's expression patches answer as moto does: the same requests, sent over HTTP
with boto3 to the local stack's state server and to moto's own server (no patch), get the same
answers, item for item and error for error.

The patches keep what a request's text alone decides (a condition's parsed shape, an update's
syntax tree and its static checks) and redo what its values and the item decide; the requests
below repeat texts with other values, other names and other items, one after another, so a
kept answer that depended on more than the text would show as a difference."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from mvpipe.devstack.localstack import LocalStack, free_port, port_open, wait_until
from tests.helpers import create_key_table
from tests.processes import stop_group

pytestmark = pytest.mark.integration

Client = Any
Answer = dict[str, Any]


@pytest.fixture(scope="module")
def plain_moto() -> Iterator[str]:
    """moto's own server, as moto ships it: the reference the patched server must match."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(lambda: port_open(port), 60, "moto's own server", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc, timeout=30)


def client_of(endpoint: str) -> Client:
    return boto3.client("dynamodb", endpoint_url=endpoint)


def answer(call: Callable[..., Answer], **request: Any) -> Answer:
    """What a call answers, as the client sees it: the result, or the error's code, message
    and the reasons and item DynamoDB gives back with it."""
    try:
        result = call(**request)
    except botocore.exceptions.ClientError as error:
        body = error.response
        if body["ResponseMetadata"]["HTTPStatusCode"] == 500:
            # moto failed on it (a malformed condition: a ValueError), and its page says so in
            # the words of the route that caught it (Flask's HTML, the server's front a line)
            return {"Error": {"Code": body["Error"]["Code"]}}
        return {
            "Error": body["Error"],
            **{k: body[k] for k in ("CancellationReasons", "Item") if k in body},
        }
    return {k: v for k, v in result.items() if k != "ResponseMetadata"}


def run_on(
    endpoint: str, scenario: Callable[[Client, str], list[Answer]], table: str | None = None
) -> list[Answer]:
    """The scenario's answers on a new table of `endpoint` (named `table`: the same on both
    servers, as answers name it)."""
    client = client_of(endpoint)
    table = table or f"expr-{uuid.uuid4().hex[:8]}"
    create_key_table(client, table)
    try:
        return scenario(client, table)
    finally:
        client.delete_table(TableName=table)


def key(sk: str) -> dict[str, Any]:
    return {"PK": {"S": "P"}, "SK": {"S": sk}}


def n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def conditional_updates(client: Client, table: str) -> list[Answer]:
    """One condition text with new values each time, passing and failing; ALL_NEW / ALL_OLD."""
    answers = [answer(client.put_item, TableName=table, Item={**key("c"), "n": n(1)})]
    for seen in (1, 2, 2, 5, 3):
        answers.append(
            answer(
                client.update_item,
                TableName=table,
                Key=key("c"),
                UpdateExpression="SET #n = #n + :one",
                ConditionExpression="#n = :seen",
                ExpressionAttributeNames={"#n": "n"},
                ExpressionAttributeValues={":one": n(1), ":seen": n(seen)},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        )
    # The same text on another item's attribute, through other names.
    answers.append(answer(client.put_item, TableName=table, Item={**key("d"), "m": n(7)}))
    answers.append(
        answer(
            client.update_item,
            TableName=table,
            Key=key("d"),
            UpdateExpression="SET #n = #n + :one",
            ConditionExpression="#n = :seen",
            ExpressionAttributeNames={"#n": "m"},
            ExpressionAttributeValues={":one": n(1), ":seen": n(7)},
            ReturnValues="UPDATED_OLD",
        )
    )
    answers.append(answer(client.get_item, TableName=table, Key=key("c")))
    return answers


def add_set_remove(client: Client, table: str) -> list[Answer]:
    """ADD, SET (with list_append and if_not_exists), REMOVE and DELETE, each text sent twice."""
    answers = []
    for round_ in range(2):
        for expression, values in (
            ("ADD #c :one, #s :tags", {":one": n(1), ":tags": {"SS": [f"t{round_}"]}}),
            (
                "SET #l = list_append(if_not_exists(#l, :empty), :more), #w = :w",
                {":empty": {"L": []}, ":more": {"L": [n(round_)]}, ":w": {"S": f"w{round_}"}},
            ),
            ("REMOVE #w SET #x = :w", {":w": {"BOOL": bool(round_)}}),
            ("DELETE #s :tags", {":tags": {"SS": ["t0"]}}),
        ):
            names = {
                k: v
                for k, v in {"#c": "c", "#s": "s", "#l": "l", "#w": "w", "#x": "x"}.items()
                if k in expression
            }
            answers.append(
                answer(
                    client.update_item,
                    TableName=table,
                    Key=key("a"),
                    UpdateExpression=expression,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                )
            )
    return answers


def claim(table: str, seen: int, run: str, token: str) -> list[dict[str, Any]]:
    """A claim-shaped transaction (as the store writes one): a check and a conditional update."""
    return [
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": key("META"),
                "ConditionExpression": "#0 = :0",
                "ExpressionAttributeNames": {"#0": "run"},
                "ExpressionAttributeValues": {":0": {"S": run}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Update": {
                "TableName": table,
                "Key": key("s1"),
                "UpdateExpression": "SET #0 = :0, #1 = :1 ADD #2 :2",
                "ConditionExpression": (
                    "(attribute_not_exists (#1) OR #1 <> :1) AND "
                    "(attribute_not_exists (#2) OR #2 < :3)"
                ),
                "ExpressionAttributeNames": {"#0": "status", "#1": "token", "#2": "tries"},
                "ExpressionAttributeValues": {
                    ":0": {"S": "PROCESSING"},
                    ":1": {"S": token},
                    ":2": n(1),
                    ":3": n(seen),
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
    ]


def transactions(client: Client, table: str) -> list[Answer]:
    """Claims one after another: won, refused by either condition, and won again."""
    answers = [answer(client.put_item, TableName=table, Item={**key("META"), "run": {"S": "r1"}})]
    for seen, run, token in (
        (3, "r1", "a"),
        (3, "r1", "a"),
        (3, "r2", "b"),
        (1, "r1", "b"),
        (3, "r1", "c"),
    ):
        items = claim(table, seen, run, token)
        answers.append(answer(client.transact_write_items, TransactItems=items))
        answers.append(answer(client.get_item, TableName=table, Key=key("s1")))
    return answers


def filtered_queries(client: Client, table: str) -> list[Answer]:
    """A query's filter is a condition too: one text, new values."""
    answers = []
    for i in range(4):
        answers.append(answer(client.put_item, TableName=table, Item={**key(f"q{i}"), "v": n(i)}))
    for low, high in ((0, 1), (1, 3), (2, 2), (5, 9)):
        answers.append(
            answer(
                client.query,
                TableName=table,
                KeyConditionExpression="PK = :p",
                FilterExpression="#v BETWEEN :low AND :high OR #v IN (:high)",
                ExpressionAttributeNames={"#v": "v"},
                ExpressionAttributeValues={":p": {"S": "P"}, ":low": n(low), ":high": n(high)},
            )
        )
    return answers


def refused_requests(client: Client, table: str) -> list[Answer]:
    """Malformed or refused expressions, each sent twice, around a valid use of the same text:
    each refusal is moto's own, every time (nothing refused is kept, nothing kept waves a
    refusal through)."""
    answers = [answer(client.put_item, TableName=table, Item={**key("r"), "n": n(1)})]

    def update(expression: str, condition: str | None, names: dict, values: dict) -> Answer:
        request: dict[str, Any] = {
            "TableName": table,
            "Key": key("r"),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        if condition is not None:
            request["ConditionExpression"] = condition
        return answer(client.update_item, **request)

    one = {":one": n(1)}
    cases: list[tuple[str, str | None, dict, dict]] = [
        ("SET #n = #n + :one", "#n = :one AND", {"#n": "n"}, one),  # malformed condition
        ("SET #n = #n + :one", "#n = :missing", {"#n": "n"}, one),  # a value not given
        ("SET #n = #n + :one", "#n = :one", {"#n": "n", "#x": "x"}, one),  # a name unused
        ("SET #n = #n + :one", "#n = :one AND name = :one", {"#n": "n"}, one),  # reserved
        ("SET #n = #n + :one", "((#n = :one))", {"#n": "n"}, one),  # redundant parentheses
        ("SET #n = #n +", None, {"#n": "n"}, {}),  # malformed update
        ("SET #n = :one, #n = :one", None, {"#n": "n"}, one),  # a path set twice
        ("SET #n = :one SET #m = :one", None, {"#n": "n", "#m": "m"}, one),  # two SETs
        ("SET #k = :one", None, {"#k": "SK"}, one),  # a key attribute
        ("SET #k = :one", None, {"#k": "n"}, one),  # the same text, now allowed
        ("SET #k = :one", None, {"#k": "SK"}, one),  # and refused again
        ("SET #n = #n + :one", "#n = :one", {"#n": "n"}, one),  # passes once (n was 1)
    ]
    for expression, condition, names, values in cases:
        for _ in range(2):
            answers.append(update(expression, condition, names, values))
    answers.append(answer(client.get_item, TableName=table, Key=key("r")))
    return answers


SCENARIOS = [conditional_updates, add_set_remove, transactions, filtered_queries, refused_requests]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_the_state_server_answers_as_moto_does(
    stack: LocalStack, plain_moto: str, scenario: Callable[[Client, str], list[Answer]]
) -> None:
    table = f"expr-{uuid.uuid4().hex[:8]}"
    ours = run_on(stack.env["MVPIPE_DYNAMODB_ENDPOINT"], scenario, table)
    motos = run_on(plain_moto, scenario, table)
    assert ours == motos


def test_the_scenarios_meet_what_the_patches_keep(stack: LocalStack) -> None:
    """The comparisons above are only as good as their requests: they pass and fail
    conditions, are refused for each kind of reason, and change items, as intended."""
    conditional = run_on(stack.env["MVPIPE_DYNAMODB_ENDPOINT"], conditional_updates)
    assert [a.get("Error", {}).get("Code") for a in conditional[1:6]] == [
        None,
        None,
        "ConditionalCheckFailedException",
        "ConditionalCheckFailedException",
        None,
    ]
    assert conditional[5]["Attributes"]["n"] == n(4)
    assert conditional[3]["Item"]["n"] == n(3)  # ALL_OLD with the refusal
    assert conditional[7]["Attributes"] == {"m": n(7)}

    claims = run_on(stack.env["MVPIPE_DYNAMODB_ENDPOINT"], transactions)
    outcomes = [a.get("Error", {}).get("Code") for a in claims[1::2]]
    assert outcomes == [None, "TransactionCanceledException", "TransactionCanceledException",
                        "TransactionCanceledException", None]  # fmt: skip
    assert claims[-1]["Item"]["tries"] == n(2)

    refused = run_on(stack.env["MVPIPE_DYNAMODB_ENDPOINT"], refused_requests)
    codes = [a.get("Error", {}).get("Code") for a in refused[1:-1]]
    refusal = "ValidationException"
    assert codes[0::2] == ["500", "500", refusal, refusal, refusal, refusal, refusal, refusal,
                           refusal, None, refusal, None]  # fmt: skip
    assert codes[1::2] == [*codes[0::2][:-1], "ConditionalCheckFailedException"]
    assert len({a["Error"].get("Message") for a in refused[1:19:2]}) == 8  # seven texts, and 500
    assert refused[-1]["Item"]["n"] == n(2)
