"""Marshmallow schemas: what Chatwoot sends us (unknown fields are ignored: Chatwoot adds some over time), and
every answer we give, which views dump through them and the OpenAPI description documents from them."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_dump, validate

if TYPE_CHECKING:
    from multibackend.models import CompanySnapshot

BIGINT_MAX = 2**63 - 1
COMPANY_NAME_MAX_LENGTH = 255
ACCOUNT_CREATED_EVENT = "account_created"


class BaseSchema(Schema):
    class Meta:
        unknown = EXCLUDE


def normalise_company_name(value: str) -> str:
    """Drop control characters (NUL included), trim whitespace and cut to 255 characters; a name left with only
    invisible format characters (zero-width spaces, word joiners, BOMs, bidi marks) is empty."""
    visible = "".join(char for char in value if unicodedata.category(char) != "Cc")
    name = visible.strip()[:COMPANY_NAME_MAX_LENGTH].rstrip()
    return name if any(not char.isspace() and unicodedata.category(char) != "Cf" for char in name) else ""


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
        # the rule the API applies: something visible must be left once control and format characters are removed
        metadata={
            "pattern": r"[^\s\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
            r"\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]",
            "description": "Normalised, never refused for cosmetics",
        },
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


# --- What we answer: views dump through these, the OpenAPI description documents them, tests check both ----

ERROR_CODES = (
    "invalid_json", "invalid_payload", "invalid_signature", "invalid_account_id", "payload_too_large",
    "unsupported_media_type", "method_not_allowed", "not_found", "rate_limited", "service_unavailable",
    "unauthorized", "not_ready", "internal_error", "bad_request", "http_error",
)
PROVISIONING_STATES = ("ready", "pending", "failed")
CHATWOOT_STATES = ("active", "suspended", "deletion_pending", "deleted")
IGNORED_MESSAGE = "Only account_created is processed here"
QUEUED_MESSAGE = "Database unavailable: the delivery is spooled and will be replayed by the reconciler"


class ErrorSchema(BaseSchema):
    success = fields.Boolean(required=True, metadata={"enum": [False]})
    error = fields.String(required=True, metadata={"description": "Human-readable message"})
    code = fields.String(required=True, validate=validate.OneOf(ERROR_CODES), metadata={"description": "Stable code"})
    details = fields.Dict(metadata={"description": "Field errors (invalid_payload)"})


class WebhookDataSchema(BaseSchema):
    """The `data` of a webhook answer, dumped from a delivery outcome of services.deliveries (Provisioned, Queued
    or Ignored, told apart by their `outcome`); keys that do not apply to the outcome are left out."""

    company_id = fields.String(metadata={"example": "chatwoot_42"})
    company_name = fields.String()
    redis_prefix = fields.String(metadata={"example": "chatwoot_42:"})
    vectorstore_index = fields.String(metadata={"example": "chatwoot_42_documents"})
    message = fields.Method("message_of", metadata={"type": "string", "description": "Human-readable summary"})
    created = fields.Boolean(metadata={"description": "true the first time, false on every repeat"})
    provisioning_status = fields.String(validate=validate.OneOf((*PROVISIONING_STATES, "queued")))
    redis = fields.String(validate=validate.OneOf(("ready", "skipped", "failed", "unchanged")))
    queued = fields.Boolean(metadata={"description": "202: kept in the spool until PostgreSQL takes it"})
    ignored = fields.Boolean(metadata={"description": "an event other than account_created: nothing written"})
    event = fields.String()

    @pre_dump
    def values_of(self, delivery: Any, **kwargs: Any) -> dict[str, Any]:
        """The answer's values for one outcome: created/existing (a company), queued (its future names) or ignored."""
        if delivery.outcome == "ignored":
            return {"ignored": True, "event": delivery.event}
        if delivery.outcome == "queued":
            names = asdict(delivery.names)
            return {"queued": True, **names, "company_name": delivery.company_name, "created": False, "provisioning_status": "queued"}
        result = delivery.result
        return {**result.company.as_dict(), "created": result.created, "redis": result.redis}

    def message_of(self, values: dict[str, Any]) -> str:
        """What happened, in words, from the answer's own values."""
        if values.get("ignored"):
            return IGNORED_MESSAGE
        if values.get("queued"):
            return QUEUED_MESSAGE
        message = "Company created and provisioned" if values["created"] else "Company already exists"
        if values["redis"] == "skipped":
            message += "; Redis step skipped (REDIS_URL is not set)"
        if values["provisioning_status"] != "ready":
            message += "; provisioning is pending and will be retried"
        return message


class WebhookResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Nested(WebhookDataSchema, required=True)


class CompanyLookupDataSchema(BaseSchema):
    """The lookup's `data`, dumped from a CompanySnapshot; None (an unknown account) dumps as {"exists": false}."""

    exists = fields.Method("exists_of", required=True, metadata={"type": "boolean"})
    company_id = fields.String()
    company_name = fields.String()
    chatwoot_account_id = fields.String()
    redis_prefix = fields.String()
    vectorstore_index = fields.String()
    provisioning_status = fields.String(validate=validate.OneOf(PROVISIONING_STATES))
    chatwoot_status = fields.String(validate=validate.OneOf(CHATWOOT_STATES))
    created_at = fields.String(metadata={"format": "date-time"})

    def exists_of(self, company: CompanySnapshot | None) -> bool:
        return company is not None


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


class LatencyHourSchema(BaseSchema):
    hour = fields.String(required=True, metadata={"format": "date-time"})
    deliveries = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    avg_latency_ms = fields.Float(required=True)
    max_latency_ms = fields.Float(required=True)


class RecentDeliverySchema(BaseSchema):
    time = fields.String(required=True, metadata={"format": "date-time"})
    account_id = fields.String(required=True)
    company_id = fields.String(required=True, allow_none=True)
    outcome = fields.String(required=True)
    created = fields.Boolean(required=True)
    latency_ms = fields.Float(required=True)
    error = fields.String(required=True, allow_none=True)


class CompaniesByStateSchema(BaseSchema):
    provisioning = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    chatwoot = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)


class CompanyTabsSchema(BaseSchema):
    missing = fields.Integer(required=True, allow_none=True, metadata={"description": "null when it cannot be known"})
    detail = fields.String(required=True)


class DashboardDataSchema(BaseSchema):
    company_tabs = fields.Nested(CompanyTabsSchema, required=True)
    metrics = fields.Nested(MetricsDataSchema, required=True)
    latency_series = fields.List(fields.Nested(LatencyHourSchema), required=True)
    companies = fields.Nested(CompaniesByStateSchema, required=True)
    recent_deliveries = fields.List(fields.Nested(RecentDeliverySchema), required=True)


class DashboardDataResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Nested(DashboardDataSchema, required=True)


class AnyDataResponseSchema(BaseSchema):
    success = fields.Boolean(required=True)
    data = fields.Dict(required=True)


webhook_response_schema = WebhookResponseSchema()
_webhook_data_schema = WebhookDataSchema()
company_lookup_data_schema = CompanyLookupDataSchema()
metrics_response_schema = MetricsResponseSchema()
dashboard_data_response_schema = DashboardDataResponseSchema()


def lookup_data(company: CompanySnapshot | None) -> dict[str, Any]:
    """The lookup's `data` for a company ({"exists": false} for None): the one place that builds it, for the
    lookup's answer and for the cached answer the write path publishes."""
    return company_lookup_data_schema.dump(company)


def webhook_answer(delivery: Any) -> dict[str, Any]:
    """{success: true, data} for a delivery outcome: exactly what webhook_response_schema dumps (a test holds the
    two equal), made from the schema's own values and fields without marshmallow's per-field machinery, which was
    about 6 % of a delivery's time in a worker."""
    values = _webhook_data_schema.values_of(delivery)
    values["message"] = _webhook_data_schema.message_of(values)
    return {"success": True, "data": {name: values[name] for name in _webhook_data_schema.fields if name in values}}


def success_answer(schema: Schema, data: Any) -> dict[str, Any]:
    """{success: true, data} dumped through a response schema (the shape the OpenAPI description shows)."""
    return schema.dump({"success": True, "data": data})
