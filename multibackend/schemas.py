"""Marshmallow schemas for what Chatwoot sends us; unknown fields are ignored (Chatwoot adds some over time)."""

from __future__ import annotations

import unicodedata
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

BIGINT_MAX = 2**63 - 1
COMPANY_NAME_MAX_LENGTH = 255
ACCOUNT_CREATED_EVENT = "account_created"


class BaseSchema(Schema):
    class Meta:
        unknown = EXCLUDE


def normalise_company_name(value: str) -> str:
    """Drop control characters (NUL included), trim whitespace and cut to 255 characters; never refuses a name."""
    visible = "".join(char for char in value if unicodedata.category(char) != "Cc")
    return visible.strip()[:COMPANY_NAME_MAX_LENGTH].rstrip()


class CompanyName(fields.String):
    """A Chatwoot account name, normalised; refused only when nothing printable is left or it is not valid Unicode."""

    default_error_messages = {
        "empty": "Must not be empty.",
        "surrogate": "Contains invalid Unicode (a lone surrogate).",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if any("\ud800" <= char <= "\udfff" for char in text):
            raise self.make_error("surrogate")
        name = normalise_company_name(text)
        if not name:
            raise self.make_error("empty")
        return name


def account_id_field(**kwargs: Any) -> fields.Integer:
    """A Chatwoot account id: a JSON integer (not a string, float or boolean) from 1 to the bigint maximum."""
    return fields.Integer(strict=True, validate=validate.Range(min=1, max=BIGINT_MAX), **kwargs)


class ChatwootUserSchema(BaseSchema):
    id = fields.Integer(strict=True, allow_none=True)
    name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    type = fields.String(allow_none=True)


class AccountCreatedSchema(BaseSchema):
    """Chatwoot's installation webhook: {id, name, event, users}."""

    id = account_id_field(required=True, metadata={"description": "Chatwoot account id"})
    name = CompanyName(
        required=True,
        # the rule the API applies: something printable must be left once control characters are removed
        metadata={"pattern": r"[^\s\x00-\x1f\x7f-\x9f]", "description": "Normalised, never refused for cosmetics"},
    )
    event = fields.String(
        load_default=ACCOUNT_CREATED_EVENT,
        metadata={"enum": [ACCOUNT_CREATED_EVENT], "description": "Other events: see OtherEvent (answered ignored)"},
    )
    users = fields.List(fields.Nested(ChatwootUserSchema), load_default=list)


account_created_schema = AccountCreatedSchema()


def event_of(payload: Any) -> Any:
    """The payload's event name when it is a JSON object that names one, else None (meaning: account_created)."""
    return payload.get("event") if isinstance(payload, dict) else None


__all__ = ["ACCOUNT_CREATED_EVENT", "AccountCreatedSchema", "ValidationError", "account_created_schema"]


# --- What we answer (documented in the OpenAPI description; tests check answers against it) ---------------

ERROR_CODES = (
    "invalid_json", "invalid_payload", "invalid_signature", "invalid_account_id", "payload_too_large",
    "unsupported_media_type", "method_not_allowed", "not_found", "rate_limited", "service_unavailable",
    "unauthorized", "not_ready", "internal_error", "bad_request", "http_error",
)
PROVISIONING_STATES = ("ready", "pending", "failed")


class ErrorSchema(BaseSchema):
    success = fields.Boolean(required=True, metadata={"enum": [False]})
    error = fields.String(required=True, metadata={"description": "Human-readable message"})
    code = fields.String(required=True, validate=validate.OneOf(ERROR_CODES), metadata={"description": "Stable code"})
    details = fields.Dict(metadata={"description": "Field errors (invalid_payload)"})


class WebhookDataSchema(BaseSchema):
    company_id = fields.String(metadata={"example": "chatwoot_42"})
    company_name = fields.String()
    redis_prefix = fields.String(metadata={"example": "chatwoot_42:"})
    vectorstore_index = fields.String(metadata={"example": "chatwoot_42_documents"})
    message = fields.String()
    created = fields.Boolean(metadata={"description": "true the first time, false on every repeat"})
    provisioning_status = fields.String(validate=validate.OneOf((*PROVISIONING_STATES, "queued")))
    redis = fields.String(validate=validate.OneOf(("ready", "skipped", "failed", "unchanged")))
    queued = fields.Boolean(metadata={"description": "202: kept in the spool until PostgreSQL takes it"})
    ignored = fields.Boolean(metadata={"description": "an event other than account_created: nothing written"})
    event = fields.String()


class WebhookResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Nested(WebhookDataSchema, required=True)


class CompanyLookupDataSchema(BaseSchema):
    exists = fields.Boolean(required=True)
    company_id = fields.String()
    company_name = fields.String()
    chatwoot_account_id = fields.String()
    redis_prefix = fields.String()
    vectorstore_index = fields.String()
    provisioning_status = fields.String(validate=validate.OneOf(PROVISIONING_STATES))
    chatwoot_status = fields.String(validate=validate.OneOf(("active", "suspended", "deletion_pending", "deleted")))
    created_at = fields.String(metadata={"format": "date-time"})


class CompanyLookupResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Nested(CompanyLookupDataSchema, required=True)


class RecentErrorSchema(BaseSchema):
    time = fields.String(required=True, metadata={"format": "date-time"})
    account_id = fields.String(required=True)
    error = fields.String(required=True)


class MetricsDataSchema(BaseSchema):
    total_syncs = fields.Integer(required=True)
    success_count = fields.Integer(required=True)
    failed_count = fields.Integer(required=True)
    rejected_count = fields.Integer(required=True)
    success_rate = fields.Float(required=True, allow_none=True, metadata={"description": "percent, 2 decimals"})
    avg_latency_ms = fields.Float(required=True, allow_none=True)
    last_sync = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    recent_errors = fields.List(fields.Nested(RecentErrorSchema), required=True)


class MetricsResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Nested(MetricsDataSchema, required=True)


class AnyDataResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Dict(required=True)
