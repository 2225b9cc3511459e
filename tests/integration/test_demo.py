"""`make demo` tells the refresh -> skip -> refresh story, then a consumer call, then one consumer using two
stacks' connections, and prints no secret."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import pytest

from local import demo
from local.moto_server import MotoServer
from tests.conftest import _fresh_container


@pytest.fixture
def isolated_environment(moto_server: MotoServer) -> Iterator[None]:
    # moto keeps its backends in process memory: the demo's own moto server shares them with the suite's.
    moto_server.reset()
    saved = dict(os.environ)
    _fresh_container()
    yield
    os.environ.clear()
    os.environ.update(saved)
    _fresh_container()
    moto_server.reset()


@pytest.mark.usefixtures("isolated_environment")
def test_demo_story_and_no_secret_in_its_output() -> None:
    out = io.StringIO()
    report = demo.run(out)
    text = out.getvalue()

    assert report.leaks == []
    assert len(report.issued_tokens) == 4  # three by the first stack's IdP, one by the second's
    assert report.client_secret not in text
    assert report.second_client_secret not in text
    for token in report.issued_tokens:
        assert token not in text
    assert '"refreshed": true, "reason": "missing"' in text
    assert '"refreshed": false, "reason": "fresh"' in text
    assert '"refreshed": true, "reason": "expiring"' in text
    assert "HTTP 200" in text
    assert "MeterEventsApplied=3, MeterEventsDeadLettered=1" in text
    assert "dead-lettered: 1 (reason: detail.userId must be a non-empty string)" in text
    assert "batchItemFailures: 0; meters in the Usage Engine: 3" in text
    assert "HTTP 200: 2 meters for user-42" in text
    assert "10/10 containers got HTTP 200; meter_query -> HTTP 200; new IdP requests: 1" in text
    assert "revoke -> recover with one IdP request: yes" in text
    # The second stack: its refresher ran once, and one consumer called both APIs, each with its own token.
    assert "invoke token_refresher with the US stack's environment" in text
    assert "USAGE_ENGINE_US_TOKEN_SECRET_ID=usage-engine-us/token" in text
    assert "-> 3 meters" in text.split("UsageEngineClient.from_env():")[1].splitlines()[0]
    assert "-> 0 meters" in text.split('UsageEngineClient.from_env("us"):')[1].splitlines()[0]
    assert "IdP requests: EU 3, US 1; answers to these calls: EU 1 x HTTP 200, US 1 x HTTP 200" in text
    assert "one consumer, two connections, each call with its own tenant's token: yes" in text
    # The example consumer stack (examples/consumer), configured from the bundle's published parameters.
    assert '{"userId": "user-42"} -> {"userId": "user-42", "meterCount": 2}' in text
    assert "a consumer outside the bundle's template, configured from its published parameters: yes" in text
    assert demo.main.__doc__ is None or "secret" not in demo.main.__doc__
