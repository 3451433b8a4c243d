"""Admin API types: virtual keys and usage. The store keeps keys and records in these same
types, so what is stored, what is served and what the client decodes cannot differ."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from noroshi.wire.times import TimeParam, Timestamp

__all__ = [
    "ApiKey",
    "Budget",
    "CreatedKey",
    "KeyCreate",
    "KeyList",
    "KeyListQuery",
    "KeyUpdate",
    "ModelLimits",
    "UsageList",
    "UsageQuery",
    "UsageRecord",
    "UsageTotals",
]

AtLeastOne = Annotated[int, Meta(ge=1)]
Positive = Annotated[float, Meta(gt=0)]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
ModelName = Annotated[str, Meta(min_length=1)]
MAX_USAGE_ROWS = 10_000


class Budget(Struct, forbid_unknown_fields=True, kw_only=True):
    """Spending caps per UTC day and month; cost is in the price table's currency."""

    tokens_per_day: AtLeastOne | None = None
    tokens_per_month: AtLeastOne | None = None
    cost_per_day: Positive | None = None
    cost_per_month: Positive | None = None


class ModelLimits(Struct, forbid_unknown_fields=True, kw_only=True):
    rpm: AtLeastOne | None = None
    tpm: AtLeastOne | None = None


class KeyCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    models: list[ModelName] = []  # the public model names it may use; empty: all
    rpm: AtLeastOne | None = None
    tpm: AtLeastOne | None = None
    max_concurrency: AtLeastOne | None = None  # requests (streams included) at once
    model_limits: dict[str, ModelLimits] = {}  # rpm and tpm of this key on one model
    budget: Budget | None = None
    expires_at: datetime | None = None  # without a zone: UTC
    metadata: dict[str, Any] = {}


class KeyUpdate(Struct, forbid_unknown_fields=True, kw_only=True):
    """A partial change: a field left out stays as it is; `null` clears a limit, the budget or
    the expiry."""

    name: Name | UnsetType = UNSET
    models: list[ModelName] | UnsetType = UNSET
    rpm: AtLeastOne | UnsetType | None = UNSET
    tpm: AtLeastOne | UnsetType | None = UNSET
    max_concurrency: AtLeastOne | UnsetType | None = UNSET
    model_limits: dict[str, ModelLimits] | UnsetType = UNSET
    budget: Budget | UnsetType | None = UNSET
    expires_at: datetime | UnsetType | None = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET


class ApiKey(Struct, kw_only=True, tag_field="object", tag="api_key"):
    """A key as stored and shown: never its secret or hash."""

    id: str
    name: str
    hint: str
    models: list[str] = []
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    model_limits: dict[str, ModelLimits] = {}
    budget: Budget | None = None
    expires_at: Timestamp | None = None
    metadata: dict[str, Any] = {}
    created_at: Timestamp
    revoked_at: Timestamp | None = None

    def usable(self, now: float) -> bool:
        """Not revoked and not expired at `now` (epoch seconds)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class CreatedKey(ApiKey, kw_only=True, tag="api_key"):
    """The answer to a key's creation: the only time its secret is shown."""

    key: str


class KeyList(Struct, kw_only=True):
    data: list[ApiKey]
    object: Literal["list"] = "list"


class KeyListQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    include_revoked: bool = False


class UsageRecord(Struct, kw_only=True, tag_field="object", tag="usage.record"):
    """One model request, as billed."""

    request_id: str
    key_id: str | None  # None when auth is off
    model: str
    deployment: str  # "provider/model", "" if no upstream was reached
    route: str  # "/v1/chat/completions"
    prompt_tokens: int = 0  # every input token, cache reads and writes included
    completion_tokens: int = 0  # every output token, reasoning included
    cache_read_tokens: int = 0  # of prompt_tokens: read from the prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to the prompt cache
    reasoning_tokens: int = 0  # of completion_tokens
    cost: float = 0.0  # each kind at its own price
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    status: int = 200
    outcome: str = "ok"  # "ok" | "error" | "cut" (the client left or the stream was cut)
    created_at: Timestamp


class UsageTotals(Struct, kw_only=True, tag_field="object", tag="usage.totals"):
    """One group's totals; the field `group_by` names holds the group, the others are null."""

    key_id: str | None = None
    key_name: str | None = None  # with group_by=key
    model: str | None = None
    day: str | None = None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float
    errors: int


class UsageQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    """`since` and `until` are ISO 8601 (UTC unless they say otherwise) or epoch seconds.
    Unset, not None: a query string has no null, and `group_by=null` is a mistake."""

    key: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    since: TimeParam | UnsetType = UNSET
    until: TimeParam | UnsetType = UNSET
    group_by: Literal["key", "model", "day"] | UnsetType = UNSET
    limit: Annotated[int, Meta(ge=1, le=MAX_USAGE_ROWS)] = 1000


class UsageList(Struct, kw_only=True):
    group_by: Literal["key", "model", "day"] | None
    data: list[UsageRecord | UsageTotals]
    object: Literal["list"] = "list"
