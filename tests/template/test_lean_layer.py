"""The layers as the template declares and the Makefile builds them: one pure-Python layer for both
architectures, nothing the Lambda runtime already provides, the version in its description, and the X-Ray SDK
only when XRaySdkTracing asks for it (its layer and the switch the handlers read, together)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.template.conftest import Evaluator
from usage_engine.tracing import XRAY_SDK_SETTING
from usage_engine.version import __version__

LAYER_DIR = Path(__file__).resolve().parents[2] / "layers" / "usage_engine"
FUNCTIONS = ("TokenRefresherFunction", "MeterEventsFunction", "MeterQueryFunction")
# What the Lambda Python runtime brings (boto3 and its dependencies): a layer copy would shadow it.
RUNTIME_PACKAGES = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (LAYER_DIR / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"{name}: {line} is not pinned"
            pins[re.sub(r"[-_.]+", "-", package).lower()] = version
    return pins


def _function_layers_and_switch(sam_template: dict[str, Any], parameters: dict[str, str]) -> list[tuple[Any, Any]]:
    evaluator = Evaluator(sam_template, parameters)
    answers = []
    for function_id in FUNCTIONS:
        properties = sam_template["Resources"][function_id]["Properties"]
        layers = evaluator.resolve(properties.get("Layers", sam_template["Globals"]["Function"]["Layers"]))
        variables = {
            **sam_template["Globals"]["Function"]["Environment"]["Variables"],
            **properties.get("Environment", {}).get("Variables", {}),
        }
        answers.append((layers, evaluator.resolve(variables[XRAY_SDK_SETTING])))
    return answers


def test_the_layer_ships_nothing_the_runtime_provides_and_no_compiled_or_tracing_package() -> None:
    pins = _pins("requirements.txt")
    assert not set(pins) & RUNTIME_PACKAGES
    assert not set(pins) & {"aws-xray-sdk", "wrapt", "charset-normalizer"}
    assert {"aws-lambda-powertools", "requests"} <= set(pins)


def test_the_xray_sdk_layer_pins_what_powertools_tracer_needs() -> None:
    assert set(_pins("requirements-xray-sdk.txt")) == {"aws-xray-sdk", "wrapt"}


def test_by_default_functions_get_the_layer_alone_and_no_sdk_tracing(sam_template: dict[str, Any]) -> None:
    assert not Evaluator(sam_template, {}).condition("XRaySdkTracingEnabled")
    for layers, switch in _function_layers_and_switch(sam_template, {}):
        assert layers == ["<Ref UsageEngineLayer>"]
        assert switch == "false"


def test_xray_sdk_tracing_adds_its_layer_and_turns_the_handlers_switch_on(sam_template: dict[str, Any]) -> None:
    assert sam_template["Resources"]["XRaySdkLayer"]["Condition"] == "XRaySdkTracingEnabled"
    for layers, switch in _function_layers_and_switch(sam_template, {"XRaySdkTracing": "Enabled"}):
        assert layers == ["<Ref UsageEngineLayer>", "<Ref XRaySdkLayer>"]
        assert switch == "true"


@pytest.mark.parametrize("layer_id", ["UsageEngineLayer", "XRaySdkLayer"])
def test_each_layer_is_one_artifact_for_both_architectures(sam_template: dict[str, Any], layer_id: str) -> None:
    resource = sam_template["Resources"][layer_id]
    assert resource["Metadata"] == {"BuildMethod": "makefile"}  # no BuildArchitecture: nothing depends on it
    assert sorted(resource["Properties"]["CompatibleArchitectures"]) == ["arm64", "x86_64"]
    assert resource["Properties"]["CompatibleRuntimes"] == [sam_template["Globals"]["Function"]["Runtime"]]
    makefile = (LAYER_DIR / "Makefile").read_text()
    assert f"build-{layer_id}:" in makefile
    assert "LAYER_ARCHITECTURE" not in makefile


def test_the_layer_description_names_the_package_version(sam_template: dict[str, Any]) -> None:
    description = sam_template["Resources"]["UsageEngineLayer"]["Properties"]["Description"]
    assert description.startswith(f"usage_engine {__version__} ")
