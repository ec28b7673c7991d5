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

    id = account_id_field(required=True)
    name = CompanyName(required=True)
    event = fields.String(load_default=ACCOUNT_CREATED_EVENT)
    users = fields.List(fields.Nested(ChatwootUserSchema), load_default=list)


account_created_schema = AccountCreatedSchema()


def event_of(payload: Any) -> Any:
    """The payload's event name when it is a JSON object that names one, else None (meaning: account_created)."""
    return payload.get("event") if isinstance(payload, dict) else None


__all__ = ["ACCOUNT_CREATED_EVENT", "AccountCreatedSchema", "ValidationError", "account_created_schema"]
