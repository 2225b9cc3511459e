"""Store Usage Engine client credentials in the bundle's credentials secret, then force one token refresh.

    make set-credentials FILE=app-access.json [STACK=usage-engine-token-bundle]
    python -m tools.set_credentials --file FILE --stack NAME
    python -m tools.set_credentials --file FILE --secret-id ID --refresher NAME [--token-secret-id ID]

FILE is the JSON document the Usage Engine UI offers when an application access is created
(`clientId`/`clientSecret`, or `client_id`/`client_secret`); optional `audience` and `token_url` are kept,
every other key is dropped. The credentials are validated with the layer's own parser (the one the refresher
uses), stored with PutSecretValue (a new AWSCURRENT version), and the refresher is invoked synchronously with
`{"reason": "forced"}`. The tool prints the new token's fingerprint (first 16 hex digits of its sha256) and
expiry, never the token or the client secret. With --stack, the ids come from the stack's outputs.

Exit status: 0 done, 1 failed (the message says what and where, without secret values), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from usage_engine.credentials import KNOWN_KEYS, OPTIONAL_KEYS, encode_credentials, parse_credentials
from usage_engine.errors import CredentialsError, SecretStoreError
from usage_engine.safe_text import client_error_code
from usage_engine.secrets_manager import SecretsManagerSecret
from usage_engine.token import AccessToken
from usage_engine.token_store import TokenStore

if TYPE_CHECKING:  # boto3-stubs: typing only
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_secretsmanager import SecretsManagerClient as SecretsClient

FORCED = {"reason": "forced"}
INVOKE_ATTEMPTS = 5
MAX_FILE_BYTES = 64 * 1024


class SetCredentialsError(Exception):
    """A failure the operator can act on. Messages name files, fields, resources and error codes only."""


# Invokes a function synchronously with an event and returns its JSON result.
Invoker = Callable[[str, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Targets:
    credentials_secret_id: str
    refresher_function: str
    token_secret_id: str | None


@dataclass(frozen=True)
class CredentialsDocument:
    """What goes into the credentials secret: the known keys only, in the refresher's spelling."""

    body: str
    ignored_keys: tuple[str, ...]
    optional_keys: tuple[str, ...]

    def __repr__(self) -> str:  # the body holds the client secret
        return f"CredentialsDocument(ignored_keys={self.ignored_keys}, optional_keys={self.optional_keys})"


def load_credentials(path: Path) -> CredentialsDocument:
    """Read and validate FILE; errors name the file and the field, never a value."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SetCredentialsError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SetCredentialsError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not an application access file")
    try:
        text = raw.decode("utf-8-sig")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise SetCredentialsError(f"{path} is not a UTF-8 JSON document") from None
    if not isinstance(data, dict):
        raise SetCredentialsError(f"{path} must hold a JSON object")
    try:
        credentials = parse_credentials(text)
    except CredentialsError as error:
        raise SetCredentialsError(f"{path}: {error.field}: {_problem(error)}") from None
    return CredentialsDocument(
        body=encode_credentials(credentials),
        ignored_keys=tuple(sorted(str(key) for key in data if key not in KNOWN_KEYS)),
        optional_keys=tuple(key for key in OPTIONAL_KEYS if getattr(credentials, key) is not None),
    )


def _problem(error: CredentialsError) -> str:
    # "credentials secret: client_id: is missing" -> "is missing": the layer's wording names the secret.
    return str(error).split(f"{error.field}: ", 1)[-1]


def resolve_targets(args: argparse.Namespace, cloudformation: Callable[[], CloudFormationClient]) -> Targets:
    if args.stack:
        outputs = _stack_outputs(cloudformation(), args.stack)
        missing = [n for n in ("CredentialsSecretArn", "TokenRefresherFunctionName") if not outputs.get(n)]
        if missing:
            raise SetCredentialsError(f"stack {args.stack} has no output {', '.join(missing)}: is it this bundle?")
        return Targets(
            credentials_secret_id=outputs["CredentialsSecretArn"],
            refresher_function=outputs["TokenRefresherFunctionName"],
            token_secret_id=outputs.get("TokenSecretArn"),
        )
    return Targets(args.secret_id, args.refresher, args.token_secret_id)


def _stack_outputs(client: CloudFormationClient, stack: str) -> dict[str, str]:
    try:
        stacks = client.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as error:
        raise SetCredentialsError(f"cannot describe stack {stack}: {client_error_code(error)}") from None
    except BotoCoreError as error:
        raise SetCredentialsError(f"cannot describe stack {stack}: {type(error).__name__}") from None
    if not stacks:
        raise SetCredentialsError(f"stack {stack} not found")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}


def store(secrets: SecretsClient, secret_id: str, document: CredentialsDocument) -> str:
    """PutSecretValue: the new version becomes AWSCURRENT at once. Returns its version id."""
    try:
        return SecretsManagerSecret(secrets, secret_id).write(document.body)
    except SecretStoreError as error:
        raise SetCredentialsError(str(error)) from None


def lambda_invoker(client: LambdaClient, *, sleep: Callable[[float], None] = time.sleep) -> Invoker:
    """Synchronous invoke that waits out throttling: the refresher runs with reserved concurrency 1, so a
    scheduled or on-demand run in progress throttles this one for a moment."""

    def invoke(function: str, event: Mapping[str, Any]) -> Any:
        for attempt in range(1, INVOKE_ATTEMPTS + 1):
            try:
                response = client.invoke(
                    FunctionName=function,
                    InvocationType="RequestResponse",
                    Payload=json.dumps(event).encode(),
                )
            except ClientError as error:
                if client_error_code(error) == "TooManyRequestsException" and attempt < INVOKE_ATTEMPTS:
                    sleep(float(2 ** (attempt - 1)))
                    continue
                raise SetCredentialsError(f"invoking {function} failed: {client_error_code(error)}") from None
            except BotoCoreError as error:
                raise SetCredentialsError(f"invoking {function} failed: {type(error).__name__}") from None
            payload = _json(response["Payload"].read())
            if response.get("FunctionError"):
                # The refresher's errors are secret-free by contract (docs/contracts.md).
                details = payload if isinstance(payload, dict) else {}
                kind = details.get("errorType", response["FunctionError"])
                raise SetCredentialsError(f"the refresher failed: {kind}: {details.get('errorMessage', '')}")
            return payload
        raise AssertionError("unreachable")  # pragma: no cover

    return invoke


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise SetCredentialsError("the refresher returned something that is not JSON") from None


@dataclass(frozen=True)
class RefreshResult:
    expires_at: int
    # Set when the refresher skipped the forced run as too soon after another forced run (at most one per 10
    # minutes per credentials version): fine only if that run already used the credentials just stored.
    too_soon_fingerprint: str | None = None


def refresh(invoke: Invoker, function: str) -> RefreshResult:
    """Force one refresh; returns the new token's expires_at."""
    result = invoke(function, FORCED)
    if not isinstance(result, dict) or not isinstance(result.get("expires_at"), int):
        raise SetCredentialsError(f"unexpected refresher result {json.dumps(result)[:200]}")
    if result.get("refreshed"):
        return RefreshResult(int(result["expires_at"]))
    if result.get("reason") == "forced-too-soon" and isinstance(result.get("token_fingerprint"), str):
        return RefreshResult(int(result["expires_at"]), too_soon_fingerprint=str(result["token_fingerprint"]))
    raise SetCredentialsError(f"unexpected refresher result {json.dumps(result)[:200]}")


def current_token(secrets: SecretsClient, token_secret_id: str) -> AccessToken:
    """The stored token (it never leaves this tool: only its fingerprint and expiry are printed)."""
    try:
        stored = TokenStore(SecretsManagerSecret(secrets, token_secret_id)).load()
    except SecretStoreError as error:
        raise SetCredentialsError(str(error)) from None
    if stored.token is None:
        raise SetCredentialsError(f"{token_secret_id} does not hold a token in the documented format")
    return stored.token


def _when(epoch: int, now: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{moment} (in {int(epoch - now)} s)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="set_credentials",
        description="Store Usage Engine client credentials and force a token refresh.",
    )
    parser.add_argument("--file", required=True, type=Path, help="application access JSON from the Usage Engine UI")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="CloudFormation stack of the bundle (ids from its outputs)")
    where.add_argument("--secret-id", help="credentials secret name or ARN")
    parser.add_argument("--refresher", help="token refresher function name or ARN (with --secret-id)")
    parser.add_argument("--token-secret-id", help="token secret name or ARN (with --secret-id), for the fingerprint")
    parser.add_argument("--region", help="AWS region (default: the usual AWS configuration)")
    args = parser.parse_args(argv)
    if args.secret_id and not args.refresher:
        parser.error("--secret-id needs --refresher")
    if args.stack and (args.refresher or args.token_secret_id):
        parser.error("--refresher and --token-secret-id go with --secret-id; --stack finds them itself")
    return args


def run(
    args: argparse.Namespace,
    *,
    secrets: SecretsClient,
    cloudformation: Callable[[], CloudFormationClient],
    invoke: Invoker,
    out: TextIO,
    now: Callable[[], float] = time.time,
) -> None:
    document = load_credentials(args.file)
    extras = f"; ignored keys: {', '.join(document.ignored_keys)}" if document.ignored_keys else ""
    optional = f" and {', '.join(document.optional_keys)}" if document.optional_keys else ""
    print(f"Read {args.file}: client_id, client_secret{optional}{extras}", file=out)
    targets = resolve_targets(args, cloudformation)
    version = store(secrets, targets.credentials_secret_id, document)
    print(f"Stored the credentials in {targets.credentials_secret_id} (version {version})", file=out)
    print(f"Forcing a token refresh: {targets.refresher_function} {json.dumps(FORCED)}", file=out)
    refreshed = refresh(invoke, targets.refresher_function)
    expires_at = refreshed.expires_at
    if targets.token_secret_id is None:
        if refreshed.too_soon_fingerprint is not None:
            raise SetCredentialsError(
                "the refresher skipped the forced refresh (another forced refresh ran less than 10 minutes ago); "
                "run again in 10 minutes, or pass --token-secret-id to check whether it used these credentials"
            )
        print(f"Token refreshed: expires {_when(expires_at, now())}", file=out)
        print("(pass --token-secret-id to see its fingerprint)", file=out)
        return
    token = current_token(secrets, targets.token_secret_id)
    if refreshed.too_soon_fingerprint is not None:
        if token.fingerprint != refreshed.too_soon_fingerprint or token.record.credentials_version != version:
            raise SetCredentialsError(
                "the refresher skipped the forced refresh (another forced refresh ran less than 10 minutes ago) "
                "and the stored token was not made with these credentials: run again in 10 minutes"
            )
        print("A forced refresh with these credentials already ran less than 10 minutes ago.", file=out)
    elif token.expires_at != expires_at:
        raise SetCredentialsError(
            f"{targets.token_secret_id} holds a token expiring at {token.expires_at}, the refresher reported "
            f"{expires_at}: another refresh ran in between; run again"
        )
    print(f"Token refreshed: fingerprint {token.fingerprint}, expires {_when(expires_at, now())}", file=out)
    print(f"You can now delete {args.file}: the credentials are in Secrets Manager.", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    session = boto3.session.Session(region_name=args.region)
    try:
        run(
            args,
            secrets=session.client("secretsmanager"),
            cloudformation=lambda: session.client("cloudformation"),
            invoke=lambda_invoker(session.client("lambda")),
            out=sys.stdout,
        )
    except SetCredentialsError as error:
        print(f"set_credentials: {error}", file=sys.stderr)
        return 1
    except BotoCoreError as error:  # no region, no credentials, endpoint unreachable
        print(f"set_credentials: AWS: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
