"""One Secrets Manager secret: read its current value, write a new version."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from .deadline import DeadlineBoundClient
from .errors import SECRET_BINARY_NOT_SUPPORTED, SecretStoreError
from .safe_text import client_error_code

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["SECRET_BINARY_NOT_SUPPORTED", "SecretsManagerSecret"]


class SecretsManagerSecret:
    def __init__(
        self,
        client: SecretsManagerClient,
        secret_id: str,
        *,
        client_within: Callable[[float], SecretsManagerClient] | None = None,
        full_wait_seconds: float = 0.0,
    ) -> None:
        self._clients = DeadlineBoundClient(client, client_within, full_wait_seconds=full_wait_seconds)
        self.secret_id = secret_id

    def _client_for_now(self, operation: str) -> SecretsManagerClient:
        return self._clients.for_now(f"Secrets Manager {operation} on {self.secret_id}")

    def read(self) -> str | None:
        """The AWSCURRENT string, or None while the secret has no value yet."""
        return self.read_with_version()[0]

    def read_with_version(self) -> tuple[str | None, str | None]:
        """The AWSCURRENT string and its version id; (None, None) while the secret has no value yet."""
        try:
            response = self._client_for_now("GetSecretValue").get_secret_value(SecretId=self.secret_id)
        except ClientError as error:
            code = client_error_code(error)
            # A secret created empty (as template.yaml does) answers ResourceNotFound until its first version.
            if code == "ResourceNotFoundException":
                return None, None
            raise SecretStoreError("GetSecretValue", self.secret_id, code) from None
        except BotoCoreError as error:
            raise SecretStoreError("GetSecretValue", self.secret_id, type(error).__name__) from None
        value = response.get("SecretString")
        if value is None:
            raise SecretStoreError("GetSecretValue", self.secret_id, SECRET_BINARY_NOT_SUPPORTED)
        return value, response.get("VersionId")

    def write(self, secret_string: str) -> str:
        """Store a new version; it becomes AWSCURRENT atomically. Returns its version id."""
        try:
            response = self._clients.client.put_secret_value(
                SecretId=self.secret_id,
                SecretString=secret_string,
                # A fresh idempotency token per attempt: reusing one with a different value is an error.
                ClientRequestToken=str(uuid.uuid4()),
            )
        except ClientError as error:
            raise SecretStoreError("PutSecretValue", self.secret_id, client_error_code(error)) from None
        except BotoCoreError as error:
            raise SecretStoreError("PutSecretValue", self.secret_id, type(error).__name__) from None
        return response["VersionId"]
