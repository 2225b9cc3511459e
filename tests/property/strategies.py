"""Hypothesis strategies for outside input: arbitrary JSON, and documents that are almost valid."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# No example database: nothing is written into the work tree, and every run starts from the same seeds.
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

MISSING: Any = object()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# RFC 6750 b64token characters: what a bearer token may contain.
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
bearer_tokens = st.builds(
    lambda body, padding: body + "=" * padding, st.text(TOKEN_ALPHABET, min_size=1, max_size=80), st.integers(0, 2)
)
non_blank_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field that is usually valid, sometimes any JSON value, sometimes absent."""
    return st.one_of(valid, valid, json_values, st.just(MISSING))


def document(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with these fields (each possibly broken or missing) and maybe unknown extra keys."""
    return st.builds(
        lambda values, extra: {**extra, **{k: v for k, v in values.items() if v is not MISSING}},
        st.fixed_dictionaries(fields),
        st.dictionaries(st.text(max_size=8).filter(lambda k: k not in fields), json_values, max_size=2),
    )


def dumps(value: Any) -> str:
    return json.dumps(value)


def outside_text(*documents: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """What can arrive from outside as text: anything, any JSON, or a near-valid document."""
    return st.one_of(st.text(max_size=60), json_values.map(dumps), *[d.map(dumps) for d in documents])


def attempt(parse: Any, expected: type[Exception]) -> tuple[Any, Exception | None]:
    """(result, None) or (None, the expected error); any other exception propagates and fails the test."""
    try:
        return parse(), None
    except expected as error:
        return None, error
