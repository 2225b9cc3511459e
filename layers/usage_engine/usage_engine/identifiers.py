"""Identifiers that arrive from outside (meter events) and end up in Usage Engine requests.

Each has a strict alphabet and length, checked before any request is built. A meter id becomes a path segment,
and `quote()` leaves `.` and `..` as they are (dots are unreserved), which requests/urllib3 then remove as
dot segments: `{"meterId": ".."}` would PATCH the API root. Those two values are refused for every field.
Error messages name the field and the rule, never the value (it is outside input, possibly hostile or huge).
"""

from __future__ import annotations

import dataclasses
import re

from .errors import InvalidIdentifierError

__all__ = [
    "DOMAIN",
    "EXTERNAL_REF",
    "METER_ID",
    "METER_TYPE_ID",
    "USER_ID",
    "IdentifierRule",
    "InvalidIdentifierError",
    "check_identifier",
]

DOT_SEGMENTS = frozenset({".", ".."})


@dataclasses.dataclass(frozen=True)
class IdentifierRule:
    field: str
    characters: str  # a regular expression character class body, e.g. r"A-Za-z0-9._~\-"
    max_length: int
    described: str  # the characters in words, for the error message
    pattern: re.Pattern[str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(f"[{self.characters}]{{1,{self.max_length}}}"))

    @property
    def rule(self) -> str:
        return f"1-{self.max_length} characters of {self.described}, not '.' or '..'"


# RFC 3986 unreserved characters: a path segment that needs no percent-encoding at all.
_UNRESERVED = r"A-Za-z0-9._~\-"
_UNRESERVED_WORDS = "letters, digits and . _ ~ -"

METER_ID = IdentifierRule("meterId", _UNRESERVED, 128, _UNRESERVED_WORDS)
DOMAIN = IdentifierRule("domain", _UNRESERVED, 128, _UNRESERVED_WORDS)
# References of upstream systems often read "crm:account:42" or "user@tenant". No "/": the meter state table
# keys a meter as "<domain>/<externalRef>", and a domain has no "/" either, so that key is unambiguous.
EXTERNAL_REF = IdentifierRule("externalRef", _UNRESERVED + ":@", 256, "letters, digits and . _ ~ - : @")
METER_TYPE_ID = IdentifierRule("meterTypeId", _UNRESERVED, 128, _UNRESERVED_WORDS)
# The alphabet GET /users/{userId}/meters accepts (functions/meter_query): a meter created for a user can be
# queried by that user id.
USER_ID = IdentifierRule("userId", r"A-Za-z0-9._@:+\-", 128, "letters, digits and . _ @ : + -")


def check_identifier(rule: IdentifierRule, value: object) -> str:
    """`value` if it satisfies `rule`, else InvalidIdentifierError naming the field."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidIdentifierError(rule.field, "must be a non-empty string")
    if len(value) > rule.max_length:
        raise InvalidIdentifierError(rule.field, f"is longer than {rule.max_length} characters")
    if value in DOT_SEGMENTS or not rule.pattern.fullmatch(value):
        raise InvalidIdentifierError(rule.field, f"must be {rule.rule}")
    return value
