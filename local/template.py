"""template.yaml read and evaluated offline: parameters, mappings, conditions and the intrinsic functions the
template uses, for given parameter values. The template is the one source of the functions' environment; the
template tests and the local stack (demo, integration tests) both read it through this module."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
# The region the offline checks and the local stack use (samconfig.toml's default region too).
REGION = "eu-west-1"


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as written, short-form tags (!Ref, !Sub ...) as their long forms, plain JSON types."""
    from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]  # deferred: a dev tool

    return dict(json.loads(json.dumps(cfn_yaml.load(str(path)))))


def function_environment(template: dict[str, Any], function_id: str, evaluator: Evaluator) -> dict[str, str]:
    """The environment variables a function of the template gets: Globals, then its own, resolved."""
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    own_env = template["Resources"][function_id]["Properties"].get("Environment", {}).get("Variables", {})
    resolved = evaluator.resolve({**globals_env, **own_env})
    return {name: str(value) for name, value in resolved.items()}


# --- A small evaluator for the intrinsic functions the template uses -------------------------------------


class UnresolvedError(Exception):
    """A value that only CloudFormation knows at deploy time (an attribute of a resource)."""


NO_VALUE = object()


def _is_intrinsic(key: str) -> bool:
    return key in ("Ref", "Condition") or key.startswith("Fn::")


class Evaluator:
    """Resolves parameters, mappings and conditions of template.yaml for given parameter values.

    Resource references stay symbolic ("<Ref X>", "<X.Arn>"), so values such as environment variables and
    ReplicaRegions can be compared with what CloudFormation would deploy for a parameter set.
    """

    def __init__(
        self,
        template: dict[str, Any],
        parameters: Mapping[str, str] | None = None,
        *,
        resources: Mapping[str, str] | None = None,
        region: str = REGION,
        stack_name: str = "stack",
    ) -> None:
        self.template = template
        self.values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
        unknown = set(parameters or {}) - set(self.values)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}")
        self.values.update(parameters or {})
        self.values.update({"AWS::Region": region, "AWS::AccountId": "123456789012", "AWS::Partition": "aws"})
        self.values["AWS::StackName"] = stack_name
        # What `Ref` of a resource gives where the stack runs locally (a secret name, a queue URL, ...).
        self.values.update(resources or {})

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [value for value in (self.resolve(item) for item in node) if value is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) != 1 or not _is_intrinsic(next(iter(node))):
            return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}
        ((function, argument),) = node.items()
        if function == "Ref":
            if argument == "AWS::NoValue":
                return NO_VALUE
            return self.values.get(argument, f"<Ref {argument}>")
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::If":
            name, if_true, if_false = argument
            return self.resolve(if_true if self.condition(name) else if_false)
        if function == "Fn::Equals":
            left, right = (self.resolve(a) for a in argument)
            return left == right
        if function == "Fn::Not":
            return not self.resolve(argument[0])
        if function == "Fn::FindInMap":
            mapping, key, attribute = (self.resolve(a) for a in argument)
            return self.template["Mappings"][mapping][key][attribute]
        if function == "Fn::Split":
            separator, text = argument
            return str(self.resolve(text)).split(separator)
        if function == "Fn::Select":
            index, items = argument
            return self.resolve(items)[int(index)]
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            resolved = {k: self.resolve(v) for k, v in variables.items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in resolved:
                    return str(resolved[name])
                if name in self.values:
                    return self.values[name]
                return f"<{name}>"

            return re.sub(r"\$\{([^}!]+)\}", substitute, text)
        if function == "Fn::GetAtt":
            target = argument if isinstance(argument, str) else ".".join(argument)
            return f"<{target}>"
        raise UnresolvedError(function)
