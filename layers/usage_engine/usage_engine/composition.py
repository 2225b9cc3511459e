"""The composition root: every object that lives as long as the Lambda container is built here, once.

Warm invocations reuse what a cold start built (AWS clients, the IdP session, token caches, pooled API
sessions). Handlers, the local emulators' demo, the benchmarks and the tests all build parts through a
`Components`; tests start a "new container" with `reset_components()`.

The parts only one function needs (the refresher's IdP exchange, the meter events' state table and dead-letter
queue) are imported by the method that builds them: a consumer never loads the refresher's modules, which
keeps every function's cold start to what it uses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .api_client import UsageEngineClient
from .aws_clients import (
    DYNAMODB_CONFIG,
    DYNAMODB_FULL_WAIT_SECONDS,
    LAMBDA_FULL_WAIT_SECONDS,
    SECRETS_MANAGER_CONFIG,
    SECRETS_MANAGER_FULL_WAIT_SECONDS,
    bounded_config,
    bounded_lambda_config,
    new_dynamodb_client,
    new_lambda_client,
    new_secrets_manager_client,
    new_session,
    new_sqs_client,
)
from .clock import Clock, Sleep, system_clock, system_sleep
from .provider import TokenProvider
from .recovery import TokenRecovery
from .refresh_requester import LambdaRefreshRequester
from .secrets_manager import SecretsManagerSecret
from .settings import ConsumerSettings, RefresherSettings
from .token_store import TokenStore

if TYPE_CHECKING:
    from botocore.session import Session
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

    from .dead_letter import DeadLetterQueue
    from .idp import ClientCredentialsExchange
    from .meter_state import MeterStateTable
    from .refresher import CredentialsSource, TokenRefresher

T = TypeVar("T")


class Components:
    """One container's objects, created on first use and then shared by every thread and invocation.

    Everything is injectable: pass a boto3 client, a clock or a sleep to run the same wiring against
    emulators or a virtual clock. `client_options` go to every UsageEngineClient (timeouts, a session, ...).
    """

    def __init__(
        self,
        *,
        clock: Clock = system_clock,
        sleep: Sleep = system_sleep,
        secrets_manager: SecretsManagerClient | None = None,
        lambda_client: LambdaClient | None = None,
        sqs: SQSClient | None = None,
        dynamodb: DynamoDBClient | None = None,
        exchange: ClientCredentialsExchange | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self._client_options = dict(client_options or {})
        self._lock = threading.RLock()
        self._made: dict[Hashable, Any] = {}
        given_clients = {"secretsmanager": secrets_manager, "lambda": lambda_client, "sqs": sqs, "dynamodb": dynamodb}
        # An injected client is used as it is, deadline or not: its owner chose its timeouts.
        self._injected = {key for key, given in given_clients.items() if given is not None}
        for key in self._injected:
            self._made[key] = given_clients[key]
        if exchange is not None:
            self._made["exchange"] = exchange

    def _once(self, key: Hashable, create: Callable[[], T]) -> T:
        # A lock rather than functools.cache: threads starting at once must share one instance (two
        # TokenProviders would mean two secret reads and two caches).
        with self._lock:
            if key not in self._made:
                self._made[key] = create()
            made: T = self._made[key]
            return made

    # --- AWS clients -------------------------------------------------------------------------------------
    def botocore_session(self) -> Session:
        return self._once("botocore-session", new_session)

    def secrets_manager(self) -> SecretsManagerClient:
        return self._once("secretsmanager", lambda: new_secrets_manager_client(self.botocore_session()))

    def lambda_client(self) -> LambdaClient:
        return self._once("lambda", lambda: new_lambda_client(self.botocore_session()))

    def secrets_manager_within(self, seconds: float) -> SecretsManagerClient:
        """A client whose attempts all end within `seconds` (whole seconds, at least 1; cached per value)."""
        if "secretsmanager" in self._injected:
            return self.secrets_manager()
        budget = max(1, int(seconds))
        return self._once(
            ("secretsmanager-within", budget),
            lambda: new_secrets_manager_client(self.botocore_session(), bounded_config(SECRETS_MANAGER_CONFIG, budget)),
        )

    def lambda_client_within(self, seconds: float) -> LambdaClient:
        """A client making one invoke that ends within `seconds` (whole seconds, at least 1; cached per value)."""
        if "lambda" in self._injected:
            return self.lambda_client()
        budget = max(1, int(seconds))
        return self._once(
            ("lambda-within", budget), lambda: new_lambda_client(self.botocore_session(), bounded_lambda_config(budget))
        )

    def sqs(self) -> SQSClient:
        return self._once("sqs", lambda: new_sqs_client(self.botocore_session()))

    def dynamodb(self) -> DynamoDBClient:
        return self._once("dynamodb", lambda: new_dynamodb_client(self.botocore_session()))

    def dynamodb_within(self, seconds: float) -> DynamoDBClient:
        """A client whose attempts all end within `seconds` (whole seconds, at least 1; cached per value)."""
        if "dynamodb" in self._injected:
            return self.dynamodb()
        budget = max(1, int(seconds))
        return self._once(
            ("dynamodb-within", budget),
            lambda: new_dynamodb_client(self.botocore_session(), bounded_config(DYNAMODB_CONFIG, budget)),
        )

    # --- the refresher's parts ---------------------------------------------------------------------------
    def exchange(self) -> ClientCredentialsExchange:
        from .idp import ClientCredentialsExchange

        # One session per container: warm invocations reuse the TLS connection to the IdP.
        return self._once("exchange", lambda: ClientCredentialsExchange(clock=self.clock))

    def secret(self, secret_id: str) -> SecretsManagerSecret:
        return SecretsManagerSecret(
            self.secrets_manager(),
            secret_id,
            client_within=self.secrets_manager_within,
            full_wait_seconds=SECRETS_MANAGER_FULL_WAIT_SECONDS,
        )

    def token_store(self, secret_id: str) -> TokenStore:
        return TokenStore(self.secret(secret_id))

    def credentials_source(self, secret_id: str) -> CredentialsSource:
        from .refresher import CredentialsSource

        return CredentialsSource(self.secret(secret_id))

    def refresher(self, settings: RefresherSettings, *, clock: Clock | None = None) -> TokenRefresher:
        from .refresher import RefresherMemory, TokenRefresher

        return TokenRefresher(
            store=self.token_store(settings.token_secret_id),
            credentials=self.credentials_source(settings.credentials_secret_id),
            exchange=self.exchange(),
            settings=settings,
            clock=clock or self.clock,
            # What the refresher remembers between runs (rejected credentials, forced attempts) lives as long as
            # this container, like its other per-container objects.
            memory=self._once(
                ("refresher-memory", settings.credentials_secret_id, settings.token_secret_id), RefresherMemory
            ),
        )

    # --- the consumers' parts ----------------------------------------------------------------------------
    def provider(self, settings: ConsumerSettings) -> TokenProvider:
        """One per token secret (and expiry skew), so the token cache survives warm invocations and is shared by
        the clients: connections that name the same token secret share one cache and one secret read."""
        return self._once(
            ("provider", settings.token_secret_id, settings.token_expiry_skew_seconds),
            lambda: TokenProvider(
                self.token_store(settings.token_secret_id),
                clock=self.clock,
                expiry_skew_seconds=settings.token_expiry_skew_seconds,
            ),
        )

    def refresh_requester(self, function_name: str) -> LambdaRefreshRequester:
        return LambdaRefreshRequester(
            self.lambda_client(),
            function_name,
            client_within=self.lambda_client_within,
            full_wait_seconds=LAMBDA_FULL_WAIT_SECONDS,
        )

    def client(self, settings: ConsumerSettings) -> UsageEngineClient:
        """One per settings: its session pools connections across warm invocations, and its TokenRecovery holds
        this connection's hold-off alone (an outage behind one connection never holds off another's calls).
        Connections with equal settings are one connection and share one client."""

        def create() -> UsageEngineClient:
            tokens = self.provider(settings)
            requester = self.refresh_requester(settings.refresher_function) if settings.refresher_function else None
            options = dict(self._client_options)
            recovery = TokenRecovery(
                tokens,
                requester,
                sleep=options.pop("sleep", self.sleep),
                clock=options.pop("clock", self.clock),
                **{k: options.pop(k) for k in ("busy_attempts",) if k in options},
            )
            return UsageEngineClient(settings.api_url, tokens, recovery=recovery, **options)

        return self._once(("client", settings), create)

    def dead_letter_queue(self, queue_url: str) -> DeadLetterQueue:
        from .dead_letter import DeadLetterQueue

        return DeadLetterQueue(self.sqs(), queue_url)

    def meter_state_table(self, table_name: str) -> MeterStateTable:
        from .meter_state import MeterStateTable

        return MeterStateTable(
            self.dynamodb(),
            table_name,
            clock=self.clock,
            sleep=self.sleep,
            client_within=self.dynamodb_within,
            full_wait_seconds=DYNAMODB_FULL_WAIT_SECONDS,
        )

    # --- from the environment (read at handler entry, never at import) -----------------------------------
    def provider_from_env(self, connection: str | None = None) -> TokenProvider:
        """The provider of `connection` (None: the default connection; see ConsumerSettings.from_env)."""
        return self.provider(ConsumerSettings.from_env(connection=connection))

    def client_from_env(self, connection: str | None = None) -> UsageEngineClient:
        """The client of `connection` (None: the default connection; a name such as "us" reads
        USAGE_ENGINE_US_TOKEN_SECRET_ID, USAGE_ENGINE_US_API_URL, ...; see ConsumerSettings.from_env).

        Each connection has its own client, token recovery and hold-off; connections that name the same token
        secret share its TokenProvider (one cache of the one token)."""
        return self.client(ConsumerSettings.from_env(connection=connection))

    def refresher_from_env(self) -> TokenRefresher:
        return self.refresher(RefresherSettings.from_env())


_components = Components()


def components() -> Components:
    """This container's components."""
    return _components


def reset_components(**options: Any) -> Components:
    """Forget every per-container object, as a new Lambda container would (tests, local runs), and start
    again with `options` (see `Components`)."""
    global _components
    _components = Components(**options)
    return _components
