"""tracing: the X-Ray SDK is opt-in (USAGE_ENGINE_XRAY_SDK=true), a handler is left alone otherwise, and a
setting that cannot work fails at load time with what to do about it."""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import aws_lambda_powertools
import pytest

from usage_engine.errors import ConfigurationError
from usage_engine.tracing import XRAY_SDK_SETTING, handler_tracing, xray_sdk_enabled

SERVICE = "meter-query"


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    if event.get("fail"):
        raise ValueError("handler failed")
    return {"answer": event["n"] * 2}


def test_the_setting_name() -> None:
    # The template sets this name (parameter XRaySdkTracing); a rename here must be one there too.
    assert XRAY_SDK_SETTING == "USAGE_ENGINE_XRAY_SDK"


def test_unset_leaves_the_handler_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(XRAY_SDK_SETTING, raising=False)
    assert not xray_sdk_enabled()
    assert handler_tracing(SERVICE)(handler) is handler


@pytest.mark.parametrize("value", ["false", "", "FALSE", "False", " false ", "  "])
def test_false_or_empty_leaves_the_handler_unchanged(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, value)
    assert not xray_sdk_enabled()
    assert handler_tracing(SERVICE)(handler) is handler


def test_off_needs_no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, "false")
    monkeypatch.setitem(sys.modules, "aws_xray_sdk", None)  # the SDK layer is not deployed
    assert handler_tracing(SERVICE)(handler) is handler


@pytest.mark.parametrize("value", ["true", "TRUE", "True", " true\n"])
def test_true_in_any_case_is_enabled(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, value)
    assert xray_sdk_enabled()


@pytest.mark.parametrize("value", ["yes", "1", "on", "enabled", "Active", "tru", "false,true"])
def test_anything_else_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, value)
    with pytest.raises(ConfigurationError) as caught:
        handler_tracing(SERVICE)
    assert caught.value.variable == XRAY_SDK_SETTING
    assert str(caught.value) == (
        f"environment variable USAGE_ENGINE_XRAY_SDK: must be true or false, not {value.strip().lower()!r}"
    )


def test_a_long_invalid_value_is_cut_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, "x" * 25 + "tail")
    with pytest.raises(ConfigurationError, match=r"not 'x{20}'$"):
        handler_tracing(SERVICE)


def test_true_without_the_sdk_says_how_to_deploy_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, "true")
    monkeypatch.setitem(sys.modules, "aws_xray_sdk", None)  # makes `import aws_xray_sdk` raise ImportError
    with pytest.raises(ConfigurationError) as caught:
        handler_tracing(SERVICE)
    assert caught.value.variable == XRAY_SDK_SETTING
    message = str(caught.value)
    assert message.startswith("environment variable USAGE_ENGINE_XRAY_SDK: is true but the X-Ray SDK is not installed")
    assert "deploy with XRaySdkTracing=Enabled" in message
    assert "aws-xray-sdk" in message
    assert isinstance(caught.value.__cause__, ImportError)


class FakeTracer:
    """Powertools' Tracer as far as handler_tracing uses it: what it was built with and asked to do."""

    instances: ClassVar[list[FakeTracer]] = []

    def __init__(self, service: str | None = None, **kwargs: Any) -> None:
        self.service = service
        self.kwargs = kwargs
        self.capture_kwargs: dict[str, Any] | None = None
        self.decorated: list[Callable[..., Any]] = []
        FakeTracer.instances.append(self)

    def capture_lambda_handler(self, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        self.capture_kwargs = kwargs

        def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
            self.decorated.append(function)

            def traced(event: dict[str, Any], context: object) -> Any:
                return ("traced", function(event, context))

            return traced

        return decorate


@pytest.fixture
def fake_tracer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeTracer]]:
    FakeTracer.instances = []
    monkeypatch.setattr(aws_lambda_powertools, "Tracer", FakeTracer)
    yield FakeTracer
    FakeTracer.instances = []


def test_true_wraps_the_handler_in_powertools_tracer_without_capturing_the_response(
    monkeypatch: pytest.MonkeyPatch, fake_tracer: type[FakeTracer]
) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, "true")
    # Whether or not this venv has the SDK: importable is all handler_tracing asks of it.
    monkeypatch.setitem(sys.modules, "aws_xray_sdk", types.ModuleType("aws_xray_sdk"))
    # Typed as the handler; the fake's wrapper answers a tuple to show it ran.
    traced: Callable[..., Any] = handler_tracing(SERVICE)(handler)
    assert traced is not handler
    assert [(t.service, t.kwargs) for t in fake_tracer.instances] == [(SERVICE, {})]
    tracer = fake_tracer.instances[0]
    # The response can hold a meter's data: it is not copied into the trace.
    assert tracer.capture_kwargs == {"capture_response": False}
    assert tracer.decorated == [handler]
    assert traced({"n": 21}, None) == ("traced", {"answer": 42})


def test_each_call_builds_its_tracer_when_enabled_and_none_when_not(
    monkeypatch: pytest.MonkeyPatch, fake_tracer: type[FakeTracer]
) -> None:
    monkeypatch.setitem(sys.modules, "aws_xray_sdk", types.ModuleType("aws_xray_sdk"))
    monkeypatch.setenv(XRAY_SDK_SETTING, "false")
    handler_tracing(SERVICE)
    assert fake_tracer.instances == []
    monkeypatch.setenv(XRAY_SDK_SETTING, "true")
    handler_tracing("token-refresher")
    assert [t.service for t in fake_tracer.instances] == ["token-refresher"]


@pytest.fixture
def quiet_real_tracer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Powertools' real Tracer, disabled the way it is outside Lambda (no patching of botocore or requests in
    this process), with its class-wide configuration and the SDK's global switch put back afterwards."""
    if importlib.util.find_spec("aws_xray_sdk") is None:
        pytest.skip("aws-xray-sdk is not installed in this venv (moto[server] usually brings it)")
    from aws_lambda_powertools.tracing.tracer import Tracer
    from aws_xray_sdk import global_sdk_config  # type: ignore[import-untyped]

    monkeypatch.delenv("LAMBDA_TASK_ROOT", raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setattr(Tracer, "_config", copy.copy(Tracer._default_config))
    enabled = global_sdk_config.sdk_enabled()
    yield
    global_sdk_config.set_sdk_enabled(enabled)


@pytest.mark.usefixtures("quiet_real_tracer")
def test_true_with_the_real_sdk_traces_and_keeps_the_handlers_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(XRAY_SDK_SETTING, "true")
    traced = handler_tracing(SERVICE)(handler)
    assert traced is not handler
    assert traced.__wrapped__ is handler  # type: ignore[attr-defined]
    assert traced.__name__ == "handler"
    assert traced({"n": 4}, None) == {"answer": 8}
    with pytest.raises(ValueError, match="handler failed"):
        traced({"fail": True}, None)
