"""Every named state of the layer, as string enums: they compare equal to, log as and serialise to their
plain values, so logs, metrics and the refresher's JSON answer read the same as before they were enums."""

from __future__ import annotations

from enum import StrEnum


class RefreshReason(StrEnum):
    """Why the refresher was invoked (its input's `reason`)."""

    SCHEDULED = "scheduled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FORCED = "forced"


class DecisionReason(StrEnum):
    """Why the refresher did or did not call the IdP (its output's `reason`)."""

    FORCED = "forced"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    REJECTED = "rejected"
    # The reported token was itself minted in answer to a rejection (or forced during a run of rejections)
    # and is younger than its backoff: replacing it again at once would only churn the IdP and the secret.
    REJECTED_WITHIN_COOLDOWN = "rejected-within-cooldown"
    EXPIRING = "expiring"
    REJECTED_TOKEN_ALREADY_REPLACED = "rejected-token-already-replaced"
    FRESH = "fresh"
    # A forced refresh with the same credentials ran (or was tried) less than the forced interval ago.
    FORCED_TOO_SOON = "forced-too-soon"


class TokenProblem(StrEnum):
    """Why the token secret holds no usable token."""

    MISSING = "missing"
    UNREADABLE = "unreadable"


class RefreshResult(StrEnum):
    """What an on-demand refresh request came back with, as a consumer sees it."""

    REFRESHED = "refreshed"
    SKIPPED = "skipped"
    # Another refresh is running (reserved concurrency 1) or this one outlived the wait: re-read the secret.
    BUSY = "busy"


class MessageAction(StrEnum):
    """The fate of one meter event."""

    CREATED = "created"
    ALREADY_EXISTS = "already-exists"
    UPDATED = "updated"
    DELETED = "deleted"
    ALREADY_DELETED = "already-deleted"
    # Older than what the meter's state already reflects (a newer event, or a Delete's tombstone): acknowledged
    # without calling the API, so a late redelivery never undoes what the publisher sent after it.
    SUPERSEDED = "superseded"
    DEAD_LETTERED = "dead-lettered"
