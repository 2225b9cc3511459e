"""http_api: the route key and path parameters of an HTTP API (payload 2.0) event, and the JSON answers."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from usage_engine.http_api import json_error, json_response, path_parameter, route_of

ROUTE = "GET /users/{userId}/meters"


def event(**fields: Any) -> dict[str, Any]:
    return {"version": "2.0", "rawPath": "/users/u-1/meters", **fields}


@pytest.mark.parametrize(
    ("fields", "route"),
    [
        ({"routeKey": ROUTE}, ROUTE),
        ({"routeKey": "$default"}, "$default"),
        ({}, None),  # not an HTTP API event (a direct invoke, a schedule)
        ({"routeKey": None}, None),
        ({"routeKey": 42}, None),
        ({"routeKey": ["GET /x"]}, None),
    ],
)
def test_route_of(fields: dict[str, Any], route: str | None) -> None:
    assert route_of(event(**fields)) == route


@pytest.mark.parametrize(
    ("parameters", "value"),
    [
        ({"userId": "u-1"}, "u-1"),
        ({"userId": "u-1", "meterId": "m-9"}, "u-1"),
        ({"userId": ""}, ""),
        # API Gateway has decoded the path already; decoding again would turn %2F into a path separator.
        ({"userId": "a%2Fb"}, "a%2Fb"),
        ({"meterId": "m-9"}, None),  # another parameter only
        ({}, None),
        ({"userId": None}, None),
        ({"userId": 7}, None),
        ({"userId": ["u-1"]}, None),
        ({"userId": {"id": "u-1"}}, None),
    ],
)
def test_path_parameter_values(parameters: dict[str, Any], value: str | None) -> None:
    assert path_parameter(event(pathParameters=parameters), "userId") == value


@pytest.mark.parametrize("parameters", [None, "userId=u-1", ["u-1"], 3])
def test_path_parameters_that_are_not_a_mapping_give_none(parameters: Any) -> None:
    assert path_parameter(event(pathParameters=parameters), "userId") is None


def test_an_event_without_path_parameters_gives_none() -> None:
    # Payload 2.0 leaves the key out for a route without parameters.
    assert path_parameter(event(), "userId") is None


def test_path_parameters_may_be_any_mapping() -> None:
    assert path_parameter(event(pathParameters=MappingProxyType({"userId": "u-1"})), "userId") == "u-1"


def test_json_response_is_a_complete_payload_2_0_answer() -> None:
    assert json_response(200, {"meters": [{"id": "m-1", "value": 3}], "next": None}) == {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": '{"meters":[{"id":"m-1","value":3}],"next":null}',
        "isBase64Encoded": False,
    }


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"a": 1, "b": [1, 2.5, True]}, '{"a":1,"b":[1,2.5,true]}'),
        ([], "[]"),
        ("text", '"text"'),
        (None, "null"),
        (0, "0"),
        ({"name": "Zoë ✓", "quote": '"\\'}, '{"name":"Zo\\u00eb \\u2713","quote":"\\"\\\\"}'),
    ],
)
def test_json_response_body_is_compact_and_parses_back(body: Any, text: str) -> None:
    assert json_response(200, body)["body"] == text
    assert json.loads(text) == body


def test_json_response_adds_the_callers_headers() -> None:
    extra = {"Cache-Control": "no-store"}
    response = json_response(201, {}, extra)
    assert response["statusCode"] == 201
    assert response["headers"] == {"Content-Type": "application/json", "Cache-Control": "no-store"}
    assert extra == {"Cache-Control": "no-store"}, "the caller's mapping is left as it was"


def test_a_callers_content_type_wins() -> None:
    response = json_response(400, {}, {"Content-Type": "application/problem+json"})
    assert response["headers"] == {"Content-Type": "application/problem+json"}


def test_each_response_has_its_own_headers() -> None:
    first = json_response(200, {})
    first["headers"]["X-Changed"] = "yes"
    assert json_response(200, {})["headers"] == {"Content-Type": "application/json"}


def test_a_body_json_cannot_encode_is_an_error_not_a_garbled_answer() -> None:
    with pytest.raises(TypeError):
        json_response(200, {"when": object()})


def test_json_error_shape_without_retry_after() -> None:
    assert json_error(404, "MeterNotFound", "no meter m-1") == {
        "statusCode": 404,
        "headers": {"Content-Type": "application/json"},
        "body": '{"error":{"code":"MeterNotFound","message":"no meter m-1"}}',
        "isBase64Encoded": False,
    }


@pytest.mark.parametrize(("retry_after", "header"), [("30", "30"), ("0", "0"), ("", None), (None, None)])
def test_json_error_has_retry_after_only_when_given(retry_after: str | None, header: str | None) -> None:
    response = json_error(503, "Unavailable", "try later", retry_after=retry_after)
    assert response["statusCode"] == 503
    assert response["headers"].get("Retry-After") == header
    assert ("Retry-After" in response["headers"]) is (header is not None)
    assert response["headers"]["Content-Type"] == "application/json"
    assert json.loads(response["body"]) == {"error": {"code": "Unavailable", "message": "try later"}}


def test_json_error_message_is_escaped_not_spliced() -> None:
    message = 'bad "userId": {"x": 1}\n'
    body = json.loads(json_error(400, "BadRequest", message)["body"])
    assert body == {"error": {"code": "BadRequest", "message": message}}
