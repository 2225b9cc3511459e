"""tools/set_credentials.py against moto's server (Secrets Manager, CloudFormation), the local Lambda endpoint
running the real refresher handler, and the Usage Engine emulator: the operator's whole workflow."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_ID, CLIENT_SECRET, CREDENTIALS_SECRET, REFRESHER_NAME, TOKEN_SECRET, Deployment
from tools import set_credentials
from tools.set_credentials import CredentialsDocument, SetCredentialsError, lambda_invoker, load_credentials
from usage_engine import fingerprint

STACK = "usage-engine-token-bundle"

# What the Usage Engine UI offers for download when an application access is created (camelCase keys,
# plus keys the refresher does not need).
UI_DOCUMENT = {"name": "billing-sync", "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "scopes": "read:meters"}


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "application-access.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def stored_credentials() -> dict[str, Any]:
    secret = boto3.client("secretsmanager").get_secret_value(SecretId=CREDENTIALS_SECRET)
    return dict(json.loads(secret["SecretString"]))


def create_stack(outputs: dict[str, str]) -> None:
    """A stack in moto with the bundle's outputs (the resources themselves are the deployment fixture's)."""
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))


def bundle_outputs() -> dict[str, str]:
    secrets = boto3.client("secretsmanager")
    return {
        "CredentialsSecretArn": secrets.describe_secret(SecretId=CREDENTIALS_SECRET)["ARN"],
        "TokenSecretArn": secrets.describe_secret(SecretId=TOKEN_SECRET)["ARN"],
        "TokenRefresherFunctionName": REFRESHER_NAME,
    }


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = set_credentials.main(argv)
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert CLIENT_SECRET not in text
    return status, captured.out, captured.err


@pytest.fixture
def fresh(consumers: Deployment) -> Deployment:
    """The deployment holding an older application access's credentials, as when an operator rotates them."""
    consumers.store_credentials({"client_id": "old-client", "client_secret": "old-secret"})
    return consumers


# --- The whole workflow ---------------------------------------------------------------------------------


def test_stack_mode_stores_the_credentials_and_refreshes_once(fresh, tmp_path, capsys):
    create_stack(bundle_outputs())
    versions_before = fresh.token_versions()

    status, out, err = run_main(["--file", str(write(tmp_path, UI_DOCUMENT)), "--stack", STACK], capsys)

    assert (status, err) == (0, "")
    # Only the known keys, in the refresher's spelling.
    assert stored_credentials() == {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    assert fresh.emulator.token_requests == 1
    (token,) = fresh.emulator.issued_tokens
    stored = fresh.stored_token()
    assert stored["access_token"] == token
    assert fresh.token_versions() == versions_before + 1
    assert f"fingerprint {fingerprint(token)}" in out
    assert "UTC (in 3" in out
    assert "ignored keys: name, scopes" in out
    assert token not in out


def test_explicit_ids_keep_the_optional_overrides(fresh, tmp_path, capsys):
    document = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "audience": fresh.emulator.audience,
        "token_url": fresh.emulator.token_url,
    }
    argv = ["--file", str(write(tmp_path, document)), "--secret-id", CREDENTIALS_SECRET]
    argv += ["--refresher", REFRESHER_NAME, "--token-secret-id", TOKEN_SECRET]

    status, out, _ = run_main(argv, capsys)

    assert status == 0
    assert stored_credentials() == document
    assert "client_id, client_secret and audience, token_url" in out
    assert f"fingerprint {fingerprint(fresh.stored_token()['access_token'])}" in out


def test_without_the_token_secret_it_prints_the_expiry_only(fresh, tmp_path, capsys):
    argv = ["--file", str(write(tmp_path, UI_DOCUMENT)), "--secret-id", CREDENTIALS_SECRET]
    status, out, _ = run_main([*argv, "--refresher", REFRESHER_NAME], capsys)
    assert status == 0
    assert "Token refreshed: expires" in out
    assert "--token-secret-id" in out
    assert fresh.emulator.token_requests == 1


def test_credentials_the_idp_rejects_fail_with_the_refreshers_error(fresh, tmp_path, capsys):
    create_stack(bundle_outputs())
    document = {**UI_DOCUMENT, "clientSecret": "not-the-secret-3f9c"}
    token_before = fresh.stored_token() if fresh.token_versions() else None

    status, out, err = run_main(["--file", str(write(tmp_path, document)), "--stack", STACK], capsys)

    assert status == 1
    assert "the refresher failed: RefreshFailedError" in err
    assert "not-the-secret-3f9c" not in out + err
    # Stored (the operator sees where), and the stored token is left as it was.
    assert stored_credentials()["client_secret"] == "not-the-secret-3f9c"
    assert (fresh.stored_token() if fresh.token_versions() else None) == token_before


# --- Validation: nothing is stored, the message names the field, never the value ------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"clientId": CLIENT_ID}, "client_secret: is missing"),
        ({"clientSecret": CLIENT_SECRET}, "client_id: is missing"),
        ({"clientId": CLIENT_ID, "clientSecret": "  "}, "client_secret: must be a non-empty string"),
        (
            {"clientId": CLIENT_ID, "client_secret": CLIENT_SECRET, "clientSecret": CLIENT_SECRET + "x"},
            "client_secret: is given twice",
        ),
        ({**UI_DOCUMENT, "token_url": "http://idp.example.com/token"}, "token_url: must be an https:// URL"),
        ([CLIENT_ID, CLIENT_SECRET], "must hold a JSON object"),
        (f'{{"clientId": "{CLIENT_ID}", "clientSecret": "{CLIENT_SECRET}"', "is not a UTF-8 JSON document"),
    ],
    ids=["no-secret", "no-id", "blank-secret", "conflict", "http-token-url", "array", "truncated"],
)
def test_invalid_files_are_rejected_before_anything_is_stored(fresh, tmp_path, capsys, document, expected):
    before = stored_credentials()
    path = write(tmp_path, document)
    status, out, err = run_main(["--file", str(path), "--secret-id", CREDENTIALS_SECRET, "--refresher", "x"], capsys)
    assert status == 1
    assert expected in err
    assert str(path) in err
    assert out == ""
    assert stored_credentials() == before
    assert fresh.emulator.token_requests == 0


def test_a_missing_file(tmp_path, capsys):
    status, _, err = run_main(["--file", str(tmp_path / "nope.json"), "--stack", STACK], capsys)
    assert status == 1
    assert "cannot read" in err


def test_a_stack_without_the_bundles_outputs(fresh, tmp_path, capsys):
    create_stack({"Something": "else"})
    status, _, err = run_main(["--file", str(write(tmp_path, UI_DOCUMENT)), "--stack", STACK], capsys)
    assert status == 1
    assert "has no output CredentialsSecretArn, TokenRefresherFunctionName" in err


def test_an_unknown_stack(aws, tmp_path, capsys):
    status, _, err = run_main(["--file", str(write(tmp_path, UI_DOCUMENT)), "--stack", "nope"], capsys)
    assert status == 1
    assert "cannot describe stack nope: ValidationError" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--file", "f.json"],
        ["--file", "f.json", "--secret-id", "s"],
        ["--file", "f.json", "--stack", "s", "--secret-id", "s"],
        ["--file", "f.json", "--stack", "s", "--refresher", "r"],
    ],
)
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        set_credentials.main(argv)
    assert exit_info.value.code == 2


def test_the_document_never_shows_the_secret(tmp_path):
    document = load_credentials(write(tmp_path, UI_DOCUMENT))
    assert isinstance(document, CredentialsDocument)
    assert CLIENT_SECRET not in repr(document)
    assert CLIENT_SECRET not in str(document)


# --- Throttling: the refresher runs with reserved concurrency 1 ----------------------------------------


class FakeLambda:
    """Throttles the first `throttled` calls, then returns `result` (a unit-level stand-in for Lambda)."""

    def __init__(self, throttled: int, result: Any, function_error: str | None = None) -> None:
        self.throttled = throttled
        self.result = result
        self.function_error = function_error
        self.calls: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if len(self.calls) <= self.throttled:
            error = {"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}
            raise ClientError(error, "Invoke")
        response: dict[str, Any] = {"Payload": io.BytesIO(json.dumps(self.result).encode())}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


def test_throttled_invocations_are_retried_with_backoff():
    fake = FakeLambda(throttled=2, result={"refreshed": True, "reason": "forced", "expires_at": 123})
    sleeps: list[float] = []
    result = lambda_invoker(fake, sleep=sleeps.append)("refresher", {"reason": "forced"})  # type: ignore[arg-type]
    assert result == {"refreshed": True, "reason": "forced", "expires_at": 123}
    assert sleeps == [1.0, 2.0]
    assert [json.loads(call["Payload"]) for call in fake.calls] == [{"reason": "forced"}] * 3
    assert {call["InvocationType"] for call in fake.calls} == {"RequestResponse"}


def test_throttling_that_does_not_end_is_an_error():
    fake = FakeLambda(throttled=99, result=None)
    sleeps: list[float] = []
    with pytest.raises(SetCredentialsError, match="TooManyRequestsException"):
        lambda_invoker(fake, sleep=sleeps.append)("refresher", {"reason": "forced"})  # type: ignore[arg-type]
    assert len(fake.calls) == set_credentials.INVOKE_ATTEMPTS
    assert sum(sleeps) <= 15


def test_an_unexpected_refresher_result_is_an_error():
    fake = FakeLambda(throttled=0, result={"refreshed": False, "reason": "fresh", "expires_at": 1})
    with pytest.raises(SetCredentialsError, match="unexpected refresher result"):
        set_credentials.refresh(lambda_invoker(fake), "refresher")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"refreshed": True, "reason": "forced", "expires_at": 7, "token_fingerprint": "0" * 16}, (7, None)),
        (
            {"refreshed": False, "reason": "forced-too-soon", "expires_at": 9, "token_fingerprint": "a" * 16},
            (9, "a" * 16),
        ),
        ({"refreshed": False, "reason": "fresh", "expires_at": 9, "token_fingerprint": "a" * 16}, None),
        ({"refreshed": False, "reason": "forced-too-soon", "expires_at": 9}, None),
        ("not an object", None),
    ],
)
def test_the_refreshers_answer_to_a_forced_run(answer: object, expected: tuple[int, str | None] | None) -> None:
    from tools.set_credentials import SetCredentialsError, refresh

    def invoke(function: str, event: object) -> object:
        assert event == {"reason": "forced"}
        return answer

    if expected is None:
        with pytest.raises(SetCredentialsError, match="unexpected refresher result"):
            refresh(invoke, "token-refresher")
    else:
        result = refresh(invoke, "token-refresher")
        assert (result.expires_at, result.too_soon_fingerprint) == expected
