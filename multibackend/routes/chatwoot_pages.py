"""HTML pages: the dashboard iframe Chatwoot shows (`?accountId=`), and the operators' sync dashboard."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, make_response, render_template, url_for

from multibackend.routes.auth import require_operator
from multibackend.schemas import dashboard_data_response_schema, success_answer
from multibackend.services import sync_metrics

pages_bp = Blueprint(
    "pages", __name__, template_folder="../templates", static_folder="../static/chatwoot", static_url_path="/static"
)


@pages_bp.get("/embed")
def embed() -> Response:
    """The iframe page: waits for the company of ?accountId= (or of Chatwoot's appContext) and shows it."""
    return embed_page()


def embed_page() -> Response:
    """The iframe page, framable by the configured Chatwoot origin only (also served at / by the standalone app)."""
    config = current_app.config
    page = render_template(
        "chatwoot_embed.html",
        lookup_url=url_for("chatwoot_webhooks.company", account_id="ACCOUNT_ID"),
        static=lambda name: url_for("chatwoot_webhooks.pages.static", filename=name),
        wait_seconds=config["EMBED_WAIT_SECONDS"],
        signed=bool(config["CHATWOOT_EMBED_SECRET"]),
    )
    return with_page_headers(make_response(page), frame_ancestors(config["CHATWOOT_URL"]))


@pages_bp.get("/dashboard")
@require_operator
def dashboard() -> Response:
    """The operators' page: success rate, latency chart, recent errors, companies by state, last deliveries."""
    page = render_template(
        "chatwoot_dashboard.html",
        data_url=url_for("chatwoot_webhooks.pages.dashboard_data"),
        static=lambda name: url_for("chatwoot_webhooks.pages.static", filename=name),
    )
    return with_page_headers(make_response(page), "'none'")


@pages_bp.get("/dashboard/data")
@require_operator
def dashboard_data() -> Response:
    """What the operators' page draws, as JSON."""
    return jsonify(success_answer(dashboard_data_response_schema, sync_metrics.dashboard_data()))


def frame_ancestors(chatwoot_url: str) -> str:
    """CSP frame-ancestors: Chatwoot's origin when CHATWOOT_URL is set, else this site only."""
    parts = urlsplit(chatwoot_url.strip())
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"'self' {parts.scheme}://{parts.netloc}"
    return "'self'"


def with_page_headers(response: Response, ancestors: str) -> Response:
    """No inline code, nothing from elsewhere, framable only by `ancestors`."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        f"base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
