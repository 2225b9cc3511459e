"""AWS clients with the layer's timeouts and retry budgets. The composition root creates each once per
container (client creation costs tens of milliseconds); nothing here is cached or created at import.

The clients come from botocore directly, not through boto3: boto3 adds resources and s3transfer, which
the layer never uses and which cost about a tenth of a cold start's import time. The clients are the same
objects boto3.client() returns (boto3 delegates to botocore), and AWS_ENDPOINT_URL, AWS_REGION and the
credential chain apply as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from botocore.config import Config
from botocore.session import Session

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

# Standard retry mode: exponential backoff with jitter on throttling and 5xx. At most 4 requests
# (total_max_attempts counts requests), so the backoff stays under ~7 s, well inside the functions' timeouts.
SECRETS_MANAGER_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 4},
)

# The refresher may take a while (IdP retries); a consumer that stops waiting re-reads the secret instead.
# At most two requests (total_max_attempts counts requests; max_attempts would count retries): a throttled
# invoke means "a refresh is running", which the caller handles by re-reading the secret.
LAMBDA_CONFIG = Config(
    connect_timeout=3,
    read_timeout=25,
    retries={"mode": "standard", "total_max_attempts": 2},
)

# The longest a call can take with the configurations above (attempts x (connect + read), backoff aside for
# Lambda, whose retry is immediate). Below these, a call under a deadline uses a client bounded by it.
LAMBDA_FULL_WAIT_SECONDS = 2 * (3 + 25)
SECRETS_MANAGER_FULL_WAIT_SECONDS = 4 * (3 + 5) + 7


def bounded_lambda_config(seconds: int) -> Config:
    """One attempt whose connect and read both end within `seconds`."""
    return LAMBDA_CONFIG.merge(
        Config(
            connect_timeout=min(3, seconds), read_timeout=seconds, retries={"mode": "standard", "total_max_attempts": 1}
        )
    )


def bounded_config(base: Config, seconds: int) -> Config:
    """`base` (Secrets Manager's or DynamoDB's) with fewer attempts, each ending within `seconds`: a throttled
    call then fails fast (a retryable error) instead of backing off past the invocation's deadline."""
    attempts = max(1, min(4, seconds // 8))
    per_attempt = max(1, seconds // attempts)
    return base.merge(
        Config(
            connect_timeout=min(3, per_attempt),
            read_timeout=min(5, per_attempt),
            retries={"mode": "standard", "total_max_attempts": attempts},
        )
    )


SQS_CONFIG = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 5})

DYNAMODB_CONFIG = Config(connect_timeout=3, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 4})
DYNAMODB_FULL_WAIT_SECONDS = 4 * (3 + 5) + 7


def new_session() -> Session:
    """One per container: a session caches the service models its clients load."""
    return Session()


# AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_<SERVICE>) points these at a local emulator: no special code path.
def new_secrets_manager_client(session: Session, config: Config = SECRETS_MANAGER_CONFIG) -> SecretsManagerClient:
    return cast("SecretsManagerClient", session.create_client("secretsmanager", config=config))


def new_lambda_client(session: Session, config: Config = LAMBDA_CONFIG) -> LambdaClient:
    return cast("LambdaClient", session.create_client("lambda", config=config))


def new_sqs_client(session: Session) -> SQSClient:
    return cast("SQSClient", session.create_client("sqs", config=SQS_CONFIG))


def new_dynamodb_client(session: Session, config: Config | None = None) -> DynamoDBClient:
    return cast("DynamoDBClient", session.create_client("dynamodb", config=config or DYNAMODB_CONFIG))
