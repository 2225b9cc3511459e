"""Usage Metering API helpers over UsageEngineClient. Every path of the API is in this one place.

The meter-types path is not documented publicly: correct METER_TYPES_PATH here if yours differs.

Identifiers are checked (usage_engine.identifiers) before any request is built, and, as a second fence, a
request for one meter is sent only if the URL requests would really send (after its own normalisation,
which removes dot segments) addresses that meter: the collection path plus exactly one segment that decodes
back to the meter id. Anything else raises InvalidIdentifierError (a ValueError) naming the field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests

from .api_client import UsageEngineClient
from .errors import UsageEngineApiError
from .identifiers import (
    DOMAIN,
    EXTERNAL_REF,
    METER_ID,
    METER_TYPE_ID,
    USER_ID,
    InvalidIdentifierError,
    check_identifier,
)

METERS_PATH = "/api/usage-metering/v1/meters"
METER_PATH = METERS_PATH + "/{meter_id}"
METER_TYPES_PATH = "/api/usage-metering/v1/meter-types"

_UNSET: Any = object()


class UsageMeteringApi:
    def __init__(self, client: UsageEngineClient) -> None:
        self._client = client

    @classmethod
    def from_env(cls, connection: str | None = None) -> UsageMeteringApi:
        """Over the container's client of `connection` (None: the default connection; see UsageEngineClient)."""
        return cls(UsageEngineClient.from_env(connection))

    def list_meters(self, **filters: str) -> list[dict[str, Any]]:
        """Meters, filtered by exact field values (e.g. userId="u-1"). Filters go to the API as query
        parameters and are applied again here, in case the API ignores one."""
        body = self._client.get_json(METERS_PATH, params=filters or None)
        meters = _list_of_objects(body, "meters", METERS_PATH)
        return [m for m in meters if all(m.get(k) == v for k, v in filters.items())]

    def get_meter(self, meter_id: str) -> dict[str, Any]:
        path = self._meter_path(meter_id)
        return _object(self._client.get_json(path), path)

    def create_meter(self, *, domain: str, external_ref: str, meter_type_id: str, user_id: str) -> dict[str, Any]:
        body = {
            "domain": check_identifier(DOMAIN, domain),
            "externalRef": check_identifier(EXTERNAL_REF, external_ref),
            "meterTypeId": check_identifier(METER_TYPE_ID, meter_type_id),
            "userId": check_identifier(USER_ID, user_id),
        }
        response = self._client.request("POST", METERS_PATH, json=body)
        return _object(_json(response), METERS_PATH)

    def ensure_meter(
        self, *, domain: str, external_ref: str, meter_type_id: str, user_id: str
    ) -> tuple[dict[str, Any], bool]:
        """Create the meter unless one with this (domain, externalRef) exists: safe to repeat, as SQS's
        at-least-once delivery requires. Returns (meter, created)."""
        existing = self.find_meter(domain=domain, external_ref=external_ref)
        if existing is not None:
            return existing, False
        try:
            return self.create_meter(
                domain=domain, external_ref=external_ref, meter_type_id=meter_type_id, user_id=user_id
            ), True
        except UsageEngineApiError as error:
            if error.status != 409:
                raise
        # Created concurrently (another delivery of the same message) between the lookup and the create.
        existing = self.find_meter(domain=domain, external_ref=external_ref)
        if existing is None:
            raise UsageEngineApiError("POST", METERS_PATH, 409, "conflict, but no meter with that externalRef")
        return existing, False

    def find_meter(self, *, domain: str, external_ref: str) -> dict[str, Any] | None:
        check_identifier(DOMAIN, domain)
        check_identifier(EXTERNAL_REF, external_ref)
        matches = self.list_meters(domain=domain, externalRef=external_ref)
        return matches[0] if matches else None

    def update_meter(
        self, meter_id: str, *, value: float | None = _UNSET, reset_at: str | None = _UNSET
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if value is not _UNSET:
            body["value"] = value
        if reset_at is not _UNSET:
            body["resetAt"] = reset_at
        if not body:
            raise ValueError("update_meter needs value and/or reset_at")
        path = self._meter_path(meter_id)
        response = self._client.request("PATCH", path, json=body)
        return _object(_json(response), path)

    def delete_meter(self, meter_id: str) -> bool:
        """Delete; returns False when it was already gone (a repeated delete is not an error)."""
        path = self._meter_path(meter_id)
        try:
            self._client.request("DELETE", path).close()
        except UsageEngineApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    def list_meter_types(self) -> list[dict[str, Any]]:
        return _list_of_objects(self._client.get_json(METER_TYPES_PATH), "meterTypes", METER_TYPES_PATH)

    def _meter_path(self, meter_id: str) -> str:
        """The path of one meter, refused unless the URL requests would send is that meter's own."""
        check_identifier(METER_ID, meter_id)
        segment = quote(meter_id, safe="")
        path = METER_PATH.format(meter_id=segment)
        collection = _sent_path(self._client.base_url + METERS_PATH)
        sent = _sent_path(self._client.base_url + path)
        own = sent.startswith(collection + "/") and sent[len(collection) + 1 :] == segment
        if not own or "/" in segment or unquote(segment) != meter_id:
            raise InvalidIdentifierError(METER_ID.field, "would send the request to another resource than the meter")
        return path


def _sent_path(url: str) -> str:
    """The path of `url` as requests sends it: prepared, i.e. normalised by urllib3 (dot segments removed)."""
    prepared = requests.Request("GET", url).prepare().url or ""
    return urlsplit(prepared).path


def _json(response: Any) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        raise UsageEngineApiError(
            response.request.method, response.request.path_url, response.status_code, "the answer is not JSON"
        ) from None


def _object(body: Any, path: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise UsageEngineApiError("GET", path, 200, "the answer is not a JSON object")
    return body


def _list_of_objects(body: Any, key: str, path: str) -> list[dict[str, Any]]:
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise UsageEngineApiError("GET", path, 200, f"the answer has no list '{key}'")
    return items
