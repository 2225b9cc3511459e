"""How the Makefile and samconfig.toml pick the region, the stack and the parameters of a deploy.

The commands that reach AWS (deploy, logs, destroy, set-credentials) use the user's AWS configuration unless
REGION= is given; only the offline targets pin a region. samconfig.toml's environments name real template
parameters with allowed values. `make -n` prints the commands without running them."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def dry_run(target: str, *assignments: str) -> str:
    """The commands `make <target>` would run for `target` itself (its prerequisites' recipes included)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REGION", "AWS_REGION", "AWS_DEFAULT_REGION", "STACK")}
    result = subprocess.run(  # noqa: S603 - make with fixed arguments
        [str(MAKE), "--no-print-directory", "-n", target, *assignments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return result.stdout


def sam_line(output: str, command: str) -> list[str]:
    joined = output.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if f"sam {command}" in line)
    return shlex.split(line)


@pytest.mark.parametrize("target", ["deploy", "logs", "destroy"])
def test_commands_that_reach_aws_use_the_configured_region(target: str) -> None:
    command = {"deploy": "deploy", "logs": "logs", "destroy": "delete"}[target]
    words = sam_line(dry_run(target), command)
    assert "--region" not in words
    assert not any(word.startswith("AWS_DEFAULT_REGION=") for word in words)
    given = sam_line(dry_run(target, "REGION=ap-southeast-2"), command)
    assert given[given.index("--region") + 1] == "ap-southeast-2"


def test_set_credentials_uses_the_configured_region() -> None:
    line = next(line for line in dry_run("set-credentials", "FILE=x.json").splitlines() if "set_credentials" in line)
    assert "--region" not in line
    assert "AWS_DEFAULT_REGION" not in line
    line = next(
        line
        for line in dry_run("set-credentials", "FILE=x.json", "REGION=us-east-1").splitlines()
        if "set_credentials" in line
    )
    assert "--region us-east-1" in line


@pytest.mark.parametrize("target", ["template-check", "unit", "demo"])
def test_offline_targets_pin_a_region(target: str) -> None:
    output = dry_run(target)
    runs = [line for line in output.splitlines() if "cfn-lint" in line or "pytest" in line or "local.demo" in line]
    assert runs
    assert all("AWS_DEFAULT_REGION=eu-west-1" in line for line in runs)


def test_a_deploy_environment_keeps_its_own_parameters_and_stack() -> None:
    words = sam_line(dry_run("deploy", "CONFIG_ENV=dev"), "deploy")
    assert words[words.index("--config-env") + 1] == "dev"
    assert words[words.index("--stack-name") + 1] == "usage-engine-token-bundle-dev"
    # No --parameter-overrides: on the command line it would replace the environment's parameter_overrides.
    assert "--parameter-overrides" not in words
    words = sam_line(dry_run("deploy", "ARCH=x86_64", "PARAMS=AlarmEmail=a@b.c"), "deploy")
    assert words[words.index("--parameter-overrides") + 1 :][:2] == ["Architecture=x86_64", "AlarmEmail=a@b.c"]


def test_samconfig_environments_name_real_parameters_with_allowed_values() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    parameters = load_template()["Parameters"]
    assert {"default", "dev", "prod"} <= set(config)
    stacks = set()
    for environment in ("default", "dev", "prod"):
        deploy = config[environment]["deploy"]["parameters"]
        stacks.add(deploy["stack_name"])
        assert config[environment]["delete"]["parameters"]["stack_name"] == deploy["stack_name"]
        for pair in shlex.split(deploy.get("parameter_overrides", "")):
            name, _, value = pair.partition("=")
            assert name in parameters, f"{environment}: {name} is not a template parameter"
            allowed = parameters[name].get("AllowedValues")
            if allowed is not None:
                assert value in [str(v) for v in allowed], f"{environment}: {name}={value}"
    assert len(stacks) == 2  # dev beside production; default is production's stack
