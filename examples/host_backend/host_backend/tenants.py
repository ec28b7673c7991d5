"""The host's per-tenant resources: a vector index for every company the Chatwoot auto-sync provisions."""

from __future__ import annotations

import os
import signal

from flask import Flask
from multibackend.services.tenant_provisioning import CompanySnapshot, tenant_provisioned
from sqlalchemy.dialects.postgresql import insert

from host_backend.extensions import database
from host_backend.models import VectorIndex


def create_vector_index(app: Flask, company: CompanySnapshot) -> None:
    """tenant_provisioned receiver: the company's vector index, created once. Delivery is at least once (a retry or
    the reconciler may send it again), so it inserts only if absent; the host's session, committed here."""
    if app.config["HOST_CRASH_IN_RECEIVER"]:
        os.kill(os.getpid(), signal.SIGKILL)  # the tests' crash between the auto-sync's commit and this receiver
    database.session.execute(
        insert(VectorIndex)
        .values(company_id=company.company_id, index_name=company.vectorstore_index)
        .on_conflict_do_nothing(index_elements=[VectorIndex.index_name])
    )
    database.session.commit()


def init_tenants(app: Flask) -> None:
    tenant_provisioned.connect(create_vector_index, sender=app)
