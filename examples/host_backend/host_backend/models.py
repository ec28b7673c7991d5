"""The host's models. `companies` has the old setup guide's columns plus one of the host's own (`plan`)."""

from __future__ import annotations

from host_backend.extensions import database


class Company(database.Model):
    __tablename__ = "companies"

    id = database.Column(database.Integer, primary_key=True)
    company_id = database.Column(database.String(64), unique=True, nullable=False)
    company_name = database.Column(database.String(255), nullable=False)
    chatwoot_account_id = database.Column(database.String(50), unique=True, nullable=True)
    created_at = database.Column(database.DateTime, nullable=False, server_default=database.func.now())
    # the host's own column: a server default, so rows the auto-sync inserts (plain SQL) get it too
    plan = database.Column(database.String(20), nullable=False, default="free", server_default="free")


class VectorIndex(database.Model):
    """One per tenant, created by the tenant_provisioned receiver (host_backend/tenants.py)."""

    __tablename__ = "vector_indexes"

    id = database.Column(database.Integer, primary_key=True)
    company_id = database.Column(database.String(64), nullable=False, index=True)
    index_name = database.Column(database.String(100), unique=True, nullable=False)
    created_at = database.Column(database.DateTime, nullable=False, server_default=database.func.now())
