"""The host's own API."""

from __future__ import annotations

from flask import Blueprint, abort, request

from host_backend.extensions import database
from host_backend.models import Company

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/system/info")
def system_info():
    """The host's system info (the auto-sync adds its entries to it)."""
    return {"name": "host-backend", "version": "2.3.0", "endpoints": {"chat": "/api/chat"}, "features": ["rag", "chat"]}


@bp.post("/chat")
def chat():
    """Answer a message for a company (a stand-in for the host's RAG pipeline)."""
    body = request.get_json(silent=True) or {}
    company = database.session.scalar(database.select(Company).filter_by(company_id=body.get("company_id")))
    if company is None:
        abort(404, description="unknown company")
    return {"company": company.company_name, "plan": company.plan, "answer": f"echo: {body.get('message', '')}"}
