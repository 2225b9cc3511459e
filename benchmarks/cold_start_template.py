"""What template.yaml ships each function with, for section 4: its layers (the ones the stack builds) and the
properties a cold start depends on, with the template's default parameter values (as `sam deploy` without
overrides)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import FUNCTIONS

# Function folder -> the template's logical ID (the Makefile target is build-<ID>).
LOGICAL_IDS = {
    "token_refresher": "TokenRefresherFunction",
    "meter_events": "MeterEventsFunction",
    "meter_query": "MeterQueryFunction",
}
_REF = re.compile(r"<Ref (\w+)>")


@dataclass(frozen=True)
class LayerSource:
    logical_id: str
    content: Path  # the folder its Makefile is in (ContentUri)


@dataclass(frozen=True)
class Shipped:
    """A template's functions as deployed: each one's layers in order, and the layers built from this tree."""

    template: dict[str, Any]
    layers: dict[str, list[str]]  # function -> its layers' logical IDs (Globals' first, as SAM appends its own)
    sources: dict[str, LayerSource]  # logical ID -> where it is built from
    foreign: list[str]  # layers the stack does not build (a published ARN): not measured

    def property_of(self, function: str, name: str, default: Any) -> Any:
        """A function property (its own, else Globals'), resolved."""
        own = self._function(function).get(name)
        value = own if own is not None else self.template.get("Globals", {}).get("Function", {}).get(name, default)
        return self._evaluator().resolve(value)

    def _function(self, function: str) -> dict[str, Any]:
        properties: dict[str, Any] = self.template["Resources"][LOGICAL_IDS[function]]["Properties"]
        return properties

    def _evaluator(self) -> Any:
        from local.template import Evaluator

        return Evaluator(self.template)


def shipped(source: Path) -> Shipped:
    """The functions' layers as `source`'s template.yaml gives them."""
    from local.template import Evaluator, load_template

    template = load_template(source / "template.yaml")
    evaluator = Evaluator(template)
    resources = template["Resources"]
    globals_layers = template.get("Globals", {}).get("Function", {}).get("Layers", [])
    layers: dict[str, list[str]] = {}
    sources: dict[str, LayerSource] = {}
    foreign: list[str] = []
    for function in FUNCTIONS:
        own = resources[LOGICAL_IDS[function]]["Properties"].get("Layers", [])
        layers[function] = []
        for value in evaluator.resolve([*globals_layers, *own]):
            match = _REF.fullmatch(str(value))
            resource = resources.get(match.group(1), {}) if match else {}
            if not match or resource.get("Metadata", {}).get("BuildMethod") != "makefile":
                foreign.append(str(value))
                continue
            logical_id = match.group(1)
            layers[function].append(logical_id)
            sources[logical_id] = LayerSource(logical_id, source / str(resource["Properties"]["ContentUri"]))
    return Shipped(template, layers, sources, sorted(set(foreign)))
